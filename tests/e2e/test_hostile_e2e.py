"""A rogue operator client against the real master: PB spoken to the socket is refused with a line, and a frame
over the framing's limit costs that client its own connection, and nothing else (not the worker's connection,
not other sessions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import Terminal, shell_argv

pytestmark = pytest.mark.e2e

ROGUE = textwrap.dedent("""
    import socket, sys
    from slaveshell.vocabulary import framing
    from slaveshell.client import connection as hop
    from slaveshell.vocabulary.protocol import OpenRequest

    def refusal(first):
        # A client that is not the framed one: PB (its client waits for the server to speak), or Banana first.
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        s.settimeout(20)
        if first:
            s.sendall(first)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
        print(got.decode("ascii", "replace").strip(), flush=True)

    refusal(b"")
    refusal(b"\\x02\\x80\\x02\\x82pb\\x04\\x82none")
    # A framed client that opens a session, then sends a frame over the framing's limit.
    sock = hop.connect(sys.argv[1])
    sock.setblocking(True)
    connection = hop.Connection(sock)
    request = OpenRequest(worker="w1", command="sleep 303", pty=False)
    sock.sendall(framing.control(framing.Op.OPEN, id=1, request=request.to_wire()))
    opened = None
    while opened is None:
        for frame in connection.receive():
            if frame.type is framing.FrameType.CONTROL and hop.parse(frame).op is framing.Op.ANSWER:
                opened = hop.parse(frame).get("ok")
    print("opened", opened, flush=True)
    sock.sendall(framing.HEADER.pack(framing.FrameType.INPUT, 700 * 1024) + b"x" * 1000)  # refused at the header
    errors = []
    try:
        while True:
            for frame in connection.receive():
                if frame.type is framing.FrameType.CONTROL and hop.parse(frame).op is framing.Op.ERROR:
                    errors.append(hop.parse(frame).get("text"))
    except hop.HopError:
        print("dropped", errors, flush=True)
""")


def test_non_framed_clients_are_refused_and_an_oversized_frame_costs_the_rogue_its_connection_only(sandbox,
                                                                                                   tmp_path):
    """PB spoken to the socket (the operator-side PB door is gone) gets one refusal line; a frame over the
    framing's limit costs its sender the connection; the master serves on (the worker, another session)."""
    other = Terminal(sandbox, ["w1"]).ready()
    try:
        script = tmp_path / "rogue.py"
        script.write_text(ROGUE)
        done = subprocess.run([sys.executable, str(script), sandbox.socket], capture_output=True, text=True,
                              timeout=90)
        lines = done.stdout.splitlines()
        refusal = ("slaveshell: refused: this master serves slaveshell's framed protocol only, and this client "
                   "does not speak it (a slaveshell older than the master? upgrade it)")
        assert lines[:3] == [refusal, refusal, "opened True"], done.stdout + done.stderr
        assert lines[3] == "dropped ['protocol error: a INPUT frame of 716800 bytes (at most 524288)']", lines
        # The worker's connection (and so its builds) is untouched, and so is the other session.
        workers = json.loads(subprocess.run([sys.executable, "-m", "slaveshell.cli", "workers", "--socket",
                                             sandbox.socket, "--json"], capture_output=True, text=True).stdout)
        assert next(w for w in workers if w["name"] == "w1")["connected"]
        assert other.run("echo still-serving").strip() == "still-serving"
    finally:
        other.child.sendline("exit")
        other.wait()


