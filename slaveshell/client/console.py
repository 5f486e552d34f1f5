"""`slaveshell console`: the operator's console, a prompt_toolkit REPL over the master's socket.

It shows the fleet, completes worker names and session ids, and hands the terminal to `buildbot-shell` (or
`slaveshell attach/watch/replay`) for a session: when that ends or is detached, the console comes back as it was.
Talking to the master goes through a `Backend` (`MasterBackend`: calls over one framed connection, kept for the
console's life), so tests can drive the console with a pipe input, a dummy output and a fake backend.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from slaveshell.client.calls import CALL_TIMEOUT, CallError, MasterCalls, rows
from slaveshell.client.jobcontrol import Foreground, Job
from slaveshell.client.labels import command_label, master_label, recorded_by
from slaveshell.vocabulary.display import cell, visible
from slaveshell.vocabulary.framing import Op

COMMANDS = {
    "workers": "workers [--include-offline]: the fleet: connection, shell, pause, live sessions (with the other "
               "masters' offline workers of a multi-master site)",
    "sessions": "live and detached sessions",
    "shell": "shell [--reason TEXT] WORKER [COMMAND...]: a shell (or a command) on a worker",
    "attach": "attach ID: join a live session, or resume a detached one",
    "watch": "watch ID: watch a live session, read-only",
    "kill": "kill ID: end a live session",
    "history": "history [WORKER]: past sessions",
    "replay": "replay ID: play a session back (Ctrl-C stops)",
    "jobs": "sessions stopped with ~^Z (or Ctrl-Z in a command)",
    "fg": "fg [N]: continue a stopped session (the last one by default)",
    "help": "this list",
    "quit": "leave the console (or Ctrl-D)",
}
SESSION_COMMANDS = ("attach", "watch", "kill", "replay")
# One row of the master's answer to `workers`, `sessions` or `history` (slaveshell.client.calls.rows), as JSON decodes
# it.
Row = dict[str, object]


class Backend(Protocol):
    def workers(self, include_offline: bool = False) -> list[Row]: ...
    def sessions(self) -> list[Row]: ...
    def history(self, worker: str | None) -> list[Row]: ...
    def kill(self, session_id: str) -> str: ...
    def run_interactive(self, argv: list[str]) -> int | Job: ...
    def resume(self, job: Job) -> int | Job: ...
    def hang_up(self, job: Job) -> int: ...


class BackendError(Exception):
    pass


class MasterBackend:
    """Talks to the master over one framed connection, kept for the console's life (slaveshell.client.calls); the
    sessions themselves are child processes (`buildbot-shell`, `slaveshell attach`) that own the terminal."""

    def __init__(self, socket_path: str, timeout: float = CALL_TIMEOUT) -> None:
        self.socket = socket_path
        self.calls = MasterCalls(socket_path, timeout)
        self.foreground = Foreground(0)

    def _call(self, op: Op, **fields: object) -> dict[str, object]:
        try:
            return self.calls.call(op, **fields)
        except CallError as e:
            raise BackendError(str(e)) from None

    def _rows(self, op: Op, **fields: object) -> list[Row]:
        try:
            return rows(self._call(op, **fields))
        except CallError as e:
            raise BackendError(str(e)) from None

    def workers(self, include_offline: bool = False) -> list[Row]:
        return self._rows(Op.WORKERS, **({"include_offline": True} if include_offline else {}))

    def sessions(self) -> list[Row]:
        return self._rows(Op.SESSIONS)

    def history(self, worker: str | None) -> list[Row]:
        return self._rows(Op.HISTORY, filters={"worker": worker, "limit": 20} if worker else {"limit": 20})

    def kill(self, session_id: str) -> str:
        return str(self._call(Op.KILL, session=session_id).get("text", ""))

    def run_interactive(self, argv: list[str]) -> int | Job:
        """Hand the terminal over: the child owns it until it exits (its status) or stops (a Job)."""
        if argv[0] == "buildbot-shell":
            full = ["slaveshell.shell_cli", "--socket", self.socket, *argv[1:]]
        else:  # slaveshell SUBCOMMAND ARGS...
            full = ["slaveshell.cli", argv[1], "--socket", self.socket, *argv[2:]]
        return self.foreground.run(argv, [sys.executable, "-m", *full])

    def resume(self, job: Job) -> int | Job:
        return self.foreground.resume(job)

    def hang_up(self, job: Job) -> int:
        return self.foreground.hang_up(job)


class ConsoleCompleter(Completer):
    def __init__(self, console: Console) -> None:
        self.console = console

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        words = document.text_before_cursor.split(" ")
        current = words[-1]
        if len(words) == 1:
            candidates: Iterable[str] = COMMANDS
        elif len(words) == 2 and words[0] in ("shell", "history"):
            candidates = [str(w["name"]) for w in self.console.cached_workers]
        elif len(words) == 2 and words[0] in SESSION_COMMANDS:
            candidates = [str(s["id"]) for s in self.console.cached_sessions]
            if words[0] == "replay":
                candidates = list(candidates) + [str(r["id"]) for r in self.console.cached_history]
        else:
            candidates = []
        for candidate in candidates:
            if candidate.startswith(current):
                yield Completion(candidate, start_position=-len(current), display=visible(candidate))


class Console:
    def __init__(self, backend: Backend, input: Input | None = None, output: Output | None = None,
                 write: Callable[[str], None] | None = None) -> None:
        self.backend = backend
        self.write = write or (lambda text: print(text, end="", flush=True))
        self.cached_workers: list[Row] = []
        self.cached_sessions: list[Row] = []
        self.cached_history: list[Row] = []
        # Sessions handed over that stopped (~^Z), oldest first.
        self.jobs: list[Job] = []
        self.prompt: PromptSession[str] = PromptSession(
            "slaveshell> ", completer=ConsoleCompleter(self), history=InMemoryHistory(), input=input,
            output=output, complete_while_typing=False,
        )

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        self.show_workers()
        while True:
            try:
                line = self.prompt.prompt()
            except EOFError:
                self.hang_up_jobs()
                return 0
            except KeyboardInterrupt:
                continue
            try:
                if not self.execute(line):
                    return 0
            except BackendError as e:
                self.write(f"error: {visible(e)}\n")
            except KeyboardInterrupt:
                # Ctrl-C while a command waits for the master: that command stops, the console stays.
                self.write("interrupted\n")

    def execute(self, line: str) -> bool:
        """Run one command line; False means leave."""
        try:
            words = shlex.split(line)
        except ValueError as e:
            self.write(f"error: {visible(e)}\n")
            return True
        if not words:
            return True
        command, args = words[0], words[1:]
        if command in ("quit", "exit"):
            self.hang_up_jobs()
            return False
        if command == "help":
            for name, text in COMMANDS.items():
                self.write(f"  {name:9} {text}\n")
        elif command in ("workers", "ls"):
            if args not in ([], ["--include-offline"]):
                self.write("usage: workers [--include-offline]\n")
            else:
                self.show_workers(include_offline=bool(args))
        elif command == "sessions":
            self.show_sessions()
        elif command == "shell":
            if not args:
                self.write("usage: shell [--reason TEXT] WORKER [COMMAND...]\n")
            else:
                self._hand_over(["buildbot-shell", *args])
        elif command in ("attach", "watch", "replay"):
            if len(args) != 1:
                self.write(f"usage: {command} ID\n")
            else:
                self._hand_over(["slaveshell", command, args[0]])
        elif command == "kill":
            if len(args) != 1:
                self.write("usage: kill ID\n")
            else:
                self.write(visible(self.backend.kill(args[0])) + "\n")
        elif command == "jobs":
            for n, job in enumerate(self.jobs, 1):
                self.write(f"[{n}] stopped  {visible(' '.join(job.argv))}\n")
        elif command == "fg":
            self._resume(args)
        elif command == "history":
            self.show_history(args[0] if args else None)
        else:
            self.write(f"unknown command {visible(repr(command))}; 'help' lists them\n")
        return True

    def _hand_over(self, argv: list[str]) -> None:
        self._handed_back(argv, self.backend.run_interactive(argv))

    def _handed_back(self, argv: list[str], result: int | Job) -> None:
        if isinstance(result, Job):
            self.jobs.append(result)
            self.write(f"[{len(self.jobs)}] stopped  {visible(' '.join(argv))}  ('fg' continues it)\n")
            return
        self.write(f"[{visible(' '.join(argv))}: exit {result}]\n")
        self.refresh()

    def _resume(self, args: list[str]) -> None:
        if not self.jobs:
            self.write("no stopped sessions\n")
            return
        try:
            n = int(args[0].lstrip("%")) if args else len(self.jobs)
            job = self.jobs[n - 1]
            if n < 1:
                raise IndexError
        except (ValueError, IndexError):
            self.write(f"fg: no job {args[0]!r}; 'jobs' lists them\n")
            return
        self.jobs.remove(job)
        self.write(f"{visible(' '.join(job.argv))}\n")
        self._handed_back(job.argv, self.backend.resume(job))

    def hang_up_jobs(self) -> None:
        """Leaving: stopped sessions get SIGHUP, as a shell's jobs do when it exits (buildbot-shell then detaches
        its session, which `slaveshell attach` resumes)."""
        for job in self.jobs:
            status = self.backend.hang_up(job)
            self.write(f"[{visible(' '.join(job.argv))}: hung up, exit {status}]\n")
        self.jobs.clear()

    # -- views ---------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """The fleet and the live sessions again; False (the error shown) when the master did not answer: what
        was known before is kept for completion, never shown as if current."""
        try:
            self.cached_workers = self.backend.workers()
            self.cached_sessions = self.backend.sessions()
        except BackendError as e:
            self.write(f"error: {visible(e)}\n")
            return False
        return True

    def show_workers(self, include_offline: bool = False) -> None:
        if not self.refresh():
            return
        if include_offline:
            try:
                self.cached_workers = self.backend.workers(include_offline=True)
            except BackendError as e:
                self.write(f"error: {visible(e)}\n")
                return
        # On a multi-master site each row says which master holds the worker (master_side.cluster.view).
        site = any("masters" in w for w in self.cached_workers)
        self.write(f"{'WORKER':18} {'STATE':10} {'SHELL':6} {'SESSIONS':8} " + (f"{'MASTER':24} " if site else "")
                   + "INFO\n")
        for w in self.cached_workers:
            state = ("paused" if w["paused"] else "connected") if w["connected"] else "offline"
            shell = ("yes" if w["allowed"] else "denied") if w["shell"] else "no"
            info = cell(w.get("info") or w.get("system") or "", 60).rstrip()
            where = f"{cell(master_label(w), 24)} " if site else ""
            self.write(f"{cell(w['name'], 18)} {state:10} {shell:6} {w['sessions']:<8} {where}{info}\n")

    def show_sessions(self) -> None:
        if not self.refresh():
            return
        if not self.cached_sessions:
            self.write("no live sessions\n")
            return
        self.write(f"{'SESSION':13} {'WORKER':16} {'OPERATOR':12} {'STARTED (UTC)':20} {'STATE':9} {'REASON':20} "
                   "VIEWERS\n")
        for s in self.cached_sessions:
            when = s["started"]
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when if isinstance(when, (int, float)) else 0))
            listed = s["viewers"]
            viewers = ", ".join(f"{v['user']}({v['role']})" for v in listed
                                if isinstance(v, dict)) if isinstance(listed, list) else ""
            viewers = viewers or "-"
            where = f"{cell(s['master'], 12)} " if "master" in s else ""
            self.write(f"{cell(s['id'], 13)} {cell(s['worker'], 16)} {where}{cell(s['operator'], 12)} {started:20} "
                       f"{cell(s['state'], 9)} {cell(s.get('reason') or '-', 20)} {visible(viewers)}\n")

    def show_history(self, worker: str | None) -> None:
        self.cached_history = self.backend.history(worker)
        if not self.cached_history:
            self.write("no sessions recorded\n")
            return
        site = any("site_master" in r for r in self.cached_history)
        for r in self.cached_history:
            self.write(f"{cell(r['id'], 13)} {visible(str(r['started'])[:19].replace('T', ' '))} "
                       f"{cell(r['operator'], 12)} {cell(r['worker'], 16)} "
                       + (f"{cell(recorded_by(r), 12)} " if site else "")
                       + f"{cell(r['end_reason'] or r['state'], 16)} "
                       f"{cell(r.get('reason') or '-', 20)} {visible(command_label(r))}\n")
