"""A `-T` session's pipes served by the master itself (master_side.shell_socket.passed), against the real master and
worker: `buildbot-shell -T` passes its stdin and stdout pipes with the open, the master reads and writes them (it
holds the very pipe while the session runs, and no more after it), the bytes arrive exact both ways, the exit
status is the command's, and the transcript holds every byte read and written. Then a hostile client passing what
it should not: a terminal, a regular file, a directory, 50 descriptors, descriptors on a frame that does not
announce them; and a pipe nobody reads, where memory stays bounded and a signal still ends the client."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.protocol import OpenRequest

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e


def pipes_held(pid: int) -> set[str]:
    """The pipes and sockets process `pid` holds, as /proc names them (pipe:[inode])."""
    held = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            held.add(os.readlink(fd))
        except OSError:
            pass
    return held


def pipe_name(fd: int) -> str:
    return f"pipe:[{os.fstat(fd).st_ino}]"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_T_command_reads_and_writes_pipes_the_master_holds_bytes_exact_and_recorded(sandbox: Sandbox) -> None:
    data = os.urandom(3 * 1024 * 1024 + 777)
    master = sandbox.master_pid()
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--",
                                            "cat; sleep 1.5; exit 7"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdout_pipe = pipe_name(proc.stdout.fileno())
    # The master holds the client's stdout pipe itself while the session runs.
    wait_until(lambda: stdout_pipe in pipes_held(master), timeout=30)
    out, err = proc.communicate(data, timeout=120)
    assert proc.returncode == 7, err
    assert out == data
    assert stdout_pipe not in pipes_held(master)  # closed before the exit status was sent
    # The transcript's attachment holds every byte read from stdin and written to stdout.
    transcripts = os.path.join(sandbox.master_dir, "transcripts")
    newest = max(glob.glob(os.path.join(transcripts, "*.bin")), key=os.path.getmtime)
    recorded = open(newest, "rb").read()
    assert len(recorded) == 2 * len(data)
    # Input and output chunks interleave there: each byte value as often as in the data, twice.
    assert all(recorded.count(bytes([v])) == 2 * data.count(bytes([v])) for v in range(256))


def test_only_stdout_a_pipe_and_stdin_from_dev_null(sandbox: Sandbox) -> None:
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--",
                                          "head -c 2000000 /dev/zero; echo to-stderr >&2; exit 3"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert done.returncode == 3 and done.stdout == b"\0" * 2000000 and b"to-stderr" in done.stderr


def test_a_fifo_opened_by_name_stays_with_the_client(sandbox: Sandbox, tmp_path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"head -c 100000 /dev/urandom | tee {tmp_path}/sent > {fifo}"])
    with open(fifo, "rb") as stdin:
        done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "cat"],
                              stdin=stdin, capture_output=True, timeout=120)
    writer.wait(timeout=30)
    assert done.returncode == 0 and done.stdout == (tmp_path / "sent").read_bytes()


# -- a hostile client -------------------------------------------------------------------------------------------


def raw_client(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(path)
    sock.sendall(framing.MAGIC)
    return sock


def open_frame(stdio: list[str] | None, command: str = "cat", pty: bool = False) -> bytes:
    fields: dict[str, object] = {"request": OpenRequest(worker="w1", command=command, pty=pty).to_wire()}
    if stdio is not None:
        fields["stdio"] = stdio
    return framing.control(framing.Op.OPEN, id=1, **fields)


def replies(sock: socket.socket, until: float = 20) -> list[framing.Control]:
    """The master's control frames until it closes or answers the open."""
    decoder = framing.Decoder(refused=frozenset({framing.FrameType.INPUT}), max_control=framing.MAX_ANSWER)
    head, got = b"", []
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        if len(head) < len(framing.MAGIC):
            head += data
            data, head = head[len(framing.MAGIC):], head[:len(framing.MAGIC)]
        for frame in decoder.feed(data):
            if frame.type is framing.FrameType.CONTROL:
                got.append(framing.parse_control(frame.payload))
        if any(m.op in (framing.Op.ANSWER, framing.Op.ERROR) for m in got):
            break
    return got