def test_a_stopped_worker_is_detected_and_the_session_ended_with_the_reason(tmp_path_factory):
    import signal
    import time

    from slaveshell.client.sandbox import Sandbox

    from .conftest import wait_until

    sb = Sandbox(str(tmp_path_factory.mktemp("stall")), workers=["st1"], service_kwargs="stall_timeout=4")
    sb.create()
    try:
        sb.start()
        t = Terminal(sb, ["st1"]).ready()
        worker_pid = int(open(os.path.join(sb.worker_dir("st1"), "twistd.pid")).read())
        try:
            t.run("echo before-the-stop")
            time.sleep(3)  # quiet longer than a heartbeat interval: answered pings keep the session alive
            assert t.run("echo alive-after-quiet").strip() == "alive-after-quiet"
            os.kill(worker_pid, signal.SIGSTOP)
            stopped = time.monotonic()
            assert t.wait(timeout=20) == 255
            assert time.monotonic() - stopped < 12
            assert "worker st1 stopped answering for 4 s" in t.child.before.decode()
        finally:
            os.kill(worker_pid, signal.SIGCONT)
            t.close()
        # Once it runs again, the worker gets the close and ends the shell.
        assert wait_until(lambda: subprocess.run(["pgrep", "-P", str(worker_pid), "bash"],
                                                 capture_output=True).returncode == 1, timeout=15)
    finally:
        sb.stop()


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_transcript_disk_ends_the_session_and_keeps_the_transcript_valid(tmp_path_factory):
    import json

    from slaveshell.client.sandbox import Sandbox
    from slaveshell.vocabulary.transcript import parse_lines

    sb = Sandbox(str(tmp_path_factory.mktemp("diskfull")), workers=["d1"])
    sb.create()
    transcripts = os.path.join(sb.master_dir, "transcripts")
    os.makedirs(transcripts, mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", transcripts], check=True)
    try:
        sb.start()
        # A first line recorded before the flood (the worker reads up to a 512 KiB message at once: a flood from
        # the start could fill the 256 KiB disk with its first write, leaving nothing to check).
        done = subprocess.run(shell_argv() + ["--socket", sb.socket, "d1",
                                              "echo start; sleep 0.5; head -c 3000000 /dev/zero | base64"],
                              capture_output=True, timeout=120)
        assert done.returncode == 255, done.stderr
        assert b"the transcript cannot be written (No space left on device)" in done.stderr
        # The cast, and the raw attachment of its bulk output (no terminal: docs/audit-schema.md, Attachments).
        files = os.listdir(transcripts)
        casts = [name for name in files if name.endswith(".cast")]
        assert len(casts) == 1 and set(files) <= {casts[0], casts[0].removesuffix(".cast") + ".bin"}, files
        with open(os.path.join(transcripts, casts[0]), encoding="utf-8") as f:
            cast = parse_lines(f)
        assert not cast.truncated and cast.events  # whole lines only: what was written stays playable
        history = json.loads(subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket",
                                             sb.socket, "--json"], capture_output=True, text=True).stdout)
        assert "transcript cannot be written" in history[0]["end_reason"]
    finally:
        sb.stop()
        subprocess.run(["umount", "-l", transcripts])


def test_killing_the_worker_ends_the_client_with_255(tmp_path_factory):
    import signal
    import time

    from slaveshell.client.sandbox import Sandbox

    sb = Sandbox(str(tmp_path_factory.mktemp("workerkill")), workers=["k1"])
    sb.create()
    try:
        sb.start()
        t = Terminal(sb, ["k1"]).ready()
        try:
            t.child.sendline("sleep 304")
            t.expect("sleep 304\r\n")
            worker_pid = int(open(os.path.join(sb.worker_dir("k1"), "twistd.pid")).read())
            os.kill(worker_pid, signal.SIGKILL)
            killed = time.monotonic()
            assert t.wait(timeout=15) == 255
            assert time.monotonic() - killed < 10
            assert "connection to worker k1 lost" in t.child.before.decode()
            # The dead worker's PTY master closed: the kernel hung up the shell and its job.
            from .conftest import wait_until

            assert wait_until(lambda: subprocess.run(["pgrep", "-f", "^sleep 304$"]).returncode == 1, timeout=10)
        finally:
            t.close()
        sb.started.remove(sb.worker_dir("k1"))
    finally:
        sb.stop()
        subprocess.run(["pkill", "-f", "^sleep 304$"])


ROGUE_WORKER = '''
# A rogue worker for the test: it opted in, then breaks every rule of the session protocol.
from slave_side import session as _session
_flush = _session.WorkerSession._flush
def _rogue_flush(self):
    self.sink.send("output", 7, b"no such stream")
    self.sink.send("output", 1, b"x" * 70000)
    for _ in range(40):
        self.sink.send("output", 1, b"y" * 65536)
    _flush(self)
_session.WorkerSession._flush = _rogue_flush
'''


def test_a_rogue_worker_loses_its_session_and_keeps_its_connection_and_builds(tmp_path_factory):
    import json

    from slaveshell.client.sandbox import Sandbox

    from .conftest import wait_until

    sb = Sandbox(str(tmp_path_factory.mktemp("rogueworker")), workers=["r1"])
    sb.create()
    tac = os.path.join(sb.worker_dir("r1"), "buildbot.tac")
    text = open(tac).read().replace("\ns = Worker(", "\n" + ROGUE_WORKER + "\ns = Worker(", 1)
    open(tac, "w").write(text)
    try:
        sb.start()
        done = subprocess.run(shell_argv() + ["--socket", sb.socket, "r1", "echo hi"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 255
        assert "protocol error: stream must be between 1 and 2" in done.stderr
        workers = json.loads(subprocess.run([sys.executable, "-m", "slaveshell.cli", "workers", "--socket",
                                             sb.socket, "--json"], capture_output=True, text=True).stdout)
        assert workers[0]["connected"]
        # Its builds are not affected: the master kept the worker's connection.
        sb.send_change()
        assert wait_until(lambda: [b for b in sb.builds() if b[1] is not None], timeout=60)
        assert sb.builds()[-1][1] == 0
    finally:
        sb.stop()
