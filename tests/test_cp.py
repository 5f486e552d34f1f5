"""`slaveshell cp` in process: the wire checks (slaveshell.vocabulary.copying), a sender and a receiver on real files
(slaveshell.files.sender), and the master's relay refusing a sender that breaks the rules
(master_side.copying.relay)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.spread import pb

from master_side.copying.relay import OPERATOR, WORKER, MasterTransfer, Party
from slave_side.host import WorkerOptions
from slave_side.transfer import TransferServer
from slaveshell.client.copy_cli import request_of, split_remote
from slaveshell.files.receiver import Receiver
from slaveshell.files.sender import Sender, TransferError, plan
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.copying import (
    CHUNK,
    UP,
    WINDOW,
    Credit,
    Data,
    DoneFile,
    Entry,
    Finish,
    TransferRequest,
    check_relpath,
)
from slaveshell.vocabulary.framing import FrameType, Op
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import ProtocolError

from .fakes import FramedLink, call, connected


@pytest.mark.parametrize("path", ["", "/etc/passwd", "a/../b", "..", "a//b", "./a", "a/", "a\0b"])
def test_unsafe_relative_paths_are_refused(path):
    with pytest.raises(ProtocolError):
        check_relpath(path)


def test_the_window_is_enforced_and_acks_are_checked():
    credit = Credit()
    credit.spend(WINDOW)
    with pytest.raises(ProtocolError):
        credit.spend(1)
    with pytest.raises(ProtocolError):
        credit.ack(WINDOW + 1)
    assert credit.ack(CHUNK) == CHUNK and credit.available == CHUNK


def test_unknown_request_fields_and_bad_directions_are_refused():
    good = TransferRequest(UP, "w1", ("a",), "/tmp/x").to_wire()
    assert TransferRequest.from_wire(good).dest == "/tmp/x"
    with pytest.raises(ProtocolError):
        TransferRequest.from_wire({**good, "evil": 1})
    with pytest.raises(ProtocolError):
        TransferRequest.from_wire({**good, "direction": "sideways"})


def test_the_command_line_names_one_remote_side():
    class Args:
        recursive = preserve = False
        build = None
        paths: list[str] = []

    assert split_remote("w1:/tmp/x") == ("w1", "/tmp/x") and split_remote("./a:b") is None
    args = Args()
    args.paths = ["a", "b", "w1:/dest"]
    assert request_of(args).direction == UP  # type: ignore[arg-type]
    args.paths = ["w1:a", "w2:b", "here"]
    with pytest.raises(ValueError, match="same worker"):
        request_of(args)  # type: ignore[arg-type]
    args.paths = ["a", "b"]
    with pytest.raises(ValueError, match="exactly one side"):
        request_of(args)  # type: ignore[arg-type]


def _pipe(planned: Any, receiver: Receiver) -> None:
    """A sender straight into a receiver, acks straight back (what the master relays)."""
    sender: Sender

    def send(event: Any) -> None:
        if isinstance(event, Entry):
            receiver.entry(event)
            sender.ack(1024)
        elif isinstance(event, Data):
            receiver.data(event.chunk)
            sender.ack(len(event.chunk))
        elif isinstance(event, DoneFile):
            receiver.done_file(event.sha256)
            sender.ack(1024)
        elif isinstance(event, Finish):
            receiver.commit()

    sender = Sender(planned, send)
    sender.pump()


def test_a_tree_arrives_byte_exact_and_only_at_the_commit(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    blob = os.urandom(3 * CHUNK + 7)
    (src / "sub" / "blob").write_bytes(blob)
    (src / "empty").write_bytes(b"")
    dest = tmp_path / "dest"
    dest.mkdir()
    _pipe(plan([str(src)], recursive=True), Receiver(str(dest), preserve=False))
    assert (dest / "src" / "sub" / "blob").read_bytes() == blob
    assert (dest / "src" / "empty").read_bytes() == b""
    assert [n for n in os.listdir(dest) if n.startswith(".")] == []


def test_a_large_files_writeback_is_started_as_it_arrives_and_its_bytes_are_unchanged(tmp_path, monkeypatch):
    from slaveshell.files import receiver as cpfiles

    started: list[tuple[int, int]] = []
    monkeypatch.setattr(cpfiles, "WRITEBACK", CHUNK)
    real = cpfiles._start_writeback
    monkeypatch.setattr(cpfiles, "_start_writeback", lambda fd, at, n: (started.append((at, n)), real(fd, at, n)))
    blob = os.urandom(3 * CHUNK + 7)
    (tmp_path / "blob").write_bytes(blob)
    (tmp_path / "dest").mkdir()
    _pipe(plan([str(tmp_path / "blob")], recursive=False), Receiver(str(tmp_path / "dest"), preserve=False))
    assert (tmp_path / "dest" / "blob").read_bytes() == blob
    assert started == [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, CHUNK)]


def test_a_file_written_in_place_is_staged_unsynced_and_the_named_file_gets_its_bytes_and_writeback(tmp_path,
                                                                                                    monkeypatch):
    from slaveshell.files import receiver as cpfiles

    started: list[tuple[int, int, int]] = []
    monkeypatch.setattr(cpfiles, "WRITEBACK", CHUNK)
    real = cpfiles._start_writeback
    monkeypatch.setattr(cpfiles, "_start_writeback",
                        lambda fd, at, n: (started.append((os.fstat(fd).st_ino, at, n)), real(fd, at, n)))
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(cpfiles.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    blob = os.urandom(3 * CHUNK + 7)
    (tmp_path / "blob").write_bytes(blob)
    target = tmp_path / "target"
    target.write_bytes(b"old contents, longer than nothing")
    inode = target.stat().st_ino
    _pipe(plan([str(tmp_path / "blob")], recursive=False), Receiver(str(target), preserve=False))
    assert target.read_bytes() == blob and target.stat().st_ino == inode  # written into, as scp does
    # Only the named file is written back and synced: the staged copy (read back, then removed) is neither.
    assert {ino for ino, _at, _n in started} == {inode}
    assert [(at, n) for _ino, at, n in started] == [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, CHUNK), (3 * CHUNK, 7)]
    assert inode in synced and all(ino in (inode, tmp_path.stat().st_ino) for ino in synced)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_small_files_are_synced_once_created_in_bounded_batches_each_with_its_mode(tmp_path, monkeypatch):
    from slaveshell.files import receiver as cpfiles

    monkeypatch.setattr(cpfiles, "SYNC_BATCH", 3)
    batches: list[int] = []
    real_later = cpfiles.Receiver._sync_later
    monkeypatch.setattr(cpfiles.Receiver, "_sync_later",
                        lambda self, dirs: (batches.append(len(self._later)), real_later(self, dirs)))
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(cpfiles.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    blobs = {f"sub/f{i}" if i % 2 else f"f{i}": os.urandom(i * 100) for i in range(7)}
    for rel, blob in blobs.items():
        (src / rel).write_bytes(blob)
        os.chmod(src / rel, 0o640)
    (tmp_path / "dest").mkdir()
    _pipe(plan([str(src)], recursive=True), Receiver(str(tmp_path / "dest"), preserve=True))
    assert batches == [3, 3, 1]  # two while the stream went on, the rest at the commit
    for rel, blob in blobs.items():
        got = tmp_path / "dest" / "src" / rel
        assert got.read_bytes() == blob and got.stat().st_mode & 0o777 == 0o640
        assert got.stat().st_ino in synced


def test_a_file_swapped_for_a_fifo_after_the_plan_is_refused_without_waiting_for_a_writer(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    planned = plan([str(tmp_path / "f")], recursive=False)
    os.unlink(tmp_path / "f")
    os.mkfifo(tmp_path / "f")  # no writer: an open that waited would never return
    sender = Sender(planned, lambda event: None)
    with pytest.raises(TransferError, match="not a regular file"):
        sender.pump()


def test_a_trees_symlinks_are_followed_and_checked_where_they_lead_as_realpath_says(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "plain").write_text("p")
    os.symlink(outside, tree / "sub" / "dirlink")
    os.symlink(outside / "secret", tree / "filelink")
    os.symlink(tree / "sub", tmp_path / "alias")
    seen: list[str] = []
    planned = plan([str(tree), str(tmp_path / "alias")], recursive=True, check=seen.append)
    assert seen == [os.path.realpath(p.local) for p in planned]  # every entry checked where it resolves
    by_rel = {p.entry.path: p.local for p in planned}
    assert by_rel["tree/filelink"] == str(outside / "secret")
    assert by_rel["tree/sub/dirlink"] == str(outside) and by_rel["tree/sub/dirlink/secret"] == str(outside / "secret")
    assert by_rel["alias"] == str(tree / "sub") and by_rel["alias/plain"] == str(tree / "sub" / "plain")

    def refuse_outside(real: str) -> None:
        if real.startswith(str(outside)):
            raise TransferError("outside")

    with pytest.raises(TransferError, match="outside"):
        plan([str(tree)], recursive=True, check=refuse_outside)


def test_an_abort_removes_everything_staged(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    receiver = Receiver(str(dest), preserve=False)
    receiver.entry(Entry("file", "f", 0o644, 4))
    receiver.data(b"abcd")
    receiver.done_file(hashlib.sha256(b"abcd").hexdigest())
    receiver.entry(Entry("file", "g", 0o644, 4))
    receiver.data(b"ab")
    receiver.abort()
    assert os.listdir(dest) == []


def test_two_sources_into_a_file_name_are_refused(tmp_path):
    receiver = Receiver(str(tmp_path / "newname"), preserve=False)
    receiver.entry(Entry("dir", "a", 0o755))
    with pytest.raises(TransferError, match="not a directory"):
        receiver.entry(Entry("dir", "b", 0o755))
    receiver.abort()
    assert os.listdir(tmp_path) == []


def test_a_directory_needs_r_and_a_missing_source_is_named(tmp_path):
    with pytest.raises(TransferError, match="use -r"):
        plan([str(tmp_path)], recursive=False)
    with pytest.raises(TransferError, match="No such file"):
        plan([str(tmp_path / "nope")], recursive=False)


class FakeRef:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def callRemote(self, method: str, *args: object, **kw: object) -> None:
        self.calls.append((method, args))


def _relay(sources: tuple[str, ...] = ("f", "g", "h", "big")) -> tuple[MasterTransfer, FakeRef, FakeRef]:
    ended: list[MasterTransfer] = []
    who = Identity(uid=0, gid=0, pid=1, user="root", groups=frozenset())
    transfer = MasterTransfer("t1", who, TransferRequest(UP, "w1", sources, "/d"), None, ended.append)
    operator, worker = FakeRef(), FakeRef()
    transfer.parties[OPERATOR] = Party(operator)  # type: ignore[arg-type]
    transfer.parties[WORKER] = Party(worker)  # type: ignore[arg-type]
    return transfer, operator, worker


def test_the_master_ends_a_transfer_whose_sender_passes_its_window():
    transfer, operator, worker = _relay()
    transfer.received(OPERATOR, "entry", ("file", "f", 0o644, 10 * WINDOW, 0.0))
    chunk = b"x" * CHUNK
    for _ in range(WINDOW // CHUNK - 1):  # the entry took 1024 of the window: one chunk less fits
        transfer.received(OPERATOR, "data", (chunk,))
    assert not transfer.ended
    transfer.received(OPERATOR, "data", (chunk,))
    assert transfer.ended and "window" in transfer.outcome[1]  # type: ignore[index]
    assert ("result", (False, transfer.outcome[1])) in operator.calls  # type: ignore[index]
    assert worker.calls[-1][0] == "cancel"


def test_the_master_checks_the_senders_sha256_and_declared_size():
    transfer, operator, _ = _relay()
    transfer.received(OPERATOR, "entry", ("file", "f", 0o644, 3, 0.0))
    transfer.received(OPERATOR, "data", (b"abc",))
    transfer.received(OPERATOR, "done_file", (hashlib.sha256(b"abd").hexdigest(),))
    assert transfer.ended and "does not match" in transfer.outcome[1]  # type: ignore[index]
    transfer, _, _ = _relay()
    transfer.received(OPERATOR, "entry", ("file", "f", 0o644, 2, 0.0))
    transfer.received(OPERATOR, "data", (b"abc",))
    assert transfer.ended and "declared size" in transfer.outcome[1]  # type: ignore[index]
    transfer, _, _ = _relay()
    transfer.received(WORKER, "data", (b"abc",))  # the receiver may not send data
    assert transfer.ended and "sender" in transfer.outcome[1]  # type: ignore[index]


def test_the_master_hashes_what_it_relays_and_a_sender_may_leave_the_sha256_to_it():
    transfer, _, worker = _relay()
    for name, claim in (("f", ""), ("g", hashlib.sha256(b"abc").hexdigest())):  # an unclaimed file, an old sender's
        transfer.received(OPERATOR, "entry", ("file", name, 0o644, 3, 0.0))
        transfer.received(OPERATOR, "data", (b"abc",))
        transfer.received(OPERATOR, "done_file", (claim,))
    assert not transfer.ended
    # The receiver gets the master's own sha256 either way (the audit record's).
    mine = hashlib.sha256(b"abc").hexdigest()
    assert [c for c in worker.calls if c[0] == "done_file"] == [("done_file", (mine,))] * 2
    transfer.received(OPERATOR, "entry", ("file", "h", 0o644, 3, 0.0))
    transfer.received(OPERATOR, "data", (b"abc",))
    transfer.received(OPERATOR, "done_file", ("not a sha",))
    assert transfer.ended and "sha256" in transfer.outcome[1]  # type: ignore[index]


def test_the_masters_sha256_covers_every_chunk_of_a_file_hashed_on_its_hashing_thread():
    transfer, _, worker = _relay()
    body = os.urandom(5 * 1024 * 1024 + 333)  # several of the relay's hashing batches, and an odd tail
    transfer.received(OPERATOR, "entry", ("file", "big", 0o644, len(body), 0.0))
    for at in range(0, len(body), CHUNK):
        transfer.received(OPERATOR, "data", (body[at:at + CHUNK],))
        transfer.received(WORKER, "ack", (len(body[at:at + CHUNK]),))
    transfer.received(OPERATOR, "done_file", (hashlib.sha256(body).hexdigest(),))
    assert not transfer.ended
    assert worker.calls[-1] == ("done_file", (hashlib.sha256(body).hexdigest(),))


def test_a_sender_without_a_claim_reads_the_same_bytes_and_sends_no_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * (CHUNK + 5))
    sent: list[tuple[str, tuple[object, ...]]] = []
    sender = Sender(plan([str(tmp_path / "f")], recursive=False), lambda e: sent.append((e.call, e.to_wire())),
                    claim=False)
    sender.pump()
    assert [m for m, _ in sent] == ["entry", "data", "data", "done_file", "finish"]
    assert b"".join(a[0] for m, a in sent if m == "data") == b"x" * (CHUNK + 5)  # type: ignore[misc]
    assert ("done_file", ("",)) in sent


class TransferBot(pb.Root):
    """The worker's BotPb as far as transfers go: the method slave_side.install() adds."""

    def __init__(self, server: TransferServer, basedir: str) -> None:
        self.server, self.basedir = server, basedir

    def remote_slaveshell_transfer(self, sink: Any, params: Any) -> Any:
        return self.server.open(self.basedir, sink, params)


