"""Stand-ins for the two ends of a routed session's or transfer's direct stream (master_side.cluster.direct), shared
by tests/test_cluster_direct.py (sessions), tests/test_cluster_copy_direct.py (transfers) and
tests/test_cluster_copy_trust.py: Buildbot's pbmanager (`PBManager`), A's end as B's avatar sees it (`Mind`), B's
avatar as A's link sees it (`Perspective`, `Connector`), B's door on a test's clock (`pb_door`) with its audit of
the path (`audited_paths`), a login made ready (`ready_avatar`), and both ends over two real PB brokers joined in
memory (`lean_pair`)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.spread import pb

from master_side.cluster.direct import DirectAvatar, DirectDoor, DirectLink, Lean, Sender
from master_side.cluster.offers import USER_PREFIX, Offer, Offers
from slaveshell.vocabulary.protocol import ProtocolError

from .fakes import connected


class PBManager:
    """Buildbot's pbmanager as the door uses it: register a user name on a port, unregister it."""

    def __init__(self) -> None:
        self.users: dict[str, tuple[str, Any]] = {}

    def register(self, portstr: object, username: str, password: str, factory: Any) -> defer.Deferred[Any]:
        self.users[username] = (password, factory)
        manager = self

        class Registration:
            def unregister(self) -> defer.Deferred[None]:
                del manager.users[username]
                return defer.succeed(None)

        return defer.succeed(Registration())


class Mind:
    """A's end as B's avatar sees it."""

    def __init__(self) -> None:
        self.got: list[object] = []
        self.closed = False

    def callRemote(self, name: str, wire: object, pbanswer: bool = True) -> defer.Deferred[None] | None:  # noqa: N802
        self.got.append(wire)
        return None if not pbanswer else defer.succeed(None)


class Perspective:
    """B's avatar as A's connection sees it."""

    def __init__(self) -> None:
        self.got: list[object] = []
        self.answers: list[defer.Deferred[None]] = []

    def callRemote(self, name: str, wire: object, pbanswer: bool = True) -> defer.Deferred[None] | None:  # noqa: N802
        self.got.append(wire)
        return None


class Connector:
    def __init__(self) -> None:
        self.closed = False

    def disconnect(self) -> None:
        self.closed = True


def pb_door(clock: task.Clock) -> tuple[PBManager, DirectDoor]:
    """B's door on its PB port (127.0.0.1:9989) on `clock`, Buildbot's pbmanager a stand-in."""
    manager = PBManager()
    return manager, DirectDoor(lambda: manager, lambda: ("tcp:9989", ("127.0.0.1", 9989)), clock, clock.seconds)


def audited_paths(served: Any) -> list[tuple[str, str, str]]:
    """The audit events B's `served` (its ServedSessions or ServedTransfers) writes of the path a session's or a
    transfer's messages take: (its id, who, the detail)."""
    paths: list[tuple[str, str, str]] = []
    served.path_event = lambda record_id, worker, who, detail: paths.append((record_id, who.user, detail))
    return paths


def ready_avatar(manager: PBManager, offer: Any) -> tuple[DirectAvatar, Mind]:
    """A's login with `offer` on B's port, then READY: B's avatar, and A's end as it sees it."""
    mind = Mind()
    avatar = manager.users[offer.username][1](mind, offer.username)
    assert isinstance(avatar, DirectAvatar) and manager.users == {}  # single use: gone from the port at once
    avatar.attached(mind)
    assert avatar.perspective_ready() is True
    return avatar, mind


class ServedEnd:
    """A served session or transfer as B's avatar sees it: what A sent, and what was refused."""

    def __init__(self) -> None:
        self.got: list[object] = []
        self.refused: list[str] = []
        self.send: Any = None

    def message(self, wire: object) -> None:
        self.got.append(wire)

    def ready(self, send: Any) -> bool:
        self.send = send
        return True

    def lost(self) -> None:
        self.got.append("lost")

    def malformed(self, error: ProtocolError) -> None:
        self.refused.append(str(error))


def lean_pair(lean: Lean) -> tuple[Any, DirectAvatar, ServedEnd, DirectLink, list[object], list[str]]:
    """B's avatar for a session or a transfer (`lean`: SESSION, COPY) and A's link, over two real PB brokers joined
    in memory (tests/fakes.connected), lean calls asked for: the pump, the avatar, its served end, A's link, what A
    took and what A refused."""
    end = ServedEnd()
    door = type("Door", (), {"reactor": task.Clock(), "offers": Offers()})()
    avatars: list[DirectAvatar] = []

    class Root(pb.Root):
        def remote_login(self, mind: Any) -> Any:
            offer = Offer("A", "ab" * 16, USER_PREFIX + "cd" * 16, "ef" * 16, 0.0)
            avatar = DirectAvatar(door, offer, end, mind, lean)  # type: ignore[arg-type]
            avatar.attached(mind)
            avatars.append(avatar)
            return pb.AsReferenceable(avatar, "perspective")

    root, pump, _ = connected(Root())
    took: list[object] = []
    refused: list[str] = []
    mind = lean.mind(took.append, lambda e: refused.append(str(e)))
    answers: list[Any] = []
    root.callRemote("login", mind).addCallback(answers.append)
    pump.flush()
    perspective = answers[0]
    perspective.callRemote("ready").addCallback(answers.append)
    pump.flush()
    assert answers[1] is True
    link = DirectLink(perspective, Connector(), Sender(perspective, lean.kinds))
    leaned: list[bool] = []
    link.lean().addCallback(leaned.append)
    pump.flush()
    assert leaned == [True]
    return pump, avatars[0], end, link, took, refused
