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


def test_mypy_is_clean():
    pytest.importorskip("mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", *PACKAGES], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# The sans-I/O core, checked with `mypy --strict` (issue 12 part 6).
STRICT = ["slaveshell/protocol.py", "slaveshell/flow.py", "slaveshell/escape.py", "slaveshell/transcript.py",
          "slaveshell/display.py", "slaveshell/remote.py", "slaveshell/clock.py", "slaveshell/hidden.py",
          "slaveshell/replay.py", "slaveshell/terminal.py", "slaveshell/policy.py", "slaveshell/cpwire.py",
          "slaveshell/cpfiles.py"]


def test_mypy_strict_is_clean_on_the_core():
    pytest.importorskip("mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", *STRICT], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
