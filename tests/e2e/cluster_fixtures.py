"""A multi-master site on this machine, for the tests that need one (started only by them), as
slaveshell.client.cluster_sandbox starts one for them and for `slaveshell demo --cluster`: the WAMP router
(crossbar from its own venv, installed when missing), a fresh PostgreSQL database shared by two real Buildbot masters
(`multiMaster=True`, the `wamp` message queue) named A and B in the site, each running ShellService(cluster=...) with
its own ticket, and real opted-in workers on each:

- on A: `a1`, and `dup`;
- on B: `b1` (also configured on A, as sites configure every worker on every master), `z1`, and another `dup`:
  one worker name attached to both masters.

Each master has its own principal on the router (authid and ticket: its name in the site; a third, C, is used by
no master: the hostile master of the tests), and both keep
slaveshell's audit index in the shared database. B's policy (docs/multi-master.md's) lets the test's user, as A
vouches for it (`cluster:A/<user>`), open shells on the b* workers: b1, not z1.

The modules that leave the site's processes running share one site (`shared_site`, the `shared_site` fixture of
tests/e2e/conftest.py), configured as the union of what they need: A serves Buildbot's web UI with slaveshell's
plugin (WWW_CONFIG, A_POLICY), B's documented rule also lets A's web user alice open shells on the b* workers, and B
has a four-eyes worker m1 (M1_RULES). A test on it uses workers, sessions and users of its own where it would
interfere with another's; a test that kills a master or the router runs on a site of its own
(tests/e2e/test_cluster_loss_e2e.py).
"""

from __future__ import annotations

import contextlib
import getpass
import grp
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import pytest

from slaveshell.client.cluster_sandbox import PG, REALM, ClusterSandbox, SiteUnavailable
from slaveshell.client.sandbox import Sandbox, SandboxError

__all__ = ["PG", "DOC", "Site", "site", "shared_site", "SharedSite", "revive", "anonymous_probe", "hostile_probe"]

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                   "multi-master.md")
DOC_ROUTER = "ws://router.example.org:8080/ws"
DOC_DB = "postgresql+psycopg2://buildbot@db.example.org/buildbot"

Site = ClusterSandbox


@contextlib.contextmanager
def site(root: str, a_www_config: str | None = None, a_policy: str = "", b_vouched: tuple[str, ...] = (),
         b_workers: tuple[str, ...] = (), b_rules: str = "", b_service: str = "", b_cluster: str = ""
         ) -> Iterator[Site]:
    """The site (slaveshell.client.cluster_sandbox, as `slaveshell demo --cluster` starts one): A configured by the
    sandbox, B by docs/multi-master.md's master.cfg fragment; the test is skipped, with the reason, only when the
    machine lacks the router or the local PostgreSQL. With `a_www_config`, master A serves Buildbot's web UI with
    slaveshell's plugin (Sandbox's www options: that source after c['www']); `a_policy` is Python source for A's
    ShellService(policy=...); `b_vouched` are more of A's users (as A names them: "web:alice") that B's documented
    rule lets open shells on the b* workers; `b_workers` are more workers on B, and `b_rules` Python source of rules
    put before B's documented ones (ending with a comma); `b_service` Python source of more ShellService arguments
    for B (ending with a comma: `group='ops', `); `b_cluster` Python source of more ClusterConfig arguments for B
    (`direct=True`)."""
    s = ClusterSandbox(root, {"A": ["a1", "dup"], "B": ["b1", "z1", "dup", *b_workers]},
                       policies={"A": a_policy} if a_policy else None,
                       configs={"B": lambda router_url, db_url: documented_master_cfg(router_url, db_url, "B",
                                                                                      b_vouched, b_rules,
                                                                                      b_service, b_cluster)},
                       extra_config={"A": "c['workers'].append(worker.Worker('b1', 'pass'))\n"},
                       www={"A": a_www_config} if a_www_config is not None else None,
                       principals=["C"],  # C: a principal of slaveshell's role that no master uses (hostile)
                       share_schema=True)  # Buildbot's tables made once per session, copied for later sites
    try:
        try:
            s.install_router()
            s.make_database()
        except SiteUnavailable as e:
            pytest.skip(str(e))
        s.start(together=True)
        yield s
    finally:
        s.stop()


