"""slave_side.owner_log on a real file system: escaping, rotation, symlinks and FIFOs at the log's path, short
writes, transcript bounds."""

from __future__ import annotations

import os
import stat

import pytest

from slave_side.owner_log import REFUSAL_WINDOW, REFUSALS_PER_WINDOW, OwnerLog, RecordingSink
from slaveshell.vocabulary import transcript
from slaveshell.vocabulary.protocol import ExitStatus, OpenRequest


class _Sink:
    def __init__(self) -> None:
        self.got: list[object] = []

    def output(self, stream: int, data: bytes, acks: object = ()) -> None:
        self.got.append(data)

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        self.got.append(nbytes)

    def exit(self, status: ExitStatus) -> None:
        self.got.append(status)


def read_lines(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def test_fields_are_escaped_and_cut(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "owner.log")
    owner = OwnerLog(path, clock=lambda: 0.0)
    request = OpenRequest(worker="w", command="a\tb=1\nc\x1b[2J\u202e" + "x" * 2000, operator="op\terator=root")
    owner.session_started("w1", request, "/tmp", None)
    [line] = read_lines(path)
    assert line[:4] == ["1970-01-01T00:00:00Z", "session", "w1", "started"]
    assert line[4] == "operator=op\\terator=root"
    assert line[5].startswith("command=a\\tb=1\\nc\\x1b[2J\\u202e") and line[5].endswith("\u2026")
    assert len(line[5]) < 600
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_rotation_keeps_a_count_and_a_bound(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "owner.log")
    owner = OwnerLog(path, max_bytes=1024, backups=2)
    for n in range(100):
        owner.transfer_ended(f"t{n}", f"op{n}", "y" * 100, n)
    assert sorted(os.listdir(tmp_path)) == ["owner.log", "owner.log.1", "owner.log.2"]
    assert all(os.path.getsize(os.path.join(tmp_path, n)) <= 1024 for n in os.listdir(tmp_path))
    assert read_lines(path)[-1][4] == "operator=op99"
    # A line longer than the bound is cut to it.
    owner.transfer_started("t1", "op", "up", ["z" * 500] * 16, "dest")
    assert os.path.getsize(path) <= 1024


def test_symlinks_and_fifos_are_never_written_through(tmp_path: os.PathLike[str]) -> None:
    victim = os.path.join(tmp_path, "victim")
    with open(victim, "w") as f:
        f.write("keep\n")
    path = os.path.join(tmp_path, "owner.log")
    os.symlink(victim, path)
    owner = OwnerLog(path)
    owner.transfer_refused("op", "no")
    with open(victim) as f:
        assert f.read() == "keep\n"
    os.unlink(path)
    os.mkfifo(path)
    owner.transfer_refused("op", "no")  # neither blocks (no reader) nor writes into the FIFO
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


def test_a_short_write_leaves_no_half_line(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = os.path.join(tmp_path, "owner.log")
    owner = OwnerLog(path)
    owner.transfer_refused("first", "no")
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:5]))  # the disk filled up after 5 bytes
    owner.transfer_refused("second", "no")
    monkeypatch.setattr(os, "write", real_write)
    owner.transfer_refused("third", "no")
    assert [line[4] for line in read_lines(path)] == ["operator=first", "operator=third"]


def test_transcripts_play_and_are_bounded(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "owner.log")
    owner = OwnerLog(path, max_bytes=2048, transcripts=True, keep_transcripts=2)
    request = OpenRequest(worker="w", operator="alice")
    names = []
    for n in range(4):
        cast = owner.open_cast(f"w{n}", request)
        assert cast is not None
        names.append(cast.path)
        sink = RecordingSink(_Sink(), owner, f"w{n}", request, cast)
        sink.output(1, b"hello \xe2\x82")  # a character split across two reads
        sink.output(1, b"\xac\r\n" + b"y" * (5000 if n == 3 else 10))
        sink.exit(ExitStatus(code=0))
    kept = sorted(n for n in os.listdir(tmp_path) if n.endswith(".cast"))
    assert len(kept) == 2 and os.path.basename(names[-1]) in kept
    with open(names[2], encoding="utf-8") as f:
        parsed = transcript.parse_lines(f)
    assert "hello \u20ac" in "".join(e.data for e in parsed.events if e.code == "o")
    assert parsed.events[-1].data == "exit 0"
    with open(names[3], encoding="utf-8") as f:
        cut = transcript.parse_lines(f)
    assert os.path.getsize(names[3]) <= 2048 + 100 and cut.events[-1].data == "transcript cut: size bound"
    ended = [line for line in read_lines(path) if line[3] == "ended"]
    assert len(ended) == 4 and ended[0][5] == "outcome=exit 0"


def test_a_flood_of_refusals_is_counted_not_written(tmp_path: os.PathLike[str]) -> None:
    now = [0.0]
    path = os.path.join(tmp_path, "owner.log")
    owner = OwnerLog(path, clock=lambda: now[0])
    for n in range(1000):
        owner.session_refused(OpenRequest(worker="w", operator=f"op{n}"), "no")
    assert len(read_lines(path)) == REFUSALS_PER_WINDOW
    now[0] = REFUSAL_WINDOW
    owner.transfer_refused("late", "no")
    last = read_lines(path)[-1]
    assert last[4] == "operator=late" and last[-1] == f"refusals_not_written={1000 - REFUSALS_PER_WINDOW}"


def test_a_hostile_master_over_pb_cannot_split_or_forge_lines(tmp_path: os.PathLike[str]) -> None:
    """The master's open call as a hostile master sends it, over real PB brokers in memory, to the worker's
    ShellServer: whatever it names the operator and the command, each event is one line with its own fields."""
    from slave_side.server import ShellServer
    from slave_side.session import WorkerOptions

    from .fakes import Bot, ProcessReactor, Sink, call, connected

    path = os.path.join(tmp_path, "owner.log")
    reactor = ProcessReactor()
    owner = OwnerLog(path, transcripts=True)
    server = ShellServer(WorkerOptions(shell="/bin/sh", max_sessions=1), reactor=reactor, owner_log=owner)
    root, pump, broker = connected(Bot(server, str(tmp_path)))
    forged = "root\tcommand=true\toutcome=exit 0\n1970-01-01T00:00:00Z\tsession\tw9\tended"
    request = OpenRequest(worker="w1", operator=forged, command="id\r\x1b]0;owned\x07" + "#" * 60000,
                          pty=False).to_wire()
    assert call(pump, root, "slaveshell_open", Sink(), request)["ok"]
    assert not call(pump, root, "slaveshell_open", Sink(), request)["ok"]  # over max_sessions: refused
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.count("\n") == 2 and "\x1b" not in text and "\x07" not in text and "\r" not in text
    started, refused = (line.split("\t") for line in text.splitlines())
    assert started[1:4] == ["session", "w1", "started"] and refused[1:4] == ["session", "-", "refused"]
    assert started[4] == "operator=root\\tcommand=true\\toutcome=exit 0\\n1970-01-01T00:00:00Z\\tsession" \
                         "\\tw9\\tended"
    assert started[5].startswith("command=id\\r\\x1b]0;owned\\x07###") and len(started[5]) < 600
    assert not broker.disconnected
