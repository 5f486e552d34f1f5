"""`ClusterConfig`: how a master of a multi-master site reaches the site's WAMP router, as slaveshell itself (never
Buildbot's own anonymous session), and the URIs slaveshell registers there.

In master.cfg::

    ShellService(cluster=ClusterConfig(router_url='ws://router:8080/ws', realm='buildbot',
                                       authid='slaveshell', ticket_file='/etc/slaveshell/router-ticket',
                                       master='B'))

`ticket_file` (relative to the master's basedir, or absolute) is read when the link starts.

URIs are made of names that come from workers and master.cfg, so each such name is one URI component in lower-case
hexadecimal of its UTF-8: any name (dots, spaces, `#`, upper case, non-ASCII) gives a valid, distinct component
under the router's strict URI rules.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from master_side.cluster.offers import parse_address

PREFIX = "slaveshell."
WORKER_PREFIX = PREFIX + "worker."
MASTER_PREFIX = PREFIX + "master."
SESSION_PREFIX = PREFIX + "session."
_COMPONENT = re.compile(r"[0-9a-f]+")

# The longest master or worker name slaveshell puts in a URI (Buildbot's worker names are identifiers of at most
# 50 characters; a master's cluster name is master.cfg's).
MAX_NAME = 200


def encode(name: str) -> str:
    """One URI component for `name`: the lower-case hexadecimal of its UTF-8."""
    return name.encode("utf-8", "surrogateescape").hex()


def decode(component: str) -> str | None:
    """The name that `encode` made `component` from, or None when it is not one."""
    if not _COMPONENT.fullmatch(component) or len(component) % 2:
        return None
    try:
        return bytes.fromhex(component).decode("utf-8")
    except UnicodeDecodeError:
        return None


def worker_uri(worker: str, what: str = "locate") -> str:
    """The procedure a master registers for an opted-in worker attached to it: the router lets one session hold
    it, so the router's live registrations say which master holds the worker now."""
    return f"{WORKER_PREFIX}{encode(worker)}.{what}"


def session_uri(token: str, end: str) -> str:
    """A routed session's procedure at one `end` ("in": on the worker's master, what the operator's master sends;
    "out": on the operator's master, what the worker's master sends), named by a random token (hexadecimal) that
    only the two masters know."""
    return f"{SESSION_PREFIX}{token}.{end}"


def master_uri(master: str) -> str:
    """The procedure each master registers under its cluster name: its attached workers, as it sees them."""
    return f"{MASTER_PREFIX}{encode(master)}.workers"


def master_attach_uri(master: str) -> str:
    """The procedure each master registers under its cluster name for another master's operator to watch or join
    one of its live sessions (master_side.cluster.serve)."""
    return f"{MASTER_PREFIX}{encode(master)}.attach"


def master_record_uri(master: str, what: str) -> str:
    """A procedure each master registers under its cluster name for the other masters' reads of its records
    (master_side.cluster.records: `what` is "transcript", "search" or "sessions")."""
    return f"{MASTER_PREFIX}{encode(master)}.{what}"


def master_of_uri(uri: str) -> str | None:
    """The master name in a `master_uri`, or None when `uri` is not one."""
    if not uri.startswith(MASTER_PREFIX) or not uri.endswith(".workers"):
        return None
    return decode(uri[len(MASTER_PREFIX):-len(".workers")])


@dataclass(frozen=True)
class ClusterConfig:
    """The router's WebSocket URL and realm, slaveshell's credentials there (a WAMP ticket, given in master.cfg or
    read from a file readable by the master's user only), and this master's name in the site (short, unique:
    operators see it in "w1 is on master B")."""

    router_url: str
    realm: str
    authid: str
    master: str
    ticket: str | None = None
    ticket_file: str | None = None
    # Reconnection to the router: first retry after this many seconds, growing to at most max_retry_delay.
    initial_retry_delay: float = 1.0
    max_retry_delay: float = 30.0
    # How long a question to another master may take before it is counted as not answering.
    call_timeout: float = 5.0
    # Routed sessions' messages over a direct connection from the operator's master to this master's Buildbot PB
    # port (master_side.cluster.direct), offered to the calling master with each session this master serves for
    # it; the router stays the path when the connection cannot be made. `direct_address` ("host:port") is how the
    # other masters reach that port: by default, the PB port's interface, or this host's name, and its port.
    direct: bool = False
    direct_address: str | None = None

    def errors(self) -> list[str]:
        out = []
        if not isinstance(self.router_url, str) or not self.router_url.startswith(("ws://", "wss://")):
            out.append("cluster: router_url must be a ws:// or wss:// URL")
        for what in ("realm", "authid", "master"):
            value = getattr(self, what)
            if not isinstance(value, str) or not value or len(value) > MAX_NAME:
                out.append(f"cluster: {what} must be a name of 1 to {MAX_NAME} characters")
        if (self.ticket is None) == (self.ticket_file is None):
            out.append("cluster: give exactly one of ticket and ticket_file")
        for what in ("ticket", "ticket_file"):
            value = getattr(self, what)
            if value is not None and (not isinstance(value, str) or not value):
                out.append(f"cluster: {what} must be a non-empty string")
        if not isinstance(self.direct, bool):
            out.append("cluster: direct must be True or False")
        if self.direct_address is not None:
            try:
                parse_address(self.direct_address)
            except (ValueError, AttributeError, TypeError):
                out.append("cluster: direct_address must be host:port")
        for what in ("initial_retry_delay", "max_retry_delay", "call_timeout"):
            value = getattr(self, what)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                out.append(f"cluster: {what} must be a positive number of seconds")
        return out

    def secret(self, basedir: str = ".") -> str:
        """The ticket: given, or the first line of ticket_file (relative to the master's `basedir`), read when the
        link starts (a master.cfg checked elsewhere need not see the file). OSError when it cannot be read."""
        if self.ticket is not None:
            return self.ticket
        assert self.ticket_file is not None
        with open(os.path.join(basedir, self.ticket_file), encoding="utf-8") as f:
            return f.readline().strip()
