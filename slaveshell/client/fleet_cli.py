"""`slaveshell run` (one command on many workers, each in an ordinary audited session), `slaveshell facts` (what
each worker is, grouped by value so that drift shows) and `slaveshell runs` (the fleet runs recorded).

The run itself is the master's (master_side.fleet): this client asks for it on one framed connection, shows
each worker's progress as it comes (a live table on a terminal, a plain line per worker as it ends in a pipe),
then the gathered answer as `clush -b` shows it (slaveshell.fleet.gather) and exits 0 only when every targeted
worker ran and returned 0; 1 otherwise; 2 for bad usage. Ctrl-C asks the master to start no more and to end
what runs (a second Ctrl-C while it ends says so; a third leaves at once)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from slaveshell.client import connection as hop
from slaveshell.client.calls import CallError, MasterCalls
from slaveshell.client.calls import rows as answer_rows
from slaveshell.client.connection import HopError
from slaveshell.client.labels import run_label
from slaveshell.client.shell_cli import find_socket
from slaveshell.fleet import drift, gather
from slaveshell.fleet.batch import Batch, BatchError
from slaveshell.fleet.events import outcome_from_wire, progress_from_wire
from slaveshell.fleet.nodeset import natural_key
from slaveshell.fleet.outcome import Outcome
from slaveshell.fleet.script import MAX_SCRIPT
from slaveshell.fleet.targets import Selection, TargetError
from slaveshell.vocabulary.checks import ProtocolError
from slaveshell.vocabulary.display import cell, visible
from slaveshell.vocabulary.framing import Control, FrameType, Op

USAGE = 2


def _usage(text: str) -> int:
    print(f"slaveshell run: {text}", file=sys.stderr)
    return USAGE


def _env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"-e {visible(item)}: expected NAME=VALUE")
        env[name] = value
    return env


class LiveTable:
    """The run's progress on a terminal: a counts line, then one line per worker running (worker, state,
    elapsed, last line of output), redrawn in place at most ten times a second. Everything a worker wrote is
    escaped (slaveshell.vocabulary.display)."""

    def __init__(self, out: TextIO, targets: list[str]) -> None:
        self.out = out
        self.targets = targets
        self.rows: dict[str, tuple[str, float, bytes]] = {}
        self.done = 0
        self.drawn = 0
        self.last_draw = 0.0
        self.dirty = False

    def update(self, worker: str, phase: str, elapsed: float, last: bytes, outcome: Outcome | None) -> None:
        if outcome is not None:
            self.rows.pop(worker, None)
            self.done += 1
        else:
            self.rows[worker] = (phase, elapsed, last)
        self.dirty = True
        self.draw()

    def draw(self, force: bool = False) -> None:
        """Redraw (at most ten times a second, unless `force`); `tick` redraws what was left dirty."""
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        self.dirty = False
        size = shutil.get_terminal_size((100, 24))
        width, room = size.columns, max(1, size.lines - 4)
        lines = [f"{self.done}/{len(self.targets)} done, {len(self.rows)} running"]
        for worker in sorted(self.rows, key=natural_key)[:room]:
            phase, elapsed, last = self.rows[worker]
            line = f"{cell(worker, 16)} {phase:9} {elapsed:7.1f}s  " + visible(last.decode("utf-8", "replace"))
            lines.append(line[: width - 1])
        if len(self.rows) > room:
            lines.append(f"... {len(self.rows) - room} more running")
        self.clear()
        self._write("\n".join(lines) + "\n")
        self.drawn = len(lines)

    def tick(self) -> None:
        if self.dirty:
            self.draw()

    def clear(self) -> None:
        if self.drawn:
            self._write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class RunClient:
    """One fleet run asked of the master and followed to its end over one framed connection."""

    def __init__(self, path: str, request: dict[str, object], live: bool, json_out: bool) -> None:
        self.path = path
        self.request = request
        self.live = live
        self.json_out = json_out
        self.outcomes: dict[str, Outcome] = {}
        self.listed: list[Outcome] = []
        self.targets: list[str] = []
        self.table: LiveTable | None = None
        self.ended: dict[str, object] | None = None
        self.error: str | None = None
        self.error_kind: str | None = None
        self.interrupts = 0

    def run(self) -> int:
        try:
            connection = hop.Connection(hop.connect(self.path))
        except HopError as e:
            print(f"slaveshell run: {visible(str(e))}", file=sys.stderr)
            return 1
        try:
            return self._follow(connection)
        finally:
            connection.close()

    def _follow(self, connection: hop.Connection) -> int:
        call_id = connection.next_id()
        connection.control(Op.RUN, id=call_id, request=self.request)
        with selectors.DefaultSelector() as selector:
            selector.register(connection.sock, selectors.EVENT_READ)
            while self.ended is None and self.error is None:
                try:
                    if connection.out:
                        connection.flush()
                    if self.table is not None:
                        self.table.tick()
                    if not selector.select(0.2 if self.table is not None else 1.0):
                        continue
                    frames = connection.receive()
                except KeyboardInterrupt:
                    if not self._interrupt(connection):
                        return 130
                    continue
                except HopError as e:
                    self.error = f"the connection to the master was lost: {e}"
                    break
                for frame in frames:
                    if frame.type is FrameType.CONTROL:
                        self._message(hop.parse(frame), call_id)
        if self.table is not None:
            self.table.clear()
        if self.error is not None and not self.outcomes:
            print(f"slaveshell run: {visible(self.error)}", file=sys.stderr)
            return USAGE if self.error_kind == "bad request" else 1
        everything = list(self.outcomes.values()) + self.listed
        missing = [w for w in self.targets if w not in self.outcomes]
        if missing and self.error is not None:
            print(f"slaveshell run: {visible(self.error)}; no outcome for: {visible(' '.join(missing))}",
                  file=sys.stderr)
        if self.json_out:
            print(json.dumps(gather.as_json(everything), indent=1))
        else:
            sys.stdout.write(gather.render(everything))
        status = gather.exit_status(everything)
        return 1 if missing else status

    def _interrupt(self, connection: hop.Connection) -> bool:
        """Ctrl-C: the first asks the master to stop the run; the second says it is ending; the third
        leaves (False)."""
        self.interrupts += 1
        if self.interrupts == 1:
            print("\nslaveshell run: interrupted: starting no more workers, ending the running ones "
                  "(Ctrl-C twice more to leave at once)", file=sys.stderr)
            try:
                connection.control(Op.CLOSE, id=connection.next_id())
            except HopError:
                return False
            return True
        if self.interrupts == 2:
            print("slaveshell run: still ending the running sessions (HUP, then TERM, then KILL)", file=sys.stderr)
            return True
        return False

    def _message(self, message: Control, call_id: int) -> None:
        op, get = message.op, message.get
        try:
            if op is Op.ANSWER and message.call_id == call_id:
                if get("ok") is not True:
                    self.error = str(get("error") or "the master refused the run")
                    self.error_kind = str(get("kind") or "")
                    return
                targets = get("targets")
                self.targets = [str(t) for t in targets] if isinstance(targets, list) else []
                listed = get("listed")
                self.listed = [outcome_from_wire(o) for o in listed] if isinstance(listed, list) else []
                stale = get("stale")
                if isinstance(stale, dict) and stale:
                    ages = {str(w): float("inf") if not isinstance(a, (int, float)) or a < 0 else float(a)
                            for w, a in stale.items()}
                    print("slaveshell run: --where decided on old facts (slaveshell facts --refresh): "
                          + drift.aged(ages), file=sys.stderr)
                if self.targets:
                    n = len(self.targets)
                    print(f"slaveshell run: run {visible(str(get('run')))} on {n} worker{'' if n == 1 else 's'}, "
                          f"{get('batch')} at once", file=sys.stderr)
                if self.live and self.targets:
                    self.table = LiveTable(sys.stderr, self.targets)
                    self.table.draw(force=True)
            elif op is Op.PROGRESS:
                worker, phase, _session, elapsed, last = progress_from_wire(dict(message.fields))
                raw = get("outcome")
                outcome = outcome_from_wire(raw) if raw is not None else None
                if outcome is not None:
                    self.outcomes[worker] = outcome
                    if self.table is None and not self.json_out:
                        print(gather.ended_line(outcome), flush=True)
                note = get("note")
                if isinstance(note, str) and note:  # why the worker's part waits (a moderator's approval)
                    last = note[:400].encode()
                    if self.table is None:
                        print(f"slaveshell run: {visible(worker)}: {visible(note[:400])}", file=sys.stderr,
                              flush=True)
                if self.table is not None:
                    self.table.update(worker, phase, elapsed, last, outcome)
            elif op is Op.RUN_END:
                self.ended = dict(message.fields)
        except ProtocolError as e:
            self.error = f"the master sent a message this client cannot read: {e}"


def cmd_run(args: argparse.Namespace) -> int:
    try:
        Selection.parse(args.workers or (), args.where or ())
        if args.batch is not None:
            Batch.parse(args.batch)
        env = _env(args.env or [])
    except (TargetError, BatchError, ValueError) as e:
        return _usage(str(e))
    command = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    if bool(command) == bool(args.script):
        return _usage("give a command after -- or --script FILE (one of them)")
    if args.timeout is not None and args.timeout <= 0:
        return _usage("--timeout is a positive number of seconds")
    until = None
    if args.until is not None:
        from slaveshell.client.hold_cli import parse_duration

        try:
            until = parse_duration(args.until)
        except ValueError as e:
            return _usage(f"--until: {e}")
        if not args.include_offline:
            return _usage("--until is for --include-offline (how long the pending runs wait)")
    if args.pause and not args.include_offline:
        return _usage("--pause is for --include-offline (the workers paused until their pending run succeeds)")
    request: dict[str, object] = {"workers": list(args.workers or []), "where": list(args.where or []),
                                  "batch": args.batch, "timeout": args.timeout, "env": env, "cwd": args.directory,
                                  "reason": args.reason, "include_offline": args.include_offline,
                                  "until": until, "pause": args.pause}
    if args.script:
        try:
            with open(args.script, "rb") as f:
                script = f.read(MAX_SCRIPT + 1)
        except OSError as e:
            return _usage(f"--script {visible(args.script)}: {visible(e.strerror or str(e))}")
        if not script or len(script) > MAX_SCRIPT:
            return _usage(f"--script {visible(args.script)}: a script is 1 byte to {MAX_SCRIPT // 1024} KiB")
        request["script"] = base64.b64encode(script).decode("ascii")
    else:
        import shlex

        request["command"] = command[0] if len(command) == 1 else shlex.join(command)
    live = sys.stderr.isatty() and not args.json and os.environ.get("TERM", "dumb") != "dumb"
    return RunClient(find_socket(args), request, live, args.json).run()


def cmd_facts(args: argparse.Namespace) -> int:
    try:
        Selection.parse(args.workers or (), ())
    except TargetError as e:
        print(f"slaveshell facts: {e}", file=sys.stderr)
        return USAGE
    calls = MasterCalls(find_socket(args), timeout=300.0)
    try:
        answer = calls.call(Op.FACTS, workers=list(args.workers or []), refresh=bool(args.refresh))
    except CallError as e:
        print(f"slaveshell facts: {visible(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slaveshell facts: interrupted", file=sys.stderr)
        return 130
    finally:
        calls.close()
    raw = answer.get("reports")
    reports = raw if isinstance(raw, list) else []
    if args.json:
        print(json.dumps(reports, indent=1))
        return 0
    parsed = [drift.Report(str(r["worker"]), {str(k): str(v) for k, v in dict(r["facts"]).items()},
                           float(r["taken"])) for r in reports if isinstance(r, dict)]
    workers = answer.get("workers")
    named = [str(w) for w in workers] if isinstance(workers, list) else []
    probes = answer.get("probes")
    stale = answer.get("stale_after")
    have = {r.worker for r in parsed}
    sys.stdout.write(drift.render(parsed, [str(p) for p in probes] if isinstance(probes, list) else [], time.time(),
                                  float(stale) if isinstance(stale, (int, float)) else drift.STALE_AFTER,
                                  without=[w for w in named if w not in have]))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    run = args.run
    cancel = run == "cancel"
    if cancel:
        if not args.target:
            print("slaveshell runs: cancel needs a run's id (slaveshell runs cancel RUN)", file=sys.stderr)
            return USAGE
        run = args.target
    elif args.target:
        print(f"slaveshell runs: unexpected {visible(args.target)}", file=sys.stderr)
        return USAGE
    calls = MasterCalls(find_socket(args))
    try:
        if cancel:
            print(visible(str(calls.call(Op.RUNS, run=run, cancel=True).get("text"))))
            return 0
        rows = answer_rows(calls.call(Op.RUNS, **({"run": run} if run else {})))
    except CallError as e:
        print(f"slaveshell runs: {visible(str(e))}", file=sys.stderr)
        return 1
    finally:
        calls.close()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if run:
        for row in rows:
            what = run_label(row)
            print(f"run {visible(row['id'])} by {visible(row['operator'])} at {str(row['started'])[:19]} UTC: "
                  f"{visible(what)}")
            print(f"  asked: {visible(row['selection'])}; batch {row['batch']}; {visible(row['state'])}"
                  + (f"; reason: {visible(row['reason'])}" if row.get("reason") else ""))
            print(f"  {visible(row.get('summary') or 'running')}")
            workers = row.get("workers")
            for w in workers if isinstance(workers, list) else []:
                status = "" if w.get("exit_status") is None else f" (exit {w['exit_status']})"
                print(f"  {cell(w['worker'], 20)} {cell(str(w['state']) + status, 22)} "
                      f"session {visible(w.get('session_id') or '-')}"
                      + (f"  {visible(w['reason'])}" if w.get("reason") else ""))
        return 0
    print(f"{'RUN':13} {'STARTED (UTC)':20} {'OPERATOR':12} {'STATE':12} {'TARGETS':8} SUMMARY / COMMAND")
    for row in rows:
        targets = len(str(row.get("targets") or "").split())
        what = run_label(row, digits=12)
        print(f"{cell(row['id'], 13)} {str(row['started'])[:19].replace('T', ' '):20} {cell(row['operator'], 12)} "
              f"{cell(row['state'], 12)} {targets:<8} {visible(row.get('summary') or '-')}  |  {visible(what)}")
    return 0


def add_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                with_socket: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    r = with_socket(sub.add_parser(
        "run", help="run a command on many workers (an audited session on each), outputs gathered",
        usage="slaveshell run [--workers GLOB]... [--where FACT=VALUE]... [--batch N|P%%] [--timeout S] "
              "[--include-offline [--until DURATION] [--pause]] [-e NAME=VALUE]... [-C DIR] [--reason TEXT] "
              "[--json] (-- COMMAND... | --script FILE)"))
    r.add_argument("--workers", action="append", metavar="GLOB", help="workers whose names match (repeatable)")
    r.add_argument("--where", action="append", metavar="FACT=VALUE",
                   help="only workers whose fact matches (FACT!=VALUE: does not; VALUE a glob; repeatable)")
    r.add_argument("--batch", "-b", metavar="N|P%", help="at most N workers (or P%% of them) at once")
    r.add_argument("--timeout", type=float, metavar="S", help="end a worker's command after S seconds")
    r.add_argument("-e", dest="env", action="append", metavar="NAME=VALUE", help="set an environment variable")
    r.add_argument("-C", dest="directory", metavar="DIR", help="run in DIR on each worker")
    r.add_argument("--reason", metavar="TEXT", help="why (a ticket, an incident): kept in the audit index")
    r.add_argument("--script", metavar="FILE", help="run this script on each worker (kept in a private "
                   "temporary file there, run, removed)")
    r.add_argument("--json", action="store_true", help="per worker: state, exit status, duration, output, session")
    r.add_argument("--include-offline", action="store_true",
                   help="the workers not connected now run it when they next attach (pending runs)")
    r.add_argument("--until", metavar="DURATION", help="how long pending runs wait (default 7d; 12h, 30d, ...)")
    r.add_argument("--pause", action="store_true",
                   help="pause each pending worker in Buildbot as it attaches, until its run succeeded")
    r.add_argument("command", nargs=argparse.REMAINDER)
    r.set_defaults(func=cmd_run)

    f = with_socket(sub.add_parser("facts", help="what each worker is, grouped by value (drift at a glance)"))
    f.add_argument("--workers", action="append", metavar="GLOB", help="workers whose names match (repeatable)")
    f.add_argument("--refresh", action="store_true", help="take the facts again now (a run of the probe)")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_facts)

    rs = with_socket(sub.add_parser(
        "runs", help="fleet runs from the audit index (RUN: one, with each worker; cancel RUN: what it has pending)",
        usage="slaveshell runs [RUN | cancel RUN] [--json]"))
    rs.add_argument("run", metavar="RUN", nargs="?")
    rs.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_runs)
