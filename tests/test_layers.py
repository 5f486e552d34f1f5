"""The product's rooms and the order they stand in: an import may go down the layers or stay in its room, never
up; no import circle among the product's modules; the client and the vocabulary import no Twisted; the public
names (master.cfg, the entry points, the console scripts) still import.

Every import counts: at module level, inside functions (a deferred import is a circle put off, not removed), and
under `TYPE_CHECKING` (a type-only circle is still two modules that must be read together). There are no
exceptions: a lower room that needs something of a higher one defines a Protocol of what it uses and is given it."""

from __future__ import annotations

import ast
import importlib
import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRODUCT = ("slaveshell", "master_side", "slave_side")

# Rooms, lowest first. A module may import from its own room and from rooms in earlier layers; rooms of one
# layer are independent of each other. A module's room is its package (`master_side.sessions`), or for a
# module at a package's top (`master_side.service`) that package.
LAYERS: list[tuple[str, ...]] = [
    ("slaveshell.vocabulary",),                          # typed events, encoders, checks: no I/O, no Twisted
    ("slaveshell.files", "slaveshell.fleet"),            # a copy's files on disk | a fleet run's sans-I/O core
    ("slaveshell.plumbing", "slaveshell.client"),        # Twisted/PB for master and worker | the operator's tools
    ("slaveshell",),                                     # public names kept at the top: policy, cli, shell_cli
    ("slave_side",),                                     # the worker: knows nothing of the master
    ("master_side.glue",),                               # Buildbot's and Twisted's own code, patched and asked
    ("master_side.holds",),                              # held builds
    ("master_side.sessions",),                           # live sessions, the worker's link
    ("master_side.audit",),                              # transcripts, the index, reads, search, retention
    ("master_side.copying",),                            # `slaveshell cp` relayed and recorded
    ("master_side.cluster",),                            # the site's other masters, through the router
    ("master_side.operators",),                          # what an operator may ask, whatever the door
    ("master_side.fleet",),                              # fleet runs and facts, on the operators' API
    ("master_side.shell_socket", "master_side.www"),     # the two doors
    ("master_side",),                                    # ShellService, its config: the rooms put together
]

NO_TWISTED = ("slaveshell.vocabulary", "slaveshell.files", "slaveshell.fleet", "slaveshell.client")


def product_modules() -> dict[str, pathlib.Path]:
    found = {}
    for pkg in PRODUCT:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = f
    return found


MODULES = product_modules()


def imports(name: str, path: pathlib.Path) -> dict[str, int]:
    """Every module `name` imports (product and third-party alike), with the line of its first import."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: dict[str, int] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for t in targets:
            out.setdefault(t, node.lineno)
    return out


def product_edges() -> dict[str, dict[str, int]]:
    edges = {}
    for name, path in MODULES.items():
        found: dict[str, int] = {}
        for target, line in imports(name, path).items():
            # `import master_side.sessions.session` names its packages too: the module is what counts.
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name and not name.startswith(target + "."):
                found.setdefault(target, line)
        edges[name] = found
    return edges


EDGES = product_edges()


def room(module: str) -> str:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    rooms = {r for layer in LAYERS for r in layer}
    while package not in rooms and "." in package:
        package = package.rsplit(".", 1)[0]
    return package


LAYER_OF = {r: i for i, layer in enumerate(LAYERS) for r in layer}


def upward_imports() -> set[tuple[str, str]]:
    bad = set()
    for importer, targets in EDGES.items():
        for imported in targets:
            a, b = room(importer), room(imported)
            if a != b and LAYER_OF[b] >= LAYER_OF[a]:
                bad.add((importer, imported))
    return bad


def circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in EDGES[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(EDGES):
        if v not in index:
            visit(v)
    return out


def test_every_product_module_is_in_a_room():
    rooms = {r for layer in LAYERS for r in layer}
    assert {room(m) for m in MODULES} <= rooms
    assert all(r in MODULES for r in rooms), "a room without its package"


def test_no_import_goes_up_the_layers():
    found = sorted(upward_imports())
    assert not found, "imports against the layers:\n" + "\n".join(
        f"  {a} ({room(a)}) -> {b} ({room(b)}), line {EDGES[a][b]}" for a, b in found)


def test_no_import_circle_among_the_product_modules():
    left = circles()
    assert not left, "import circles:\n" + "\n".join(f"  {len(c)}: {', '.join(c)}" for c in left)


@pytest.mark.parametrize("package", NO_TWISTED)
def test_the_client_and_the_vocabulary_import_no_twisted(package):
    for name, path in MODULES.items():
        if name == package or name.startswith(package + "."):
            bad = sorted(t for t in imports(name, path) if t.split(".")[0] in ("twisted", "buildbot", "zope"))
            assert not bad, f"{name} imports {bad}"


def test_the_public_names_still_import():
    import master_side
    import slave_side
    from slaveshell.policy import Rule

    assert all(callable(x) for x in (master_side.ShellService, master_side.HoldForShell, slave_side.install, Rule))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    targets = list(project["scripts"].values()) + [
        v for group in project["entry-points"].values() for v in group.values()]
    for target in targets:
        module, _, attr = target.partition(":")
        assert getattr(importlib.import_module(module), attr)
