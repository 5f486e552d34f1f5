"""A fleet run's result as the operator reads it: gathered outputs (clush -b), summary, exit status, --json."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from slaveshell.fleet.gather import as_json, exit_status, groups, render, shown_lines, summary
from slaveshell.fleet.outcome import Outcome, Output, State
from slaveshell.vocabulary.display import visible


def output(data: bytes, limit: int = 1024) -> Output:
    o = Output(limit)
    for i in range(0, len(data), 7):  # in pieces, as it arrives
        o.add(data[i:i + 7])
    return o


def ran(worker: str, status: int, data: bytes, **kw: object) -> Outcome:
    state = State.OK if status == 0 else State.FAILED
    return Outcome(worker, kw.pop("state", state), status, 1.25, output(data), f"s-{worker}", **kw)  # type: ignore


UNAME = b"Linux 6.1.0-18-amd64 x86_64\n"


def fleet_result() -> list[Outcome]:
    outcomes = [ran(f"w{i}", 0, UNAME) for i in (1, 2, 3, 10, 11)]
    outcomes += [ran(f"build-{i:02d}", 0, UNAME) for i in range(1, 6)]
    outcomes += [ran("w7", 2, b"gcc: not found\n"), ran("w9", 2, b"gcc: not found\n")]
    outcomes += [Outcome("w4", State.NOT_CONNECTED), Outcome("w5", State.NOT_CONNECTED),
                 Outcome("w6", State.NOT_CONNECTED), Outcome("w8", State.NOT_OPTED_IN),
                 Outcome("w12", State.REFUSED, reason="alice may not run on worker w12")]
    return outcomes


def test_identical_outputs_are_shown_once_headed_by_their_workers_then_the_others_and_the_summary():
    assert render(fleet_result()) == """\
---------------
build-[01-05],w[1-3,10-11] (10)
---------------
Linux 6.1.0-18-amd64 x86_64
---------------
w[7,9] (2)
---------------
gcc: not found
exit status 2: w[7,9]
not connected: w[4-6]
not opted in: w8
refused: w12
  alice may not run on worker w12