class TransferSink(pb.Referenceable):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def remote_ack(self, *args: Any) -> None:
        self.calls.append(("ack", *args))

    def remote_result(self, *args: Any) -> None:
        self.calls.append(("result", *args))


def test_the_workers_transfer_door_refuses_with_plain_answers_and_keeps_the_link(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server = TransferServer(WorkerOptions(allowed_dirs=(str(allowed),), allowed_users=frozenset({"root"})))
    root, pump, broker = connected(TransferBot(server, str(tmp_path)))
    up = TransferRequest(UP, "w1", ("f",), str(allowed), operator="root").to_wire()
    assert call(pump, root, "slaveshell_transfer", TransferSink(), {**up, "evil": 1})["ok"] is False
    assert "does not allow mallory" in call(pump, root, "slaveshell_transfer", TransferSink(),
                                            {**up, "operator": "mallory"})["error"]
    reply = call(pump, root, "slaveshell_transfer", TransferSink(), {**up, "dest": str(tmp_path)})
    assert reply["ok"] is False and "outside the directories this worker allows" in reply["error"]
    sink = TransferSink()
    reply = call(pump, root, "slaveshell_transfer", sink, up)
    assert reply["ok"] is True
    call(pump, reply["transfer"], "entry", "file", "../escape", 0o644, 1, 0.0)
    assert sink.calls and sink.calls[-1][:2] == ("result", False) and "unsafe path" in sink.calls[-1][2]
    assert os.listdir(allowed) == [] and not broker.disconnected and server.live == {}


def test_an_allowed_dirs_refusal_names_the_path_as_given_never_where_it_resolves(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "tree").mkdir(parents=True)
    target = tmp_path / "resolved-target-xq"
    target.mkdir()
    (target / "secret").write_text("s")
    (allowed / "ok").write_text("ok")
    os.symlink(target, allowed / "link")
    os.symlink(target / "secret", allowed / "tree" / "inner")
    server = TransferServer(WorkerOptions(allowed_dirs=(str(allowed),)))
    root, pump, _broker = connected(TransferBot(server, str(allowed)))
    DOWN = "down"
    cases = [  # (direction, sources, dest, recursive, the path the refusal names)
        (UP, ("f",), "link", False, "link"),
        (UP, ("f",), "link/", False, "link/"),
        (UP, ("f",), f"{allowed}/link/new", False, f"{allowed}/link/new"),
        (UP, ("f",), ".", False, "."),  # into the master's --build directory, which is outside
        (DOWN, ("link/secret",), ".", False, "link/secret"),
        (DOWN, ("ok", "link"), ".", True, "link"),
        (DOWN, ("tree",), ".", True, "tree"),
    ]
    for direction, sources, dest, recursive, named in cases:
        request = TransferRequest(direction, "w1", sources, dest, recursive=recursive, operator="root")
        wire = request.to_wire()
        if dest == "." and direction == UP:
            wire["cwd"] = str(target)
        reply = call(pump, root, "slaveshell_transfer", TransferSink(), wire)
        assert reply["ok"] is False, (sources, dest)
        assert reply["error"] == f"{named}: outside the directories this worker allows", reply["error"]
        assert "resolved-target-xq" not in reply["error"]


_wire = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20) \
    | st.binary(max_size=20) | st.sampled_from(["file", "dir", "f", "a/b", "../x", b"x" * CHUNK, b"x" * (CHUNK + 1),
                                                 hashlib.sha256(b"").hexdigest(), 0o644, 0, 1024, True])


