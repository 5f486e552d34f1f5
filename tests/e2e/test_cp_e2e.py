"""`slaveshell cp` against a real master and real workers: byte-exact round trips both ways,
-p, the worker owner's allowed_dirs (symlinks included), the 'copy' right, a full disk, Ctrl-C and a lost worker
mid-transfer (nothing partial, a closed audit row), and the kept copy of the bytes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.transcript import exact_output, parse_lines

from .conftest import assert_no_traceback, wait_until

pytestmark = pytest.mark.e2e

NO_COPY = "['shell', 'watch', 'join', 'kill', 'replay']"


@pytest.fixture(scope="module")
def cpbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """cw1 may be copied to and from by root; on nocopy root has every right but 'copy'; lost is killed
    by a test. Every worker allows only <root>/allowed (and cw1 its own directory, for its builds). Transfers
    keep a copy of their bytes."""
    root = str(tmp_path_factory.mktemp("cp"))
    allowed = os.path.join(root, "allowed")
    os.makedirs(allowed)
    # cw1 runs the builds: its build directories are allowed too (cp --build).
    sb = Sandbox(root, workers=["cw1", "nocopy", "lost"],
                 opt_in_args=f"allowed_dirs=[{allowed!r}, {os.path.join(root, 'worker-cw1')!r}]",
                 service_kwargs=f"policy=[{{'users': [0, {os.getuid()}], 'workers': ['nocopy'], 'rights': {NO_COPY}}},"
                                f" {{'users': [0, {os.getuid()}]}}], keep_transfer_bytes=True")
    sb.create()
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()


def allowed(sb: Sandbox, *parts: str) -> str:
    return os.path.join(sb.root, "allowed", *parts)


def cp_argv(sb: Sandbox, *args: str) -> list[str]:
    return [sys.executable, "-m", "slaveshell.cli", "cp", "--socket", sb.socket, *args]


def cp(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cp_argv(sb, *args), capture_output=True, text=True, timeout=60)


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_digest(top: str) -> dict[str, str]:
    """Every directory ('dir') and file (its sha256) under `top`, by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), top)] = "dir"
        for f in filenames:
            out[os.path.relpath(os.path.join(dirpath, f), top)] = sha(os.path.join(dirpath, f))
    return out


def staged(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".slaveshell-cp-")]


def staged_bytes(directory: str) -> int:
    """Bytes already written into the files staged in `directory` (inside its .slaveshell-cp-* directory)."""
    total = 0
    for name in staged(directory):
        for dirpath, _dirs, files in os.walk(os.path.join(directory, name)):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def history(sb: Sandbox) -> list[dict[str, object]]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", sb.socket, "--json"],
                          capture_output=True, text=True, timeout=30, check=True)
    return list(json.loads(done.stdout))


def transfer_row(sb: Sandbox, needle: str) -> dict[str, object]:
    """The newest transfer row whose command mentions `needle`, once it is closed (state not 'running')."""

    def closed() -> dict[str, object] | None:
        rows = [r for r in history(sb) if r["term"] == "transfer" and needle in str(r["command"])]
        return rows[0] if rows and rows[0]["state"] != "running" else None

    row = wait_until(closed, 15)
    assert row, f"no closed transfer row for {needle}"
    return row


