"""Buildbot's session cookie, watched for the web shell grants (master_side.www.grants): a login mints a grant,
a logout revokes it.

Buildbot 4.3 issues its session cookie in one place, ``BuildbotSession.updateSession(request)``
(``buildbot/www/service.py``): every login goes through it (``PreAuthenticatedLoginResource`` for
``UserPasswordAuth`` and ``HTPasswdAuth``, ``updateUserInfo``, OAuth2's ``LoginResource``,
``RemoteUserAuth.maybeAutoLogin``) and so does the logout (``LogoutResource``: ``session.expire()``, then
``updateSession``, which sends an anonymous cookie). `install()` wraps it once per process: Buildbot's own runs
first and unchanged, then, on a master with the plugin,

- if the new cookie is the same user's (a new login over the old one; ``RemoteUserAuth`` does it at every page),
  the grants bound to the cookie the request came with move to the new one;
- else those grants are revoked (a logout: the new cookie is anonymous; or another user's login) and, for a
  logged-in user, a grant is minted for the new cookie and its cookie added to the answer; for an anonymous one
  the grant cookie is cleared.

Shape check: `install` patches nothing unless ``BuildbotSession.updateSession(self, request)`` and
``auth.build_cookie_name`` are there; a cookie it cannot find in the answer (``request.cookies``) mints no
grant (so web shells are refused: fail closed), logged once. A failure of the hook is logged and never breaks
Buildbot's login or logout.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.logger import Logger

from master_side.www import grants

log = Logger()

_warned: set[str] = set()


def _warn_once(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warn("slaveshell: {what}: web shells are refused until this is fixed", what=what)


def _issued(request: Any, name: bytes) -> str | None:
    """The value of the cookie `name` this answer sets (the last one set), or None."""
    found = None
    for cookie in getattr(request, "cookies", None) or ():
        if isinstance(cookie, bytes) and cookie.startswith(name + b"="):
            found = cookie[len(name) + 1:].split(b";", 1)[0].decode("ascii", "replace")
    return found


def after_update(session: Any, request: Any, old: str | None) -> None:
    """Revoke what the request's old session cookie held, mint for the new one (see the module's text)."""
    from buildbot.www import auth

    master = getattr(getattr(session, "site", None), "master", None)
    registry = grants.registry(master) if master is not None else None
    if registry is None:
        return
    info = dict(getattr(session, "user_info", None) or {})
    user = info.get("username")
    logged_in = not info.get("anonymous") and isinstance(user, str) and bool(user)
    new = _issued(request, auth.build_cookie_name(request.isSecure(), request.sitepath))
    if logged_in and new is None:
        _warn_once("Buildbot's session cookie was not found in its login answer")
    fresh = (grants.credentials(master, str(user)), grants.roles(master, info)) if logged_in else None
    if old and new and old != new and fresh is not None and registry.rebind(old, new, info, *fresh):
        return
    if old and old != new:
        registry.revoke_token(old, "you logged out of Buildbot" if not logged_in else "another user logged in")
    path = grants.cookie_path(master)
    secret = None
    if fresh is not None and new is not None:
        secret = registry.mint(new, info, *fresh)
    if secret is not None:
        request.addCookie(grants.COOKIE, secret, path=path, httpOnly=True, sameSite="strict",
                          secure=request.isSecure(), max_age=str(int(grants.LIFETIME)))
    else:
        request.addCookie(grants.COOKIE, "", path=path, httpOnly=True, sameSite="strict",
                          secure=request.isSecure(), max_age="0", expires="Thu, 01 Jan 1970 00:00:00 GMT")


def install() -> bool:
    """Wrap Buildbot's ``BuildbotSession.updateSession`` once per process; True when it is (or was already),
    False when this Buildbot does not have the shape this was written for (nothing is changed then)."""
    try:
        from buildbot.www import auth, service
    except ImportError:
        return False
    cls = getattr(service, "BuildbotSession", None)
    original = getattr(cls, "updateSession", None)
    if cls is None or not callable(original) or not callable(getattr(auth, "build_cookie_name", None)):
        _warn_once("Buildbot's session class is not the one slaveshell knows (BuildbotSession.updateSession)")
        return False
    if getattr(original, "_slaveshell_grants", False):
        return True
    if list(inspect.signature(original).parameters) != ["self", "request"]:
        _warn_once("Buildbot's BuildbotSession.updateSession has another signature")
        return False

    def updateSession(self: Any, request: Any) -> None:
        old = None
        try:
            raw = request.getCookie(auth.build_cookie_name(request.isSecure(), request.sitepath))
            old = raw.decode("ascii", "replace") if isinstance(raw, bytes) else None
        except Exception:
            log.failure("slaveshell: reading the session cookie a request came with")
        original(self, request)
        try:
            after_update(self, request, old)
        except Exception:
            log.failure("slaveshell: web shell grants at a login or logout")

    updateSession._slaveshell_grants = True  # type: ignore[attr-defined]
    cls.updateSession = updateSession  # type: ignore[method-assign]
    log.info("slaveshell: Buildbot's logins and logouts mint and revoke web shell grants "
             "(master_side.www.session_hook)")
    return True