@pytest.mark.parametrize("what", ["tty", "file", "directory"])
def test_a_descriptor_that_is_not_a_pipe_or_socket_is_refused_and_not_kept(sandbox: Sandbox, what: str) -> None:
    master = sandbox.master_pid()
    keep: list[int] = []
    if what == "tty":
        pty_master, fd = os.openpty()
        keep.append(pty_master)
        expected = "a terminal or device"
    elif what == "file":
        fd, path = tempfile.mkstemp()
        os.unlink(path)
        expected = "a regular file"
    else:
        fd = os.open("/", os.O_RDONLY)
        expected = "a directory"
    target = os.readlink(f"/proc/self/fd/{fd}")
    before = sum(1 for name in pipes_held(master) if name == target)
    sock = raw_client(sandbox.socket)
    socket.send_fds(sock, [open_frame(["in"])], [fd])
    [answer] = [m for m in replies(sock) if m.op is framing.Op.ANSWER]
    assert answer.get("ok") is False and expected in str(answer.get("error"))
    assert sum(1 for name in pipes_held(master) if name == target) == before  # closed at once
    sock.close()
    for f in [fd, *keep]:
        os.close(f)


def test_fifty_descriptors_or_descriptors_on_an_unannounced_frame_cost_the_connection(sandbox: Sandbox) -> None:
    master = sandbox.master_pid()
    pipes = [os.pipe() for _ in range(25)]
    fds = [fd for pair in pipes for fd in pair]
    names = {pipe_name(fd) for fd in fds}
    sock = raw_client(sandbox.socket)
    socket.send_fds(sock, [open_frame(["in", "out"])], fds)
    got = replies(sock)
    assert got and got[-1].op is framing.Op.ERROR and "did not announce" in str(got[-1].get("text"))
    assert not names & pipes_held(master)
    sock.close()
    # One pipe with a call that is not an open.
    r, w = os.pipe()
    sock = raw_client(sandbox.socket)
    socket.send_fds(sock, [framing.control(framing.Op.WORKERS, id=1)], [r])
    got = replies(sock)
    assert got and got[-1].op is framing.Op.ERROR and "did not announce" in str(got[-1].get("text"))
    assert pipe_name(r) not in pipes_held(master)
    sock.close()
    for fd in fds + [r, w]:
        os.close(fd)


def test_a_pipe_nobody_reads_keeps_memory_bounded_and_a_signal_still_ends_it(sandbox: Sandbox) -> None:
    master = sandbox.master_pid()
    r, w = os.pipe()  # its reader (this test) never reads
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "cat /dev/zero"],
                            stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.PIPE)
    name = pipe_name(w)
    os.close(w)
    try:
        wait_until(lambda: name in pipes_held(master), timeout=30)
        time.sleep(1)
        before = rss_kib(master)
        time.sleep(3)
        assert rss_kib(master) - before < 32 * 1024  # at most the session's output window waits, not a flood
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # the second within a second gives up on the output nobody reads
        proc.wait(timeout=30)
        wait_until(lambda: name not in pipes_held(master), timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(r)


def test_a_client_killed_mid_session_leaves_the_master_holding_nothing(sandbox: Sandbox) -> None:
    master = sandbox.master_pid()
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "cat"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    names = {pipe_name(proc.stdin.fileno()), pipe_name(proc.stdout.fileno())}
    try:
        wait_until(lambda: names <= pipes_held(master), timeout=30)
        proc.kill()
        proc.wait(timeout=10)
        wait_until(lambda: not names & pipes_held(master), timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- sockets as stdin and stdout ---------------------------------------------------------------------------------


def socket_name(sock: socket.socket) -> str:
    return f"socket:[{os.fstat(sock.fileno()).st_ino}]"


def read_all(sock: socket.socket, into: bytearray) -> None:
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return
        into.extend(data)


def test_a_T_command_on_a_socket_as_stdin_and_stdout_gets_its_bytes_its_eof_and_its_exit_status(
        sandbox: Sandbox) -> None:
    """One end of a socketpair as both stdin and stdout (as inetd or a supervisor gives a command): the master
    holds the socket while the session runs; what is sent arrives, the end of the sending (shutdown) is the
    command's EOF, its output comes back on the same socket, its stderr apart, and its exit status is the
    client's; the socket reads as ended once the session is over (the master holds it no more)."""
    master = sandbox.master_pid()
    ours, theirs = socket.socketpair()
    ours.settimeout(60)
    data = os.urandom(2 * 1024 * 1024 + 321)
    got = bytearray()
    reader = threading.Thread(target=read_all, args=(ours, got))
    reader.start()
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--",
                                            "cat; echo to-stderr >&2; exit 5"],
                            stdin=theirs, stdout=theirs, stderr=subprocess.PIPE)
    name = socket_name(theirs)
    theirs.close()
    try:
        wait_until(lambda: name in pipes_held(master), timeout=30)
        ours.sendall(data)
        ours.shutdown(socket.SHUT_WR)  # the command's EOF; its output still comes back
        _, err = proc.communicate(timeout=120)
        reader.join(60)
        assert proc.returncode == 5 and err == b"to-stderr\n", err
        assert bytes(got) == data  # and the socket read as ended: nobody holds it any more
        assert name not in pipes_held(master)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()


