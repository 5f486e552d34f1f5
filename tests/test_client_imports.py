"""The operator's tools start without Twisted: each module of the client, of the vocabulary and of the copy's
files imports no Twisted (nor zope) when imported in a fresh interpreter, and each console script runs through
its whole parser without loading it (tests/test_layers.py checks the import statements; this checks what is
loaded)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("slaveshell/client", "slaveshell/vocabulary", "slaveshell/files")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module(p) for room in ROOMS for p in (ROOT / room).rglob("*.py"))


def _twisted_after(code: str) -> list[str]:
    """The Twisted (and zope) modules loaded once `code` has run in a fresh interpreter on this tree."""
    check = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path])))
    assert done.returncode == 0, done.stderr
    loaded: list[str] = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("module", MODULES)
def test_the_client_and_the_vocabulary_load_no_twisted(module):
    assert _twisted_after(f"import {module}") == []


SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_console_script_starts_without_twisted(script):
    """The entry point as its console script runs it, through its whole parser (`--help`: every subcommand's
    arguments are added)."""
    module, _, function = SCRIPTS[script].partition(":")
    code = (f"import contextlib, io\nfrom {module} import {function} as main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main(['--help'])")
    assert _twisted_after(code) == []