# A's web login: alice and bob have the role Buildbot's authz gives the shell action to, carol has none. A's policy
# lets the role act on every worker (so A's pages list them), and root (the test's user) as ShellService's default
# does; B's lets alice (as A vouches for her) open shells on its b* workers, not bob.
WWW_CONFIG = """\
from buildbot.plugins import util as _util
from master_side.www.access import ShellEndpointMatcher
c['www']['plugins']['slaveshell'] = {}
c['www']['auth'] = _util.UserPasswordAuth({'alice': 'alice-pw', 'bob': 'bob-pw', 'carol': 'carol-pw'})
c['www']['authz'] = _util.Authz(
    allowRules=[ShellEndpointMatcher(role='shellers')],
    roleMatchers=[_util.RolesFromUsername(roles=['shellers'], usernames=['alice', 'bob'])])
"""
A_POLICY = f"[dict(groups=['web:shellers']), dict(users=[{os.getuid()}])]"
WEB_VOUCHED = ("web:alice",)

# m1 on B is a four-eyes worker for the operator A vouches for: B's moderators, local users of B in LEADS
# (tests/e2e/test_moderated_e2e.py) with 'watch' on m1, approve what would run there. B's own user of the test's
# name (root) is in the moderators' groups too (root's group), and is refused as the same person. C (the hostile
# master of the tests) vouches for MALLORY, whom B lets run on m1 under four eyes.
MODERATED = "m1"
MALLORY = "mallory"


def m1_rules_and_service() -> tuple[str, str]:
    """B's rules for m1 (put before its documented ones) and B's socket's group (its moderators' too, as root)."""
    from .test_moderated_e2e import LEADS, OPS, _ensure_users

    me = getpass.getuser()
    moderators, service = [grp.getgrgid(os.getgid()).gr_name], ""
    if os.getuid() == 0:
        _ensure_users()
        moderators.append(LEADS)
        service = f"group={OPS!r},"
    rules = (f"Rule(groups=[{LEADS!r}], workers=['{MODERATED}'], rights=['watch']), "
             f"Rule(users=['cluster:A/{me}'], workers=['{MODERATED}'], moderated_by={moderators!r}), "
             f"Rule(users=['cluster:C/{MALLORY}'], workers=['{MODERATED}'], moderated_by={moderators!r}), ")
    return rules, service


@contextlib.contextmanager
def shared_site() -> Iterator[Site]:
    """The site the modules that leave its processes running share: A with its web UI (WWW_CONFIG, A_POLICY), B
    with m1 and its rules, B's rule for WEB_VOUCHED; under a directory other local users may pass through to B's
    socket (B's moderators are other local users), removed after."""
    try:
        from .test_web_e2e import plugin_on_path
    except pytest.skip.Exception:  # no browser here: the installed entry point serves A's plugin, if any
        plugin_on_path = contextlib.nullcontext  # type: ignore[assignment]

    rules, service = m1_rules_and_service()
    root = tempfile.mkdtemp(prefix="slaveshell-cluster-")
    os.chmod(root, 0o755)
    try:
        with plugin_on_path(root), site(root, a_www_config=WWW_CONFIG, a_policy=A_POLICY, b_vouched=WEB_VOUCHED,
                                        b_workers=(MODERATED,), b_rules=rules, b_service=service) as s:
            for path in (os.path.dirname(s.b.master_dir), s.b.master_dir):
                os.chmod(path, 0o755)
            yield s
    finally:
        shutil.rmtree(root, ignore_errors=True)


