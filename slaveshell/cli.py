"""`slaveshell`: the operator's tool besides `buildbot-shell`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from .shell_cli import DEFAULT_SOCKET_NAME, SOCKET_ENV


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.master:
        return os.path.join(args.master, DEFAULT_SOCKET_NAME)
    return os.environ.get(SOCKET_ENV) or os.path.join(os.getcwd(), DEFAULT_SOCKET_NAME)


def call_master(socket_path: str, method: str, *args: Any) -> Any:
    """One call on the master's root object, run to completion (for one-shot commands)."""
    from twisted.internet import defer
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    from .client import connect

    outcome: list[Any] = []

    @defer.inlineCallbacks
    def go() -> Any:
        try:
            root = yield connect(reactor, socket_path)
            outcome.append((True, (yield root.callRemote(method, *args))))
        except Exception as e:
            outcome.append((False, e))
        finally:
            reactor.stop()

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def cmd_workers(args: argparse.Namespace) -> int:
    try:
        workers = call_master(_socket_path(args), "workers")
    except Exception as e:
        print(f"slaveshell: {e}", file=sys.stderr)
        return 255
    if args.json:
        print(json.dumps(workers, indent=1))
        return 0
    print(f"{'WORKER':20} {'STATE':12} {'SHELL':6} {'YOU':6} {'SESSIONS':8} SYSTEM")
    for w in workers:
        state = ("paused" if w["paused"] else "connected") if w["connected"] else "offline"
        print(f"{w['name']:20} {state:12} {'yes' if w['shell'] else 'no':6} "
              f"{'may' if w['allowed'] else 'denied':6} {w['sessions']:<8} {w['system']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .sandbox import Sandbox, SandboxError, describe

    root = tempfile.mkdtemp(prefix="slaveshell-demo-")
    sandbox = Sandbox(root, workers=["demo-worker"])
    try:
        print("slaveshell demo: creating a throwaway Buildbot master and worker ...", file=sys.stderr)
        sandbox.create()
        print("slaveshell demo: starting them (real buildbot processes on 127.0.0.1) ...", file=sys.stderr)
        sandbox.start()
        print(describe(sandbox), file=sys.stderr)
        command = list(args.command)
        if command and command[0] == "--":
            command = command[1:]
        shell = shutil.which("buildbot-shell")
        argv = ([shell] if shell else [sys.executable, "-m", "slaveshell.shell_cli"])
        argv += ["--socket", sandbox.socket, "demo-worker"] + command
        print(f"slaveshell demo: {' '.join(argv[-len(command) - 3:])}", file=sys.stderr)
        if not command:
            print("slaveshell demo: you are now in a shell on the worker; 'exit' (or ~.) ends the demo.",
                  file=sys.stderr)
        return subprocess.call(argv)
    except SandboxError as e:
        print(f"slaveshell demo: {e}", file=sys.stderr)
        return 255
    except KeyboardInterrupt:
        return 130
    finally:
        print("slaveshell demo: stopping and removing the sandbox ...", file=sys.stderr)
        sandbox.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"slaveshell demo: kept {root}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slaveshell", description="Shells into Buildbot workers, recorded.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_socket(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--master", metavar="DIR", help="the master's basedir")
        where.add_argument("--socket", metavar="PATH", help="the master's slaveshell socket")
        return sp

    w = with_socket(sub.add_parser("workers", help="list the master's workers and who may shell into them"))
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_workers)

    d = sub.add_parser("demo", help="a throwaway master and worker, and a shell on the worker")
    d.add_argument("--keep", action="store_true", help="keep the sandbox directory afterwards")
    d.add_argument("command", nargs=argparse.REMAINDER, help="run this instead of a login shell")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
