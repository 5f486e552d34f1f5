"""The audit index has one writer: the trail (master_side.audit.trail). A write method of the audit store
(master_side.audit.store.AuditStore) named anywhere else in the product packages fails here, called or passed on.

The write methods are read from the store's class, not listed by hand: its methods that reach a write
transaction (`engine.begin()`), in their own body (lambdas and nested functions included) or through the
store's other methods they name (the queue's closures included). Reads (`history`, `events_of`, `prunable`,
`read`) open connections, not transactions, and may be called from anywhere."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("master_side", "slaveshell", "slave_side")
STORE = ROOT / "master_side" / "audit" / "store.py"
# The trail, and the store itself.
WRITERS = {"master_side/audit/trail.py", "master_side/audit/store.py"}

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _self_names(fn: Function) -> set[str]:
    """The attributes of `self` that `fn` names anywhere in its body."""
    return {node.attr for node in ast.walk(fn)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"}


def _begins(fn: Function) -> bool:
    """Whether `fn` opens a write transaction: a call of `<engine>.begin()`."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "begin"
               for node in ast.walk(fn))


def store_writes(source: str, cls_name: str = "AuditStore") -> set[str]:
    """The public methods of class `cls_name` in `source` that write (see the module's docstring)."""
    tree = ast.parse(source)
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == cls_name)
    methods = {fn.name: fn for fn in cls.body if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def writes(name: str, seen: set[str]) -> bool:
        seen.add(name)
        fn = methods[name]
        return _begins(fn) or any(writes(other, seen) for other in _self_names(fn)
                                  if other in methods and other not in seen)

    return {name for name in methods if not name.startswith("_") and writes(name, set())}


def named(source: str, names: set[str]) -> Iterator[tuple[int, str]]:
    """(line, name) of each attribute in `source` spelled as one of `names`: `x.add_event(...)`, and
    `cb = x.add_event` too."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names:
            yield node.lineno, node.attr


def product_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_the_store_write_methods_are_found_in_its_class():
    writes = store_writes(STORE.read_text(encoding="utf-8"))
    # The ones there are today, so that a derivation that finds nothing cannot pass the next test.
    assert {"open_session", "update_session", "add_event", "link_uploads"} <= writes, writes
    assert not writes & {"history", "events_of", "prunable", "read", "running_sessions", "start", "stop"}, writes


def test_the_derivation_follows_private_methods_and_queued_closures():
    source = (
        "class AuditStore:\n"
        "    def note(self, x):\n"
        "        self._enqueue(lambda: self._put(x))\n"
        "    def _put(self, x):\n"
        "        with self.engine.begin() as conn:\n"
        "            conn.execute(x)\n"
        "    def _enqueue(self, fn):\n"
        "        self.queue.append(fn)\n"
        "    def look(self):\n"
        "        with self.engine.connect() as conn:\n"
        "            return conn.execute(1)\n"
    )
    assert store_writes(source) == {"note"}
    assert sorted(named("trail.store.note('x')\ncb = store.note\nstore.look()\n", {"note"})) == \
        [(1, "note"), (2, "note")]


def test_only_the_trail_writes_the_audit_index():
    writes = store_writes(STORE.read_text(encoding="utf-8"))
    found = []
    for path in product_files():
        where = path.relative_to(ROOT).as_posix()
        if where in WRITERS:
            continue
        for line, name in named(path.read_text(encoding="utf-8"), writes):
            found.append(f"{where}:{line}: {name}")
    assert not found, "the audit store written outside master_side/audit/trail.py:\n" + "\n".join(found)