class SharedSite:
    """One site for every test that asks for it, started at the first, stopped by `stop` (after the last test that
    asks for it, and at the end of the session whatever happened). A failure to start (or a skip) is given again
    to every later test that asks, without trying again."""

    def __init__(self, make: Callable[[], contextlib.AbstractContextManager[Site]] = shared_site) -> None:
        self._make = make
        self._stack: contextlib.ExitStack | None = None
        self._site: Site | None = None
        self._failed: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._site is not None

    def get(self) -> Site:
        if self._failed is not None:
            raise self._failed
        if self._site is None:
            stack = contextlib.ExitStack()
            try:
                self._site = stack.enter_context(self._make())
            except BaseException as e:
                stack.close()
                self._failed = e
                raise
            self._stack = stack
        return self._site

    def stop(self) -> None:
        stack, self._stack, self._site = self._stack, None, None
        if stack is not None:
            stack.close()


def _master_running(sb: Sandbox) -> bool:
    """Whether `sb`'s master process runs (its pid file names a live process working in its directory)."""
    try:
        pid = sb.master_pid()
        os.kill(pid, 0)
        return os.path.realpath(os.readlink(f"/proc/{pid}/cwd")) == os.path.realpath(sb.master_dir)
    except (OSError, ValueError):
        return False


def revive(s: Site, timeout: float = 180) -> None:
    """Start again what a test stopped or killed of site `s`, as it was configured, and wait until A sees b1 on B:
    the router (then both masters with it: a master that lost its router stops its services and ignores SIGTERM),
    and each master that is not running, with its workers."""
    from .conftest import wait_until

    router_down = s.router.proc is None or s.router.proc.poll() is not None
    if router_down:
        os.makedirs(s.router.root, exist_ok=True)
        s.router.start()
    for sb in s.masters.values():
        if router_down and _master_running(sb):
            os.kill(sb.master_pid(), signal.SIGKILL)
            wait_until(lambda sb=sb: not _master_running(sb), 30)
        if not _master_running(sb):
            sb.stop()  # its workers (the master has gone)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(sb.master_dir, "twistd.pid"))
            sb.start(timeout)

    def b1_on_b() -> bool:
        try:
            return any(w["name"] == "b1" and w.get("master") == "B" for w in s.a.workers_status())
        except SandboxError:
            return False

    assert wait_until(b1_on_b, timeout), "A does not see b1 on B after the site was started again"


def documented_master_cfg(router_url: str, db_url: str, name: str, vouched: tuple[str, ...] = (),
                          rules: str = "", service: str = "", cluster: str = "") -> str:
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
    if rules:
        assert fragment.count("policy=[") == 1
        fragment = fragment.replace("policy=[", "policy=[" + rules)
    if cluster:
        assert fragment.count(f"master={name!r})") == 1
        fragment = fragment.replace(f"master={name!r})", f"master={name!r}, {cluster})")
    if service:
        assert fragment.count("ShellService(\n") == 1
        fragment = fragment.replace("ShellService(\n", "ShellService(\n    " + service + "\n")
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
        if "open_uri" in plan:
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
        for message in plan.get(end, []):
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

said = []

def done(_):
    # What was done so far, once: at the end, or when the router is slow to let the session go (a loaded machine).
    if not said:
        said.append(True)
        print(json.dumps(results, default=str), flush=True)
        reactor.stop()

client.start(reactor).addBoth(done)
reactor.callLater(45, done, None)
reactor.run()
"""


def hostile_probe(site: Site, plan: dict[str, object], authid: str = "C") -> dict[str, object]:
    """What a slaveshell principal no master uses (C) gets when it opens a session, registers URIs, and calls every
    routed session's procedures it finds through the router's meta API (`plan`: open_uri and open_call, register,
    in, out; each optional). With `authid` "B": a hostile B (its own principal and ticket), as a B whose master
    breaks the protocol."""
    done = subprocess.run([sys.executable, "-c", HOSTILE_PROBE, site.router.url, REALM, authid, site.tickets[authid],
                           json.dumps(plan)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
