"""`HoldForShell`: a build step that keeps a failed build (and its worker slot) held so an operator can step
into it with `buildbot-shell --build BUILDID WORKER`, until released, timed out, or stopped.

In a factory::

    from master_side import HoldForShell
    factory.addStep(HoldForShell(when='failure', timeout=1800))
    # or: wait for a person, not for the clock (master_side.holds.deadline)
    factory.addStep(HoldForShell(when='failure', wait_for_operator=12 * 3600, idle_after_attach=1800,
                                 max_hold=24 * 3600))

The step holds the build as a normal running step; its log and summary carry the command to step in and the
hold's deadline. The build then finishes with the result it had before the hold.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from buildbot.process import buildstep
from buildbot.process.results import CANCELLED, EXCEPTION, FAILURE, SKIPPED, SUCCESS
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from master_side.glue.services import master_services
from master_side.holds.deadline import DEFAULT_TIMEOUT, HoldTimes, Limit, limits, number, plain
from master_side.holds.notices import announce, reach, socket_of, step_in_command
from slaveshell.plumbing.clock import Clock
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible

if TYPE_CHECKING:
    from buildbot.master import BuildMaster
    from buildbot.process.botmaster import BotMaster
    from buildbot.process.build import Build

log = Logger()

WHEN = ("failure", "always", "never")


class StopReason(enum.Enum):
    """Why a hold ended."""

    RELEASED = "released"  # by an operator
    TIMED_OUT = "timed out"
    STOPPED = "stopped"  # the build was stopped (interrupted): its shells end with it


@dataclass
class Hold:
    """A build held for a shell: where it ran and with what environment."""

    build_id: int
    builder: str
    build_number: int
    worker: str
    workdir: str  # relative to the worker's basedir
    env: dict[str, str] = field(default_factory=dict)
    released: defer.Deferred[str] = field(default_factory=defer.Deferred)
    # Told why the hold ended (the shell service ends the build's sessions when the build is stopped).
    listeners: list[Callable[[StopReason], None]] = field(default_factory=list)
    reason: StopReason | None = None
    # The hold's deadlines (master_side.holds.deadline); the step sets them when it starts holding.
    times: HoldTimes | None = None

    def stepped_in(self, now: float) -> None:
        """An operator opened a session into the build: the hold's deadline moves (master_side.holds.deadline)."""
        if self.times is not None:
            self.times.active(now)

    def deadline_notice(self) -> str | None:
        """For an operator stepping in: when the hold ends and how to extend it."""
        if self.times is None:
            return None
        return (f"build {self.builder} #{self.build_number} is held {self.times.summary()}; "
                f"`slaveshell hold extend {self.build_id} 2h` extends it (up to its max_hold)")

    def release(self, why: str, reason: StopReason = StopReason.RELEASED) -> bool:
        """End the hold; `why` is shown in the build's log, `reason` tells the listeners. False when it had
        ended already."""
        if self.released.called:
            return False
        self.reason = reason
        for listener in self.listeners:
            try:
                listener(reason)
            except Exception:
                log.failure("build {bid}: error telling a listener about the release", bid=self.build_id)
        self.released.callback(why)
        return True


# At most this many waiters at once, over all builds and operators (each holds a timer and a poll).
MAX_WAITING = 64
# ... and at most this many for one operator, so one operator cannot take every place.
MAX_WAITING_PER_OPERATOR = 8
# How often a waiter looks whether its build went on without a hold (finished, stopped, lost its worker).
WAIT_POLL = 0.5
# How often a hold looks at its build's sessions (someone stepped in, typed) and at its deadline.
HOLD_TICK = 0.5
# The step's text follows a moving deadline at most this often (seconds).
SUMMARY_EVERY = 10.0


class NotHeld(Exception):
    """The build will not be held for a shell; the message is for the operator."""


