"""ruff and mypy are part of the suite, so the README's one test command checks them too."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["slaveshell", "master_side", "slave_side"]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install '.[test]')")
def test_ruff_is_clean():
    done = subprocess.run(["ruff", "check", *PACKAGES, "tests"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def mypy_runs() -> dict[str, subprocess.Popen[str]]:
    """Both mypy runs, started together (each is one process; on 2 cores they take the time of one)."""
    pytest.importorskip("mypy")
    runs = {
        "plain": [sys.executable, "-m", "mypy", *PACKAGES],
        "strict": [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir",
                   ".mypy_cache/strict", *STRICT],
    }
    return {name: subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name, argv in runs.items()}


def finished(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def test_mypy_is_clean(mypy_runs):
    code, out = finished(mypy_runs["plain"])
    assert code == 0, out


# The sans-I/O core and the other fully typed modules, checked with `mypy --strict`. Modules subclassing or
# calling untyped Twisted/Buildbot APIs (service, hold, the web door, banana_buffer, lean_calls) stay out.
STRICT = [
    "slaveshell/protocol.py",
    "slaveshell/wire.py",
    "slaveshell/flow.py",
    "slaveshell/escape.py",
    "slaveshell/transcript.py",
    "slaveshell/display.py",
    "slaveshell/remote.py",
    "slaveshell/clock.py",
    "slaveshell/hidden.py",
    "slaveshell/replay.py",
    "slaveshell/terminal.py",
    "slaveshell/policy.py",
    "slaveshell/deferreds.py",
    "slaveshell/shell_cli.py",
    "slaveshell/framing.py",
    "slaveshell/hop.py",
    "slaveshell/hop_client.py",
    "slaveshell/outputs.py",
    "slaveshell/write_now.py",
    "slaveshell/cpwire.py",
    "slaveshell/cpfiles.py",
    "slaveshell/cpreceiver.py",
    "slaveshell/cp.py",
    "slaveshell/cp_client.py",
    "slaveshell/fleet",
    "master_side/copy_wire.py",
    "master_side/audit.py",
    "master_side/audit_schema.py",
    "master_side/audit_trail.py",
    "master_side/buildbot_glue.py",
    "master_side/config.py",
    "master_side/operator_api.py",
    "master_side/operator_types.py",
    "master_side/rows.py",
    "master_side/session_model.py",
    "master_side/transcript_search.py",
    "master_side/wire_sink.py",
    "master_side/www/grants.py",
    "slave_side/echo.py",
    "slave_side/host.py",
    "slave_side/pty.py",
    "slave_side/session.py",
    "slave_side/owner_log.py",
    "master_side/hold_deadline.py",
    "master_side/hold_ops.py",
    "slaveshell/hold_cli.py",
    "slaveshell/calls.py",
    "slaveshell/cli.py",
    "slaveshell/console.py",
    "slaveshell/demo.py",
    "slaveshell/jobcontrol.py",
    "slaveshell/labels.py",
    "slaveshell/reveal.py",
    "slaveshell/sandbox.py",
    "slaveshell/banana_bounds.py",
    "slaveshell/upstream.py",
    "slave_side/server.py",
    "slaveshell/router.py",
    "master_side/cluster_config.py",
    "master_side/cluster_view.py",
    "master_side/cluster_part.py",
    "master_side/relay.py",
    "master_side/relay_time.py",
    "master_side/worker_sink.py",
]


def test_mypy_strict_is_clean_on_the_core(mypy_runs):
    """The listed modules only: what they import is checked by the plain mypy run (--follow-imports=silent)."""
    code, out = finished(mypy_runs["strict"])
    assert code == 0, out
