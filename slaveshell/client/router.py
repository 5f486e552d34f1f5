"""The WAMP router of a multi-master site, for the end-to-end tests, CI and trying it out: crossbar.io from PyPI in
a virtual environment of its own (it pins old packages that would downgrade Buildbot's), and a configuration with
one realm that serves both Buildbot's anonymous `wamp` message queue and slaveshell's authenticated role.

    python3 -m slaveshell.client.router install     # the venv, when it is missing (~80 s, ~380 MB)
    python3 -m slaveshell.client.router config      # a configuration, on standard output
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

CROSSBAR_VERSION = "26.10.1"
# Where the router's venv lives: stable across runs, outside any checkout.
VENV = os.environ.get("SLAVESHELL_CROSSBAR_VENV",
                      os.path.join(os.path.expanduser("~"), ".cache", "slaveshell", "crossbar-venv"))
_DONE = ".slaveshell-complete"

def _permission(uri: str, register: bool, disclose: bool = True) -> dict[str, object]:
    return {"uri": uri, "match": "prefix",
            "allow": {"call": True, "register": register, "publish": False, "subscribe": False},
            "disclose": {"caller": disclose, "publisher": False}, "cache": True}


def master_role(authid: str) -> str:
    """The role of one master's principal: `slaveshell-<its authid in hexadecimal>` (as master_side.cluster.config
    encodes names in URIs)."""
    return "slaveshell-" + authid.encode("utf-8", "surrogateescape").hex()


def slaveshell_permissions(authid: str) -> list[dict[str, object]]:
    """The permissions of one master's role: slaveshell's procedures (the workers' and the routed sessions', which
    any master may hold), but under `slaveshell.master.` only its own (the longest prefix decides): no master can
    register another's listing, attach or anything under its name. And the router's meta API that lists
    registrations."""
    own = "slaveshell.master." + authid.encode("utf-8", "surrogateescape").hex() + "."
    return [_permission("slaveshell.", True), _permission("slaveshell.master.", False), _permission(own, True),
            _permission("wamp.registration.", False, disclose=False)]
# Buildbot's masters: anonymous, on Buildbot's own topics only (org.buildbot.mq.*, org.buildbot.<id>.connected).
BUILDBOT_PERMISSIONS = [
    {"uri": "org.buildbot.", "match": "prefix",
     "allow": {"call": True, "register": True, "publish": True, "subscribe": True},
     "disclose": {"caller": False, "publisher": False}, "cache": True},
]


class RouterError(Exception):
    pass


def crossbar_path() -> str:
    """The crossbar executable: $SLAVESHELL_CROSSBAR, or the venv's."""
    return os.environ.get("SLAVESHELL_CROSSBAR") or os.path.join(VENV, "bin", "crossbar")


def installed() -> bool:
    if os.environ.get("SLAVESHELL_CROSSBAR"):
        return os.access(crossbar_path(), os.X_OK)
    return os.path.exists(os.path.join(VENV, _DONE)) and os.access(crossbar_path(), os.X_OK)


def install(python: str = sys.executable, timeout: float = 900) -> str:
    """Install crossbar into its venv unless it is there (one installer at a time, by a lock beside the venv):
    the crossbar executable. RouterError with pip's last lines when it cannot be installed."""
    if installed():
        return crossbar_path()
    os.makedirs(os.path.dirname(VENV), exist_ok=True)
    with open(VENV + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed():
            return crossbar_path()
        shutil.rmtree(VENV, ignore_errors=True)  # a half-made venv (an install that was interrupted)
        for argv in ([python, "-m", "venv", VENV],
                     [os.path.join(VENV, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check",
                      f"crossbar=={CROSSBAR_VERSION}"]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
                raise RouterError(f"installing crossbar failed ({' '.join(argv[:3])}...):\n{tail}")
        with open(os.path.join(VENV, _DONE), "w") as f:
            f.write(CROSSBAR_VERSION + "\n")
    return crossbar_path()


def config(port: int, realm: str = "buildbot", tickets: dict[str, str] | None = None,
           interface: str = "127.0.0.1") -> dict[str, object]:
    """A crossbar configuration: one WebSocket transport on `port`; in `realm`, anonymous clients (Buildbot's
    masters) on Buildbot's topics only, and a role per principal of `tickets` (authid -> ticket: one per master,
    its authid the master's name), on slaveshell's procedures only (slaveshell_permissions)."""
    principals = {authid: {"ticket": ticket, "role": master_role(authid)} for authid, ticket in (tickets or {}).items()}
    return {
        "version": 2,
        "controller": {},
        "workers": [{
            "type": "router",
            "realms": [{
                "name": realm,
                "roles": [
                    {"name": "anonymous", "permissions": BUILDBOT_PERMISSIONS},
                    *({"name": master_role(authid), "permissions": slaveshell_permissions(authid)}
                      for authid in sorted(tickets or {})),
                ],
            }],
            "transports": [{
                "type": "websocket",
                "endpoint": {"type": "tcp", "port": port, "interface": interface},
                "options": {"require_masked_client_frames": False},
                "auth": {
                    "anonymous": {"type": "static", "role": "anonymous"},
                    "ticket": {"type": "static", "principals": principals},
                },
            }],
        }],
    }


class Router:
    """A crossbar process serving `config(port, ...)` from directory `root`."""

    def __init__(self, root: str, port: int, realm: str = "buildbot", tickets: dict[str, str] | None = None) -> None:
        self.root = os.path.abspath(root)
        self.port = port
        self.realm = realm
        self.tickets = dict(tickets or {})
        self.cbdir = os.path.join(self.root, ".crossbar")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "crossbar.log")

    def start(self, timeout: float = 60) -> None:
        os.makedirs(self.cbdir, exist_ok=True)
        with open(os.path.join(self.cbdir, "config.json"), "w") as f:
            json.dump(config(self.port, self.realm, self.tickets), f, indent=1)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([crossbar_path(), "start", "--cbdir", self.cbdir, "--loglevel", "warn"],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RouterError(f"crossbar exited ({self.proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.2)
        raise RouterError(f"crossbar did not listen on port {self.port} within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def running(root: str, port: int, realm: str = "buildbot",
            tickets: dict[str, str] | None = None) -> Iterator[Router]:
    router = Router(root, port, realm, tickets)
    router.start()
    try:
        yield router
    finally:
        router.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m slaveshell.client.router", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("install", help="install crossbar into its own venv when it is missing")
    conf = sub.add_parser("config", help="print a crossbar configuration (JSON)")
    conf.add_argument("--port", type=int, default=8080)
    conf.add_argument("--realm", default="buildbot")
    conf.add_argument("--ticket", action="append", default=[], metavar="AUTHID=TICKET",
                      help="a principal of slaveshell's role (repeatable)")
    args = parser.parse_args(argv)
    if args.what == "install":
        try:
            print(install())
        except (RouterError, OSError, subprocess.TimeoutExpired) as e:
            print(f"slaveshell: {e}", file=sys.stderr)
            return 1
        return 0
    tickets = dict(t.split("=", 1) for t in args.ticket if "=" in t)
    json.dump(config(args.port, args.realm, tickets), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
