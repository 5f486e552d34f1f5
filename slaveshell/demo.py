"""`slaveshell demo`: a throwaway Buildbot master and worker on 127.0.0.1 (real processes, slaveshell/sandbox.py),
then a shell on the worker (`buildbot-shell`), or with ``--web`` the master's web UI with a login and the
Shells page (master_side.www), until Ctrl-C. Everything is removed at the end unless ``--keep``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

WEB_USER = "demo"


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
    print(f"slaveshell demo: {text}", file=sys.stderr, flush=True)


def _shell(socket: str, command: list[str]) -> int:
    shell = shutil.which("buildbot-shell")
    argv = ([shell] if shell else [sys.executable, "-m", "slaveshell.shell_cli"])
    argv += ["--socket", socket, "demo-worker"] + command
    _say(" ".join(argv[-len(command) - 3:]))
    if not command:
        _say("you are now in a shell on the worker; 'exit' (or ~.) ends the demo.")
    return subprocess.call(argv)


def _serve_web(url: str, password: str) -> int:
    print(f"slaveshell demo: the web UI is at {url}#/slaveshell\n"
          f"slaveshell demo: log in as {WEB_USER!r} with password {password!r} (this demo's only login)\n"
          "slaveshell demo: Ctrl-C ends the demo.", file=sys.stderr, flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(3600):
        pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .sandbox import Sandbox, SandboxError, describe

    web = bool(getattr(args, "web", False))
    if web and importlib.util.find_spec("buildbot_www") is None:
        _say("--web needs Buildbot's web UI: pip install 'slaveshell[web]' (the buildbot-www package)")
        return 2
    root = tempfile.mkdtemp(prefix="slaveshell-demo-")
    password = secrets.token_urlsafe(12)
    if web:
        # The web login may open shells; the local user too (the sandbox waits for its worker on the socket).
        sandbox = Sandbox(root, workers=["demo-worker"], www=True, www_config=web_config({WEB_USER: password}),
                          service_kwargs=f"policy=[dict(users=['web:{WEB_USER}']), dict(users=[{os.getuid()}])]")
    else:
        sandbox = Sandbox(root, workers=["demo-worker"])
    try:
        _say("creating a throwaway Buildbot master and worker ...")
        sandbox.create()
        _say("starting them (real buildbot processes on 127.0.0.1) ...")
        sandbox.start()
        print(describe(sandbox), file=sys.stderr, flush=True)
        if web:
            return _serve_web(sandbox.url, password)
        command = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        return _shell(sandbox.socket, command)
    except SandboxError as e:
        _say(str(e))
        return 255
    except KeyboardInterrupt:
        return 130
    finally:
        _say("stopping and removing the sandbox ...")
        sandbox.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            _say(f"kept {root}")
