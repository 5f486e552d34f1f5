"""`slaveshell holds` (the builds held by HoldForShell, with their deadlines) and `slaveshell hold extend BUILD
DURATION` (a later deadline, up to the hold's max_hold; the 'shell' right on the build's worker)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable

from slaveshell.client.calls import CallError, MasterCalls
from slaveshell.client.calls import rows as answer_rows
from slaveshell.client.shell_cli import find_socket
from slaveshell.vocabulary.display import cell, visible
from slaveshell.vocabulary.framing import Op

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `2h`, `1h30m`, `1d`. ValueError otherwise."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (say 90s, 30m, 2h or 1h30m)")
    return float(sum(int(n) * _UNITS[u] for n, u in parts))


def _call(args: argparse.Namespace, op: Op, **fields: object) -> dict[str, object]:
    calls = MasterCalls(find_socket(args))
    try:
        return calls.call(op, **fields)
    finally:
        calls.close()


def _fail(error: Exception) -> int:
    print(f"slaveshell: {visible(str(error))}", file=sys.stderr)
    return 255


def _when(value: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) if isinstance(value, (int, float)) else "-"


def _left(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def cmd_holds(args: argparse.Namespace) -> int:
    try:
        holds = answer_rows(_call(args, Op.HOLDS))
    except CallError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(holds, indent=1))
        return 0
    if not holds:
        print("no builds are held")
        return 0
    print(f"{'BUILD':>7} {'BUILDER':16} {'#':>5} {'WORKER':16} {'ENDS (UTC)':20} {'LEFT':>7}  {'LIMIT':18} MAX (UTC)")
    for h in holds:
        limit = h.get("limit")
        reason = {"wait_for_operator": "nobody steps in", "idle_after_attach": "idle", "max_hold": "max_hold",
                  "extended": f"extension ({visible(h.get('extended_by') or '?')})"}.get(str(limit), "-")
        print(f"{h['build_id']:>7} {cell(h['builder'], 16)} {h['build_number']:>5} {cell(h['worker'], 16)} "
              f"{_when(h.get('deadline')):20} {_left(h.get('remaining')):>7}  {cell(reason, 18)} "
              f"{_when(h.get('max_end'))}")
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    try:
        seconds = parse_duration(args.duration)
    except ValueError as e:
        return _fail(e)
    try:
        answer = _call(args, Op.EXTEND, build=args.build, seconds=seconds)
    except CallError as e:
        return _fail(e)
    print(visible(answer.get("text", "")))
    return 0


def add_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                with_socket: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    hs = with_socket(sub.add_parser("holds", help="builds held by HoldForShell, with their deadlines"))
    hs.add_argument("--json", action="store_true")
    hs.set_defaults(func=cmd_holds)
    h = sub.add_parser("hold", help="act on a held build: hold extend BUILDID DURATION")
    # Before `extend` too (`slaveshell hold --master DIR extend ...`), as the top level's: unset unless given, so
    # that `extend`'s own (or the top level's) is not overwritten.
    where = h.add_mutually_exclusive_group()
    where.add_argument("--master", dest="top_master", metavar="DIR", default=argparse.SUPPRESS,
                       help="the master's basedir")
    where.add_argument("--socket", dest="top_socket", metavar="PATH", default=argparse.SUPPRESS,
                       help="the master's slaveshell socket")
    hsub = h.add_subparsers(dest="hold_cmd", required=True)
    ex = with_socket(hsub.add_parser("extend", help="hold the build until DURATION from now (at most its "
                                                    "max_hold); needs 'shell' on its worker"))
    ex.add_argument("build", metavar="BUILDID", type=int)
    ex.add_argument("duration", metavar="DURATION", help="90s, 30m, 2h, 1h30m")
    ex.set_defaults(func=cmd_hold)
