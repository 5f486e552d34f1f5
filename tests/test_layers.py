"""The rooms of `slaveshell/`: the operator's tools (the client), the vocabulary the three processes share, and
the Twisted and PB plumbing that only the master and the worker use. The client and the vocabulary import no
Twisted, neither when imported nor through any import statement of theirs (those inside functions included), and
each room imports only from itself and the rooms below it: the client from the vocabulary, the plumbing from the
vocabulary, the vocabulary from nothing else.

The rooms are lists of module names, so that moving a module to a package of its own changes only its name here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The operator's tools: `buildbot-shell`, `slaveshell` and its subcommands. Standard library only, but for
# prompt_toolkit (the console, cp's progress bar) and pyrage (replay and reveal read sealed hidden input).
CLIENT = [
    "slaveshell.calls",
    "slaveshell.cli",
    "slaveshell.console",
    "slaveshell.cp",
    "slaveshell.cp_client",
    "slaveshell.demo",
    "slaveshell.hold_cli",
    "slaveshell.hop",
    "slaveshell.hop_client",
    "slaveshell.jobcontrol",
    "slaveshell.labels",
    "slaveshell.outputs",
    "slaveshell.replay",
    "slaveshell.reveal",
    "slaveshell.router",
    "slaveshell.sandbox",
    "slaveshell.shell_cli",
    "slaveshell.terminal",
]

# What the client, the master and the worker share: messages and their checks, the framing, credit windows,
# escapes, transcripts, policy, the copy's stream and the fleet's logic. No socket, no Twisted; cpfiles and
# cpreceiver read and write the copied files (blocking file I/O, shared by the client and the worker).
VOCABULARY = [
    "slaveshell",
    "slaveshell.cpfiles",
    "slaveshell.cpreceiver",
    "slaveshell.cpwire",
    "slaveshell.display",
    "slaveshell.escape",
    "slaveshell.fleet",
    "slaveshell.fleet.batch",
    "slaveshell.fleet.drift",
    "slaveshell.fleet.gather",
    "slaveshell.fleet.nodeset",
    "slaveshell.fleet.outcome",
    "slaveshell.fleet.probe",
    "slaveshell.fleet.targets",
    "slaveshell.flow",
    "slaveshell.framing",
    "slaveshell.hidden",
    "slaveshell.policy",
    "slaveshell.protocol",
    "slaveshell.transcript",
    "slaveshell.wire",
]

# Only the master and the worker: PB and Banana, Deferreds, a reactor's types, Twisted's transports, and the
# changes to upstream code.
PLUMBING = [
    "slaveshell.banana_bounds",
    "slaveshell.banana_buffer",
    "slaveshell.clock",
    "slaveshell.deferreds",
    "slaveshell.lean_calls",
    "slaveshell.remote",
    "slaveshell.upstream",
    "slaveshell.write_now",
]

ROOMS = {"client": CLIENT, "vocabulary": VOCABULARY, "plumbing": PLUMBING}
# What each room may import of the others (and of itself).
MAY_IMPORT = {"client": {"client", "vocabulary"}, "vocabulary": {"vocabulary"}, "plumbing": {"plumbing", "vocabulary"}}
FORBIDDEN = ("twisted", "zope", "buildbot", "buildbot_worker", "autobahn", "master_side", "slave_side")


def _path(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(module: str) -> set[str]:
    """Every module `module`'s import statements name (those inside functions too), absolute."""
    path = _path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import framing`
    return names


def _room(name: str) -> str | None:
    return next((room for room, modules in ROOMS.items() if name in modules), None)


def test_every_module_of_slaveshell_is_in_exactly_one_room():
    found = sorted(_module(p) for p in (ROOT / "slaveshell").rglob("*.py"))
    listed = sorted(CLIENT + VOCABULARY + PLUMBING)
    assert listed == found


@pytest.mark.parametrize("module", CLIENT + VOCABULARY + PLUMBING)
def test_each_room_imports_only_from_itself_and_the_rooms_below(module):
    room = _room(module)
    assert room is not None
    wrong = {name: _room(name) for name in _imports(module) if _room(name) not in (None, *MAY_IMPORT[room])}
    assert wrong == {}
    if room != "plumbing":
        assert sorted(n for n in _imports(module) if n.split(".")[0] in FORBIDDEN) == []


def _twisted_after(code: str) -> list[str]:
    """The Twisted (and zope) modules loaded once `code` has run in a fresh interpreter on this tree."""
    check = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope')))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path])))
    assert done.returncode == 0, done.stderr
    loaded: list[str] = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("module", CLIENT + VOCABULARY)
def test_the_client_and_the_vocabulary_import_no_twisted(module):
    assert _twisted_after(f"import {module}") == []


SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_console_script_starts_without_twisted(script):
    """The entry point as its console script runs it, through its whole parser (`--help`: every subcommand's
    arguments are added)."""
    module, _, function = SCRIPTS[script].partition(":")
    assert _room(module) == "client"
    code = (f"import contextlib, io\nfrom {module} import {function} as main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main(['--help'])")
    assert _twisted_after(code) == []
