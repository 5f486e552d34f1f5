"""What slaveshell asks of Buildbot's master: a worker's live PB connection, where a builder or a held build
works, pausing a worker for a session's life, and what a worker reported about itself.

Everything read here is Buildbot 4.3's (see /work/shared/design/buildbot-4.3-facts.md): `master.workers`
(`registrations`, `connections`, `getWorkerByName`), a worker's `worker_commands`, `_paused`, `pause()`,
`unpause()`, `info` and `worker_system`, and `master.botmaster.builders[name].config` (`workernames`,
`workerbuilddir`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from buildbot.worker.protocols import pb as bbpb

from slaveshell.plumbing.remote import tables
from slaveshell.vocabulary.protocol import WORKER_COMMAND, OpenRequest

if TYPE_CHECKING:
    from buildbot.master import BuildMaster
    from buildbot.worker.base import AbstractWorker


class HeldPlace(Protocol):
    """Where a build held for a shell ran (master_side.holds.step.Hold): its worker, its directory relative
    to the worker's basedir, and its environment."""

    @property
    def worker(self) -> str: ...
    @property
    def workdir(self) -> str: ...
    @property
    def env(self) -> Mapping[str, str]: ...


class RouteError(Exception):
    """The worker cannot be reached for a shell; the message names it and is meant for the operator."""


@dataclass(frozen=True)
class WorkerFacts:
    """One configured worker as Buildbot sees it."""

    name: str
    connected: bool
    shell: bool  # connected and has slaveshell's worker command
    paused: bool
    system: str
    info: str  # a short line: OS, buildbot-worker version, host
    # The PB reference tables of its connection (slaveshell.plumbing.remote.tables), for debugging: the objects the
    # master exports to it now, and those it said it exported at its last slaveshell answer (None before one).
    pb_references: dict[str, int | None] | None = None


class BuildbotGlue:
    """Reads and pauses Buildbot's workers and builders. `master` gives the current BuildMaster (a service
    learns its master only once it has a parent)."""

    def __init__(self, master: Callable[[], BuildMaster]) -> None:
        self._master = master
        # Sessions holding each worker paused, and whether we paused it (never unpause someone else's pause).
        self._pausing: dict[str, set[str]] = {}

    def route(self, name: str) -> bbpb.Connection:
        """The live PB connection (buildbot.worker.protocols.pb.Connection) to worker `name`, or a RouteError
        that says why not."""
        workers = self._master().workers
        if name not in workers.registrations:
            if not workers.registrations:
                # Right after a (re)start the socket can answer before the workers are configured.
                raise RouteError(f"no worker named {name!r} on this master (it has no workers configured yet: "
                                 "still starting?)")
            raise RouteError(f"no worker named {name!r} on this master")
        worker = workers.getWorkerByName(name)
        conn = workers.connections.get(name)
        if conn is None:
            raise RouteError(f"worker {name} is not connected to the master")
        if not isinstance(conn, bbpb.Connection):
            raise RouteError(f"worker {name} uses the msgpack protocol; slaveshell needs a PB worker")
        if WORKER_COMMAND not in (worker.worker_commands or {}):
            raise RouteError(f"worker {name} has not enabled slaveshell (its owner adds "
                             "'import slave_side; slave_side.install()' to buildbot.tac)")
        return conn

    def workers(self) -> list[WorkerFacts]:
        """Every configured worker, by name."""
        workers = self._master().workers
        result = []
        for name in sorted(workers.registrations):
            worker = workers.getWorkerByName(name)
            conn = workers.connections.get(name)
            result.append(WorkerFacts(
                name=name,
                connected=conn is not None,
                shell=WORKER_COMMAND in (worker.worker_commands or {}) if conn is not None else False,
                paused=bool(getattr(worker, "_paused", False)),
                system=str(getattr(worker, "worker_system", None) or ""),
                info=worker_info(worker),
                pb_references=_references(conn),
            ))
        return result

    def workdir_for(self, request: OpenRequest, holds: Mapping[int, HeldPlace]) -> OpenRequest:
        """`--build ID`: the held build's directory and environment; `--builder NAME`: the builder's build
        directory. Both relative to the worker's basedir. RouteError when there is no such hold or builder."""
        if request.build is not None:
            hold = holds.get(request.build)
            if hold is None:
                raise RouteError(f"build {request.build} is not held for a shell (not a HoldForShell build, or "
                                 "already released)")
            if hold.worker != request.worker:
                raise RouteError(f"build {request.build} is held on worker {hold.worker}, not {request.worker}")
            return replace(request, cwd=hold.workdir, env={**hold.env, **request.env})
        if request.builder is None:
            return request
        builders = getattr(self._master().botmaster, "builders", {})
        builder = builders.get(request.builder)
        if builder is None:
            raise RouteError(f"no builder named {request.builder!r} on this master")
        if request.worker not in builder.config.workernames:
            raise RouteError(f"builder {request.builder} does not run on worker {request.worker}")
        return replace(request, cwd=os.path.join(builder.config.workerbuilddir, "build"))

    def pause(self, worker_name: str, session_id: str, why: str) -> bool:
        """Pause the worker in Buildbot for session `session_id` (no new builds start on it). False when
        somebody else had paused it: their pause is left alone, now and at the end."""
        worker = self._master().workers.getWorkerByName(worker_name)
        holders = self._pausing.setdefault(worker_name, set())
        if not holders:
            if getattr(worker, "_paused", False):
                self._pausing.pop(worker_name)
                return False
            worker.pause(why)
        holders.add(session_id)
        return True

    def unpause(self, worker_name: str, session_id: str) -> None:
        """Session `session_id` no longer needs the worker paused; unpaused once no session does."""
        holders = self._pausing.get(worker_name)
        if not holders or session_id not in holders:
            return
        holders.discard(session_id)
        if not holders:
            self._pausing.pop(worker_name, None)
            worker = self._master().workers.getWorkerByName(worker_name)
            if worker is not None:
                worker.unpause()


def worker_info(worker: AbstractWorker) -> str:
    """A short line about the worker's machine, from what it reported when it connected."""
    info = getattr(worker, "info", None)
    if info is None:
        return ""
    parts = []
    for key in ("os_pretty_name", "version", "host"):
        if info.hasProperty(key):
            value = str(info.getProperty(key)).strip().splitlines()
            if value:
                parts.append(("buildbot-worker " if key == "version" else "") + value[0][:60])
    return ", ".join(parts)


def _references(conn: object) -> dict[str, int | None] | None:
    counts = tables(getattr(getattr(conn, "mind", None), "broker", None))
    return None if counts is None else {"master": counts[0], "worker": counts[1]}
