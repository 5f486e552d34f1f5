"""A throwaway Buildbot master with workers on 127.0.0.1, all real processes: for `slaveshell demo` and the
end-to-end tests. Each worker opts in to slaveshell in its buildbot.tac, as a worker owner would."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence

MASTER_CFG = """\
# A throwaway master made by slaveshell's sandbox.
from buildbot.plugins import changes, schedulers, steps, util, worker
from master_side import ClusterConfig, HoldForShell, ShellService

c = BuildmasterConfig = {{}}
c['title'] = 'slaveshell sandbox'
c['buildbotURL'] = {buildbot_url!r}
c['workers'] = [{workers}]
c['protocols'] = {{'pb': {{'port': 'tcp:{port}:interface=127.0.0.1'}}, {msgpack}}}
c['change_source'] = [changes.PBChangeSource(user='change', passwd='change')]
c['schedulers'] = [
    schedulers.AnyBranchScheduler(name='all', treeStableTimer=None, builderNames=['hello'],
                                  change_filter=util.ChangeFilter(branch='main')),
    # A build that fails and is held for a shell (HoldForShell), on the 'hold' branch.
    schedulers.AnyBranchScheduler(name='hold', treeStableTimer=None, builderNames=['holder'],
                                  change_filter=util.ChangeFilter(branch='hold')),
]
c['builders'] = [
    util.BuilderConfig(
        name='hello', workernames={builder_workers!r},
        factory=util.BuildFactory([
            steps.ShellCommand(command=['sh', '-c', {build_command!r}]),
        ]),
    ),
    util.BuilderConfig(
        name='holder', workernames={builder_workers!r}, env={{'BUILDER_ENV': 'from-builder'}},
        factory=util.BuildFactory([
            steps.ShellCommand(command=['sh', '-c', {hold_command!r}],
                               env={{'STEP_ENV': 'from-step'}}),
            HoldForShell(when='failure', timeout={hold_timeout}{hold_args}),
        ]),
    ),
]
c['db'] = {{'db_url': {db_url!r}}}
{www}
c['buildbotNetUsageData'] = None
c['services'] = [ShellService({service_kwargs})]
{extra_config}"""

OPT_IN = "import slave_side; slave_side.install({args})  # slaveshell: let the master open shells here\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str, module: str) -> list[str]:
    """How a console script is started: the one installed beside this interpreter when there is one (what a venv's
    or the system's PATH finds), else PATH's: not a version manager's shim that PATH may find first (pyenv's is a
    bash script that runs about 20 more processes to pick the interpreter, for every sendchange, every start)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return [beside]
    path = shutil.which(name)
    if path:
        return [path]
    return [sys.executable, "-c", f"import sys; from {module} import run; sys.argv[0] = {name!r}; run()"]


BUILDBOT = _tool("buildbot", "buildbot.scripts.runner")
BUILDBOT_WORKER = _tool("buildbot-worker", "buildbot_worker.scripts.runner")
# What `buildbot start` and `buildbot-worker start` run in a master's or worker's directory: twistd, which daemonizes
# and exits once the application has started (0) or failed to (1, with the error). Run here directly, without those
# launchers (each an interpreter importing Buildbot's scripts, then following twistd.log in a reactor: ~0.5 s of a
# core per master and ~0.3 s per worker); their wait on twistd.log is done here (_follow_log).
TWISTD = [sys.executable, "-c", "from twisted.scripts import twistd; twistd.run()", "--no_save",
          "--logfile=twistd.log", "--python=buildbot.tac"]
# The lines of a master's twistd.log that end `buildbot start`'s wait (buildbot.scripts.logwatcher's).
MASTER_STARTED = ("BuildMaster is running", "configuration update complete")
MASTER_FAILED = ("BuildMaster startup failed", "configuration update aborted",
                 "configuration update partially applied", "Server Shut Down")
# A worker's that end the wait for it (`buildbot-worker start` waits for "message from master: attached", up to 10 s;
# the master's view of the worker then decides). A PB worker's wait ends at its login's end, a little later: a
# worker stopped between the two (a sandbox stopped as soon as it started) leaves its master hanging at its own stop
# ("waiting for worker to finish disconnecting": the login's disconnect notification was never set).
WORKER_READY = {"pb": "Connected to buildmaster; worker is ready",
                "msgpack_experimental_v7": "message from master: attached"}
