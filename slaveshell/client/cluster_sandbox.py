"""A throwaway multi-master Buildbot site on this machine, all real processes: for `slaveshell demo --cluster` and the
end-to-end tests. The WAMP router (crossbar from its own venv, installed when missing: slaveshell.client.router), a
fresh PostgreSQL database on the local server (postgres@127.0.0.1) shared by two Buildbot masters A and B
(`multiMaster=True`, the `wamp` message queue), each running ShellService(cluster=...) with its own router principal
(authid: its name; its ticket in `router-ticket` in its basedir) and keeping slaveshell's audit index in the shared
database, and opted-in workers on each (slaveshell.client.sandbox)."""

from __future__ import annotations

import atexit
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from slaveshell.client import router as wamp_router
from slaveshell.client.sandbox import Sandbox, free_port

PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
REALM = "buildbot"
NAMES = ("A", "B")
_SERVICES = "c['services'] = [ShellService()]\n"
# A copy of the first schema-sharing site's database as `buildbot upgrade-master` made it (before any master ran),
# the template of every later one of this process (ClusterSandbox's share_schema); dropped when the process exits.
_schema_template: str | None = None
_schema_lock = threading.Lock()


class SiteUnavailable(Exception):
    """What this machine lacks for a site (the router cannot be installed, the local PostgreSQL is not reachable)."""


def psql(sql: str, database: str | None = None) -> subprocess.CompletedProcess[str]:
    where = ["-d", database] if database else []
    return subprocess.run(PG + where + ["-t", "-A", "-c", sql], capture_output=True, text=True, timeout=60)


def master_config(router_url: str) -> str:
    """master.cfg lines for one master of the site: multiMaster, and the wamp message queue through the router."""
    return (f"c['multiMaster'] = True\n"
            f"c['mq'] = {{'type': 'wamp', 'router_url': {router_url!r}, 'realm': {REALM!r}, "
            f"'wamp_debug_level': 'error'}}\n")


def cluster_kwargs(router_url: str, ticket_file: str, name: str, db_url: str, policy: str = "",
                   cluster: str = "") -> str:
    """ShellService's keyword arguments (Python source) for master `name` of the site, as docs/multi-master.md
    documents them: its ClusterConfig (its own principal), the audit index in the site's database, and `policy`
    (Python source of a list of rules) when given; `cluster`, more ClusterConfig arguments (Python source:
    "direct=True")."""
    return (f"cluster=ClusterConfig(router_url={router_url!r}, realm={REALM!r}, authid={name!r}, "
            f"ticket_file={ticket_file!r}, master={name!r}, initial_retry_delay=0.5, max_retry_delay=2"
            f"{', ' + cluster if cluster else ''}), "
            f"db_url={db_url!r}" + (f", policy={policy}" if policy else ""))


def _write_secret(path: str, text: str) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text + "\n")


