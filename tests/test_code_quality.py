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
    "slaveshell/vocabulary/protocol.py",
    "slaveshell/vocabulary/checks.py",
    "slaveshell/vocabulary/flow.py",
    "slaveshell/vocabulary/windows.py",
    "slaveshell/client/escape.py",
    "slaveshell/client/cluster_sandbox.py",
    "slaveshell/vocabulary/transcript.py",
    "slaveshell/vocabulary/display.py",
    "slaveshell/plumbing/remote.py",
    "slaveshell/plumbing/clock.py",
    "slaveshell/vocabulary/hidden.py",
    "slaveshell/client/replay.py",
    "slaveshell/client/terminal.py",
    "slaveshell/vocabulary/policy.py",
    "slaveshell/plumbing/deferreds.py",
    "slaveshell/client/shell_cli.py",
    "slaveshell/vocabulary/framing.py",
    "slaveshell/client/connection.py",
    "slaveshell/client/shell_session.py",
    "slaveshell/client/outputs.py",
    "slaveshell/plumbing/write_now.py",
    "slaveshell/vocabulary/copying.py",
    "slaveshell/files/sender.py",
    "slaveshell/files/receiver.py",
    "slaveshell/client/copy_cli.py",
    "slaveshell/client/copy_client.py",
    "slaveshell/fleet",
    "master_side/shell_socket/copy_door.py",
    "master_side/cluster/offers.py",
    "master_side/audit/store.py",
    "master_side/audit/schema.py",
    "master_side/audit/trail.py",
    "master_side/glue/buildbot.py",
    "master_side/config.py",
    "master_side/operators/api.py",
    "master_side/operators/approvals.py",
    "slaveshell/client/approval_cli.py",
    "master_side/operators/terms.py",
    "master_side/operators/routed.py",
    "master_side/cluster/stream.py",
    "master_side/cluster/copy_stream.py",
    "master_side/audit/rows.py",
    "master_side/sessions/model.py",
    "master_side/sessions/moderation.py",
    "master_side/holds/moderator_notices.py",
    "master_side/audit/search.py",
    "master_side/shell_socket/viewer_sink.py",
    "master_side/www/grants.py",
    "slave_side/echo.py",
    "slave_side/host.py",
    "slave_side/pty.py",
    "slave_side/session.py",
    "slave_side/owner_log.py",
    "master_side/holds/deadline.py",
    "master_side/operators/hold_calls.py",
    "slaveshell/client/hold_cli.py",
    "slaveshell/client/calls.py",
    "slaveshell/client/cli.py",
    "slaveshell/client/console.py",
    "slaveshell/client/demo.py",
    "slaveshell/client/jobcontrol.py",
    "slaveshell/client/labels.py",
    "slaveshell/client/reveal.py",
    "slaveshell/client/sandbox.py",
    "slaveshell/plumbing/banana_bounds.py",
    "slaveshell/plumbing/upstream.py",
    "slave_side/server.py",
    "slaveshell/client/router.py",
    "master_side/cluster/config.py",
    "master_side/cluster/view.py",
    "master_side/cluster/verify.py",
    "master_side/cluster/part.py",
    "master_side/cluster/records.py",
    "master_side/sessions/session.py",
    "master_side/sessions/clocks.py",
    "master_side/sessions/worker_sink.py",
    "master_side/sessions/notices.py",
    "master_side/sessions/viewer_bounds.py",
    "master_side/operators/bounds.py",
    "master_side/operators/gate.py",
    "master_side/audit/refusals.py",
    "master_side/shell_socket/peer.py",
    "master_side/www/quota.py",
]


def test_mypy_strict_is_clean_on_the_core(mypy_runs):
    """The listed modules only: what they import is checked by the plain mypy run (--follow-imports=silent)."""
    code, out = finished(mypy_runs["strict"])
    assert code == 0, out