10 ok, 2 failed (w7, w9), 3 not connected, 1 not opted in, 1 refused
"""


def test_the_summary_line_names_the_workers_that_ran_and_failed_and_counts_the_rest():
    outcomes = [ran(f"w{i}", 0, b"") for i in range(1, 39)] + [ran("w39", 1, b""), ran("w40", 1, b"")]
    outcomes += [Outcome(f"x{i}", State.NOT_CONNECTED) for i in range(3)] + [Outcome("y", State.NOT_OPTED_IN)]
    assert summary(outcomes) == "38 ok, 2 failed (w39, w40), 3 not connected, 1 not opted in"
    many = [ran(f"w{i}", 1, b"") for i in range(1, 11)]
    assert summary(many) == "10 failed (w1, w2, w3, w4, w5, w6, w7, w8, ...)"
    assert summary([Outcome("w1", State.TIMED_OUT, -15), Outcome("w2", State.INTERRUPTED),
                    Outcome("w3", State.NOT_STARTED)]) == \
        "1 timed out (w1), 1 interrupted (w2), 1 not started"


def test_exit_status_is_zero_only_when_every_targeted_worker_ran_and_returned_zero():
    assert exit_status([ran("w1", 0, b""), ran("w2", 0, b"")]) == 0
    assert exit_status([ran("w1", 0, b""), ran("w2", 1, b"")]) == 1
    assert exit_status([ran("w1", 0, b""), Outcome("w2", State.NOT_CONNECTED)]) == 1
    assert exit_status([ran("w1", 0, b""), Outcome("w2", State.NOT_STARTED)]) == 1
    assert exit_status([Outcome("w1", State.TIMED_OUT, 0)]) == 1
    assert exit_status([]) == 1


def test_outputs_that_differ_past_the_kept_part_are_not_gathered_and_a_cut_is_flagged():
    same_start = b"x" * 40
    outcomes = [ran("w1", 0, same_start + b"A\n"), ran("w2", 0, same_start + b"B\n")]
    outcomes = [Outcome(o.worker, o.state, 0, 1.0, output(same_start + tail, limit=16))
                for o, tail in zip(outcomes, [b"A\n", b"B\n"], strict=True)]
    assert [w for w, _ in groups(outcomes)] == [["w1"], ["w2"]]
    shown = render(outcomes)
    assert shown.count("[output cut: 16 of 42 bytes shown; the transcripts hold all]") == 2
    assert "x" * 17 not in shown


def test_worker_controlled_text_is_escaped_names_outputs_and_reasons():
    evil = "w\x1b]0;pwned\x07"
    outcomes = [ran(evil, 1, b"\x1b[2J\x9b31m\xe2\x80\xaeevil\tcol\r\nnext\rover\n"),
                Outcome("w\u202e2", State.REFUSED, reason="no\x1b[31m")]
    shown = render(outcomes)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown and "\r" not in shown
    assert "w\\x1b]0;pwned\\x07" in shown
    assert "\\x1b[2J\\udc9b31m\\u202eevil   col\nnext\\rover\n" in shown
    assert "refused: w\\u202e2\n  no\\x1b[31m\n" in shown
    assert "(w\\x1b]0;pwned\\x07)" in summary(outcomes)


def test_workers_with_no_output_are_gathered_under_a_marker():
    assert render([ran("w1", 0, b""), ran("w2", 0, b"")]) == \
        "---------------\nw[1-2] (2)\n---------------\n[no output]\n2 ok\n"


def test_shown_lines_keep_the_line_structure_and_escape_the_rest():
    assert shown_lines(b"a\r\nb\n") == ["a", "b"]
    assert shown_lines(b"no newline") == ["no newline"]
    assert shown_lines(b"\n\n") == ["", ""]
    assert shown_lines("café ✓\n".encode()) == ["café ✓"]


def test_the_json_shape_per_worker():
    got = json.loads(json.dumps(as_json(fleet_result())))
    assert got["exit_status"] == 1 and got["summary"].startswith("10 ok, 2 failed (w7, w9)")
    by = {w["worker"]: w for w in got["workers"]}
    assert by["w7"] == {"worker": "w7", "state": "failed", "exit_status": 2, "duration": 1.25,
                        "output": "gcc: not found\n", "output_cut": False, "output_bytes": 15,
                        "session": "s-w7", "reason": None}
    assert by["w4"] == {"worker": "w4", "state": "not connected", "exit_status": None, "duration": None,
                        "output": None, "output_cut": False, "output_bytes": 0, "session": None, "reason": None}
    assert by["w12"]["reason"] == "alice may not run on worker w12"
    assert [w["worker"] for w in got["workers"]][:4] == ["build-01", "build-02", "build-03", "build-04"]
    cut = as_json([Outcome("w1", State.OK, 0, 0.5, output(b"\xff" * 40, limit=10))])["workers"][0]
    assert cut["output"] == "\ufffd" * 10 and cut["output_cut"] and cut["output_bytes"] == 40


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.integers(-15, 3), st.binary(max_size=80)),
                max_size=12, unique_by=lambda t: t[0]))
def test_any_worker_names_and_outputs_render_safely_and_each_worker_is_shown_once(items):
    outcomes = [ran(name, status, data) for name, status, data in items]
    shown = render(outcomes)
    # Nothing left that the display rule would escape: each line is already as `visible` shows it.
    assert all(visible(line) == line for line in shown.split("\n"))
    gathered = [w for ws, _ in groups(outcomes) for w in ws]
    assert sorted(gathered) == sorted(name for name, _, _ in items)
    json.dumps(as_json(outcomes))


def test_a_plain_line_as_each_worker_ends_for_a_pipe():
    from slaveshell.fleet.gather import ended_line

    assert ended_line(ran("w7", 2, b"checking\ngcc: not found\n")) == "w7: failed, exit status 2, 1.2 s: gcc: not found"
    assert ended_line(ran("w1", 0, b"")) == "w1: ok, 1.2 s"
    assert ended_line(Outcome("w3", State.NOT_CONNECTED)) == "w3: not connected"
    assert ended_line(Outcome("w5", State.REFUSED, reason="bob may not run on worker w5")) == \
        "w5: refused: bob may not run on worker w5"
    assert ended_line(ran("w\x1b", 1, b"\x1b]52;c;x\x07\r\n")) == \
        "w\\x1b: failed, exit status 1, 1.2 s: \\x1b]52;c;x\\x07"


def test_a_terminal_shows_the_hostile_result_exactly_as_written():
    """What a user sees: the render fed to a terminal emulator (pyte) shows each line as it is, no escape acted
    on (no clear screen, no title, no cursor moves, no reversed text)."""
    import pyte

    outcomes = [ran("w1", 1, b"ok\x1b[2J\x1b[H\x1b]0;title\x07\x1b[1A\x08\x08XX\r\xe2\x80\xaeabc\n"),
                ran("w2\x1b[31m", 0, b"\x9b2J\x1bc\n"), Outcome("w3", State.REFUSED, reason="\x1b[8mhidden")]
    shown = render(outcomes)
    screen = pyte.Screen(120, 40)
    stream = pyte.Stream(screen)
    stream.feed(shown.replace("\n", "\r\n"))
    expected = shown.split("\n")[:-1]
    assert [row.rstrip() for row in screen.display[:len(expected)]] == expected
    assert screen.title == ""
