"""The display-safety rule (slaveshell/vocabulary/display.py) and every table, notice and console view that uses it: no
control character survives, and a terminal (pyte) shows the header intact, the title unchanged and the columns
aligned, whatever the untrusted text holds."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import unicodedata
from collections.abc import Callable
from typing import Any

import pyte
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from slaveshell.client import cli
from slaveshell.client.console import Console
from slaveshell.vocabulary.display import cell, visible, width

UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp", "Cn"}

# Every code point class, and the sequences seen in the wild.
NASTY = [
    "\x1b[2J\x1b[H", "\x1b]0;X\x07", "\x1b]52;c;aGVsbG8=\x07", "\u009b2J", "\u009d0;T\u009c", "\x7f", "\r",
    "\n", "\t", "\x08", "\u202e", "\u2066", "\u2069", "\u200e", "\u200f", "\u061c", "\u2028", "\u2029",
    "\ufeff", "\u00ad", "\udc9b", "\ud800", "\U000e0001", "\U0010fffd", "\ue000", "\uffff", "\u0378",
    "\u4e2d\u6587", "\uff21", "\U0001f600", "\U0001f600\U0001f3fb", "\u263a\ufe0f",
    "e\u0301", "\u0301", "\u20dd", "\u3000", "\u00a0", "a\\x1b",
]
code_points = st.one_of(
    st.characters(codec=None, categories=["Cc", "Cf", "Zl", "Zp", "Co", "Cn", "Mn", "Me", "Mc", "Zs"]),
    st.characters(codec=None),  # anything, wide CJK included
    st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates (surrogateescape'd bytes)
    st.integers(0x80, 0x9F).map(chr),  # C1
    st.sampled_from(NASTY),
)
untrusted = st.lists(code_points, max_size=12).map("".join)


def no_control_left(text: str) -> None:
    for char in text:
        assert char == "\n" or unicodedata.category(char) not in UNSAFE, (text, char)


def screen_of(text: str, cols: int = 1200, rows: int = 12) -> pyte.Screen:
    screen = pyte.Screen(cols, rows)
    screen.set_title("unchanged")
    stream = pyte.Stream(screen)
    # One character at a time: pyte (0.8) stops drawing the rest of a chunk at a zero-width character of
    # combining class 0 (an enclosing mark such as U+20DD), which real terminals combine; fed alone, only that
    # character is dropped. Escape sequences split across feeds are parsed as a terminal does.
    for char in text.replace("\n", "\r\n"):
        stream.feed(char)
    return screen


def assert_table_shown_intact(text: str, header: str, separators: list[int]) -> None:
    """The header is on screen as printed, the title is untouched, and every row has a space (a column
    separator) where the header has one."""
    no_control_left(text)
    lines = text.splitlines()
    screen = screen_of(text)
    assert screen.title == "unchanged"
    assert screen.display[0].rstrip() == header.rstrip()
    for y in range(1, len(lines)):
        row = screen.buffer[y]
        for x in separators:
            assert row[x].data == " ", (y, x, screen.display[y], lines[y])


def separators_of(*widths: int) -> list[int]:
    """Where the single spaces between fixed-width columns fall."""
    out, x = [], 0
    for w in widths:
        x += w
        out.append(x)
        x += 1
    return out


def test_each_class_is_escaped_as_repr_spells_it():
    assert visible("w1\x1b[2J\x1b[H") == "w1\\x1b[2J\\x1b[H"
    assert visible("posix\x1b]52;c;aGk=\x07") == "posix\\x1b]52;c;aGk=\\x07"
    assert visible("\u009b2J\u009d0;T") == "\\x9b2J\\x9d0;T"
    assert visible("a\u202eb\u2066c\u200e\u200f\u061c") == "a\\u202eb\\u2066c\\u200e\\u200f\\u061c"
    assert visible("bad\udc9bbyte") == "bad\\udc9bbyte"
    assert visible("line\nnext\ttab\x7f") == "line\\nnext\\ttab\\x7f"
    assert visible("tag\U000e0041") == "tag\\U000e0041"
    # Shown as they are: text, wide characters, combining marks, spaces, private use, backslashes.
    for fine in ("plain", "\u4e2d\u6587", "e\u0301", "a\u00a0b\u3000c", "\ue000", "C:\\dir", "\U0001f600"):
        assert visible(fine) == fine
    assert visible(ValueError("x\x1by")) == "x\\x1by"


def test_width_counts_columns_of_what_is_shown():
    assert width("\u4e2d\u6587") == 4
    assert width("e\u0301") == 1
    assert width("\x1b") == 4
    assert cell("\u4e2d\u6587\u5b57", 4) == "\u4e2d\u2026 "
    assert cell("abc", 5) == "abc  "
    assert cell("abcdef", 4) == "abc\u2026"
    assert cell("x", 0) == ""


@given(untrusted)
def test_visible_is_inert_idempotent_and_cells_have_their_width(text):
    shown = visible(text)
    no_control_left(shown)
    shown.encode("utf-8")  # strict: no lone surrogate left to fail on the way to a terminal
    assert visible(shown) == shown
    for columns in (1, 5, 16):
        assert width(cell(text, columns)) == columns
    screen = screen_of(shown)
    assert screen.title == "unchanged"
    assert screen.cursor.y == 0 and screen.cursor.x == width(text)


# -- the CLI's tables, with the master's answers fuzzed -------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, answer: Any, command: Callable[[argparse.Namespace], int],
            **args: Any) -> str:
    monkeypatch.setattr(cli, "call_master", lambda *a, **k: {"rows": answer})
    out = io.StringIO()
    namespace = argparse.Namespace(socket="/nonexistent", master=None, json=False, **args)
    with contextlib.redirect_stdout(out):
        command(namespace)
    return out.getvalue()


def worker_row(name: str, system: str, info: str) -> dict[str, Any]:
    return {"name": name, "connected": True, "shell": True, "paused": False, "system": system, "info": info,
            "allowed": True, "sessions": 1}


def history_row(sid: str, operator: str, worker: str, end: str, command: str) -> dict[str, Any]:
    return {"id": sid, "started": "2026-11-29T05:00:00+00:00", "ended": "2026-11-29T05:00:09+00:00",
            "operator": operator, "worker": worker, "end_reason": end, "state": "ended", "command": command}


def session_row(sid: str, worker: str, operator: str, viewer: str) -> dict[str, Any]:
    return {"id": sid, "worker": worker, "operator": operator, "started": 0.0, "state": "attached",
            "idle": 1.0, "viewers": [{"user": viewer, "role": "watch"}], "command": None}


@given(st.lists(st.tuples(untrusted, untrusted, untrusted), min_size=1, max_size=4))
def test_workers_table_stays_a_table(monkeypatch, rows):
    text = run_cli(monkeypatch, [worker_row(*r) for r in rows], cli.cmd_workers, include_offline=False)
    header = text.splitlines()[0]
    assert header.startswith("WORKER ")
    assert_table_shown_intact(text, header, separators_of(20, 12, 6, 6, 8))


@given(st.lists(st.tuples(untrusted, untrusted, untrusted, untrusted, untrusted), min_size=1, max_size=4))
def test_history_table_stays_a_table(monkeypatch, rows):
    text = run_cli(monkeypatch, [history_row(*r) for r in rows], cli.cmd_history, worker=None, user=None,
                   since=None, limit=10, build=None, reason=None)
    header = text.splitlines()[0]
    assert header.startswith("SESSION ")
    assert_table_shown_intact(text, header, separators_of(13, 20, 9, 12, 16, 14))


@given(st.lists(st.tuples(untrusted, untrusted, untrusted, untrusted), min_size=1, max_size=4))
def test_sessions_table_stays_a_table(monkeypatch, rows):
    text = run_cli(monkeypatch, [session_row(*r) for r in rows], cli.cmd_sessions)
    header = text.splitlines()[0]
    assert_table_shown_intact(text, header, separators_of(13, 16, 12, 20, 9))


@given(st.lists(st.tuples(untrusted, untrusted, untrusted), min_size=1, max_size=4))
def test_search_hits_are_shown_inert(monkeypatch, rows):
    hits = [{"session": s, "worker": w, "operator": "alice", "started": "2026-11-29T05:00:00+00:00",
             "time": 1.5, "stream": "output", "context": c} for s, w, c in rows]
    text = run_cli(monkeypatch, hits, cli.cmd_search, text="x", worker=None, user=None, since=None,
                   reason=None)
    no_control_left(text)
    screen = screen_of(text)
    assert screen.title == "unchanged"
    assert len([line for line in screen.display if line.strip()]) == len(rows)


# What the framed hop can carry: strings travel as UTF-8 JSON, so no lone surrogates (JSON would read a pair of
# them as one).
wire_text = st.lists(st.one_of(st.characters(codec="utf-8"), st.sampled_from(NASTY[:20])), max_size=12).map("".join)


@given(st.lists(st.tuples(wire_text, wire_text, wire_text), min_size=1, max_size=3))
def test_json_output_is_exact_and_inert(monkeypatch, rows):
    workers = [worker_row(*r) for r in rows]
    monkeypatch.setattr(cli, "call_master", lambda *a, **k: {"rows": workers})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.cmd_workers(argparse.Namespace(socket="/x", master=None, json=True, include_offline=False))
    text = out.getvalue()
    assert all(" " <= char <= "~" or char == "\n" for char in text)  # ensure_ascii: controls escaped
    assert json.loads(text) == workers


def test_master_errors_are_shown_inert(monkeypatch, capsys):
    from slaveshell.client.calls import CallError

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise CallError("no worker named 'x\x1b]0;T\x07' \x1b[2J")

    monkeypatch.setattr(cli, "call_master", refuse)
    assert cli.cmd_kill(argparse.Namespace(socket="/x", master=None, session="s")) == 255
    assert capsys.readouterr().err == "slaveshell: no worker named 'x\\x1b]0;T\\x07' \\x1b[2J\n"


# -- the console -------------------------------------------------------------------------------------


class FuzzedBackend:
    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {"workers": [], "sessions": [], "history": []}

    def workers(self) -> list[dict[str, Any]]:
        return self.rows["workers"]

    def sessions(self) -> list[dict[str, Any]]:
        return self.rows["sessions"]

    def history(self, worker: str | None) -> list[dict[str, Any]]:
        return self.rows["history"]

    def kill(self, session_id: str) -> str:
        return "killed \x1b[2J"

    def run_interactive(self, argv: list[str]) -> int:
        return 0


@pytest.fixture(scope="module")
def console() -> Any:
    backend = FuzzedBackend()
    out: list[str] = []
    with create_pipe_input() as inp, create_app_session(input=inp, output=DummyOutput()):
        yield Console(backend, input=inp, output=DummyOutput(), write=out.append), backend, out


@given(rows=st.lists(st.tuples(untrusted, untrusted, untrusted, untrusted, untrusted), min_size=1, max_size=4))
def test_console_views_stay_tables(console, rows):
    con, backend, out = console
    backend.rows["workers"] = [worker_row(n, s, i) for n, s, i, _, _ in rows]
    backend.rows["sessions"] = [session_row(a, b, c, d) for a, b, c, d, _ in rows]
    backend.rows["history"] = [history_row(*r) for r in rows]
    for show, widths in ((con.show_workers, (18, 10, 6, 8)), (con.show_sessions, (13, 16, 12, 20, 9))):
        out.clear()
        show()
        text = "".join(out)
        header = text.splitlines()[0]
        assert_table_shown_intact(text, header, separators_of(*widths))
    out.clear()
    con.show_history(None)
    text = "".join(out)
    no_control_left(text)
    screen = screen_of(text)
    assert screen.title == "unchanged"
    assert len([line for line in screen.display if line.strip()]) == len(rows)
    out.clear()
    con.execute("kill abc")
    assert "".join(out) == "killed \\x1b[2J\n"
