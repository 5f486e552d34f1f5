"""What an operator saw is in the transcript even when the master is killed (SIGKILL) right after: the recorder
writes each chunk to the transcript file before it relays the chunk to any viewer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.transcript import exact_output, parse_lines

from .conftest import Terminal, wait_until

pytestmark = pytest.mark.e2e

INTERRUPTED = "interrupted: the master stopped while the session was running"


def _history(sb):
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--json", "--socket", sb.socket],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _output_of(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        cast = parse_lines(f)
    return b"".join(exact_output(cast.events)).decode("utf-8", "replace"), cast


def test_output_seen_a_tenth_of_a_second_before_a_kill_9_of_the_master_is_in_the_transcript(tmp_path_factory):
    sb = Sandbox(str(tmp_path_factory.mktemp("seen")), workers=["k1"])
    sb.create()
    try:
        sb.start()
        t = Terminal(sb, ["k1"]).ready()
        try:
            # The command line echoes `SEEN%s`, the output is `SEEN-BY-THE-OPERATOR`: only output matches.
            t.child.sendline("printf 'SEEN%s\\n' -BY-THE-OPERATOR")
            t.expect("SEEN-BY-THE-OPERATOR\r\n")  # the operator's terminal shows it
            time.sleep(0.1)
            os.kill(sb.master_pid(), signal.SIGKILL)
            assert t.wait(timeout=30) == 255
        finally:
            t.close()
        directory = os.path.join(sb.master_dir, "transcripts")
        [path] = [os.path.join(directory, name) for name in os.listdir(directory)]
        # In the file as the killed master left it: the kernel kept every write.
        shown, cast = _output_of(path)
        assert "SEEN-BY-THE-OPERATOR" in shown and not cast.truncated
        # And in the transcript the restarted master repaired and closed.
        os.unlink(os.path.join(sb.master_dir, "twistd.pid"))
        sb.start_master()
        assert wait_until(lambda: [r for r in _history(sb) if r["state"] == "interrupted"], timeout=30), _history(sb)
        shown, cast = _output_of(path)
        assert "SEEN-BY-THE-OPERATOR" in shown
        assert (cast.events[-1].code, cast.events[-1].data) == ("m", INTERRUPTED)
    finally:
        sb.stop()
