"""A multi-master site on this machine, for the tests that need one (started only by them): the WAMP router
(crossbar from its own venv, installed when missing: slaveshell.client.router), a fresh PostgreSQL database shared by
two real Buildbot masters (`multiMaster=True`, the `wamp` message queue) named A and B in the site, each running
ShellService(cluster=...) with slaveshell's ticket, and real opted-in workers on each:

- on A: `a1`, and `dup`;
- on B: `b1` (also configured on A, as sites configure every worker on every master), `z1`, and another `dup`:
  one worker name attached to both masters.

Each master has its own principal on the router (authid and ticket: its name in the site; a third, C, is used by
no master: the hostile master of the tests), and both keep
slaveshell's audit index in the shared database. B's policy (docs/multi-master.md's) lets the test's user, as A
vouches for it (`cluster:A/<user>`), open shells on the b* workers: b1, not z1.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from slaveshell.client import router as wamp_router
from slaveshell.client.sandbox import Sandbox, free_port

PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
REALM = "buildbot"
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                   "multi-master.md")
DOC_ROUTER = "ws://router.example.org:8080/ws"
DOC_DB = "postgresql+psycopg2://buildbot@db.example.org/buildbot"


@dataclass
class Site:
    router: wamp_router.Router
    a: Sandbox
    b: Sandbox
    database: str
    tickets: dict[str, str]
    db_url: str

    def master(self, name: str) -> Sandbox:
        return {"A": self.a, "B": self.b}[name]


def _psql(sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(PG + ["-c", sql], capture_output=True, text=True, timeout=60)


def router_ready() -> str:
    """The crossbar executable, installed into its venv when missing; the test is skipped, with the reason, only
    when it cannot be installed (no network, no PyPI)."""
    try:
        return wamp_router.install()
    except (wamp_router.RouterError, OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"the WAMP router (crossbar {wamp_router.CROSSBAR_VERSION}) cannot be installed: {e}")


def master_config(router_url: str) -> str:
    return (f"c['multiMaster'] = True\n"
            f"c['mq'] = {{'type': 'wamp', 'router_url': {router_url!r}, 'realm': {REALM!r}, "
            f"'wamp_debug_level': 'error'}}\n")


def cluster_kwargs(router_url: str, ticket_file: str, name: str, db_url: str) -> str:
    return (f"cluster=ClusterConfig(router_url={router_url!r}, realm={REALM!r}, authid={name!r}, "
            f"ticket_file={ticket_file!r}, master={name!r}, initial_retry_delay=0.5, max_retry_delay=2), "
            f"db_url={db_url!r}")


@contextlib.contextmanager
def site(root: str, a_www_config: str | None = None, a_policy: str = "", b_vouched: tuple[str, ...] = ()
         ) -> Iterator[Site]:
    """The site. With `a_www_config`, master A serves Buildbot's web UI with slaveshell's plugin (Sandbox's www
    options: that source after c['www']); `a_policy` is Python source for A's ShellService(policy=...); `b_vouched`
    are more of A's users (as A names them: "web:alice") that B's documented rule lets open shells on the b* workers.
    """
    router_ready()
    database = f"slaveshell_site_{os.getpid()}_{secrets.token_hex(3)}"
    made = _psql(f"CREATE DATABASE {database}")
    if made.returncode != 0:
        pytest.skip(f"the local PostgreSQL is not reachable as postgres@127.0.0.1: {made.stderr.strip()}")
    # C: a principal of slaveshell's role that no master uses (the hostile master of the tests).
    tickets = {name: secrets.token_urlsafe(24) for name in ("A", "B", "C")}
    ticket_file = os.path.join(root, "router-ticket")
    os.makedirs(root, exist_ok=True)
    with open(os.open(ticket_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(tickets["A"] + "\n")
    router = wamp_router.Router(os.path.join(root, "router"), free_port(), REALM, tickets)
    db_url = f"postgresql+psycopg2://postgres@127.0.0.1/{database}"
    # A is configured here; B by docs/multi-master.md's master.cfg fragment, as written but for the router's URL,
    # the database, the master's name and the users its policy names.
    a = Sandbox(os.path.join(root, "A"), workers=["a1", "dup"], db_url=db_url,
                service_kwargs=cluster_kwargs(router.url, ticket_file, "A", db_url)
                + (f", policy={a_policy}" if a_policy else ""),
                www=a_www_config is not None, www_config=a_www_config or "",
                extra_config=master_config(router.url) + "c['workers'].append(worker.Worker('b1', 'pass'))\n")
    b = Sandbox(os.path.join(root, "B"), workers=["b1", "z1", "dup"], db_url=db_url,
                extra_config=documented_master_cfg(router.url, db_url, "B", b_vouched))
    masters = [a, b]
    try:
        for sb in masters:
            sb.create()
        # The documented fragment brings its own ShellService, and reads its ticket from the basedir.
        cfg = os.path.join(b.master_dir, "master.cfg")
        with open(cfg) as f:
            text = f.read()
        assert text.count("c['services'] = [ShellService()]\n") == 1
        with open(cfg, "w") as f:
            f.write(text.replace("c['services'] = [ShellService()]\n", "c['services'] = []\n"))
        b_ticket = os.path.join(b.master_dir, "router-ticket")
        with open(os.open(b_ticket, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(tickets["B"] + "\n")
        masters[0].upgrade_database()
        os.makedirs(router.root, exist_ok=True)
        router.start()
        for sb in masters:
            sb.start()
        yield Site(router, masters[0], masters[1], database, tickets, db_url)
    finally:
        for sb in masters:
            sb.stop()
        router.stop()
        _psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def documented_master_cfg(router_url: str, db_url: str, name: str, vouched: tuple[str, ...] = ()) -> str:
    """docs/multi-master.md's master.cfg fragment, for this machine: its router URL, database, master name and the
    users its policy names (the user running the tests, and A's `vouched` users beside A's alice) replaced, nothing
    else."""
    with open(DOC) as f:
        blocks = re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)
    assert len(blocks) == 1
    fragment = blocks[0]
    me = getpass.getuser()
    for documented, here in ((DOC_ROUTER, router_url), (DOC_DB, db_url), ("master='B'", f"master={name!r}"),
                             ("authid='B'", f"authid={name!r}"), ("users=['buildbot']", f"users=[{me!r}]"),
                             ("'cluster:A/alice'", ", ".join(repr(f"cluster:A/{u}") for u in (me, *vouched)))):
        assert documented in fragment
        fragment = fragment.replace(documented, here)
    return fragment


ANONYMOUS_PROBE = r'''
import json, sys
from autobahn.twisted.component import Component
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, reactor

url, realm, call_uris, register_uris = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
results = {"joined": None, "call": {}, "register": {}}
client = Component(transports=[{"url": url, "max_retries": 0}], realm=realm)

@client.on_join
@defer.inlineCallbacks
def joined(session, details):
    results["joined"] = details.authrole
    for uri in call_uris:
        try:
            yield session.call(uri)
            results["call"][uri] = "allowed"
        except ApplicationError as e:
            results["call"][uri] = e.error
    for uri in register_uris:
        try:
            yield session.register(lambda: None, uri)
            results["register"][uri] = "allowed"
        except ApplicationError as e:
            results["register"][uri] = e.error
    yield session.leave()

def done(_):
    print(json.dumps(results))
    reactor.stop()

client.start(reactor).addBoth(done)
reactor.callLater(30, reactor.stop)
reactor.run()
'''


def anonymous_probe(url: str, call: list[str], register: list[str]) -> dict[str, object]:
    """What an anonymous router client (as Buildbot's masters join) gets when it calls and registers URIs."""
    done = subprocess.run([sys.executable, "-c", ANONYMOUS_PROBE, url, REALM, json.dumps(call), json.dumps(register)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


HOSTILE_PROBE = r"""
import json, sys
from autobahn.twisted.component import Component
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, reactor

url, realm, authid, ticket, plan = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
results = {"joined": None, "open": None, "sessions": {}}
client = Component(transports=[{"url": url, "max_retries": 0, "serializers": ["msgpack"]}], realm=realm,
                   authentication={"ticket": {"authid": authid, "ticket": ticket}})

@client.on_join
@defer.inlineCallbacks
def joined(session, details):
    results["joined"] = [details.authid, details.authrole]
    try:
        results["open"] = yield session.call(plan["open_uri"], plan["open_call"])
    except ApplicationError as e:
        results["open"] = e.error
    results["register"] = {}
    for uri in plan.get("register", []):
        try:
            yield session.register(lambda *args, **kwargs: None, uri)
            results["register"][uri] = "allowed"
        except ApplicationError as e:
            results["register"][uri] = e.error
    ids = yield session.call("wamp.registration.list")
    for i in ids.get("exact", []):
        info = yield session.call("wamp.registration.get", i)
        uri = info["uri"]
        if not uri.startswith("slaveshell.session."):
            continue
        end = uri.rsplit(".", 1)[1]
        outcome = []
        for message in plan[end]:
            message = list(message)  # the data of input and output as bytes
            if end == "in" and message[1] == "input":
                message[2] = message[2].encode()
            if end == "out" and message[1] == "output":
                message[3] = message[3].encode()
            try:
                yield session.call(uri, message)
                outcome.append("called")
            except ApplicationError as e:
                outcome.append(e.error)
        results["sessions"][end] = results["sessions"].get(end, []) + outcome
    yield session.leave()

def done(_):
    print(json.dumps(results, default=str))
    reactor.stop()

client.start(reactor).addBoth(done)
reactor.callLater(30, reactor.stop)
reactor.run()
"""


def hostile_probe(site: Site, plan: dict[str, object]) -> dict[str, object]:
    """What a slaveshell principal no master uses (C) gets when it opens a session, registers URIs, and calls every
    routed session's procedures it finds through the router's meta API (`plan`: open_uri, open_call, register,
    in, out)."""
    done = subprocess.run([sys.executable, "-c", HOSTILE_PROBE, site.router.url, REALM, "C", site.tickets["C"],
                           json.dumps(plan)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
