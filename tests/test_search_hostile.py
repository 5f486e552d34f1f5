"""`slaveshell search` over transcripts a hostile worker (or anyone in a session) filled: the output can neither
stall the master nor make a hit show something other than what matched."""

import json
import os
import subprocess
import sys

from slaveshell.transcript import strip_ansi

from .test_bulk_record import Ended, bulk_recorder

ROW = {"id": "s1", "worker": "w1", "operator": "alice", "started": "2026-01-01T00:00:00",
       "hidden_bytes": 0, "hidden_spans": 0, "hidden_flag": False}
# A guard against a hang, not a timing assertion: the search below takes milliseconds; before the fix it took
# about 4.5 minutes of CPU for one message, in one regular-expression call that holds the GIL.
CPU_GUARD = 60


def search_in_a_child(path: str, needle: str) -> list[dict[str, object]]:
    """`_search` on one transcript in a child process whose CPU time is limited to CPU_GUARD seconds (a
    regular expression cannot be interrupted from Python: the kernel's SIGXCPU ends the child instead)."""
    code = ("import json, resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_CPU, ({CPU_GUARD}, {CPU_GUARD}))\n"
            "from master_side.audit_trail import _search\n"
            "row, path, needle = json.loads(sys.stdin.read())\n"
            "print(json.dumps(_search([(row, path)], needle, 10)))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps([ROW, path, needle]), env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"search ended with {done.returncode} (over {CPU_GUARD} s of CPU?) {done.stderr}"
    return json.loads(done.stdout)


def test_a_run_of_8_bit_osc_starts_without_an_end_is_searched_in_one_linear_pass(tmp_path):
    """A bulk message of 512 KiB of U+009D (an 8-bit OSC start, UTF-8 C2 9D) with no terminator: each start
    used to scan the rest of the text for an end (quadratic: 262,144 starts)."""
    rec, _ = bulk_recorder(tmp_path)
    rec.output("\u009d".encode() * (256 * 1024 - 16) + b" NEEDLE-7 here")
    rec.end(Ended())
    [hit] = search_in_a_child(rec.path, "needle-7")
    assert hit["context"] == " NEEDLE-7 here"


def test_an_osc_ends_where_a_terminal_ends_it():
    """U+009D inside an OSC starts a new one (as in a terminal's parser); what the first held is shown."""
    assert strip_ansi("a\u009dx\u009d0;title\u0007b") == "axb"
    assert strip_ansi("a\x1b]0;t\x1b\\b\u009d2;u\u009cc") == "abc"
