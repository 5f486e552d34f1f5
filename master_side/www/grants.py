"""Web shell grants: the server-side proof, minted at a Buildbot login, that the web terminal's socket asks for
besides Buildbot's session cookie, and that dies with the login.

Buildbot's session is a stateless JWT (``buildbot/www/service.py``, ``BuildbotSession``): valid for
``cookie_expiration_time`` (a week by default) whatever happens to the login, not HttpOnly, no SameSite; its logout
(``/auth/logout``) only gives the browser an anonymous cookie, so a copy of the old one stays valid. A shell is
worth more than Buildbot's pages, so the socket also needs a grant:

- minted when Buildbot issues a logged-in session cookie (a login: master_side.www.session_hook), bound to that
  cookie (the sha256 of its token), and handed to the browser as the cookie ``SLAVESHELL_GRANT``: HttpOnly (no
  script, so no cross-site scripting, can read it), SameSite=Strict, path the plugin's, secure on https. Only the
  secret's sha256 is kept;
- moved to the new cookie when Buildbot issues one for the same user on a request carrying the bound one (a new
  login over it); revoked when that new cookie is anonymous or another user's (the logout), when
  the user's credentials (their password in ``UserPasswordAuth`` or ``HTPasswdAuth``) or Buildbot roles differ from
  those at login (checked at every reconfiguration and at every socket), after ``IDLE`` seconds with no socket
  using it, and ``LIFETIME`` seconds after the login. A revoked grant's open sockets are closed (their sessions
  detach, as for a lost connection).

Grants live in the master's memory: a restarted master, or another master behind the same site, has none, and
the page asks the user to log in again (``auth/login``). Bounds: ``MAX_PER_USER`` grants per user (a new login
retires the user's oldest) and ``MAX_GRANTS`` in all (then no new one until some expire; logged).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

from twisted.logger import Logger

from master_side.www import access
from master_side.www.access import UserInfo

if TYPE_CHECKING:
    from buildbot.master import BuildMaster

log = Logger()

COOKIE = "SLAVESHELL_GRANT"
# Seconds a grant lives with no socket using it, and at most after its login.
IDLE = 3600.0
LIFETIME = 12 * 3600.0
MAX_PER_USER = 16
MAX_GRANTS = 4096
# Fingerprints of credentials are keyed per process: the registry keeps no password nor a plain hash of one.
_KEY = os.urandom(32)

LOG_IN_AGAIN = "log in to Buildbot again to open shells"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(eq=False)
class Grant:
    key: str  # sha256 of the secret in the browser's cookie
    user: str
    token: str  # sha256 of the Buildbot session token it is bound to
    info: UserInfo
    credentials: str
    roles: tuple[str, ...]
    created: float
    last_used: float
    sockets: list[Callable[[str], None]] = field(default_factory=list)

    def alive(self, now: float) -> str | None:
        """None while the grant is valid at `now`, else why not."""
        if now - self.created > LIFETIME:
            return f"your web login is older than {int(LIFETIME) // 3600} hours"
        if not self.sockets and now - self.last_used > IDLE:
            return f"no shell page used your web login for {int(IDLE) // 60} minutes"
        return None


class Grants:
    """One master's grants, by the sha256 of their secret."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.by_key: dict[str, Grant] = {}

    def mint(self, token: str, info: UserInfo, credentials: str, roles: tuple[str, ...]) -> str | None:
        """A new grant bound to the session token `token`; its secret (for the browser), or None at the bound."""
        now = self.clock()
        self.prune()
        user = str(info.get("username"))
        # The oldest go first, those without an open socket before those with one.
        mine = sorted((g for g in self.by_key.values() if g.user == user), key=lambda g: (bool(g.sockets), g.created))
        for old in mine[: max(0, len(mine) - MAX_PER_USER + 1)]:
            self.revoke(old, "you logged in again elsewhere (the master keeps your newest web logins)")
        if len(self.by_key) >= MAX_GRANTS:
            log.warn("slaveshell: {n} web shell grants, the master's bound: a login gets none", n=MAX_GRANTS)
            return None
        secret = secrets.token_urlsafe(32)
        grant = Grant(digest(secret), user, digest(token), dict(info), credentials, roles, now, now)
        self.by_key[grant.key] = grant
        return secret

    def rebind(self, old: str, new: str, info: UserInfo, credentials: str, roles: tuple[str, ...]) -> bool:
        """A new session cookie `new` for the same user issued on a request carrying `old` (Buildbot logs the user in
        again, e.g. ``RemoteUserAuth`` at every page): `old`'s valid grants move to `new`, as fresh logins; the
        browser keeps its grant cookie. True when there was one."""
        now, bound, user = self.clock(), digest(old), str(info.get("username"))
        moved = False
        for grant in list(self.by_key.values()):
            if grant.token == bound and grant.user == user and grant.alive(now) is None:
                grant.token, grant.info, grant.credentials, grant.roles = digest(new), dict(info), credentials, roles
                grant.created = grant.last_used = now
                moved = True
        return moved

    def find(self, secret: str | None, token: str | None, user: str) -> Grant | str:
        """The valid grant of `secret` bound to `token` and `user`, or why there is none."""
        if not secret:
            return "this browser has no shell grant for your web login"
        grant = self.by_key.get(digest(secret))
        if grant is None or token is None or grant.token != digest(token) or grant.user != user:
            return "your web login's shell grant has ended (logged out, replaced, or the master restarted)"
        why = grant.alive(self.clock())
        if why is not None:
            self.revoke(grant, why)
            return why
        return grant

    def use(self, grant: Grant, on_revoke: Callable[[str], None]) -> Callable[[], None]:
        """A socket holds `grant` until the returned callable is called; `on_revoke(reason)` if it is revoked."""
        grant.last_used = self.clock()
        grant.sockets.append(on_revoke)

        def release() -> None:
            if on_revoke in grant.sockets:
                grant.sockets.remove(on_revoke)
            grant.last_used = self.clock()

        return release

    def revoke(self, grant: Grant, reason: str) -> None:
        if self.by_key.pop(grant.key, None) is None:
            return
        sockets, grant.sockets = grant.sockets, []
        for on_revoke in sockets:
            on_revoke(reason)

    def revoke_token(self, token: str, reason: str) -> int:
        """Revoke the grants bound to the session token `token` (a logout); how many there were."""
        bound = digest(token)
        gone = [g for g in self.by_key.values() if g.token == bound]
        for grant in gone:
            self.revoke(grant, reason)
        return len(gone)

    def prune(self) -> None:
        now = self.clock()
        for grant in list(self.by_key.values()):
            why = grant.alive(now)
            if why is not None:
                self.revoke(grant, why)

    def check_all(self, changed: Callable[[Grant], str | None]) -> int:
        """Revoke every grant for which `changed` gives a reason (a reconfiguration); how many."""
        gone = [(g, why) for g in list(self.by_key.values()) if (why := changed(g)) is not None]
        for grant, why in gone:
            self.revoke(grant, why)
        return len(gone)


