"""`slaveshell approvals [ID]` (the requests waiting for a moderator's approval on four-eyes workers that you may
decide, and your own, then the fleet runs' parts among them still waiting for a free place to be asked; with ID,
that one and all of what it would do), `slaveshell approve ID` and `slaveshell deny
ID [--reason TEXT]` (master_side.operators.approvals). Everything a request says is the operator's or a worker's
text: shown escaped (slaveshell.vocabulary.display)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from slaveshell.client.calls import CallError, call_master, failed
from slaveshell.client.calls import rows as answer_rows
from slaveshell.client.connection import Interrupted
from slaveshell.client.shell_cli import find_socket
from slaveshell.vocabulary.display import cell, visible
from slaveshell.vocabulary.framing import Op


def _left(row: dict[str, object]) -> str:
    expires = row.get("expires")
    if not isinstance(expires, (int, float)):
        return "-"
    minutes, seconds = divmod(max(0, int(expires - time.time())), 60)
    return f"{minutes}m{seconds:02d}s"


def _what(row: dict[str, object]) -> str:
    """What the request would do, escaped; a cut one says so, and how to see all of it."""
    what = str(row.get("what", ""))
    total = row.get("what_chars")
    more = total - len(what) if isinstance(total, int) else 0
    return visible(what) + (f" [... {more} more characters: slaveshell approvals {visible(str(row.get('id')))}]"
                            if more > 0 else "")


def cmd_approvals(args: argparse.Namespace) -> int:
    fields = {"request": args.request} if args.request else {}
    try:
        rows = answer_rows(call_master(find_socket(args), Op.APPROVALS, **fields))
    except (CallError, Interrupted) as e:
        return failed(e)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.request and rows:
        _one(rows[0])
        return 0
    asked = [r for r in rows if not r.get("waits_for_place")]
    waiting = [r for r in rows if r.get("waits_for_place")]
    if not asked:
        print("no requests wait for your approval")
    else:
        print(f"{'REQUEST':13} {'OPERATOR':12} {'WORKER':16} {'KIND':8} {'LEFT':>7}  {'YOU':8} {'REASON':20} WHAT")
    for r in asked:
        you = "yours" if r.get("mine") else ("approve" if r.get("may_approve") else "-")
        print(f"{cell(r.get('id'), 13)} {cell(r.get('operator'), 12)} {cell(r.get('worker'), 16)} "
              f"{cell(r.get('kind'), 8)} {_left(r):>7}  {you:8} {cell(r.get('reason') or '-', 20)} {_what(r)}")
    if waiting:
        print(f"\n{len(waiting)} waiting for a free place to be asked (fleet runs' parts past the bounds on "
              "requests; a moderator decides each once it is asked):")
        print(f"{'REQUEST':13} {'OPERATOR':12} {'WORKER':16} {'RUN':12} {'LEFT':>7}  {'REASON':20} WHAT")
    for r in waiting:
        print(f"{cell(r.get('id'), 13)} {cell(r.get('operator'), 12)} {cell(r.get('worker'), 16)} "
              f"{cell(r.get('run') or '-', 12)} {_left(r):>7}  {cell(r.get('reason') or '-', 20)} {_what(r)}")
    return 0


def _one(r: dict[str, object]) -> None:
    """One request, all of what it would do."""
    place = bool(r.get("waits_for_place"))
    if r.get("mine"):
        you = "yours"
    elif r.get("may_approve"):
        you = "you may approve or deny it" + (" once it is asked" if place else "")
    else:
        you = "-"
    state = ("waits for a free place to be asked (a moderator decides it once it is)" if place
             else "waits for a moderator's approval")
    groups = r.get("moderated_by")
    moderators = ", ".join(str(g) for g in groups) if isinstance(groups, list) else "-"
    for label, value in (("request", r.get("id")), ("state", state), ("operator", r.get("operator")),
                         ("worker", r.get("worker")), ("kind", r.get("kind")), ("run", r.get("run") or "-"),
                         ("reason", r.get("reason") or "-"), ("left", _left(r)), ("moderated_by", moderators),
                         ("you", you)):
        print(f"{label + ':':14}{visible(str(value))}")
    print(f"{'what:':14}{_what(r)}")


def cmd_approve(args: argparse.Namespace) -> int:
    try:
        print(visible(str(call_master(find_socket(args), Op.APPROVE, request=args.request).get("text", ""))))
    except (CallError, Interrupted) as e:
        return failed(e)
    return 0


def cmd_deny(args: argparse.Namespace) -> int:
    try:
        answer = call_master(find_socket(args), Op.DENY, request=args.request, reason=args.reason)
    except (CallError, Interrupted) as e:
        return failed(e)
    print(visible(str(answer.get("text", ""))))
    return 0


def add_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                with_socket: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    ls = with_socket(sub.add_parser("approvals", help="requests on four-eyes workers waiting for a moderator's "
                                                      "approval (those you may decide, and your own)"))
    ls.add_argument("request", metavar="ID", nargs="?", help="this request, with all of what it would do")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_approvals)
    ap = with_socket(sub.add_parser("approve", help="approve a waiting request (a moderator of its worker, not "
                                                    "its operator): it starts now"))
    ap.add_argument("request", metavar="ID")
    ap.set_defaults(func=cmd_approve)
    dn = with_socket(sub.add_parser("deny", help="deny a waiting request: its operator is told, with your reason"))
    dn.add_argument("request", metavar="ID")
    dn.add_argument("--reason", metavar="TEXT", help="why (the operator sees it; at most 500 characters)")
    dn.set_defaults(func=cmd_deny)
