"""`slaveshell demo`: a throwaway Buildbot master and worker on 127.0.0.1 (real processes,
slaveshell/client/sandbox.py), then a shell on the worker (`buildbot-shell`), or with ``--web`` the master's web UI with
a login and the Shells page (master_side.www), until Ctrl-C; or with ``--cluster`` a multi-master site
(slaveshell/client/cluster_sandbox.py) and a shell, through master A, on a worker of master B. Everything is removed
at the end unless ``--keep``."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import importlib.util
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import TYPE_CHECKING

from slaveshell.client.sandbox import BUILDBOT, Sandbox
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.framing import Op

if TYPE_CHECKING:
    from slaveshell.client.cluster_sandbox import ClusterSandbox

WEB_USER = "demo"
# `demo --cluster`: the worker on master B that the shell, through master A, reaches.
CLUSTER_WORKER = "b1"
# The web demo's second login: may watch the sessions of others, nothing else (two people can try watching).
WEB_WATCHER = "watcher"


def web_config(users: dict[str, str], role: str = "shellers") -> str:
    """master.cfg lines (after ``c['www']`` is set) for the Shells page: the plugin, Buildbot's
    UserPasswordAuth with `users` (name -> password), and an authz giving `role` (every one of `users`) the
    ``shell`` action on every worker."""
    return (
        "from buildbot.plugins import util as _util\n"
        "from master_side.www.access import ShellEndpointMatcher\n"
        "c['www']['plugins']['slaveshell'] = {}\n"
        f"c['www']['auth'] = _util.UserPasswordAuth({users!r})\n"
        "c['www']['authz'] = _util.Authz(\n"
        f"    allowRules=[ShellEndpointMatcher(role={role!r})],\n"
        f"    roleMatchers=[_util.RolesFromUsername(roles=[{role!r}], usernames={sorted(users)!r})])\n")


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # a terminal hung up: the sandbox is still to be removed
        print(f"slaveshell demo: {text}", file=sys.stderr, flush=True)


def _client(name: str, module: str) -> list[str]:
    path = shutil.which(name)
    return [path] if path else [sys.executable, "-m", module]


def _shell(sandbox: Sandbox, command: list[str]) -> int:
    socket = sandbox.socket
    args = ["--socket", socket, "demo-worker"] + command
    argv = _client("buildbot-shell", "slaveshell.shell_cli") + args
    _say(shlex.join(["buildbot-shell", *args]))
    if command:
        return _foreground(argv)
    step_in = _client("buildbot-shell", "slaveshell.shell_cli") + ["--socket", socket, "--build", "1", "demo-worker"]
    _say("a held build: run in another terminal\n"
         f"    {shlex.join(hold_command(sandbox))}\n"
         "  its first step fails and HoldForShell holds it; step into it (its directory and environment; ~r "
         "releases it) with\n"
         f"    {shlex.join(step_in)}\n"
         "  (1 is the first build's id; each sendchange adds a build: 2, 3, ...)")
    _say("you are now in a shell on the worker; 'exit' (or ~.) ends the demo, ~d detaches, ~^Z suspends.")
    status = _foreground(argv)
    while (session := _detached_session(socket)) is not None:
        resume = _client("slaveshell", "slaveshell.cli") + ["attach", session, "--socket", socket]
        _say(f"session {visible(session)} is detached and keeps running, and so does the sandbox: Enter resumes "
             f"it here (or, in another terminal: {visible(shlex.join(resume))}); Ctrl-D ends the demo and removes "
             "the sandbox, the session with it.")
        if not sys.stdin.readline():
            break
        status = _foreground(resume)
    return status


def hold_command(sandbox: Sandbox) -> list[str]:
    """The `buildbot sendchange` that starts a build of the sandbox's 'holder' builder (Sandbox.send_change)."""
    return BUILDBOT + ["sendchange", "--master", f"127.0.0.1:{sandbox.port}", "--auth", "change:change",
                       "--who", "demo", "--branch", "hold", "README"]


def _detached_session(socket: str) -> str | None:
    """The id of a detached session of ours on the sandbox's master, if one is left."""
    from slaveshell.client.calls import CallError, MasterCalls, rows

    calls = MasterCalls(socket)
    try:
        sessions = rows(calls.call(Op.SESSIONS))
    except CallError:
        return None
    finally:
        calls.close()
    return next((str(s["id"]) for s in sessions if s.get("state") == "detached" and s.get("uid") == os.getuid()),
                None)


def _foreground(argv: list[str]) -> int:
    """Run a client on our terminal, as one job with us: when it stops itself (`~^Z`, SIGTSTP), we stop too, so
    the shell that started the demo sees its job stopped and `fg` continues both (as ssh's ~^Z does it). Its exit
    status (128+N for a signal)."""
    proc = subprocess.Popen(argv)
    while True:
        try:
            _, status = os.waitpid(proc.pid, os.WUNTRACED)
        except ChildProcessError:
            return proc.wait()
        except KeyboardInterrupt:  # the client has the keyboard's Ctrl-C (a byte in raw mode) or ends on it
            continue
        if os.WIFSTOPPED(status):
            os.kill(os.getpid(), signal.SIGTSTP)  # the default action: stop (discarded when nobody could continue us)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # continued alone (kill -CONT): the client goes on too
            continue
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        return 128 - code if code < 0 else code