def hold_ahead(botmaster: BotMaster, build_id: int, worker: str | None = None) -> bool:
    """Whether build `build_id` is running on this master (on `worker`, when given) with a HoldForShell step still
    to run (or starting).
    Looks at the botmaster's builders' `building` lists and each Build's `steps` (the steps still to run, made
    by `Build.setupBuild`), `stepFactories` before that, and `currentStep` (buildbot/process/build.py)."""
    for builder in list(getattr(botmaster, "builders", {}).values()):
        for build in list(getattr(builder, "building", ())):
            if getattr(build, "buildid", None) != build_id:
                continue
            if getattr(build, "finished", False):
                return False
            if worker is not None and _worker_of(build) != worker:
                return False  # refused at once, as a build held elsewhere is: nothing to learn by waiting
            current = getattr(build, "currentStep", None)
            if isinstance(current, HoldForShell) and current.results is None:
                return True
            if hasattr(build, "steps"):
                return any(isinstance(step, HoldForShell) for step in build.steps)
            return any(isinstance(f, type) and issubclass(f, HoldForShell) for f in
                       (getattr(f, "step_class", type(f)) for f in getattr(build, "stepFactories", ())))
    return False


def _worker_of(build: Build) -> str | None:
    try:
        name = build.getWorkerName()
    except Exception:  # no worker yet (still being set up): not ours to wait for
        return None
    return name if isinstance(name, str) else None


class Holds:
    """The builds held for a shell (`held`) and the operators waiting for a running build to be held
    (`waiting`: `--build` a little early), by build id. ShellService owns one; the HoldForShell step finds it
    through the master (`holds_of`)."""

    def __init__(self) -> None:
        self.held: dict[int, Hold] = {}
        self.waiting: dict[int, list[defer.Deferred[Hold]]] = {}

    def get(self, build_id: int | None) -> Hold | None:
        return self.held.get(build_id) if build_id is not None else None

    def waiters(self) -> int:
        return sum(len(waiters) for waiters in self.waiting.values())

    def add(self, hold: Hold) -> None:
        self.held[hold.build_id] = hold
        self.tell_waiters(hold.build_id, hold)

    def remove(self, build_id: int) -> None:
        self.held.pop(build_id, None)

    def wait_for(self, botmaster: BotMaster, build_id: int, timeout: float, reactor: Clock) -> defer.Deferred[Hold]:
        """Fires with the build's Hold once HoldForShell holds it. Fails with NotHeld when the build goes on
        without one (finished, its HoldForShell step did not hold it, stopped) or after `timeout` seconds. Cancel
        it when the operator stops waiting: nothing of the wait stays behind."""
        if build_id in self.held:
            return defer.succeed(self.held[build_id])
        d: defer.Deferred[Hold] = defer.Deferred()
        self.waiting.setdefault(build_id, []).append(d)

        def fail(why: str) -> None:
            if not d.called:
                d.errback(NotHeld(why))

        def check() -> None:
            if d.called:
                return
            if build_id in self.held:
                d.callback(self.held[build_id])
            elif not hold_ahead(botmaster, build_id):
                fail(f"build {build_id} went on without being held for a shell (finished, or its HoldForShell "
                     "step did not hold it)")

        poller = task.LoopingCall(check)
        poller.clock = cast(IReactorTime, reactor)  # a zope interface: mypy cannot match it structurally
        poller.start(WAIT_POLL, now=False)
        timer = reactor.callLater(timeout, fail, f"build {build_id} was not held within {timeout:g} s")

        def done(result: Hold | Failure) -> Hold | Failure:
            if poller.running:
                poller.stop()
            if timer.active():
                timer.cancel()
            waiters = self.waiting.get(build_id, [])
            if d in waiters:
                waiters.remove(d)
            if not waiters:
                self.waiting.pop(build_id, None)
            return result

        d.addBoth(done)
        return d

    def tell_waiters(self, build_id: int, hold: Hold | None) -> None:
        """The build is held (`hold`), or its HoldForShell step decided not to hold it (None)."""
        for waiter in self.waiting.pop(build_id, []):
            if waiter.called:
                continue
            if hold is not None:
                waiter.callback(hold)
            else:
                waiter.errback(NotHeld(f"build {build_id} was not held for a shell (its HoldForShell step did "
                                       "not hold it)"))


@runtime_checkable
class HoldHost(Protocol):
    """What a held build asks of the master's ShellService, found among the master's services: the builds held
    for a shell, and who is in a build's sessions."""

    @property
    def holds(self) -> Holds: ...

    def build_activity(self, build_id: int) -> dict[str, tuple[int, int]]:
        """The build's live sessions: their input bytes and viewers, by session id."""


