"""Web shell grants (master_side.www.grants), their hook on Buildbot's session cookie (session_hook) and the
framing headers (framing): every way a login ends ends its grant; a grant is bound to its session cookie and
user; the registry is bounded."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from buildbot.www.auth import UserPasswordAuth
from buildbot.www.authz import Authz
from buildbot.www.authz.roles import RolesFromUsername
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from master_side.www import access, grants, session_hook
from master_side.www import frame_refusal as framing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Master:
    """What the grants read of a BuildMaster (weakly referable, as a master is)."""

    def __init__(self, config: Any, www: Any) -> None:
        self.config, self.www = config, www
        self.reactor = SimpleNamespace(seconds=Clock())


def _master(users: dict[str, str], shellers: list[str]) -> Any:
    authz = Authz(allowRules=[], roleMatchers=[RolesFromUsername(roles=["shellers"], usernames=shellers)])
    config = SimpleNamespace(www={"auth": UserPasswordAuth(users)}, buildbotURL="http://ci.example:8010/bb/")
    return _Master(config, SimpleNamespace(authz=authz))


def _mint(master: Any, registry: grants.Grants, user: str, token: str) -> str:
    info = {"username": user}
    secret = registry.mint(token, info, grants.credentials(master, user), grants.roles(master, info))
    assert secret is not None
    return secret


def _valid(master: Any, registry: grants.Grants, secret: str, token: str, user: str) -> bool:
    found = registry.find(secret, token, user)
    return isinstance(found, grants.Grant) and grants.changed(master, found) is None


ENDINGS: dict[str, Callable[[Any, grants.Grants, Clock], None]] = {
    "logout": lambda m, r, c: r.revoke_token("tok-a", "you logged out of Buildbot"),
    "password changed": lambda m, r, c: setattr(m.config, "www", {"auth": UserPasswordAuth({"alice": "new"})}),
    "user removed": lambda m, r, c: setattr(m.config, "www", {"auth": UserPasswordAuth({"bob": "x"})}),
    "role taken": lambda m, r, c: setattr(m.www, "authz", Authz(allowRules=[], roleMatchers=[])),
    "role given": lambda m, r, c: setattr(m.www, "authz", Authz(allowRules=[], roleMatchers=[
        RolesFromUsername(roles=["shellers", "admins"], usernames=["alice"])])),
    "idle": lambda m, r, c: setattr(c, "now", c.now + grants.IDLE + 1),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_every_end_of_a_login_ends_its_grant(ending: str) -> None:
    clock = Clock()
    master = _master({"alice": "pw"}, ["alice"])
    registry = grants.Grants(clock)
    secret = _mint(master, registry, "alice", "tok-a")
    assert _valid(master, registry, secret, "tok-a", "alice")
    ENDINGS[ending](master, registry, clock)
    assert not _valid(master, registry, secret, "tok-a", "alice")


def test_a_grant_is_bound_to_its_cookie_its_user_and_its_secret() -> None:
    master = _master({"alice": "pw", "bob": "pw"}, ["alice"])
    registry = grants.Grants(Clock())
    secret = _mint(master, registry, "alice", "tok-a")
    for asked in ((None, "tok-a", "alice"), ("", "tok-a", "alice"), (secret, None, "alice"),
                  (secret, "tok-b", "alice"), (secret, "tok-a", "bob"), (secret + "x", "tok-a", "alice")):
        assert isinstance(registry.find(*asked), str), asked
    # Only digests are kept.
    assert secret not in repr(registry.by_key) and "tok-a" not in repr(registry.by_key)


def test_a_used_grant_does_not_idle_and_a_revoked_one_closes_its_sockets() -> None:
    clock = Clock()
    master = _master({"alice": "pw"}, ["alice"])
    registry = grants.Grants(clock)
    secret = _mint(master, registry, "alice", "tok-a")
    grant = registry.find(secret, "tok-a", "alice")
    assert isinstance(grant, grants.Grant)
    closed: list[str] = []
    release = registry.use(grant, closed.append)
    clock.now += grants.IDLE * 2
    assert registry.find(secret, "tok-a", "alice") is grant
    release()
    clock.now += grants.IDLE / 2
    assert registry.find(secret, "tok-a", "alice") is grant
    registry.use(grant, closed.append)
    master.config.www = {"auth": UserPasswordAuth({"alice": "changed"})}
    assert registry.check_all(lambda g: grants.changed(master, g)) == 1
    assert closed and "password" in closed[0]
    # The lifetime bounds even a grant in use.
    secret = _mint(master, registry, "alice", "tok-b")
    grant = registry.find(secret, "tok-b", "alice")
    assert isinstance(grant, grants.Grant)
    registry.use(grant, closed.append)
    clock.now += grants.LIFETIME + 1
    assert isinstance(registry.find(secret, "tok-b", "alice"), str)


def test_the_registry_is_bounded_per_user_and_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    master = _master({"alice": "pw"}, ["alice"])
    registry = grants.Grants(Clock())
    first = _mint(master, registry, "alice", "tok-0")
    for i in range(1, grants.MAX_PER_USER + 5):
        _mint(master, registry, "alice", f"tok-{i}")
    assert len(registry.by_key) == grants.MAX_PER_USER
    assert isinstance(registry.find(first, "tok-0", "alice"), str)  # the oldest went
    monkeypatch.setattr(grants, "MAX_GRANTS", grants.MAX_PER_USER + 2)
    master = _master({f"u{i}": "pw" for i in range(4)}, [])
    for i in range(2):
        _mint(master, registry, f"u{i}", f"t{i}")
    info = {"username": "u3"}
    assert registry.mint("t3", info, grants.credentials(master, "u3"), ()) is None


def test_the_cookie_path_is_the_plugins_under_the_sites() -> None:
    assert grants.cookie_path(_master({}, [])) == b"/bb/plugins/slaveshell/"


class _Site:
    def __init__(self, master: Any) -> None:
        self.master = master


def _request(cookies: dict[bytes, bytes], issued: bytes | None) -> Any:
    request = server.Request(DummyChannel())
    request.sitepath = []
    request.received_cookies = dict(cookies)
    request.isSecure = lambda: False
    if issued is not None:
        request.addCookie(b"TWISTED_SESSION", issued, path=b"/")
    return request


def test_the_session_hook_mints_at_login_and_revokes_at_logout() -> None:
    master = _master({"alice": "pw"}, ["alice"])
    registry = grants.registry(master, create=True)
    assert registry is not None
    login = _request({}, b"tok-login")
    session = SimpleNamespace(site=_Site(master), user_info={"username": "alice"})
    session_hook.after_update(session, login, None)
    grant_cookie = next(c for c in login.cookies if c.startswith(b"SLAVESHELL_GRANT="))
    secret = grant_cookie.split(b";")[0].split(b"=", 1)[1].decode()
    for flag in (b"HttpOnly", b"SameSite=strict", b"Path=/bb/plugins/slaveshell/"):
        assert flag.lower() in grant_cookie.lower(), grant_cookie
    assert isinstance(registry.find(secret, "tok-login", "alice"), grants.Grant)
    # The logout: Buildbot issues an anonymous cookie on a request carrying the logged-in one.
    logout = _request({b"TWISTED_SESSION": b"tok-login"}, b"tok-anon")
    session_hook.after_update(SimpleNamespace(site=_Site(master), user_info={"anonymous": True}), logout, "tok-login")
    assert isinstance(registry.find(secret, "tok-login", "alice"), str)
    assert any(c.startswith(b"SLAVESHELL_GRANT=;") for c in logout.cookies)


def test_the_session_hook_fits_this_buildbot() -> None:
    assert session_hook.install()
    assert session_hook.install()  # once


def test_the_socket_needs_the_grant_cookie_with_its_session_cookie() -> None:
    master = _master({"alice": "pw"}, ["alice"])
    registry = grants.registry(master, create=True)
    assert registry is not None
    secret = _mint(master, registry, "alice", "tok-a")
    info = {"username": "alice"}
    path = "/bb/plugins/slaveshell/ws"
    cookie = access.session_cookie_name(path, False)
    assert isinstance(grants.check(master, f"{cookie}=tok-a; SLAVESHELL_GRANT={secret}", path, False, info),
                      grants.Grant)
    for header in (f"{cookie}=tok-a", f"SLAVESHELL_GRANT={secret}", f"{cookie}=tok-b; SLAVESHELL_GRANT={secret}"):
        with pytest.raises(access.Refused, match="log in"):
            grants.check(master, header, path, False, info)


def test_the_plugins_files_refuse_framing(tmp_path: Any) -> None:
    (tmp_path / "a.js").write_text("x")
    root = framing.UnframedFile(str(tmp_path))
    request = DummyRequest([b"a.js"])
    child = root.getChild(b"a.js", request)
    assert isinstance(child, framing.UnframedFile)
    child.render(request)
    for name, value in framing.HEADERS:
        assert request.responseHeaders.getRawHeaders(name) == [value]


def test_a_new_login_of_the_same_user_moves_the_grant_and_another_users_revokes_it() -> None:
    master = _master({"alice": "pw", "bob": "pw"}, ["alice"])
    registry = grants.registry(master, create=True)
    assert registry is not None
    login = _request({}, b"tok-1")
    session_hook.after_update(SimpleNamespace(site=_Site(master), user_info={"username": "alice"}), login, None)
    secret = next(c for c in login.cookies if c.startswith(b"SLAVESHELL_GRANT=")).split(b";")[0].split(b"=", 1)[1]
    # The same user again (RemoteUserAuth re-issues at every page): the browser's grant follows the new cookie.
    again = _request({b"TWISTED_SESSION": b"tok-1"}, b"tok-2")
    session_hook.after_update(SimpleNamespace(site=_Site(master), user_info={"username": "alice"}), again, "tok-1")
    assert not any(c.startswith(b"SLAVESHELL_GRANT=") for c in again.cookies)
    assert isinstance(registry.find(secret.decode(), "tok-2", "alice"), grants.Grant)
    assert isinstance(registry.find(secret.decode(), "tok-1", "alice"), str)
    # Another user logs in over it: revoked.
    other = _request({b"TWISTED_SESSION": b"tok-2"}, b"tok-3")
    session_hook.after_update(SimpleNamespace(site=_Site(master), user_info={"username": "bob"}), other, "tok-2")
    assert isinstance(registry.find(secret.decode(), "tok-2", "alice"), str)


def test_buildbots_index_is_wrapped_once_and_answers_as_before_with_the_headers() -> None:
    from twisted.web import resource

    class Index(resource.Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            return b"index"

    root = resource.Resource()
    assert not framing.wrap_index(root)  # no index yet (start-up: Buildbot adds it after the plugins)
    root.putChild(b"", Index())
    assert framing.wrap_index(root) and framing.wrap_index(root)
    index = root.children[b""]
    assert isinstance(index, framing.UnframedIndex) and not isinstance(index.index, framing.UnframedIndex)
    request = DummyRequest([b""])
    assert index.render(request) == b"index"
    assert request.responseHeaders.getRawHeaders(b"x-frame-options") == [b"DENY"]