def _serve_web(sandbox: Sandbox, passwords: dict[str, str]) -> int:
    print(f"slaveshell demo: the web UI is at {sandbox.url}#/slaveshell\n"
          f"slaveshell demo: log in as {WEB_USER!r} with password {passwords[WEB_USER]!r} (may open shells)\n"
          f"slaveshell demo: or as {WEB_WATCHER!r} with password {passwords[WEB_WATCHER]!r} (may only watch the "
          f"sessions of {WEB_USER!r}: open a second browser or a private window)\n"
          f"slaveshell demo: a held build (its page is under Shells): {shlex.join(hold_command(sandbox))}\n"
          "slaveshell demo: Ctrl-C ends the demo.", file=sys.stderr, flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(3600):
        pass
    return 0


def _end(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _routed_shell(site: ClusterSandbox, command: list[str]) -> int:
    a, b = site.a.socket, site.b.socket
    args = ["--socket", a, CLUSTER_WORKER] + command
    _say(shlex.join(["buildbot-shell", *args]) + f"  (master A's socket; {CLUSTER_WORKER} is attached to master B)")
    argv = _client("buildbot-shell", "slaveshell.shell_cli") + args
    if command:
        return _foreground(argv)
    sessions = _client("slaveshell", "slaveshell.cli") + ["sessions", "--socket", b]
    watch = _client("slaveshell", "slaveshell.cli") + ["watch", "SESSION-ID", "--socket", a]
    _say("B serves and records the session, under B's policy for the user A vouches for "
         f"(cluster:A/{visible(getpass.getuser())}). To watch it from another terminal, through A: its id is on B,\n"
         f"    {visible(shlex.join(sessions))}\n"
         f"    {visible(shlex.join(watch))}")
    _say(f"you are now in a shell on {CLUSTER_WORKER}, on master B, through master A; 'exit' (or ~.) ends the demo "
         "and removes the site.")
    return _foreground(argv)


def describe_site(site: ClusterSandbox) -> str:
    return "\n".join([
        f"router:   {site.router.url} (crossbar, realm {site.router.realm}; log {site.router.log_path})",
        f"database: {site.database} on the local PostgreSQL (shared by both masters)",
        *(f"master {name}: {sb.master_dir} (socket {sb.socket}; workers {', '.join(sb.workers)})"
          for name, sb in site.masters.items())])


def cluster_demo(args: argparse.Namespace) -> int:
    from slaveshell.client.cluster_sandbox import ClusterSandbox, SiteUnavailable
    from slaveshell.client.router import RouterError
    from slaveshell.client.sandbox import SandboxError

    root = tempfile.mkdtemp(prefix="slaveshell-demo-cluster-")
    # B lets its own local user in, and A's operator (this user, as A vouches for it) on B's b* workers.
    policy = f"[dict(users=[{os.getuid()}]), dict(users=[{'cluster:A/' + getpass.getuser()!r}], workers=['b*'])]"
    site = ClusterSandbox(root, {"A": ["a1"], "B": [CLUSTER_WORKER]}, policies={"B": policy})
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _end)
    try:
        site.start(on_step=_say)
        print(describe_site(site), file=sys.stderr, flush=True)
        command = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        return _routed_shell(site, command)
    except SiteUnavailable as e:
        _say(f"cannot start a multi-master site here: {e}")
        return 2
    except (SandboxError, RouterError) as e:
        _say(str(e))
        return 255
    except KeyboardInterrupt:
        return 130
    finally:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        _say("stopping the masters, workers and router, dropping the database ...")
        site.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            _say(f"kept {root} (the database is dropped all the same)")


def cmd_demo(args: argparse.Namespace) -> int:
    from slaveshell.client.sandbox import SandboxError, describe

    web = bool(getattr(args, "web", False))
    if getattr(args, "cluster", False):
        if web:
            _say("--cluster and --web do not go together (yet)")
            return 2
        return cluster_demo(args)
    if web and importlib.util.find_spec("buildbot_www") is None:
        _say("--web needs Buildbot's web UI: pip install 'slaveshell[web]' (the buildbot-www package)")
        return 2
    root = tempfile.mkdtemp(prefix="slaveshell-demo-")
    passwords = {WEB_USER: secrets.token_urlsafe(12), WEB_WATCHER: secrets.token_urlsafe(12)}
    if web:
        # The first web login may open shells, the second only watch; the local user may open shells too (the
        # sandbox waits for its worker on the socket).
        sandbox = Sandbox(root, workers=["demo-worker"], www=True, www_config=web_config(passwords),
                          service_kwargs=f"policy=[dict(users=['web:{WEB_USER}']), "
                                         f"dict(users=['web:{WEB_WATCHER}'], rights=['watch']), "
                                         f"dict(users=[{os.getuid()}])]")
    else:
        sandbox = Sandbox(root, workers=["demo-worker"])
    for signum in (signal.SIGTERM, signal.SIGHUP):  # a closed terminal, kill: the sandbox goes all the same
        signal.signal(signum, _end)
    try:
        _say("creating a throwaway Buildbot master and worker ...")
        sandbox.create()
        _say("starting them (real buildbot processes on 127.0.0.1) ...")
        sandbox.start()
        print(describe(sandbox), file=sys.stderr, flush=True)
        if web:
            return _serve_web(sandbox, passwords)
        command = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        return _shell(sandbox, command)
    except SandboxError as e:
        _say(str(e))
        return 255
    except KeyboardInterrupt:
        return 130
    finally:
        for signum in (signal.SIGTERM, signal.SIGHUP):  # nothing cuts the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        _say("stopping and removing the sandbox ...")
        sandbox.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            _say(f"kept {root}")