def hold_host(master: BuildMaster) -> HoldHost | None:
    for service in master_services(master):
        if isinstance(service, HoldHost):
            return service
    return None


def holds_of(master: BuildMaster) -> Holds:
    """The Holds of the master's ShellService. Without a ShellService, a Holds of the step's own (nobody can
    step in then, and the hold times out)."""
    host = hold_host(master)
    return host.holds if host is not None else Holds()


class HoldForShell(buildstep.BuildStep):
    """Holds the build until released, stopped, or its deadline (master_side.holds.deadline):

    wait_for_operator: seconds to the first operator stepping in (None: only max_hold counts before that).
    idle_after_attach: once someone has stepped in, seconds with nothing typed or nobody connected (None: only
        max_hold counts after that).
    max_hold: the hard maximum from the hold's start; extensions never pass it.
    timeout: the same as max_hold (its older name; max_hold wins when both are given). Without any of these the
        hold lasts 1800 s; with wait_for_operator or idle_after_attach alone, at most 24 h.
    """

    name = "hold for shell"
    renderables = ["when", "timeout"]

    def __init__(self, when: str = "failure", timeout: float | None = None, property: str = "hold_for_shell",
                 wait_for_operator: float | None = None, idle_after_attach: float | None = None,
                 max_hold: float | None = None, **kwargs: object) -> None:
        if when not in WHEN:
            from buildbot import config

            config.error(f"HoldForShell: when must be one of {WHEN}")
        values = (timeout, wait_for_operator, idle_after_attach, max_hold)
        # A renderable (a build property) is checked once rendered, when the step runs.
        _, problem = limits(*values) if all(plain(v) for v in values) else (0.0, None)
        if problem is not None:
            from buildbot import config

            config.error(problem)
        # It must run after a failure: that is when it is wanted.
        kwargs.setdefault("alwaysRun", True)
        super().__init__(**kwargs)
        self.when = when
        self.timeout = timeout
        self.wait_for_operator = wait_for_operator
        self.idle_after_attach = idle_after_attach
        self.max_hold = max_hold
        self.property = property
        self._hold: Hold | None = None
        # The build's sessions at the last look: input bytes and viewers, by session id (_activity).
        self._seen: dict[str, tuple[int, int]] = {}
        self._shown = ""  # the step's text as last set (_describe), the limit it named, and when
        self._shown_limit: Limit | None = None
        self._shown_at = 0.0

    def _wanted(self) -> bool:
        if self.getProperty(self.property):
            return True
        if self.when == "always":
            return True
        return self.when == "failure" and self.build.results in (FAILURE, EXCEPTION)

    def _environment(self) -> dict[str, str]:
        """The builder's env and what the build's steps added, as the steps ran with them."""
        env: dict[str, str] = {}
        for source in [getattr(self.build, "env", None)] + [getattr(s, "env", None) for s in self.build.executedSteps]:
            if isinstance(source, dict):
                env.update({str(k): str(v) for k, v in source.items() if isinstance(v, (str, int, float))})
        return env

    def _web_page(self, build_id: int) -> str | None:
        """The web terminal's page for this build (master_side.www), when the master serves that plugin."""
        www = getattr(self.master.config, "www", None) or {}
        if "slaveshell" not in (www.get("plugins") or {}):
            return None
        return f"{self.master.config.buildbotURL}#/slaveshell/build/{build_id}"

    @deferred
    async def run(self) -> int:
        """Hold the build until released, timed out or stopped (see the module); the step's result: SUCCESS,
        CANCELLED when the build was stopped, SKIPPED when not wanted."""
        if not self._wanted():
            self.descriptionDone = ["not held"]
            holds_of(self.master).tell_waiters(self.build.buildid, None)
            return SKIPPED
        build = self.build
        builder = build.builder.name
        worker = build.getWorkerName()
        workdir = os.path.join(build.builder.config.workerbuilddir, self.workdir or build.workdir)
        hold = Hold(build.buildid, builder, build.number, worker, workdir, self._environment())
        self._hold = hold
        holds = holds_of(self.master)
        from twisted.internet import reactor as _reactor

        reactor: Clock = _reactor
        max_hold, problem = limits(number(self.timeout), self.wait_for_operator, self.idle_after_attach,
                                    self.max_hold)
        wait, idle = self.wait_for_operator, self.idle_after_attach
        if problem is not None:  # a rendered timeout that is no number of seconds: the default hold
            log.warn("build {bid}: {problem}; holding for {s:g} s", bid=hold.build_id, problem=problem,
                     s=DEFAULT_TIMEOUT)
            max_hold, wait, idle = DEFAULT_TIMEOUT, None, None
        times = hold.times = HoldTimes(reactor.seconds(), max_hold, wait, idle)
        socket = socket_of(self.master)  # named with --socket when it is not the default one
        there = reach(socket)
        command = step_in_command(hold.build_id, worker, socket)
        self._describe(command, times, reactor.seconds())
        holds.add(hold)
        stdio = await self.addLog("hold")
        page = self._web_page(hold.build_id)
        if page is not None:
            await self.addURL("shell in the browser", page)
        browser = (f"or in the browser (a terminal in this build, and a release button):\n\n    {page}\n\n"
                   if page else "")
        ends = "".join(f"  - {line},\n" for line in times.explained())
        await stdio.addStdout(
            f"Build {builder} #{build.number} (build id {hold.build_id}) is held on worker {worker} for a shell.\n"
            f"Step in from the master host:\n\n    {command}\n\n{browser}"
            f"The shell starts in {workdir} with the build's environment.\n"
            f"Release it with `slaveshell release {hold.build_id}{there}` or `~r` in the shell. It is released by "
            f"itself\n{ends}  - or when the build is stopped.\n"
            f"Operators with the 'shell' right on {worker} may extend it, up to max_hold:\n\n"
            f"    slaveshell hold extend {hold.build_id} 2h{there}\n")
        announce(self.master, hold, page)  # the reporters' notice (master_side.holds.notices), once per hold
        ticker = task.LoopingCall(self._tick, hold, times, command, reactor)
        ticker.clock = cast(IReactorTime, reactor)
        ticker.start(HOLD_TICK, now=False)
        try:
            why = await hold.released
        finally:
            if ticker.running:
                ticker.stop()
            holds.remove(hold.build_id)
        await stdio.addStdout(f"\nReleased: {why}\n")
        await stdio.finish()
        self.descriptionDone = [f"held for a shell; released: {why}"]
        log.info("build {bid}: hold released ({why})", bid=hold.build_id, why=visible(why))
        return CANCELLED if hold.reason is StopReason.STOPPED else SUCCESS

    def _describe(self, command: str, times: HoldTimes, now: float) -> None:
        """The step's text with the hold's deadline: at once when the limit changes, else at most every
        SUMMARY_EVERY seconds (typing moves an idle deadline on every tick; each text is a database write)."""
        text = f"held for a shell: {command}; {times.summary()}"
        _, limit = times.deadline()
        if text != self._shown and (limit is not self._shown_limit or now - self._shown_at >= SUMMARY_EVERY):
            self._shown, self._shown_limit, self._shown_at = text, limit, now
            self.description = self.descriptionDone = [text]
            self.updateSummary()

    def _tick(self, hold: Hold, times: HoldTimes, command: str, reactor: Clock) -> None:
        """Note who stepped in or typed since the last tick; release the hold at its deadline."""
        now = reactor.seconds()
        try:
            if self._activity(hold.build_id):
                times.active(now)
        except Exception:
            log.failure("build {bid}: cannot look at the hold's sessions", bid=hold.build_id)
        when, limit = times.deadline()
        if now >= when:
            hold.release(times.ended(limit), StopReason.TIMED_OUT)
            return
        self._describe(command, times, now)

    def _activity(self, build_id: int) -> bool:
        """Whether, since the last look, someone stepped into the build (a new session, a viewer more) or typed
        into one of its sessions (their input bytes grew)."""
        host = hold_host(self.master)
        if host is None:
            return False
        seen = host.build_activity(build_id)
        before, self._seen = self._seen, seen
        return any(sid not in before or bytes_in > before[sid][0] or viewers > before[sid][1]
                   for sid, (bytes_in, viewers) in seen.items())

    def interrupt(self, reason: str | Failure) -> defer.Deferred[None]:
        d = super().interrupt(reason)
        if self._hold is not None:
            self._hold.release(f"build stopped: {reason}", StopReason.STOPPED)
        return d