@settings(max_examples=150, deadline=None)
@given(calls=st.lists(st.tuples(st.sampled_from([OPERATOR, WORKER]),
                                st.sampled_from(["entry", "data", "done_file", "finish", "abort", "ack", "result",
                                                 "cancel", "nosuch"]),
                                st.lists(_wire, max_size=5)), max_size=12))
def test_rogue_parties_cannot_break_the_masters_relay(calls):
    """Anything PB can carry, from either party: the relay never raises, ends at most once, and tells the
    operator the outcome exactly once (unless the operator reported it)."""
    transfer, operator, worker = _relay()
    for side, method, args in calls:
        transfer.received(side, method, tuple(args))
    results = [c for c in operator.calls if c[0] == "result"]
    assert len(results) == (1 if transfer.ended else 0)
    assert len([c for c in worker.calls if c[0] == "cancel"]) <= 1


def test_transfers_are_counted_per_worker_and_operator_apart_from_sessions():
    from master_side.copying.relay import MAX_TRANSFERS, Transfers
    from slaveshell.vocabulary.policy import Policy

    class Limits:
        per_worker, per_operator = 2, 1

    transfers = Transfers(lambda: 0.0)
    policy = Policy.default(master_uid=0)
    who = Identity(uid=0, gid=0, pid=1, user="root", groups=frozenset())
    assert transfers.quota(policy, who, "w1", Limits) is None
    transfers.live["t1"], _, _ = _relay()
    assert transfers.quota(policy, who, "w1", Limits) == "root already has 1 transfers (the master's limit)"
    Limits.per_operator = 5
    transfers.live["t2"], _, _ = _relay()
    assert transfers.quota(policy, who, "w1", Limits) == "worker w1 already has 2 transfers (the master's limit)"
    assert transfers.quota(policy, who, "w2", Limits) is None
    Limits.per_worker = Limits.per_operator = None  # type: ignore[assignment]
    for n in range(MAX_TRANSFERS):
        transfers.live[f"x{n}"], _, _ = _relay()
    assert "64 transfers" in str(transfers.quota(policy, who, "w2", Limits))


