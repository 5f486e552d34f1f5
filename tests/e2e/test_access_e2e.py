"""Who may connect, and memory under a flood, against the real master and worker."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import threading
import time

import pytest

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e

OTHER = "slaveshell-other"


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(os.getuid() != 0, reason="creating a second local user needs root")
def test_another_local_user_can_neither_connect_nor_read_transcripts(sandbox):
    try:
        pwd.getpwnam(OTHER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER], check=True)
    other = pwd.getpwnam(OTHER)
    subprocess.run(shell_argv() + ["--socket", sandbox.socket, "w1", "echo for-the-record"], check=True,
                   capture_output=True, timeout=60)
    transcripts = os.path.join(sandbox.master_dir, "transcripts")
    some_transcript = os.path.join(transcripts, sorted(os.listdir(transcripts))[-1])
    pid = os.fork()
    if pid == 0:  # the other user: only system calls here, then _exit
        code = 0
        try:
            os.setgroups([])
            os.setgid(other.pw_gid)
            os.setuid(other.pw_uid)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(sandbox.socket)
                code |= 1
            except PermissionError:
                pass
            for attempt, bit in ((lambda: open(some_transcript).read(), 2), (lambda: os.listdir(transcripts), 4),
                                 (lambda: open(os.path.join(sandbox.master_dir, "slaveshell.sqlite")).read(), 8)):
                try:
                    attempt()
                    code |= bit
                except PermissionError:
                    pass
        except BaseException:
            code |= 64
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, f"the other user got in: bits {os.WEXITSTATUS(status):b}"


def test_a_flood_to_a_slow_reader_keeps_master_and_worker_memory_bounded(sandbox):
    """The bound: 32 MB of growth for each process while 64 MB go to a reader at a fraction of the speed."""
    pids = {name: int(open(os.path.join(d, "twistd.pid")).read()) for name, d in
            (("master", sandbox.master_dir), ("worker", sandbox.worker_dir("w1")))}
    base = {name: rss_kb(pid) for name, pid in pids.items()}
    peak = dict(base)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_kb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    total = 64 * 1024 * 1024
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "head", "-c",
                                            str(total), "/dev/zero"], stdout=subprocess.PIPE)
    got = 0
    try:
        while chunk := proc.stdout.read(128 * 1024):
            got += len(chunk)
            time.sleep(0.005)
    finally:
        proc.wait()
        done.set()
        sampler.join()
    assert got == total
    growth = {name: (peak[name] - base[name]) / 1024 for name in pids}
    assert growth["master"] < 32 and growth["worker"] < 32, growth


def test_ctrl_c_stops_a_flood_and_the_shell_answers_again(terminal):
    from .conftest import PROMPT

    t = terminal("w1").ready()
    t.child.sendline("yes")
    t.expect("y\r\ny\r\n")
    time.sleep(1)
    t.child.sendcontrol("c")
    t.expect(PROMPT, timeout=15)  # not a timing assertion: bench/ measures how fast (~45 ms)
    assert t.run("echo after-the-flood").strip() == "after-the-flood"


def test_a_burst_of_opens_gets_sessions_or_clear_refusals_and_the_master_carries_on(sandbox):
    # 30 at once against a worker that allows 8 (the default): each either runs or is told why, plainly. Their
    # stdin and stdout are pipes, which each passes to the master: 60 against the master's 16 per user, so most
    # are declined and those clients serve their own pipes.
    procs = [subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "sleep 2; echo ran"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(30)]
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        outcomes.append((p.returncode, out, err))
    ran = [o for o in outcomes if o[0] == 0 and o[1] == b"ran\n"]
    refused = [o for o in outcomes if o[0] == 255]
    assert len(ran) + len(refused) == 30, outcomes
    assert ran, "none of the sessions ran"
    for _, _, err in refused:
        assert err.startswith(b"buildbot-shell: worker w1: the worker allows at most 8 shell sessions at once"), err
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "echo fine"],
                          capture_output=True, timeout=60)
    assert done.stdout == b"fine\n"


def _as_user(uid: int, gid: int, groups: list[int], socket_path: str, worker: str) -> str:
    """In a forked child running as another user: connect to the master's socket and ask for a shell, driving
    the framed hop by hand over a blocking socket (that user cannot read this interpreter's files to start a
    client, so everything is imported before the fork)."""
    from slaveshell.vocabulary import framing
    from slaveshell.vocabulary.protocol import OpenRequest

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        answer = "?"
        try:
            os.close(read_fd)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(socket_path)
            except PermissionError:
                answer = "EACCES"
                raise SystemExit from None
            sock.settimeout(10)
            sock.sendall(framing.MAGIC + framing.control(framing.Op.OPEN, id=1,
                                                         request=OpenRequest(worker=worker).to_wire()))
            data, decoder = b"", framing.Decoder(max_control=framing.MAX_ANSWER)
            while framing.MAGIC not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise SystemExit
                data += chunk
            pending = data[data.index(framing.MAGIC) + len(framing.MAGIC):]
            while answer == "?":
                for frame in decoder.feed(pending):
                    message = framing.parse_control(frame.payload) if frame.type is framing.FrameType.CONTROL \
                        else None
                    if message is not None and message.op is framing.Op.ANSWER:
                        answer = str(message.get("error") or "opened")
                if answer == "?":
                    pending = sock.recv(65536)
                    if not pending:
                        break
        except SystemExit:
            pass
        except BaseException as e:
            answer = f"error: {e!r}"
        finally:
            os.write(write_fd, answer.encode()[:4000])
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as f:
        return f.read().decode()


@pytest.mark.skipif(os.getuid() != 0, reason="creating a second local user needs root")
def test_a_group_lets_another_user_reach_the_socket_and_the_policy_still_decides():
    import grp
    import shutil
    import tempfile

    from slaveshell.client.sandbox import Sandbox

    group = "slaveshell-ops"
    if subprocess.run(["getent", "group", group], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", group], check=True)
    try:
        pwd.getpwnam(OTHER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER], check=True)
    other = pwd.getpwnam(OTHER)
    gid = grp.getgrnam(group).gr_gid
    # The socket is open to the group; the policy lets the group watch only, and shell on no worker.
    # The other user must be able to reach the socket's directory: not under pytest's 0700 temporary tree.
    root = tempfile.mkdtemp(prefix="slaveshell-group-")
    os.chmod(root, 0o755)
    sb = Sandbox(root, workers=["g1"], service_kwargs=(
        f"group={group!r}, policy=[dict(users=[0]), dict(groups=[{group!r}], rights=['watch'])]"))
    sb.create()
    os.chmod(sb.master_dir, 0o755)
    try:
        sb.start()
        outsider = _as_user(other.pw_uid, other.pw_gid, [], sb.socket, "g1")
        assert outsider == "EACCES"
        member = _as_user(other.pw_uid, other.pw_gid, [gid], sb.socket, "g1")
        assert member.startswith(f"permission denied: {OTHER} (uid {other.pw_uid}) may not shell on worker g1"), \
            member
        index = os.path.join(sb.master_dir, "slaveshell.sqlite")
        for path in [index] + [index + suffix for suffix in ("-wal", "-shm") if os.path.exists(index + suffix)]:
            assert os.stat(path).st_mode & 0o777 == 0o600, path
        assert os.stat(os.path.join(sb.master_dir, "transcripts")).st_mode & 0o777 == 0o700
        def events():
            return subprocess.run(["sqlite3", os.path.join(sb.master_dir, "slaveshell.sqlite"),
                                   "SELECT kind, operator FROM slaveshell_events"], capture_output=True, text=True)

        if events().returncode == 0:  # the sqlite3 tool is optional here
            # Written by the database's thread: it may land just after the refusal was answered.
            assert wait_until(lambda: f"refused|{OTHER}" in events().stdout, timeout=30), events().stdout
    finally:
        sb.stop()
        shutil.rmtree(root, ignore_errors=True)
