"""The worker owner's own record (`slave_side.install(local_log=...)`) against a real master and real workers:
a line per session and transfer on the worker's disk, mode 0600, escaped fields, rotation at a small bound,
playable local transcripts, a refused session, and a symlink at the log's path that is never followed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary import transcript

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e

MAX_BYTES = 2048
# In each worker's buildbot.tac (where `os` and `basedir` are defined): the log in the worker's own directory;
# "refuser" allows nobody the master names.
ARGS = ("local_log=os.path.join(basedir, 'owner', 'owner.log'), local_transcripts=True, "
        f"local_log_max_bytes={MAX_BYTES}, local_log_backups=1, local_transcripts_keep=3, "
        "allowed_users=(['somebody-else'] if basedir.endswith('refuser') else None)")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(str(tmp_path_factory.mktemp("owner")), workers=["ow", "refuser", "full"], opt_in_args=ARGS,
                 service_kwargs=f"policy=[{{'users': [0, {os.getuid()}]}}]")
    sb.create()
    for name in sb.workers:
        os.makedirs(os.path.join(sb.worker_dir(name), "owner"))
    # "full" keeps its log on a small file system of its own (root only: a tmpfs), filled by a test.
    small = os.path.join(sb.worker_dir("full"), "owner")
    mounted = os.getuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", small],
                                                  capture_output=True).returncode == 0
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()
        if mounted:
            subprocess.run(["umount", small], capture_output=True)


def log_path(sb: Sandbox, worker: str) -> str:
    return os.path.join(sb.worker_dir(worker), "owner", "owner.log")


def run(sb: Sandbox, worker: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shell_argv() + ["--socket", sb.socket, "-T", worker, "--", command], capture_output=True,
                          text=True, timeout=60)


def lines(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def fields(line: list[str]) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line[4:])


def all_lines(sb: Sandbox, worker: str) -> list[list[str]]:
    path = log_path(sb, worker)
    return (lines(path + ".1") if os.path.exists(path + ".1") else []) + lines(path)


def twistd(sb: Sandbox, worker: str) -> str:
    with open(os.path.join(sb.worker_dir(worker), "twistd.log"), encoding="utf-8") as f:
        return f.read()


def casts(sb: Sandbox, worker: str) -> list[str]:
    folder = os.path.dirname(log_path(sb, worker))
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".cast"))


def test_sessions_copies_escaping_and_transcripts(box: Sandbox, tmp_path: object) -> None:
    hostile = "echo owner-one; : '\tinjected=yes\x1b[31m\nfake line'"
    done = run(box, "ow", hostile)
    assert done.returncode == 0 and "owner-one" in done.stdout
    path = log_path(box, "ow")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    started = [line for line in all_lines(box, "ow") if line[1:4:2] == ["session", "started"]]
    ended = [line for line in all_lines(box, "ow") if line[1:4:2] == ["session", "ended"]]
    assert started and ended and started[-1][2] == ended[-1][2]
    shown = fields(started[-1])
    # The tab, the ESC and the newline the operator typed are escaped: one line, no extra field, no control.
    assert shown["command"] == "echo owner-one; : '\\tinjected=yes\\x1b[31m\\nfake line'"
    assert "injected" not in shown
    assert not any("fake line" in line[0] for line in all_lines(box, "ow"))
    assert fields(ended[-1])["outcome"] == "exit 0"
    assert fields(started[-1])["operator"]
    with open(path, "rb") as raw:
        assert b"\x1b" not in raw.read()

    # Its transcript, beside the log, plays: asciicast v2 with the session's output.
    cast = os.path.join(os.path.dirname(path), fields(started[-1])["transcript"])
    assert stat.S_IMODE(os.stat(cast).st_mode) == 0o600
    with open(cast, encoding="utf-8") as f:
        parsed = transcript.parse_lines(f)
    assert parsed.header["version"] == 2
    assert "owner-one" in "".join(e.data for e in parsed.events if e.code == "o")
    assert parsed.events[-1].code == "m" and parsed.events[-1].data == "exit 0"

    # A copy each way, and one the owner's allowed directories... here: a source that does not exist.
    local = os.path.join(str(tmp_path), "up.txt")
    with open(local, "w") as f:
        f.write("payload\n")
    dest = os.path.join(box.worker_dir("ow"), "up.txt")
    cp = [sys.executable, "-m", "slaveshell.cli", "cp", "--socket", box.socket]
    assert subprocess.run(cp + [local, f"ow:{dest}"], capture_output=True, timeout=60).returncode == 0
    back = os.path.join(str(tmp_path), "back.txt")
    assert subprocess.run(cp + [f"ow:{dest}", back], capture_output=True, timeout=60).returncode == 0
    missing = subprocess.run(cp + ["ow:/no/such/file", back + "2"], capture_output=True, timeout=60)
    assert missing.returncode != 0

    def transfer_lines() -> list[list[str]]:
        return [line for line in all_lines(box, "ow") if line[1] == "transfer"]

    wait_until(lambda: len([t for t in transfer_lines() if t[3] == "ended"]) >= 2, 15)
    ups = [t for t in transfer_lines() if fields(t).get("direction") == "to this worker"]
    assert fields(ups[0]).get("dest") == dest
    assert any(fields(t).get("outcome") == "received and put in place" and fields(t)["bytes"] == "8"
               for t in transfer_lines() if t[3] == "ended")
    downs = [t for t in transfer_lines() if fields(t).get("direction") == "from this worker"]
    assert fields(downs[0]).get("source") == dest
    assert any(fields(t).get("outcome") == "sent" for t in transfer_lines() if t[3] == "ended")
    refused = [t for t in transfer_lines() if t[3] == "refused"]
    assert refused and "/no/such/file" in fields(refused[-1])["outcome"]


def test_refused_session_is_recorded(box: Sandbox) -> None:
    done = run(box, "refuser", "echo never")
    assert done.returncode != 0 and "does not allow" in done.stderr
    refused = [line for line in lines(log_path(box, "refuser")) if line[3] == "refused"]
    assert refused and fields(refused[-1])["command"] == "echo never"
    assert "does not allow" in fields(refused[-1])["outcome"]


def test_rotation_and_transcript_bounds(box: Sandbox) -> None:
    padding = "A" * 400
    for n in range(6):
        assert run(box, "ow", f"echo rot-{n}; : {padding}").returncode == 0
    path = log_path(box, "ow")
    assert os.path.exists(path + ".1") and not os.path.exists(path + ".2")
    for name in (path, path + ".1"):
        assert os.path.getsize(name) <= MAX_BYTES
    assert fields([line for line in lines(path) if line[3] == "started"][-1])["command"].startswith("echo rot-5")
    assert len(casts(box, "ow")) <= 3
    # A session with more output than the bound: its transcript is cut, and says so.
    assert run(box, "ow", "head -c 20000 /dev/zero | tr '\\0' x; echo").returncode == 0
    newest = max(casts(box, "ow"), key=os.path.getmtime)
    assert os.path.getsize(newest) <= MAX_BYTES + 200
    with open(newest, encoding="utf-8") as f:
        parsed = transcript.parse_lines(f)
    assert any(e.code == "m" and "cut" in e.data for e in parsed.events)


def test_symlink_at_the_log_path_is_not_followed(box: Sandbox, tmp_path: object) -> None:
    path = log_path(box, "refuser")
    victim = os.path.join(str(tmp_path), "victim")
    with open(victim, "w") as f:
        f.write("untouched\n")
    os.rename(path, path + ".saved")
    os.symlink(victim, path)
    try:
        assert run(box, "refuser", "echo through-the-link").returncode != 0
        wait_until(lambda: "owner log: cannot write (ELOOP)" in twistd(box, "refuser"), 10)
        with open(victim) as f:
            assert f.read() == "untouched\n"
        assert "through-the-link" not in twistd(box, "refuser") and path not in twistd(box, "refuser")
    finally:
        os.unlink(path)
    # The next event is written again, to a new regular file.
    assert run(box, "refuser", "echo after").returncode != 0
    assert fields(lines(path)[-1])["command"] == "echo after"
    assert not os.path.islink(path)


def test_a_full_disk_never_fails_the_session(box: Sandbox) -> None:
    folder = os.path.dirname(log_path(box, "full"))
    if not os.path.ismount(folder):
        pytest.skip("needs root to mount a small file system")
    assert run(box, "full", "echo before").returncode == 0
    assert fields(lines(log_path(box, "full"))[-1])["outcome"] == "exit 0"
    filler = os.path.join(folder, "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass
    try:
        done = run(box, "full", "echo still-works; echo SECRET-content >&2")
        assert done.returncode == 0 and "still-works" in done.stdout
        wait_until(lambda: "owner log: cannot write (ENOSPC)" in twistd(box, "full"), 10)
        assert twistd(box, "full").count("owner log: cannot write") == 1  # once, not per event
        assert "still-works" not in twistd(box, "full") and "SECRET-content" not in twistd(box, "full")
        # What could still be written (the file's last block had room) is whole lines; nothing is half written.
        with open(log_path(box, "full"), "rb") as raw:
            text = raw.read()
        assert text.endswith(b"\n") and all(len(line.split(b"\t")) >= 5 for line in text.splitlines())
        for cast in casts(box, "full"):
            with open(cast, encoding="utf-8") as f:
                transcript.parse_lines(f)
    finally:
        os.unlink(filler)
    # Space again: the next event is written.
    assert run(box, "full", "echo after-space").returncode == 0
    assert fields([line for line in lines(log_path(box, "full")) if line[3] == "started"][-1])["command"] \
        == "echo after-space"
    assert "owner log: writing again" in twistd(box, "full")