class CpLink(FramedLink):
    """What the cp client sends, decoded: ("data", bytes) or (op, fields)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, Any]] = []
        self.decoder = framing.Decoder()

    def send(self, frame: bytes, payload: bytes = b"") -> None:
        for f in self.decoder.feed(frame + payload):
            if f.type is FrameType.DATA:
                self.sent.append(("data", f.payload))
            else:
                message = framing.parse_control(f.payload)
                self.sent.append((message.op.value, message.fields))


def _client(tmp_path: Any, direction: str = "down", planned: Any = None) -> tuple[Any, CpLink, Any]:
    from slaveshell.client.copy_client import CopyClient, Progress
    from tests.test_hop_client import FakeLoop

    loop, link = FakeLoop(), CpLink()
    receiver = Receiver(str(tmp_path), preserve=False) if direction == "down" else None
    client = CopyClient(loop, link, TransferRequest(direction, "w1", ("tree",), str(tmp_path)), planned, receiver,
                        lambda total: Progress("t", total, None), warn=lambda line: None)
    client.start()
    [(op, fields)] = link.sent
    assert op == "copy" and fields["request"]["direction"] == direction
    link.sent.clear()
    return client, link, loop


def _from_master(client: Any, frame: bytes) -> None:
    client.read(framing.Decoder(max_control=framing.MAX_ANSWER).feed(frame))  # as each read is taken


def test_the_clients_receiver_returns_all_credit_even_for_thousands_of_entries(tmp_path):
    """A download of many small entries must not run the sender's window dry (entries cost credit too)."""
    client, link, _ = _client(tmp_path)
    _from_master(client, framing.answer(id=1, ok=True, transfer="t1", total=0, entries=1, recorded=True))
    sender_credit = Credit()
    _from_master(client, framing.control(Op.ENTRY, kind="dir", path="tree", mode=0o755, size=0, mtime=0.0))
    sender_credit.spend(1024)
    for n in range(3 * WINDOW // 1024):
        _from_master(client, framing.control(Op.ENTRY, kind="file", path=f"tree/f{n}", mode=0o644, size=0,
                                             mtime=0.0))
        _from_master(client, framing.control(Op.DONE_FILE, sha256=hashlib.sha256(b"").hexdigest()))
        sender_credit.spend(2048)
        for op, fields in link.sent:
            if op == "ack":
                sender_credit.ack(fields["n"])
        link.sent.clear()
    assert sender_credit.outstanding == 0 and client.outcome is None


def test_the_client_puts_a_download_in_place_at_finish_and_tells_the_master(tmp_path):
    client, link, loop = _client(tmp_path)
    _from_master(client, framing.answer(id=1, ok=True, transfer="t1", total=5, entries=1, recorded=True))
    _from_master(client, framing.control(Op.ENTRY, kind="file", path="f", mode=0o644, size=5, mtime=0.0))
    _from_master(client, framing.encode(FrameType.DATA, b"hello"))
    assert not (tmp_path / "f").exists()
    _from_master(client, framing.control(Op.DONE_FILE, sha256=hashlib.sha256(b"hello").hexdigest()))
    _from_master(client, framing.control(Op.FINISH))
    assert (tmp_path / "f").read_bytes() == b"hello"
    assert [op for op, _ in link.sent] == ["ack", "ack", "ack", "result"] and link.sent[-1][1]["ok"] is True
    assert client.outcome is None  # until the master has the result
    _from_master(client, framing.answer(id=link.sent[-1][1]["id"], ok=True))
    assert client.outcome == (True, "") and loop.stopped


def test_the_client_refuses_a_bad_stream_and_leaves_nothing(tmp_path):
    client, link, _ = _client(tmp_path)
    _from_master(client, framing.answer(id=1, ok=True, transfer="t1", total=5, entries=1, recorded=True))
    _from_master(client, framing.control(Op.ENTRY, kind="file", path="f", mode=0o644, size=2, mtime=0.0))
    _from_master(client, framing.encode(FrameType.DATA, b"abc"))  # over the declared size
    assert client.outcome[0] is False and "declared size" in client.outcome[1]
    assert link.sent[-1][0] == "result" and link.sent[-1][1]["ok"] is False
    assert os.listdir(tmp_path) == []
    client, link, _ = _client(tmp_path)
    _from_master(client, framing.answer(id=1, ok=True, transfer="t1", total=5, entries=1, recorded=True))
    _from_master(client, framing.control(Op.ENTRY, kind="file", path="../x", mode=0o644, size=2, mtime=0.0))
    assert client.outcome[0] is False and "unsafe path" in client.outcome[1]


def test_the_clients_upload_keeps_to_the_window_and_ends_with_the_masters_result(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2 * WINDOW))
    client, link, loop = _client(tmp_path / "nowhere", "up", plan([str(src)], recursive=False))
    _from_master(client, framing.answer(id=1, ok=True, transfer="t1", total=0, entries=0, recorded=False))
    credit = Credit()
    for op, fields in link.sent:
        credit.spend(len(fields) if op == "data" else 1024)
    assert credit.available < CHUNK  # it filled the window, and stopped
    sent = len(link.sent)
    _from_master(client, framing.control(Op.ACK, n=CHUNK))
    assert len(link.sent) == sent + 1 and link.sent[-1][0] == "data"
    _from_master(client, framing.control(Op.RESULT, ok=False, reason="worker w1: disk full"))
    assert client.outcome == (False, "worker w1: disk full") and loop.stopped


def test_the_client_takes_no_success_before_it_is_done_and_leaves_nothing(tmp_path):
    """A broken or hostile master saying a download succeeded before this client put its files in place, or an
    upload before its finish: the client reports a failure and leaves nothing behind (no staging, no file)."""
    client, link, _ = _client(tmp_path)
    _from_master(client, framing.answer(id=1, ok=True, transfer="t1", total=5, entries=1, recorded=True))
    _from_master(client, framing.control(Op.ENTRY, kind="file", path="f", mode=0o644, size=5, mtime=0.0))
    _from_master(client, framing.encode(FrameType.DATA, b"hel"))
    _from_master(client, framing.control(Op.RESULT, ok=True, reason=""))
    assert client.outcome == (False, "the master said the transfer succeeded before it was done here (protocol error)")
    assert os.listdir(tmp_path) == []
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * WINDOW))
    client, link, _ = _client(tmp_path / "nowhere", "up", plan([str(src)], recursive=False))
    _from_master(client, framing.answer(id=1, ok=True, transfer="t1", total=0, entries=0, recorded=False))
    _from_master(client, framing.control(Op.RESULT, ok=True, reason=""))  # the window is full: no finish yet
    assert client.outcome is not None and client.outcome[0] is False
