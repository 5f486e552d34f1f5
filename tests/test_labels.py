"""How rows are labelled where they are listed (slaveshell.client.labels; the web pages' scripts.js says the same): a
fleet run's script part as the run's script rather than the shell lines that run it, a fact refresh as such."""

from __future__ import annotations

import re
from pathlib import Path

from slaveshell.client.labels import command_label, run_label
from slaveshell.fleet.script import SCRIPT_RUNNER

SCRIPTS_JS = Path(__file__).resolve().parents[1] / "master_side" / "www" / "static" / "scripts.js"


def test_a_script_part_is_labelled_as_its_runs_script_and_a_command_as_itself():
    assert command_label({"command": SCRIPT_RUNNER, "run_id": "r5f2"}) == "(script of fleet run r5f2)"
    assert command_label({"command": SCRIPT_RUNNER}) == "(a fleet run's script)"
    assert command_label({"command": "uname -a", "run_id": "r5f2"}) == "uname -a"
    assert command_label({"command": None, "build_id": 7}) == "(login shell in build 7)"


def test_a_run_is_labelled_by_its_command_a_fact_refresh_or_its_script():
    assert run_label({"kind": "run", "command": "df -h"}) == "df -h"
    assert run_label({"kind": "facts", "command": None, "script_sha256": "ab" * 32}) == "(facts refresh)"
    script = {"kind": "run", "command": None, "script_sha256": "cd" * 32, "script_bytes": 120}
    assert run_label(script, digits=12) == "(script of 120 bytes, sha256 cdcdcdcdcdcd)"


def test_the_web_pages_know_the_same_script_runner():
    found = re.search(r"var SCRIPT_RUNNER = '(.*?)' \+\n\s*'(.*?)';", SCRIPTS_JS.read_text(), re.S)
    assert found is not None
    assert (found.group(1) + found.group(2)).replace("\\'", "'") == SCRIPT_RUNNER