def test_binary_file_and_tree_round_trips_are_byte_exact_and_audited(cpbox, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 12345)  # several chunks and a partial one
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    up = cp(cpbox, str(local), f"cw1:{allowed(cpbox, 'blob.bin')}")
    assert up.returncode == 0, up.stderr
    assert up.stdout == "" and up.stderr == ""  # quiet in a pipe, as scp
    assert sha(allowed(cpbox, "blob.bin")) == hashlib.sha256(data).hexdigest()
    down = cp(cpbox, f"cw1:{allowed(cpbox, 'blob.bin')}", str(tmp_path / "back.bin"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back.bin").read_bytes() == data

    row = transfer_row(cpbox, "blob.bin -> ")
    assert row["state"] == "ended" and row["bytes_out"] == len(data) and row["operator"]
    assert row["end_reason"] == f"ok: 1 file, {len(data)} bytes"  # not "1 files"
    cast = open(str(row["transcript"]), encoding="utf-8").read()
    assert hashlib.sha256(data).hexdigest() in cast and '"kind": "transfer"' in cast
    # keep_transfer_bytes: the bytes next to the transcript, in its attachment.
    kept = str(row["transcript"])[: -len(".cast")] + ".bin"
    assert open(kept, "rb").read() == data

    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "sub" / "a.bin").write_bytes(os.urandom(700_000))
    (tree / "b.txt").write_text("hello\n")
    (tree / "sub" / "deeper" / "zero").write_bytes(b"")
    up = cp(cpbox, "-r", str(tree), f"cw1:{allowed(cpbox)}")
    assert up.returncode == 0, up.stderr
    assert tree_digest(allowed(cpbox, "tree")) == tree_digest(str(tree))
    down = cp(cpbox, "-r", f"cw1:{allowed(cpbox, 'tree')}", str(tmp_path / "tree2"))
    assert down.returncode == 0, down.stderr
    assert tree_digest(str(tmp_path / "tree2")) == tree_digest(str(tree))
    assert transfer_row(cpbox, "tree -> ")["state"] == "ended"


def test_kept_bytes_are_reached_by_search_and_export(cpbox, tmp_path):
    # keep_transfer_bytes: any size, binary too, in the attachment; search and export read it as the transcript's.
    data = os.urandom(300_000) + b"\nzq-kept-needle\n" + os.urandom(300_000)
    local = tmp_path / "big.dat"
    local.write_bytes(data)
    assert cp(cpbox, str(local), f"cw1:{allowed(cpbox, 'big.dat')}").returncode == 0
    row = transfer_row(cpbox, "big.dat -> ")
    found = subprocess.run([sys.executable, "-m", "slaveshell.cli", "search", "--socket", cpbox.socket, "--json",
                            "zq-kept-needle"], capture_output=True, text=True, timeout=60)
    assert [(h["session"], h["stream"]) for h in json.loads(found.stdout)] == [(row["id"], "file")]
    exported = subprocess.run([sys.executable, "-m", "slaveshell.cli", "export", "--socket", cpbox.socket,
                               str(row["id"])], capture_output=True, timeout=60)
    cast = parse_lines(exported.stdout.decode("utf-8", "surrogateescape").splitlines())
    assert b"".join(exact_output(cast.events)) == data
    assert row["attachment_sha256"] == hashlib.sha256(data).hexdigest()


def test_p_preserves_modes_and_times_both_ways(cpbox, tmp_path):
    src = tmp_path / "tool.sh"
    src.write_text("#!/bin/sh\necho hi\n")
    os.chmod(src, 0o751)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    assert cp(cpbox, "-p", str(src), f"cw1:{allowed(cpbox, 'tool.sh')}").returncode == 0
    st = os.stat(allowed(cpbox, "tool.sh"))
    assert (st.st_mode & 0o7777, int(st.st_mtime)) == (0o751, 1_600_000_000)
    assert cp(cpbox, "-p", f"cw1:{allowed(cpbox, 'tool.sh')}", str(tmp_path / "again.sh")).returncode == 0
    st = os.stat(tmp_path / "again.sh")
    assert (st.st_mode & 0o7777, int(st.st_mtime)) == (0o751, 1_600_000_000)


def test_allowed_dirs_refuse_paths_outside_and_symlinks_escaping(cpbox, tmp_path):
    outside = os.path.join(cpbox.root, "outside")
    os.makedirs(outside, exist_ok=True)
    with open(os.path.join(outside, "secret"), "w") as f:
        f.write("not yours\n")
    if not os.path.lexists(allowed(cpbox, "escape")):
        os.symlink(outside, allowed(cpbox, "escape"))
    local = tmp_path / "x"
    local.write_text("x\n")
    cases = [
        (str(local), f"cw1:{outside}/x"),  # an upload outside
        (f"cw1:{outside}/secret", str(tmp_path / "s1")),  # a download from outside
        (f"cw1:{allowed(cpbox, 'escape', 'secret')}", str(tmp_path / "s2")),  # through a symlink
        (str(local), f"cw1:{allowed(cpbox, 'escape')}/"),  # an upload through a symlink
        (f"cw1:{allowed(cpbox, '..', 'outside', 'secret')}", str(tmp_path / "s3")),  # through ..
    ]
    for src, dst in cases:
        done = cp(cpbox, src, dst)
        assert done.returncode == 1, (src, dst, done.stderr)
        assert "outside the directories this worker allows" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    os.makedirs(allowed(cpbox, "withlink"), exist_ok=True)
    if not os.path.lexists(allowed(cpbox, "withlink", "link")):
        os.symlink(os.path.join(outside, "secret"), allowed(cpbox, "withlink", "link"))
    done = cp(cpbox, "-r", f"cw1:{allowed(cpbox, 'withlink')}", str(tmp_path / "wl"))
    assert done.returncode == 1 and "outside the directories this worker allows" in done.stderr
    assert not os.path.exists(outside + "/x") and not (tmp_path / "s2").exists() and not (tmp_path / "wl").exists()


def test_every_error_line_of_cp_starts_with_one_prefix_as_scps_do(cpbox, tmp_path):
    """Whatever fails (the arguments, a local file, the master's socket, the worker, the policy), the one line
    `slaveshell cp` prints starts with `slaveshell cp: `, as scp's all start with `scp: `; the exit codes stay."""
    local = tmp_path / "f"
    local.write_text("f\n")
    missing = str(tmp_path / "missing")
    cases = [
        ((str(local), str(tmp_path / "g")), 2, "slaveshell cp: exactly one side must be remote (WORKER:PATH): copies "
                                               "between workers, or local ones, are not done by slaveshell cp"),
        (("--bogus", str(local), "cw1:x"), 2, "slaveshell cp: error: unrecognized arguments: --bogus"),
        (("--build", "x", str(local), "cw1:x"), 2, "slaveshell cp: error: argument --build: invalid int value: 'x'"),
        ((missing, "cw1:x"), 1, f"slaveshell cp: {missing}: No such file or directory"),
        (("cw1:a", "cw1:b", str(local)), 1, f"slaveshell cp: {local}: target is not a directory"),
        ((str(local), f"cw1:{cpbox.root}/outside/f"), 1,
         f"slaveshell cp: worker cw1: {cpbox.root}/outside/f: outside the directories this worker allows"),
        ((str(local), f"nocopy:{allowed(cpbox, 'nope')}"), 1, None),
    ]
    for args, status, line in cases:
        done = cp(cpbox, *args)
        assert done.returncode == status, (args, done.stderr)
        assert_no_traceback(done.stderr)
        shown = [x for x in done.stderr.splitlines() if not x.startswith(("usage:", " "))]
        assert len(shown) == 1 and shown[0].startswith("slaveshell cp: "), (args, done.stderr)
        assert line is None or shown[0] == line, (args, done.stderr)
    unreachable = subprocess.run([sys.executable, "-m", "slaveshell.cli", "cp", "--socket", missing, str(local),
                                  "cw1:x"], capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(f"slaveshell cp: no master socket at {missing}"), unreachable.stderr


def test_a_missing_remote_path_is_named_as_typed_never_where_it_resolves_on_the_worker(cpbox, tmp_path):
    """A relative worker path is under the worker's basedir; what fails names it as the operator typed it (as scp
    and GNU cp do), escaped, never the basedir or a symlink's target; an absolute one stays as typed."""
    local = tmp_path / "f"
    local.write_text("f\n")
    basedir = cpbox.worker_dir("cw1")
    os.makedirs(allowed(cpbox, "linked"), exist_ok=True)
    if not os.path.lexists(os.path.join(basedir, "tolink")):
        os.symlink(allowed(cpbox, "linked"), os.path.join(basedir, "tolink"))
    if not os.path.exists(allowed(cpbox, "linked", "fifo")):
        os.mkfifo(allowed(cpbox, "linked", "fifo"))
    cases = [
        ((str(local), "cw1:nodir/f"), "worker cw1: nodir/f: No such file or directory"),
        ((str(local), "cw1:nodir/"), "worker cw1: nodir/: No such file or directory"),
        ((str(local), "cw1:no\x1b[2Jdir/f"), "worker cw1: no\\x1b[2Jdir/f: No such file or directory"),
        (("cw1:nodir/f", str(tmp_path / "g")), "worker cw1: nodir/f: No such file or directory"),
        (("cw1:tolink/missing", str(tmp_path / "g")), "worker cw1: tolink/missing: No such file or directory"),
        (("-r", "cw1:tolink", str(tmp_path)), "worker cw1: tolink/fifo: not a regular file"),
        ((str(local), f"cw1:{allowed(cpbox, 'nodir', 'f')}"),
         f"worker cw1: {allowed(cpbox, 'nodir', 'f')}: No such file or directory"),
    ]
    for args, line in cases:
        done = cp(cpbox, *args)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr == f"slaveshell cp: {line}\n", (args, done.stderr)
        if not args[-1].startswith(f"cw1:{cpbox.root}"):
            assert basedir not in done.stderr and allowed(cpbox) not in done.stderr, done.stderr
    assert not os.path.exists(os.path.join(basedir, "nodir")) and not (tmp_path / "g").exists()


def test_a_copy_without_the_copy_right_is_refused_and_audited(cpbox, tmp_path):
    local = tmp_path / "f"
    local.write_text("f\n")
    done = cp(cpbox, str(local), f"nocopy:{allowed(cpbox, 'nope')}")
    assert done.returncode == 1
    assert "permission denied" in done.stderr and "copy" in done.stderr
    assert not os.path.exists(allowed(cpbox, "nope"))

    def refusal() -> list[tuple[str, str]]:
        db = sqlite3.connect(os.path.join(cpbox.master_dir, "slaveshell.sqlite"), timeout=10)
        try:
            return list(db.execute("SELECT kind, detail FROM slaveshell_events WHERE worker = 'nocopy'"))
        finally:
            db.close()

    events = wait_until(refusal, 10)
    assert any(kind == "refused" and "may not copy" in detail for kind, detail in events), events


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_a_full_disk_on_either_side_leaves_nothing_and_says_so(cpbox, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    big = tmp_path / "big"
    big.write_bytes(data)
    for where in (allowed(cpbox, "tiny"), str(tmp_path / "tiny")):
        os.makedirs(where, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", where], check=True)
    try:
        up = cp(cpbox, str(big), f"cw1:{allowed(cpbox, 'tiny', 'big')}")
        assert up.returncode == 1 and "No space left on device" in up.stderr, up.stderr
        assert wait_until(lambda: os.listdir(allowed(cpbox, "tiny")) == [], 10)
        assert cp(cpbox, str(big), f"cw1:{allowed(cpbox, 'big')}").returncode == 0
        down = cp(cpbox, f"cw1:{allowed(cpbox, 'big')}", str(tmp_path / "tiny" / "big"))
        assert down.returncode == 1 and "No space left on device" in down.stderr, down.stderr
        assert os.listdir(tmp_path / "tiny") == []
        assert transfer_row(cpbox, "tiny/big")["state"] == "failed"
    finally:
        for where in (allowed(cpbox, "tiny"), str(tmp_path / "tiny")):
            subprocess.run(["umount", where], check=False)


def _sparse(path: str, size: int = 4 * 1024**3) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def test_ctrl_c_mid_upload_leaves_nothing_partial_and_closes_the_row(cpbox, tmp_path):
    src = str(tmp_path / "huge")
    _sparse(src)
    dest_dir = allowed(cpbox, "ctrlc")
    os.makedirs(dest_dir, exist_ok=True)
    proc = subprocess.Popen(cp_argv(cpbox, src, f"cw1:{dest_dir}/huge"), stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: staged_bytes(dest_dir) > 0,
                          20, 0.02), "the transfer never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip() == "slaveshell cp: interrupted", err
    assert_no_traceback(err)
    assert wait_until(lambda: os.listdir(dest_dir) == [], 10), os.listdir(dest_dir)
    assert transfer_row(cpbox, "ctrlc/huge")["state"] == "failed"


def test_a_worker_lost_mid_download_leaves_nothing_partial_and_closes_the_row(cpbox, tmp_path):
    _sparse(allowed(cpbox, "huge-down"))
    proc = subprocess.Popen(cp_argv(cpbox, f"lost:{allowed(cpbox, 'huge-down')}", str(tmp_path / "got")),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: staged_bytes(str(tmp_path)) > 0, 20, 0.02)
        with open(os.path.join(cpbox.worker_dir("lost"), "twistd.pid")) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        cpbox.started.remove(cpbox.worker_dir("lost"))
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        os.unlink(allowed(cpbox, "huge-down"))
    assert proc.returncode == 1 and "lost" in err and len(err.strip().splitlines()) == 1, err
    assert_no_traceback(err)
    assert staged(str(tmp_path)) == [] and not (tmp_path / "got").exists()
    row = transfer_row(cpbox, "huge-down")
    assert row["state"] == "failed" and "lost" in str(row["end_reason"])


def test_build_copies_from_and_to_a_held_builds_directory(cpbox, tmp_path):
    cpbox.send_change("hold")

    def held() -> int | None:
        rows = [r for r in cpbox.build_rows("holder") if r[2] is None]
        if not rows:
            return None
        got = cp(cpbox, "--build", str(rows[-1][0]), "cw1:failed.txt", str(tmp_path / "evidence"))
        return rows[-1][0] if got.returncode == 0 else None

    build_id = wait_until(held, 60, 0.5)
    assert build_id, "the build was never held"
    assert (tmp_path / "evidence").read_text() == "evidence\n"
    (tmp_path / "fix").write_text("patched\n")
    assert cp(cpbox, "--build", str(build_id), str(tmp_path / "fix"), "cw1:fix").returncode == 0
    builddir = os.path.join(cpbox.worker_dir("cw1"), "holder", "build")
    assert open(os.path.join(builddir, "fix")).read() == "patched\n"
    rows = [r for r in history(cpbox) if r["term"] == "transfer" and r.get("build_id") == build_id]
    assert len(rows) == 2
    subprocess.run([sys.executable, "-m", "slaveshell.cli", "release", "--socket", cpbox.socket, str(build_id)],
                   capture_output=True, text=True, timeout=30)


def test_on_a_terminal_a_progress_bar_runs_and_ctrl_c_still_stops_the_copy(cpbox, tmp_path):
    """prompt_toolkit's bar on the terminal's stderr: drawn during a copy that then ends with 0, and a Ctrl-C
    typed on the terminal (SIGINT from its line discipline) still stops a copy with 130, nothing partial."""
    import pexpect

    src = str(tmp_path / "five")
    with open(src, "wb") as f:
        f.write(os.urandom(5 * 1024 * 1024))
    dest_dir = allowed(cpbox, "bar")
    os.makedirs(dest_dir, exist_ok=True)
    argv = cp_argv(cpbox, src, f"cw1:{dest_dir}/five")
    child = pexpect.spawn(argv[0], argv[1:], timeout=60, dimensions=(24, 100))
    child.expect(pexpect.EOF)
    child.close()
    shown = child.before.decode(errors="replace")
    assert child.exitstatus == 0, shown
    assert "bytes" in shown and "%" in shown, shown
    assert_no_traceback(shown)
    assert sha(os.path.join(dest_dir, "five")) == sha(src)

    huge = str(tmp_path / "huge-bar")
    _sparse(huge)
    argv = cp_argv(cpbox, huge, f"cw1:{dest_dir}/huge-bar")
    child = pexpect.spawn(argv[0], argv[1:], timeout=60, dimensions=(24, 100))
    try:
        assert wait_until(lambda: staged_bytes(dest_dir) > 0,
                          20, 0.02), "the transfer never started"
        child.sendcontrol("c")
        child.expect(pexpect.EOF, timeout=20)
    finally:
        child.close(force=True)
    shown = child.before.decode(errors="replace")
    assert child.exitstatus == 130, shown
    assert "slaveshell cp: interrupted" in shown, shown
    assert_no_traceback(shown)
    assert wait_until(lambda: sorted(os.listdir(dest_dir)) == ["five"], 10), os.listdir(dest_dir)


def test_on_a_terminal_the_bar_asks_the_terminal_nothing_and_the_next_program_reads_nothing(cpbox, tmp_path):
    """The bar never sends a cursor position request (ESC[6n): a terminal's reply to one would wait in the
    terminal's input for the shell run after the copy. The test plays the terminal: it answers every request as
    xterm does, then what the next program finds in the terminal's input is shown."""
    import shlex

    import pexpect

    src = str(tmp_path / "tiny")
    with open(src, "wb") as f:
        f.write(b"tiny\n")
    dest_dir = allowed(cpbox, "cpr")
    os.makedirs(dest_dir, exist_ok=True)
    copy = shlex.join(cp_argv(cpbox, src, f"cw1:{dest_dir}/tiny"))
    # After the copy: whatever the terminal's input holds within half a second, as `od -c` spells it.
    script = (f"{copy}; echo \"CP-EXIT:$?\"; stty -icanon -echo min 0 time 5; "
              "stray=$(head -c 64 | od -An -c | tr -d ' \\n'); echo \"AFTER:[$stray]\"")
    child = pexpect.spawn("sh", ["-c", script], timeout=60, dimensions=(24, 100), env=dict(os.environ, TERM="xterm"))
    requests = 0
    try:
        while child.expect([b"\x1b\\[6n", rb"AFTER:\[([^\]]*)\]"]) == 0:
            requests += 1
            child.send(b"\x1b[24;1R")  # what xterm answers
        stray = child.match.group(1).decode()
        shown = child.before.decode(errors="replace")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "CP-EXIT:0" in shown, shown
    assert requests == 0, f"the bar asked for the cursor position {requests} time(s)"
    assert stray == "", f"the program after the copy read {stray!r} from the terminal"
    assert sha(os.path.join(dest_dir, "tiny")) == sha(src)


def _umask_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)


def test_sessions_and_copies_start_with_a_logins_umask_not_the_daemons(cpbox, tmp_path):
    """The worker daemon runs with twistd's umask 077; an upload without -p gets the modes scp gives (0755 for an
    executable, 0644, directories 0755) and a session, with or without a terminal, starts with umask 0022."""
    import pexpect

    with open(os.path.join(cpbox.worker_dir("cw1"), "twistd.pid")) as f:
        assert _umask_of(int(f.read())) == 0o077, "the worker daemon is expected to run with twistd's 077"
    tree = tmp_path / "modes"
    (tree / "sub").mkdir(parents=True)
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "sub" / "data.txt").write_text("data\n")
    os.chmod(tree / "run.sh", 0o755)
    os.chmod(tree / "sub" / "data.txt", 0o644)
    done = cp(cpbox, "-r", str(tree), f"cw1:{allowed(cpbox, 'modes')}")
    assert done.returncode == 0, done.stderr

    def mode(*parts: str) -> int:
        return os.stat(allowed(cpbox, "modes", *parts)).st_mode & 0o7777

    assert (mode(), mode("sub"), mode("run.sh"), mode("sub", "data.txt")) == (0o755, 0o755, 0o755, 0o644)

    shell = [sys.executable, "-m", "slaveshell.shell_cli", "--socket", cpbox.socket]
    done = subprocess.run([*shell, "-T", "cw1", "umask"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "0022"), done.stderr
    child = pexpect.spawn(shell[0], [*shell[1:], "cw1"], timeout=30, dimensions=(24, 80),
                          env=dict(os.environ, TERM="xterm"))
    try:
        child.expect(r"[#$] ")
        child.sendline("echo \"mask=$(umask)\"")
        child.expect(r"mask=(\d+)\r\n")
        interactive = child.match.group(1).decode()
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert interactive == "0022"
