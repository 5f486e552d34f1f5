"""`slaveshell search` over transcripts a hostile worker (or anyone in a session) filled: the output can neither
stall the master nor make a hit show something other than what matched."""

import bisect
import itertools
import json
import os
import subprocess
import sys
import tracemalloc

from hypothesis import example, given, settings
from hypothesis import strategies as st

from master_side.audit.search import fold, search
from slaveshell.vocabulary.flow import BULK_CHUNK
from slaveshell.vocabulary.transcript import encode_event, strip_ansi

from .test_bulk_record import Ended, bulk_recorder

ROW = {"id": "s1", "worker": "w1", "operator": "alice", "started": "2026-01-01T00:00:00",
       "hidden_bytes": 0, "hidden_spans": 0, "hidden_flag": False}
# A guard against a hang, not a timing assertion: the search below takes milliseconds; before the fix it took
# about 4.5 minutes of CPU for one message, in one regular-expression call that holds the GIL.
CPU_GUARD = 60


def search_in_a_child(path: str, needle: str) -> list[dict[str, object]]:
    """`search` on one transcript in a child process whose CPU time is limited to CPU_GUARD seconds (a
    regular expression cannot be interrupted from Python: the kernel's SIGXCPU ends the child instead)."""
    code = ("import json, resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_CPU, ({CPU_GUARD}, {CPU_GUARD}))\n"
            "from master_side.audit.search import search\n"
            "row, path, needle = json.loads(sys.stdin.read())\n"
            "print(json.dumps(search([(row, path)], needle, 10)))\n")
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


def recorded(tmp_path, chunks: list[bytes]) -> str:
    rec, _ = bulk_recorder(tmp_path)
    for chunk in chunks:
        rec.output(chunk)
    rec.end(Ended())
    return rec.path


def test_a_capital_dotted_i_does_not_shift_what_a_hit_shows(tmp_path):
    """str.lower() makes U+0130 two characters: with the stream lowered whole and sliced at the lowered text's
    offsets, 40 of them before the match made the hit show other text (here, none of the match)."""
    path = recorded(tmp_path, ["\u0130".encode() * 200 + b" harmless text " + b"." * 100 + b" rm -rf /srv/data"])
    [hit] = search([(ROW, path)], "rm -rf", 10)
    assert "rm -rf /srv/data" in hit["context"]


def test_searching_a_large_session_holds_one_chunk_at_a_time(tmp_path):
    """32 MiB of bulk output, one character outside Latin-1 in each 512 KiB message (so each text is four bytes a
    character): the search's peak allocation stays within a few messages' worth (it was ~16x the output: events,
    the stream joined, lowered)."""
    chunk = ("\U0001f600" + "x" * (BULK_CHUNK - 4)).encode()
    path = recorded(tmp_path, [chunk] * 63 + [chunk[:-20] + b"find me at the end."])
    tracemalloc.start()
    try:
        [hit] = search([(ROW, path)], "FIND ME", 10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert hit["context"].endswith("xfind me at the end.")
    assert peak < 8 * 4 * BULK_CHUNK, f"{peak} bytes at the peak for {64 * BULK_CHUNK} bytes of output"


def whole_stream_search(events: list[tuple[str, str]], needle: str, limit: int) -> list[tuple[str, float, str]]:
    """The search as it was (each stream's stripped text joined whole, then searched), folded the same way:
    (stream, time, context) of each hit. Event i's time is i."""
    hits: list[tuple[str, float, str]] = []
    for code in ("o", "i"):
        parts = [(i, strip_ansi(text)) for i, (c, text) in enumerate(events) if c == code]
        starts = list(itertools.accumulate((len(p) for _, p in parts), initial=0))[:-1]
        text = "".join(p for _, p in parts)
        index = fold(text).find(fold(needle))
        while index >= 0 and len(hits) < limit:
            t = parts[max(0, bisect.bisect_right(starts, index) - 1)][0]
            hits.append((code, float(t), text[max(0, index - 40): index + len(needle) + 40].replace("\n", " ")))
            index = fold(text).find(fold(needle), index + len(needle))
    return hits


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from("oimr"),
                                 st.lists(st.sampled_from(["ab", "a", "b", "\x1b[1m", "\u0130", "\n", "x" * 30, ""]),
                                          max_size=6).map("".join)), max_size=30),
       needle=st.sampled_from(["ab", "aba", "b\nx", "xa", "a" * 45, "İa"]), limit=st.integers(1, 8))
@example(events=[("o", "x" * 60 + "a"), ("i", ""), ("o", "b")], needle="ab", limit=1)  # all of its context kept
def test_searching_event_by_event_finds_what_searching_the_whole_stream_found(tmp_path_factory, events, needle,
                                                                              limit):
    path = tmp_path_factory.mktemp("s") / "s.cast"
    lines = ['{"version": 2, "width": 80, "height": 24}']
    for i, (code, text) in enumerate(events):
        lines += encode_event(float(i), code, text)
    path.write_text("\n".join(lines) + "\n")
    got = [(h["stream"][0], h["time"], h["context"]) for h in search([(ROW, str(path))], needle, limit)]
    assert got == whole_stream_search(events, needle, limit)
