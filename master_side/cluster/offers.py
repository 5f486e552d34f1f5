"""The vocabulary and the bounds of a routed session's direct stream (master_side.cluster.direct): B's offer of a
one-time login on its PB port as its answer carries it to A (`DirectOffer`, checked where it comes off the wire),
B's offers and the direct connections made with them, bounded per calling master and in all (`Offers`), and the
address of B's PB port as the other masters reach it. No I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from slaveshell.vocabulary.protocol import ProtocolError, check_int, check_str

USER_PREFIX = "slaveshell-direct-"
SECRET_LENGTH = 32  # hexadecimal digits: 128 random bits
OFFER_TTL = 10.0  # an offer not taken within this many seconds is withdrawn from the PB port
CONNECT_WITHIN = 2.0  # A's connection and login, else the session stays on the router
READY_WITHIN = 5.0  # after its login, a connection that does not say READY within this is dropped
MAX_PER_MASTER = 16  # offers and direct connections for one calling master
MAX_DIRECT = 64  # offers and direct connections for all calling masters
MAX_HOST = 255

# The path of a routed session's messages, as B's audit event of the session says it.
DIRECT, ROUTER = "direct", "router"


def _hex(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != SECRET_LENGTH or value.strip("0123456789abcdef"):
        raise ProtocolError(f"{what} must be {SECRET_LENGTH} lower-case hexadecimal digits")
    return value


@dataclass(frozen=True)
class DirectOffer:
    """What B's answer to an open or attach offers A: B's PB address and a one-time login there."""

    host: str
    port: int
    username: str
    password: str

    def to_wire(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "username": self.username, "password": self.password}

    @classmethod
    def from_wire(cls, wire: object) -> DirectOffer:
        if not isinstance(wire, dict) or set(wire) != {"host", "port", "username", "password"}:
            raise ProtocolError("a direct offer must be a dict of host, port, username and password")
        host = check_str(wire["host"], "host", MAX_HOST)
        assert isinstance(host, str)
        if not host or not host.isprintable() or any(c.isspace() for c in host):
            raise ProtocolError("a direct offer's host must be a printable name without spaces")
        username = wire["username"]
        if not isinstance(username, str) or not username.startswith(USER_PREFIX):
            raise ProtocolError(f"a direct offer's username must start with {USER_PREFIX}")
        _hex(username[len(USER_PREFIX):], "a direct offer's username")
        return cls(host, check_int(wire["port"], "port", 1, 65535), username, _hex(wire["password"], "password"))


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets) as given in ClusterConfig.direct_address. ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def pb_address(portstr: object, fqdn: Callable[[], str]) -> tuple[str, int] | None:
    """The address of a master's PB port as another master reaches it, from Buildbot's `protocols['pb']['port']`
    (an int, "9989", or a strports string "tcp:9989:interface=..."): its interface when it names one, else this
    host's name (`fqdn`); None when it is not a TCP port."""
    if isinstance(portstr, int):
        return fqdn(), portstr
    if not isinstance(portstr, str):
        return None
    if portstr.isdigit():
        return fqdn(), int(portstr)
    parts = portstr.replace("\\:", "\0").split(":")
    if parts[0] not in ("tcp", "tcp6") or len(parts) < 2 or not parts[1].isdigit():
        return None
    interface = next((p.split("=", 1)[1] for p in parts[2:] if p.startswith("interface=")), "")
    interface = interface.replace("\0", ":")
    if interface in ("", "0.0.0.0", "::"):
        interface = fqdn()
    return interface, int(parts[1])


@dataclass
class Offer:
    """One offer on B's side: for which calling master and session (its `in` token), when it was made, whether it
    was taken."""

    caller: str
    token: str
    username: str
    password: str
    made: float
    taken: bool = False


@dataclass
class Offers:
    """B's offers and the direct connections made with them, bounded per calling master and in all."""

    ttl: float = OFFER_TTL
    per_master: int = MAX_PER_MASTER
    total: int = MAX_DIRECT
    live: dict[str, Offer] = field(default_factory=dict)  # username -> offer (taken: a direct connection)

    def make(self, caller: str, token: str, now: float) -> Offer | str:
        """A new offer for `caller`'s session `token`, or why none is made (a bound)."""
        if sum(1 for o in self.live.values() if o.caller == caller) >= self.per_master:
            return f"{self.per_master} direct connections for master {caller} (its limit)"
        if len(self.live) >= self.total:
            return f"{self.total} direct connections in all (the limit)"
        offer = Offer(caller, token, USER_PREFIX + secrets.token_hex(SECRET_LENGTH // 2),
                      secrets.token_hex(SECRET_LENGTH // 2), now)
        self.live[offer.username] = offer
        return offer

    def take(self, username: str, now: float) -> Offer | None:
        """The offer a login names, once: None when there is none, it was taken, or it expired."""
        offer = self.live.get(username)
        if offer is None or offer.taken or now - offer.made > self.ttl:
            return None
        offer.taken = True
        return offer

    def expired(self, now: float) -> list[Offer]:
        """The offers not taken in time: withdrawn."""
        out = [o for o in self.live.values() if not o.taken and now - o.made > self.ttl]
        for offer in out:
            del self.live[offer.username]
        return out

    def drop(self, username: str) -> Offer | None:
        return self.live.pop(username, None)