WORKER_WAIT = 10.0


# A master directory made by `buildbot create-master --relocatable`, copied by every Sandbox of this process.
_master_template: str | None = None
# A worker directory made by `buildbot-worker create-worker` with the placeholders below, copied (its buildbot.tac
# given each worker's values) by every Sandbox of this process.
_worker_template: str | None = None
_TEMPLATE_NAME, _TEMPLATE_PORT = "slaveshell-template-worker", 1


def _runs_in(pid: int, directory: str) -> bool:
    """Whether `pid` is a process working in `directory` (a twistd that `buildbot start` or `buildbot-worker
    start` launched there), not another process that was given the number of one that has gone: a pid file
    outlives its process when the process is killed, and pids are reused (32,768 of them on many machines). Where
    /proc does not tell, the pid file is believed."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")
    except OSError:
        return True  # not ours to read (another user's process): believed, as `buildbot stop` would
    return os.path.realpath(cwd) == os.path.realpath(directory)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a daemonized twistd is not our child: no zombie to reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SandboxError(Exception):
    pass


def _log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _follow_log(path: str, offset: int, ends: Sequence[str], deadline: float,
                alive: Callable[[], bool] = lambda: True) -> tuple[str, str]:
    """Follow `path` (a twistd.log) from `offset` until a line holding one of `ends`, as `buildbot start` follows
    it: (that end, the text read), or ("", the text) at `deadline` or when `alive()` says the process has gone
    (checked once nothing new is read). A log rotated meanwhile is read from its start."""
    text, pending = [], b""
    while True:
        if _log_size(path) < offset:
            offset = 0
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            data = b""
        offset += len(data)
        *lines, pending = (pending + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            text.append(line)
            for end in ends:
                if end in line:
                    return end, "\n".join(text)
        if not data and (time.monotonic() > deadline or not alive()):
            return "", "\n".join(text + [pending.decode("utf-8", "replace")])
        if not data:
            time.sleep(0.05)


class Sandbox:
    def __init__(self, root: str, workers: Sequence[str] = ("w1",), build_seconds: float = 1.0,
                 opt_in: Sequence[str] | None = None, msgpack: Sequence[str] = (),
                 service_kwargs: str = "", opt_in_args: str = "", build_command: str | None = None,
                 hold_timeout: float = 600, www: bool = False, www_config: str = "",
                 hold_command: str = "echo evidence > failed.txt; exit 1", hold_args: str = "",
                 db_url: str = "sqlite:///state.sqlite", extra_config: str = "") -> None:
        self.root = os.path.abspath(root)
        self.workers = list(workers)
        # Which workers opt in (default: all); the others run without slave_side.
        self.opt_in = list(self.workers if opt_in is None else opt_in)
        # Workers that speak Buildbot's experimental msgpack protocol instead of PB.
        self.msgpack = list(msgpack)
        self.build_seconds = build_seconds
        # Python source for ShellService's keyword arguments in master.cfg.
        self.service_kwargs = service_kwargs
        # Python source for slave_side.install()'s arguments in each opted-in worker's buildbot.tac.
        self.opt_in_args = opt_in_args
        self.build_command = build_command or f"sleep {build_seconds}; echo built"
        self.hold_timeout = hold_timeout
        # Python source for more of HoldForShell's keyword arguments (wait_for_operator=..., ...), after timeout.
        self.hold_args = f", {hold_args}" if hold_args else ""
        # The holder builder's failing step (shell), before its HoldForShell step.
        self.hold_command = hold_command
        self.www = www
        # Python source run after c['www'] is set (a login, an authz, plugins), when www is on.
        self.www_config = www_config
        self.www_port = 0
        # Buildbot's database (a shared PostgreSQL database for a multi-master site: see upgrade_database).
        self.db_url = db_url
        # Python source at the end of master.cfg: reporters appended to c['services'], multiMaster, the wamp mq.
        self.extra_config = extra_config
        self.master_dir = os.path.join(self.root, "master")
        self.port = 0
        self.msgpack_port = 0
        self.started: list[str] = []

    @property
    def socket(self) -> str:
        return os.path.join(self.master_dir, "shell.sock")

    @property
    def url(self) -> str:
        """The site's address (c['buildbotURL']): the web server's when www is on."""
        return f"http://127.0.0.1:{self.www_port}/" if self.www else "http://127.0.0.1/"

    def worker_dir(self, name: str) -> str:
        return os.path.join(self.root, "worker-" + name)

    def _run(self, argv: list[str], timeout: float = 120) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def _create_master(self) -> None:
        """`buildbot create-master` (its database made by running every migration: ~3.5 s) once per process,
        into a relocatable template (basedir '.') that each sandbox copies."""
        global _master_template
        if _master_template is None or not os.path.isdir(_master_template):
            parent = tempfile.mkdtemp(prefix="slaveshell-master-")
            atexit.register(shutil.rmtree, parent, True)
            template = os.path.join(parent, "master")
            self._run(BUILDBOT + ["create-master", "--quiet", "--relocatable", template])
            _master_template = template
        shutil.copytree(_master_template, self.master_dir)

    def create(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.port = free_port()
        self.msgpack_port = free_port()
        self._create_master()
        # Buildbot's msgpack listener takes only a port number (it binds every interface): only when asked for.
        msgpack = f"'msgpack_experimental_v7': {{'port': {self.msgpack_port}}}" if self.msgpack else ""
        # The web server (REST API), when asked for: it needs the buildbot-www package.
        self.www_port = free_port() if self.www else 0
        www = (f"c['www'] = {{'port': 'tcp:{self.www_port}:interface=127.0.0.1', 'plugins': {{}}}}\n"
               + self.www_config if self.www else "")
        workers = ", ".join(f"worker.Worker({w!r}, 'pass')" for w in self.workers)
        with open(os.path.join(self.master_dir, "master.cfg"), "w") as f:
            f.write(MASTER_CFG.format(workers=workers, port=self.port, msgpack=msgpack,
                                      builder_workers=self.workers[:1],
                                      build_command=self.build_command, service_kwargs=self.service_kwargs,
                                      hold_timeout=self.hold_timeout, www=www, buildbot_url=self.url,
                                      hold_command=self.hold_command, hold_args=self.hold_args,
                                      db_url=self.db_url, extra_config=self.extra_config))
        for name in self.workers:
            wdir = self.worker_dir(name)
            self._create_worker(name, self.msgpack_port if name in self.msgpack else self.port,
                                "msgpack_experimental_v7" if name in self.msgpack else "pb")
            if name in self.opt_in:
                tac = os.path.join(wdir, "buildbot.tac")
                with open(tac) as f:
                    text = f.read()
                text = text.replace("\ns = Worker(", "\n" + OPT_IN.format(args=self.opt_in_args) + "s = Worker(", 1)
                with open(tac, "w") as f:
                    f.write(text)

    def _create_worker(self, name: str, port: int, protocol: str) -> None:
        """The worker's directory, as `buildbot-worker create-worker DIR 127.0.0.1:PORT NAME pass` makes it: a copy
        of one that command made once per process (~0.5 s a worker saved), its buildbot.tac given this worker's
        directory, name, port and protocol."""
        global _worker_template
        if _worker_template is None or not os.path.isdir(_worker_template):
            parent = tempfile.mkdtemp(prefix="slaveshell-worker-")
            atexit.register(shutil.rmtree, parent, True)
            template = os.path.join(parent, "worker")
            self._run(BUILDBOT_WORKER + ["create-worker", "--quiet", template,
                                         f"127.0.0.1:{_TEMPLATE_PORT}", _TEMPLATE_NAME, "pass"])
            _worker_template = template
        shutil.copytree(_worker_template, self.worker_dir(name))
        tac = os.path.join(self.worker_dir(name), "buildbot.tac")
        with open(tac) as f:
            text = f.read()
        for line, value in ((f"basedir = {_worker_template!r}\n", f"basedir = {self.worker_dir(name)!r}\n"),
                            (f"port = {_TEMPLATE_PORT}\n", f"port = {port}\n"),
                            (f"workername = {_TEMPLATE_NAME!r}\n", f"workername = {name!r}\n"),
                            ("protocol = 'pb'\n", f"protocol = {protocol!r}\n")):
            if text.count(line) != 1:
                raise SandboxError(f"buildbot-worker's buildbot.tac no longer has the line {line!r} once")
            text = text.replace(line, value)
        with open(tac, "w") as f:
            f.write(text)

    def upgrade_database(self) -> None:
        """Make Buildbot's tables in `db_url` (the template's own database is SQLite): once per database."""
        self._run(BUILDBOT + ["upgrade-master", "--quiet", self.master_dir], timeout=300)

    def start(self, timeout: float = 180) -> None:
        self.start_master(timeout)
        self._start_workers(self.workers)
        self.wait_for_workers(self.workers, timeout)

    def _start_workers(self, names: Sequence[str]) -> None:
        """Start workers at once, as `buildbot-worker start` does each: twistd in its directory, then up to
        WORKER_WAIT s for its log to say it is ready (a busy machine can take longer: the master's view of the
        worker, wait_for_workers, decides)."""
        offsets = {name: _log_size(os.path.join(self.worker_dir(name), "twistd.log")) for name in names}
        starting = [(name, subprocess.Popen(TWISTD, cwd=self.worker_dir(name), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
                    for name in names]
        # Each counts as started at once: when one fails to start, `stop` still stops the others.
        self.started.extend(self.worker_dir(name) for name, _ in starting if self.worker_dir(name) not in self.started)
        began = time.monotonic()
        for name, proc in starting:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                log = os.path.join(self.worker_dir(name), "twistd.log")
                _, text = _follow_log(log, offsets[name], (), 0)
                raise SandboxError(f"worker {name} did not start ({proc.returncode}):\n{out}\n{text[-3000:]}")
        for name in names:
            ready = WORKER_READY["msgpack_experimental_v7" if name in self.msgpack else "pb"]
            _follow_log(os.path.join(self.worker_dir(name), "twistd.log"), offsets[name], (ready,),
                        began + WORKER_WAIT)

    def start_worker(self, name: str) -> None:
        self._start_workers([name])

    def stop_worker(self, name: str) -> None:
        """Stop one worker as `buildbot-worker stop` does (SIGTERM, then wait for it to go), polling every 0.1 s
        instead of every second."""
        if self._terminate([self.worker_dir(name)], 10):
            raise SandboxError(f"worker {name} did not stop within 10 s of SIGTERM")
        self.started.remove(self.worker_dir(name))
        # Then until the master has seen it go (as a second of `buildbot-worker stop`'s polling left it time to): a
        # worker started again before that would find its old connection still there (Buildbot then drops that one
        # first), and a test would see the stopped worker still connected.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                rows = self.workers_status()
            except SandboxError:
                return  # no master to ask: nothing to wait for
            if not any(w.get("name") == name and w.get("connected") for w in rows):
                return
            time.sleep(0.1)

    def workers_status(self) -> list[dict[str, object]]:
        """The rows `slaveshell workers --json` prints (the master's WORKERS answer), asked from this process over
        the master's socket (slaveshell.client.calls, as that command asks) instead of by an interpreter started
        per question."""
        from slaveshell.client.calls import CallError, MasterCalls, rows
        from slaveshell.vocabulary.framing import Op

        calls = MasterCalls(self.socket, timeout=30)
        try:
            return rows(calls.call(Op.WORKERS))
        except CallError as e:
            raise SandboxError(f"slaveshell workers: {e}") from None
        finally:
            calls.close()

    def wait_for_workers(self, names: Sequence[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if os.path.exists(self.socket):
                try:
                    status = {w["name"]: w for w in self.workers_status()}
                    if all(status.get(n, {}).get("connected") for n in names):
                        return
                    last = repr(status)
                except SandboxError as e:
                    last = str(e)
            time.sleep(0.3)
        raise SandboxError(f"workers {list(names)} did not connect within {timeout}s: {last}\n"
                           + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for d in [self.master_dir] + [self.worker_dir(w) for w in self.workers]:
            path = os.path.join(d, "twistd.log")
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    tail = f.readlines()[-lines:]
                out.append(f"--- {path}\n" + "".join(tail))
        return "\n".join(out)

    def send_change(self, branch: str = "main") -> None:
        self._run(BUILDBOT + ["sendchange", "--master", f"127.0.0.1:{self.port}", "--auth", "change:change",
                              "--who", "slaveshell", "--branch", branch, "README"])

    def builds(self, builder: str = "hello") -> list[tuple[int, int | None]]:
        """(build number, results) of every build of a builder; results None while running, 0 for SUCCESS."""
        return [(number, results) for _, number, results in self.build_rows(builder)]

    def build_rows(self, builder: str) -> list[tuple[int, int, int | None]]:
        """(build id, build number, results) of every build of a builder."""
        db = sqlite3.connect(os.path.join(self.master_dir, "state.sqlite"), timeout=10)
        try:
            return list(db.execute(
                "SELECT b.id, b.number, b.results FROM builds b JOIN builders r ON b.builderid = r.id "
                "WHERE r.name = ? ORDER BY b.id", (builder,)))
        finally:
            db.close()

    def master_pid(self) -> int:
        with open(os.path.join(self.master_dir, "twistd.pid")) as f:
            return int(f.read().strip())

    def start_master(self, timeout: float = 180) -> None:
        self._start_master(timeout)

    def _start_master(self, timeout: float) -> None:
        """Start the master as `buildbot start` does (twistd in its directory), waiting up to `timeout` s for its
        log to say it runs (Buildbot's own wait, 10 s, is short on a loaded machine). The master counts as started
        before it is confirmed: one that starts late is still stopped by `stop`."""
        if self.master_dir not in self.started:
            self.started.insert(0, self.master_dir)
        log = os.path.join(self.master_dir, "twistd.log")
        offset = _log_size(log)
        began = time.monotonic()
        proc = subprocess.run(TWISTD, cwd=self.master_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout + 30)
        if proc.returncode != 0:
            _, text = _follow_log(log, offset, (), 0)
            raise SandboxError(f"the master did not start ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                               f"{text[-3000:]}")

        def alive() -> bool:
            try:
                pid = self.master_pid()
            except (OSError, ValueError):
                return False
            return _alive(pid) and _runs_in(pid, self.master_dir)

        end, text = _follow_log(log, offset, MASTER_STARTED + MASTER_FAILED, began + timeout, alive)
        if end not in MASTER_STARTED:
            why = (f"its log says {end!r}" if end else
                   f"it did not say it runs within {timeout:g} s" if alive() else "it exited")
            raise SandboxError(f"the master did not start ({why}):\n{text[-3000:]}")

    def stop(self, timeout: float = 60) -> None:
        """Stop every process started here at once (SIGTERM, as `buildbot stop` sends it), polling every 0.1 s
        for them to go (`buildbot stop` polls once a second, one directory at a time); SIGKILL after `timeout`."""
        for pid in self._terminate(self.started, timeout):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.started.clear()

    def _terminate(self, directories: Sequence[str], timeout: float) -> list[int]:
        """SIGTERM to the twistd of each directory that runs one, then wait up to `timeout` s for them to go: the
        pids still running then."""
        pids = []
        for d in directories:
            try:
                with open(os.path.join(d, "twistd.pid")) as f:
                    pid = int(f.read().strip())
                if not _runs_in(pid, d):
                    continue  # the pid file of a process that has gone: its number may be another's now
                os.kill(pid, signal.SIGTERM)
                pids.append((pid, d))
            except (OSError, ValueError):
                pass  # not running (any more)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [(pid, d) for pid, d in pids if _alive(pid) and _runs_in(pid, d)]
        return [pid for pid, _ in pids]


def describe(sandbox: Sandbox) -> str:
    return textwrap.dedent(f"""\
        master:  {sandbox.master_dir} (PB on 127.0.0.1:{sandbox.port})
        socket:  {sandbox.socket}
        workers: {', '.join(sandbox.workers)}""")
