"""Who is at the other end of the web terminal's WebSocket, and whether Buildbot lets them have a shell.

Fail closed, in this order (each refusal has a message for the page):

1. the Origin header must be the site's own (scheme, host and port of ``c['buildbotURL']``): a page from
   another site carrying the user's cookie is refused (cross-site WebSocket hijacking);
2. the master must have web authentication (``c['www']['auth']`` other than Buildbot's default ``NoAuth``);
3. the user comes from Buildbot's session cookie, decoded server-side with the site's session secret
   (``buildbot.www.auth.parse_user_info_from_token``, as ``buildbot/www/ws.py`` does): never from the page;
   anonymous visitors are refused;
4. Buildbot's authz must grant the ``shell`` action on ``/workers/<name>`` by an explicit rule: unlike
   Buildbot's own ``Authz.assertUserAllowed`` (``buildbot/www/authz/authz.py``), which allows what no rule
   matched, no matching rule means refused. Grant it with `ShellEndpointMatcher` (or any matcher that
   matches the ``shell`` action, e.g. Buildbot's ``AnyEndpointMatcher``, which matches every action)::

       from master_side.www.access import ShellEndpointMatcher
       c['www']['authz'] = util.Authz(
           allowRules=[ShellEndpointMatcher(role="admins", worker="linux-*"), ...],
           roleMatchers=[util.RolesFromGroups(groupPrefix="")])

5. then slaveshell's own policy (`slaveshell.policy`, ``Rule(users=["web:alice"], groups=["web:admins"])``),
   asked by the operator API like for any operator.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from buildbot.www import auth
from buildbot.www.authz.endpointmatchers import EndpointMatcherBase, Match
from twisted.internet import defer

from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.policy import WebIdentity

if TYPE_CHECKING:
    from buildbot.master import BuildMaster

# Buildbot's user info (``auth.parse_user_info_from_token``): username, email, groups, anonymous...
UserInfo = dict[str, object]

# The plugin's name in c['www']['plugins'] and the path of its socket under the site.
PLUGIN = "slaveshell"
SOCKET_PATH = ("plugins", PLUGIN, "ws")


class Refused(Exception):
    """Access refused; the message is for the web user."""


class ShellEndpointMatcher(EndpointMatcherBase):
    """Buildbot authz rule: grants the ``shell`` action on workers whose name matches `worker` (a glob) to
    `role`. With ``defaultDeny`` (the default) a matching worker for a user without the role is refused even if
    a later rule would allow it, as for Buildbot's own matchers."""

    def __init__(self, role: str, worker: str = "*", defaultDeny: bool = True) -> None:
        super().__init__(role=role, defaultDeny=defaultDeny)
        self.worker = worker

    def match_WorkerEndpoint_shell(self, epobject: object, epdict: dict[str, object],
                                   options: dict[str, object]) -> defer.Deferred[Match | None]:
        name = epdict.get("name")
        if isinstance(name, str) and fnmatch.fnmatchcase(name, self.worker):
            return defer.succeed(Match(self.master))
        return defer.succeed(None)


def site_origin(buildbot_url: str) -> str:
    """``scheme://host[:port]`` of the site (RFC 6454 serialisation; default ports left out)."""
    parts = urlsplit(buildbot_url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def check_origin(origin: str | None, buildbot_url: str) -> None:
    if not origin:
        raise Refused("the request has no Origin header")
    if origin.lower().rstrip("/") != site_origin(buildbot_url):
        raise Refused("the page is not from this Buildbot's site (Origin does not match c['buildbotURL'])")


def check_auth_configured(master: BuildMaster) -> None:
    from buildbot.www.auth import NoAuth

    configured = master.config.www.get("auth")
    if configured is None or isinstance(configured, NoAuth):
        raise Refused("web shells need Buildbot's web authentication (c['www']['auth']); this master has none")


def site_path(path: str) -> list[bytes]:
    """The site's path (where Buildbot's root is) from the socket's request path ``<site>/plugins/<name>/ws``;
    the session cookie's name is derived from it (`auth.build_cookie_name`)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if tuple(parts[-len(SOCKET_PATH):]) == SOCKET_PATH:
        parts = parts[: -len(SOCKET_PATH)]
    return [p.encode("utf-8") for p in parts]


def parse_cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    # autobahn joins repeated headers with ','.
    for item in header.replace(",", ";").split(";"):
        key, sep, value = item.strip().partition("=")
        if sep:
            cookies[key] = value
    return cookies


def session_cookie_name(path: str, secure: bool) -> str:
    """The name of Buildbot's session cookie for a request to `path`."""
    return auth.build_cookie_name(secure, site_path(path)).decode("utf-8")


def user_info(master: BuildMaster, cookie_header: str, path: str, secure: bool) -> UserInfo:
    """The logged-in user's info from Buildbot's session cookie (anonymous without one). Raises Refused."""
    token = parse_cookies(cookie_header).get(session_cookie_name(path, secure))
    if token is None:
        return auth.build_anonymous_user_info()
    try:
        return dict(auth.parse_user_info_from_token(token, master.www.site.session_secret))
    except KeyError:
        raise Refused("your web session is not valid (expired or from another master): log in again") from None


def web_identity(master: BuildMaster, info: UserInfo) -> WebIdentity:
    """The WebIdentity of a logged-in user, with the roles Buildbot's authz gives them. Raises Refused."""
    name = info.get("username")
    if info.get("anonymous") or not isinstance(name, str) or not name:
        raise Refused("log in to Buildbot first: anonymous visitors get no shell")
    roles = master.www.authz.getRolesFromUser(info)
    return WebIdentity.from_web(name, sorted(str(r) for r in roles))


@deferred
async def check_authz_shell(master: BuildMaster, worker: str, info: UserInfo) -> None:
    """Buildbot's authz, failing closed: the first rule that matches the ``shell`` action on the worker
    decides. Raises Refused."""
    authz = master.www.authz
    roles = authz.getRolesFromUser(info)
    ep = ("workers", worker)
    for rule in authz.allowRules:
        match = await rule.match(ep, "shell", {})
        if match is None:
            continue
        if any(authz.match(role, rule.role) for role in roles):
            return
        if rule.defaultDeny:
            raise Refused(f"Buildbot's authz gives the shell action on worker {worker} to role {rule.role!r} only")
    raise Refused(f"no rule of Buildbot's authz grants the shell action on worker {worker}")


@deferred
async def shell_allowed(master: BuildMaster, info: UserInfo, workers: Iterable[str]) -> set[str]:
    """The subset of `workers` on which Buildbot's authz grants this web user the shell action."""
    out = set()
    for name in sorted(set(workers)):
        try:
            await check_authz_shell(master, name, info)
        except Refused:
            continue
        out.add(name)
    return out
