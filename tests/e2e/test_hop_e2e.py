"""Issue 14, item 1, end to end: buildbot-shell speaks the framed hop (slaveshell.vocabulary.framing) to a real master,
without Twisted in the client, and a client that breaks the framing costs only its own connection."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

from slaveshell.vocabulary import framing
from slaveshell.vocabulary.framing import FrameType, Op

from .conftest import shell_argv

SESSION_WITH_THE_MODULES_SHOWN = (
    "import sys\n"
    "import slaveshell.shell_cli\n"  # the console script's module, imported as the script does
    "from slaveshell.client.shell_cli import main\n"
    "status = main(sys.argv[1:])\n"
    "print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')), file=sys.stderr)\n"
    "sys.exit(status)\n"
)


def test_a_real_session_runs_without_twisted_in_the_client(sandbox):
    done = subprocess.run([sys.executable, "-c", SESSION_WITH_THE_MODULES_SHOWN, "--socket", sandbox.socket, "-T",
                           "w1", "--", "echo hop; exit 3"], capture_output=True, text=True, timeout=60)
    assert done.stdout == "hop\n"
    assert done.returncode == 3
    assert "loaded: []" in done.stderr, done.stderr


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(15)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_client_that_breaks_the_framing_loses_its_connection_and_the_master_serves_on(sandbox):
    rogue = socket.socket(socket.AF_UNIX)
    rogue.connect(sandbox.socket)
    # The magic, then a frame header announcing a gigabyte.
    rogue.sendall(framing.MAGIC + struct.pack("!BI", FrameType.CONTROL, 1 << 30))
    data = read_all(rogue)
    rogue.close()
    assert framing.MAGIC in data
    [error] = framing.Decoder().feed(data[data.index(framing.MAGIC) + len(framing.MAGIC):])
    message = framing.parse_control(error.payload)
    assert message.op is Op.ERROR
    assert message.get("text") == f"protocol error: a CONTROL frame of {1 << 30} bytes (at most {framing.MAX_CONTROL})"
    # An unknown frame type, then a well-formed call after it: nothing after the break is served.
    rogue = socket.socket(socket.AF_UNIX)
    rogue.connect(sandbox.socket)
    rogue.sendall(framing.MAGIC + struct.pack("!BI", 77, 0) + framing.control(Op.WORKERS, id=1))
    data = read_all(rogue)
    rogue.close()
    [error] = framing.Decoder().feed(data[data.index(framing.MAGIC) + len(framing.MAGIC):])
    assert framing.parse_control(error.payload).get("text") == "protocol error: a frame of unknown type 77"
    # The framed door and the PB door both still serve.
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "echo still here"],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "still here\n"), done.stderr
    listed = subprocess.run([sys.executable, "-m", "slaveshell.cli", "workers", "--socket", sandbox.socket],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert listed.returncode == 0 and "w1" in listed.stdout
