"""A reason on every session, end to end: `buildbot-shell --reason` and `slaveshell cp --reason` against a real
master and workers; what `history`, `sessions`, `search` and the transcript show of it; a policy rule that
requires one; hostile reasons."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import assert_no_traceback, shell_argv, wait_until

pytestmark = pytest.mark.e2e

REASON = "INC-4711: disk full on w1 \u2013 \u00e9t\u00e9"
REQUIRED = "permission denied: worker prod requires a reason (--reason TEXT)"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """w1 needs no reason; prod requires one (its rule comes first) and runs the builds (a held build is on it).
    Both allow <root>/allowed for copies (and their own directories, where sessions start)."""
    root = str(tmp_path_factory.mktemp("reason"))
    allowed = os.path.join(root, "allowed")
    os.makedirs(allowed)
    me = os.getuid()
    dirs = [allowed, os.path.join(root, "worker-w1"), os.path.join(root, "worker-prod")]
    sb = Sandbox(root, workers=["prod", "w1"], opt_in_args=f"allowed_dirs={dirs!r}",
                 service_kwargs=f"policy=[dict(users=[0, {me}], workers=['prod'], require_reason=True), "
                                f"dict(users=[0, {me}])]")
    sb.create()
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()


def shell(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(shell_argv() + ["--socket", sb.socket, *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert_no_traceback(done.stderr)
    return done


def slaveshell(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert_no_traceback(done.stderr)
    return done


def history(sb: Sandbox, *filters: str) -> list[dict[str, object]]:
    done = slaveshell(sb, "history", "--json", *filters)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def row_of(sb: Sandbox, marker: str) -> dict[str, object]:
    rows = [r for r in history(sb) if marker in str(r["command"] or "")]
    assert len(rows) == 1, rows
    return rows[0]


def events(sb: Sandbox, worker: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(os.path.join(sb.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT kind, detail FROM slaveshell_events WHERE worker = ? ORDER BY id", (worker,)))
    finally:
        db.close()


def test_a_sessions_reason_is_in_the_history_its_json_the_transcript_and_search(box):
    done = shell(box, "--reason", REASON, "w1", "--", "echo reasoned-$((40+2))")
    assert done.returncode == 0 and done.stdout == "reasoned-42\n", done.stderr
    row = wait_until(lambda: (lambda r: r if r["state"] == "ended" else None)(row_of(box, "reasoned-")), 10)
    assert row["reason"] == REASON
    # The table: its REASON column, cut to 20 columns.
    table = slaveshell(box, "history").stdout.splitlines()
    assert table[0].split()[-2:] == ["REASON", "COMMAND"]
    line = next(line for line in table if line.endswith("echo reasoned-$((40+2))"))
    assert "INC-4711: disk full\u2026 echo reasoned" in line, line
    # The transcript's header.
    exported = slaveshell(box, "export", str(row["id"]))
    assert exported.returncode == 0
    assert json.loads(exported.stdout.splitlines()[0])["slaveshell"]["reason"] == REASON
    # Found by its reason: history's filter (any case, a part of it) and search.
    shell(box, "w1", "--", "echo no-reason")
    assert row_of(box, "no-reason")["reason"] is None
    assert [r["id"] for r in history(box, "--reason", "inc-4711")] == [row["id"]]
    assert history(box, "--reason", "INC-0000") == []
    found = slaveshell(box, "search", "disk FULL")
    assert found.returncode == 0
    assert f"{row['id']}" in found.stdout and f"reason: {REASON}" in found.stdout, found.stdout
    hits = json.loads(slaveshell(box, "search", "--json", "inc-4711").stdout)
    assert [(h["session"], h["stream"], h["context"]) for h in hits] == [(row["id"], "reason", REASON)]


def test_a_live_sessions_reason_is_in_the_sessions_list(box):
    live = subprocess.Popen(shell_argv() + ["--socket", box.socket, "--reason", "INC-9 live", "w1", "--",
                                            "sleep 60"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        def listed() -> list[dict[str, object]]:
            return [s for s in json.loads(slaveshell(box, "sessions", "--json").stdout)
                    if s["reason"] == "INC-9 live"]

        (session,) = wait_until(listed, 20)
        table = slaveshell(box, "sessions").stdout.splitlines()
        assert table[0].split()[-2:] == ["REASON", "VIEWERS"]
        assert any(line.startswith(str(session["id"])) and "INC-9 live" in line for line in table), table
        assert slaveshell(box, "kill", str(session["id"])).returncode == 0
    finally:
        live.wait(timeout=30) if live.poll() is None else None
        if live.poll() is None:
            live.kill()


def test_a_rule_that_requires_a_reason_refuses_a_session_without_one_and_audits_it(box):
    done = shell(box, "prod", "--", "echo unreasoned")
    assert done.returncode == 255
    assert done.stderr == f"buildbot-shell: {REQUIRED}\n"
    refused = wait_until(lambda: [d for k, d in events(box, "prod") if k == "refused" and "requires a reason" in d],
                         10)
    assert refused == [REQUIRED], events(box, "prod")
    assert not [r for r in history(box) if "unreasoned" in str(r["command"] or "")]  # nothing was opened
    done = shell(box, "--reason", "CHG-12 planned", "prod", "--", "echo reasoned-prod")
    assert done.returncode == 0 and done.stdout == "reasoned-prod\n", done.stderr
    assert row_of(box, "reasoned-prod")["reason"] == "CHG-12 planned"


def test_a_rule_that_requires_a_reason_holds_for_transfers_too(box, tmp_path):
    local = tmp_path / "f.txt"
    local.write_text("payload\n")
    target = os.path.join(box.root, "allowed", "f.txt")
    cp = [sys.executable, "-m", "slaveshell.cli", "cp", "--socket", box.socket, "-q"]
    done = subprocess.run(cp + [str(local), f"prod:{target}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "requires a reason (--reason TEXT)" in done.stderr, done.stderr
    assert not os.path.exists(target)
    done = subprocess.run(cp + ["--reason", "CHG-13 config push", str(local), f"prod:{target}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with open(target) as f:
        assert f.read() == "payload\n"
    rows = [r for r in history(box, "--worker", "prod") if r["term"] == "transfer"]
    assert [(r["reason"], r["state"]) for r in rows] == [("CHG-13 config push", "ended")]
    exported = slaveshell(box, "export", str(rows[0]["id"]))
    header = json.loads(exported.stdout.splitlines()[0])["slaveshell"]
    assert (header["kind"], header["reason"]) == ("transfer", "CHG-13 config push")


def test_a_session_into_a_held_build_takes_a_reason_the_same_way(box):
    box.send_change("hold")

    def held() -> int | None:
        rows = [r for r in box.build_rows("holder") if r[2] is None]
        return rows[-1][0] if rows else None

    build_id = wait_until(held, 60)
    assert build_id, box.log_tail()
    try:
        done = shell(box, "--build", str(build_id), "prod", "--", "echo in-build-unreasoned")
        assert done.returncode == 255 and done.stderr == f"buildbot-shell: {REQUIRED}\n", done.stderr
        done = shell(box, "--build", str(build_id), "--reason", "INC-90 build failed", "prod", "--",
                     "cat failed.txt")
        assert done.returncode == 0 and done.stdout == "evidence\n", done.stderr
        rows = history(box, "--build", str(build_id))
        assert [(r["reason"], r["command"]) for r in rows] == [("INC-90 build failed", "cat failed.txt")]
    finally:
        slaveshell(box, "release", str(build_id))


@pytest.mark.parametrize("reason, why", [
    ("INC-1\n\x1b[2J", "U+000A"), ("INC-1 \x1b]0;owned\x07", "U+001B"), ("a\u202eb", "U+202E"),
    ("x" * 501, "longer than 500"), ("   ", "reason is empty"),
])
def test_a_hostile_reason_is_refused_before_anything_opens(box, reason, why):
    done = shell(box, "--reason", reason, "w1", "--", "echo hostile-reason")
    assert done.returncode == 255 and why in done.stderr, done.stderr  # a usage error, as ssh says it
    assert "\x1b" not in done.stderr
    assert not [r for r in history(box) if "hostile-reason" in str(r["command"] or "")]


def test_a_reason_stored_with_escapes_is_shown_escaped(box):
    """A row changed behind the master's back (the reason check is the door's): every display escapes it."""
    done = shell(box, "--reason", "INC-5 to be edited", "w1", "--", "echo edited-row")
    assert done.returncode == 0
    row = row_of(box, "edited-row")
    db = sqlite3.connect(os.path.join(box.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        with db:
            db.execute("UPDATE slaveshell_sessions SET reason = ? WHERE id = ?", ("\x1b]0;X\x07\x1b[2Jnext\nline",
                                                                                 row["id"]))
    finally:
        db.close()
    table = slaveshell(box, "history").stdout
    line = next(line for line in table.splitlines() if line.endswith("echo edited-row"))
    assert "\\x1b]0;X\\x07\\x1b[2J\u2026" in line and "\x1b" not in table and "\x07" not in table
    found = slaveshell(box, "search", "next")
    assert "reason: \\x1b]0;X\\x07\\x1b[2Jnext\\nline" in found.stdout and "\x1b" not in found.stdout