class ClusterSandbox:
    """The router, the database and masters A and B with their workers, under `root`.

    `policies` gives each master's policy (Python source, a list of rules; ShellService's default when absent).
    `configs` replaces a master's own slaveshell lines: a function of (router URL, database URL) giving master.cfg
    source that brings its own ShellService (docs/multi-master.md's fragment, in the tests); its ticket is still
    written to `router-ticket` in its basedir. `principals` adds router principals that no master uses.
    `extra_config` adds master.cfg source to a master, `clusters` more ClusterConfig arguments to a master's own
    (Python source: "direct=True"). `www` serves a master's web UI (Buildbot's, with that
    Python source run after c['www'] is set: Sandbox's www_config). `start` raises SiteUnavailable (nothing left
    behind) when the machine lacks the router or the database; `stop` removes whatever was started, and may be
    called any time.
    """

    def __init__(self, root: str, workers: dict[str, Sequence[str]], *,
                 policies: dict[str, str] | None = None,
                 configs: dict[str, Callable[[str, str], str]] | None = None,
                 extra_config: dict[str, str] | None = None, www: dict[str, str] | None = None,
                 clusters: dict[str, str] | None = None,
                 principals: Sequence[str] = (), share_schema: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.database = f"slaveshell_site_{os.getpid()}_{secrets.token_hex(3)}"
        self.db_url = f"postgresql+psycopg2://postgres@127.0.0.1/{self.database}"
        self.tickets = {name: secrets.token_urlsafe(24) for name in (*NAMES, *principals)}
        self.router = wamp_router.Router(os.path.join(self.root, "router"), free_port(), REALM, self.tickets)
        self.configs = dict(configs or {})
        self.masters: dict[str, Sandbox] = {}
        for name in NAMES:
            master_dir = os.path.join(self.root, name, "master")
            own = self.configs.get(name)
            kwargs = "" if own else cluster_kwargs(self.router.url, os.path.join(master_dir, "router-ticket"), name,
                                                   self.db_url, (policies or {}).get(name, ""),
                                                   (clusters or {}).get(name, ""))
            config = own(self.router.url, self.db_url) if own else master_config(self.router.url)
            self.masters[name] = Sandbox(os.path.join(self.root, name), workers=workers[name], db_url=self.db_url,
                                         service_kwargs=kwargs, www=name in (www or {}),
                                         www_config=(www or {}).get(name, ""),
                                         extra_config=config + (extra_config or {}).get(name, ""))
        self.database_made = False
        self.share_schema = share_schema
        # Whether the database was made with Buildbot's tables (a copy of _schema_template).
        self.schema_made = False

    @property
    def a(self) -> Sandbox:
        return self.masters["A"]

    @property
    def b(self) -> Sandbox:
        return self.masters["B"]

    def master(self, name: str) -> Sandbox:
        return self.masters[name]

    def install_router(self) -> str:
        """The crossbar executable, installed into its venv when missing (SiteUnavailable when it cannot be)."""
        try:
            return wamp_router.install()
        except (wamp_router.RouterError, OSError, subprocess.TimeoutExpired) as e:
            raise SiteUnavailable(f"the WAMP router (crossbar {wamp_router.CROSSBAR_VERSION}) cannot be installed: "
                                  f"{e}") from e

    def make_database(self) -> None:
        if self.database_made:
            return
        template = _schema_template if self.share_schema else None
        try:
            made = psql(f"CREATE DATABASE {self.database}" + (f" TEMPLATE {template}" if template else ""))
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SiteUnavailable(f"the local PostgreSQL cannot be reached (psql: {e})") from e
        if made.returncode != 0:
            raise SiteUnavailable("the local PostgreSQL is not reachable as postgres@127.0.0.1 (a multi-master site "
                                  f"needs a shared database): {made.stderr.strip()}")
        self.database_made = True
        self.schema_made = template is not None

    def _keep_schema(self) -> None:
        """Copy this site's database, just made by `buildbot upgrade-master`, as the template of this process's
        later schema-sharing sites (once; not when PostgreSQL refuses it, e.g. upgrade-master's session not gone
        yet after a few tries: those sites then make their own)."""
        global _schema_template
        with _schema_lock:
            if _schema_template is not None:
                return
            name = f"slaveshell_schema_{os.getpid()}_{secrets.token_hex(3)}"
            for _ in range(10):
                made = psql(f"CREATE DATABASE {name} TEMPLATE {self.database}")
                if made.returncode == 0:
                    _schema_template = name
                    atexit.register(psql, f"DROP DATABASE IF EXISTS {name}")
                    return
                if "being accessed by other users" not in made.stderr:
                    return
                time.sleep(0.2)

    def create(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        for name, sb in self.masters.items():
            sb.create()
            if name in self.configs:  # its fragment brings its own ShellService
                cfg = os.path.join(sb.master_dir, "master.cfg")
                with open(cfg) as f:
                    text = f.read()
                if text.count(_SERVICES) != 1:
                    raise AssertionError("the sandbox's master.cfg no longer sets c['services'] once")
                with open(cfg, "w") as f:
                    f.write(text.replace(_SERVICES, "c['services'] = []\n"))
            _write_secret(os.path.join(sb.master_dir, "router-ticket"), self.tickets[name])
        if not self.schema_made:
            self.a.upgrade_database()
            if self.share_schema:
                self._keep_schema()

    def start(self, on_step: Callable[[str], None] = lambda _: None, together: bool = False) -> None:
        """Install the router when missing, make the database, create and start everything; `on_step` is told
        what comes next, for a person waiting. `together`: the masters (each with its workers) start at the same
        time, each in a thread of its own, instead of one after the other."""
        if not wamp_router.installed():
            on_step("installing the WAMP router (crossbar from PyPI into its own venv, "
                    f"{wamp_router.VENV}: ~80 s and ~380 MB, once) ...")
        self.install_router()
        on_step(f"creating a fresh PostgreSQL database {self.database} on the local server ...")
        self.make_database()
        on_step(f"starting the router (crossbar, {self.router.url}) while creating masters A and B (multiMaster, "
                "wamp mq) and their workers ...")
        os.makedirs(self.router.root, exist_ok=True)
        failed: list[BaseException] = []

        def start_router() -> None:
            try:
                self.router.start()
            except BaseException as e:  # raised below, in the caller's thread
                failed.append(e)

        # At the same time: neither needs the other (crossbar's start and upgrade-master are each seconds).
        starting = threading.Thread(target=start_router, name="router-start")
        starting.start()
        try:
            self.create()
        finally:
            starting.join()
        if failed:
            raise failed[0]
        on_step("starting masters A and B and their workers (real buildbot processes on 127.0.0.1) ...")
        if not together:
            for sb in self.masters.values():
                sb.start()
            return
        with ThreadPoolExecutor(len(self.masters)) as pool:
            for started in [pool.submit(sb.start) for sb in self.masters.values()]:
                started.result()

    def stop(self) -> None:
        for sb in self.masters.values():
            sb.stop()
        self.router.stop()
        if self.database_made:
            psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            self.database_made = False