_registries: WeakKeyDictionary[Any, Grants] = WeakKeyDictionary()


def registry(master: BuildMaster, create: bool = False) -> Grants | None:
    """The master's grants (made with `create`, by the plugin); None on a master without the plugin."""
    found = _registries.get(master)
    if found is None and create:
        found = _registries[master] = Grants(master.reactor.seconds)
    return found


def credentials(master: BuildMaster, username: str) -> str:
    """A keyed fingerprint of `username`'s credentials in the master's current web auth: it changes when an admin
    changes the user's password (``UserPasswordAuth``, ``HTPasswdAuth``: any Twisted checker with ``users`` or
    ``getUser``) or removes the user. For auths whose credentials live elsewhere (OAuth2, LDAP, ``CustomAuth``,
    ``RemoteUserAuth``) it is the auth's kind and configuration only."""
    auth = master.config.www.get("auth")
    parts: list[bytes] = [type(auth).__qualname__.encode()]
    try:
        parts.append(repr(sorted(auth.getConfigDict().items())).encode())
    except Exception:
        parts.append(b"?")
    name = username.encode("utf-8")
    for checker in getattr(auth, "checkers", None) or ():
        users = getattr(checker, "users", None)
        if isinstance(users, dict):
            parts.append(b"users:" + _bytes(users.get(name, users.get(username))))
        elif hasattr(checker, "getUser"):
            try:
                parts.append(b"user:" + _bytes(checker.getUser(name)[1]))
            except Exception:
                parts.append(b"user:none")
        else:
            parts.append(type(checker).__qualname__.encode())
    return hmac.new(_KEY, b"\0".join(parts), hashlib.sha256).hexdigest()


def _bytes(value: object) -> bytes:
    if value is None:
        return b"none"
    return value if isinstance(value, bytes) else repr(value).encode()


def roles(master: BuildMaster, info: UserInfo) -> tuple[str, ...]:
    """The Buildbot roles the master's current authz gives the user of `info`."""
    return tuple(sorted(str(r) for r in master.www.authz.getRolesFromUser(info)))


def changed(master: BuildMaster, grant: Grant) -> str | None:
    """Why `grant` no longer matches its user's credentials or roles in the master's configuration, or None."""
    if credentials(master, grant.user) != grant.credentials:
        return "your password or Buildbot's web login configuration changed since you logged in"
    if roles(master, grant.info) != grant.roles:
        return "your Buildbot roles changed since you logged in"
    return None


def cookie_path(master: BuildMaster) -> bytes:
    """The grant cookie's path: the plugin's, under the site's path in ``c['buildbotURL']``."""
    base = urlsplit(master.config.buildbotURL).path.rstrip("/")
    return f"{base}/plugins/{access.PLUGIN}/".encode()


def check(master: BuildMaster, cookie_header: str, path: str, secure: bool, info: UserInfo) -> Grant:
    """The socket's valid grant: the grant cookie's, bound to the session cookie it came with and still matching
    the user's credentials and roles. Raises access.Refused."""
    grants = registry(master)
    if grants is None:
        raise access.Refused("this master's web shells are not set up (the slaveshell plugin is not configured)")
    cookies = access.parse_cookies(cookie_header)
    token = cookies.get(access.session_cookie_name(path, secure))
    found = grants.find(cookies.get(COOKIE), token, str(info.get("username")))
    if isinstance(found, str):
        raise access.Refused(f"{found}: {LOG_IN_AGAIN}")
    why = changed(master, found)
    if why is not None:
        grants.revoke(found, why)
        raise access.Refused(f"{why}: {LOG_IN_AGAIN}")
    return found