def test_a_socket_half_closed_either_way_ends_or_goes_on_as_a_pipe_would(sandbox: Sandbox) -> None:
    """Its sender shut before the session opened: the command reads EOF at once and its output still comes back.
    Its reader shut (SHUT_RD): the session's output has nowhere to go, the command's stdout is closed as for a pipe
    whose reader went away (it meets SIGPIPE), the client ends with its status, without a traceback."""
    ours, theirs = socket.socketpair()
    ours.settimeout(60)
    ours.shutdown(socket.SHUT_WR)
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "cat; echo after-eof"],
                          stdin=theirs, stdout=theirs, stderr=subprocess.PIPE, timeout=120)
    theirs.close()
    got = bytearray()
    read_all(ours, got)
    ours.close()
    assert done.returncode == 0 and bytes(got) == b"after-eof\n", done.stderr
    ours, theirs = socket.socketpair()
    ours.shutdown(socket.SHUT_RD)
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "cat /dev/zero"],
                          stdin=subprocess.DEVNULL, stdout=theirs, stderr=subprocess.PIPE, timeout=120)
    theirs.close()
    ours.close()
    assert done.returncode == 141 and b"Traceback" not in done.stderr, done.stderr


def test_a_listening_or_datagram_socket_is_refused_by_the_client_and_by_the_master(sandbox: Sandbox,
                                                                                   tmp_path) -> None:
    """A listening socket never gives a byte nor an end (a session on it would wait forever); a datagram socket
    drops what a read does not take. The client refuses either as stdin or stdout before it asks anything, with a
    line; a client that passes one anyway is refused by the master, the descriptor not kept, audited."""
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "listening"))
    listening.listen()
    dgram, dgram_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    cases = [(listening, "in", "a listening socket"), (listening, "out", "a listening socket"),
             (dgram, "in", "a datagram socket"), (dgram, "out", "a datagram socket")]
    try:
        for sock, stream, kind in cases:
            stdio = {"stdin": sock if stream == "in" else subprocess.DEVNULL,
                     "stdout": sock if stream == "out" else subprocess.PIPE}
            done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "cat; echo ran"],
                                  stderr=subprocess.PIPE, timeout=60, **stdio)  # type: ignore[call-overload]
            name = "standard input" if stream == "in" else "standard output"
            assert done.returncode == 255 and done.stderr == (
                f"buildbot-shell: its {name} is {kind}, not a stream of bytes: give it a pipe, a file, a terminal "
                "or a connected stream socket\n").encode(), done.stderr
            # A client that passes it all the same.
            master = sandbox.master_pid()
            raw = raw_client(sandbox.socket)
            socket.send_fds(raw, [open_frame([stream])], [sock.fileno()])
            [answer] = [m for m in replies(raw) if m.op is framing.Op.ANSWER]
            assert answer.get("ok") is False and str(answer.get("error")) == (
                f"bad request: its {stream} descriptor is {kind}: only pipes and stream sockets are taken")
            assert socket_name(sock) not in pipes_held(master)
            raw.close()
    finally:
        listening.close()
        dgram.close()
        dgram_peer.close()


def test_stdout_and_stderr_to_one_pipe_keep_the_order_they_were_written_in(sandbox: Sandbox) -> None:
    """`2>&1 | ...`: the client keeps stdout (the master does not hold the pipe) and writes both streams in the
    order they came, so stderr written before stdout is read before it (passed, stdout went a hop ahead: `a c b`
    in half the runs with a few milliseconds between the writes). Stdin is still passed."""
    master = sandbox.master_pid()
    r, w = os.pipe()
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--",
                                            "cat; echo a; echo b >&2; sleep 0.05; echo c"],
                            stdin=subprocess.PIPE, stdout=w, stderr=w)
    name = pipe_name(w)
    os.close(w)
    assert proc.stdin is not None
    try:
        stdin_name = pipe_name(proc.stdin.fileno())
        wait_until(lambda: stdin_name in pipes_held(master), timeout=30)
        assert name not in pipes_held(master)
        proc.stdin.write(b"in\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        with os.fdopen(r, "rb") as merged:
            assert merged.read() == b"in\na\nb\nc\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
