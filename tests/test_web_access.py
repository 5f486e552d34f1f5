"""Web identities in the policy (slaveshell.policy.WebIdentity) and the web door's access checks
(master_side.www.access): Origin, cookie name, Buildbot's authz failing closed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from buildbot.www.auth import NoAuth, UserPasswordAuth
from buildbot.www.authz import Authz
from buildbot.www.authz.endpointmatchers import Match
from buildbot.www.authz.roles import RolesFromUsername
from twisted.internet import defer

from master_side.www import access
from slaveshell.vocabulary.policy import Action, Identity, Policy, Rule, WebIdentity, same_operator

ALICE = WebIdentity.from_web("alice", ["admins"])
BOB = WebIdentity.from_web("bob", [])
ROOT = Identity(uid=0, gid=0, pid=1, user="root", groups=frozenset({"root"}))


def test_web_identity_names_and_roles():
    assert (ALICE.user, ALICE.groups, ALICE.uid) == ("web:alice", frozenset({"web:admins"}), -1)
    assert str(ALICE) == "web:alice (web user)"


def test_rules_name_web_users_and_roles_never_by_number():
    policy = Policy([Rule(users=["web:bob"], rights=["watch"]), Rule(groups=["web:admins"]),
                     Rule(users=[-1, "-1"], groups=[-1])])
    assert policy.may(ALICE, Action.SHELL, "w1").allowed
    assert not policy.may(BOB, Action.SHELL, "w1").allowed
    assert policy.may(BOB, Action.WATCH, "w1").allowed
    # The uid -1 that every web user has matches nobody; a local user named like a role does not get it.
    assert not Policy([Rule(users=[-1, "-1"], groups=[-1])]).may(BOB, Action.SHELL, "w1").allowed
    assert not Policy([Rule(groups=["admins"])]).may(ALICE, Action.SHELL, "w1").allowed
    assert not Policy.default(master_uid=0).may(ALICE, Action.SHELL, "w1").allowed
    assert Policy([Rule(users=["*"])]).may(ALICE, Action.SHELL, "w1").allowed


def test_web_users_are_not_each_other():
    assert not same_operator(ALICE, BOB) and same_operator(ALICE, WebIdentity.from_web("alice", []))
    assert not same_operator(ALICE, Identity(uid=-1, gid=-1, pid=1, user="x", groups=frozenset()))
    policy = Policy([Rule(groups=["web:admins"])])
    # Only one's own session is exempt from the watch and kill rights.
    assert not policy.may(BOB, Action.KILL, "w1", owner=ALICE).allowed
    assert policy.may(BOB, Action.KILL, "w1", owner=BOB).allowed
    live = [SimpleNamespace(worker="w1", identity=ALICE)]
    assert policy.quota(BOB, "w1", live, None, 1) is None
    assert policy.quota(ALICE, "w1", live, None, 1)


def test_origin_must_be_the_sites():
    url = "http://Build.Example:8010/"
    access.check_origin("http://build.example:8010", url)
    for origin in (None, "", "http://build.example:8011", "https://build.example:8010", "http://evil.example",
                   "null"):
        with pytest.raises(access.Refused):
            access.check_origin(origin, url)
    access.check_origin("https://ci.example", "https://ci.example:443/buildbot/")


def test_cookie_name_follows_the_site_path():
    assert access.site_path("/plugins/slaveshell/ws") == []
    assert access.site_path("/bb/plugins/slaveshell/ws?x=1") == [b"bb"]
    assert access.parse_cookies("a=1; TWISTED_SESSION=tok,b=2") == {"a": "1", "TWISTED_SESSION": "tok", "b": "2"}


def _master(auth: Any, rules: list[Any]) -> Any:
    authz = Authz(allowRules=rules, roleMatchers=[RolesFromUsername(roles=["admins"], usernames=["alice"])])
    return SimpleNamespace(config=SimpleNamespace(www={"auth": auth}), www=SimpleNamespace(authz=authz))


class _Rule:
    def __init__(self, role: str, matches: bool, defaultDeny: bool = True) -> None:
        self.role, self.matches, self.defaultDeny = role, matches, defaultDeny

    def match(self, ep: Any, action: str, options: Any) -> Any:
        return defer.succeed(Match(None) if self.matches and action == "shell" else None)


def _authz(master: Any, user: str) -> Any:
    d = access.check_authz_shell(master, "w1", {"username": user})
    failures: list[Any] = []
    d.addErrback(failures.append)
    return failures[0].value if failures else None


def test_authz_fails_closed():
    # No rule matches the shell action: refused, although Buildbot itself would allow it.
    assert isinstance(_authz(_master(None, [_Rule("admins", False)]), "alice"), access.Refused)
    assert _authz(_master(None, [_Rule("admins", True)]), "alice") is None
    refused = _authz(_master(None, [_Rule("admins", True)]), "bob")
    assert isinstance(refused, access.Refused) and "admins" in str(refused)
    # Without defaultDeny, the next rule decides; with none left, refused.
    assert isinstance(_authz(_master(None, [_Rule("admins", True, defaultDeny=False)]), "bob"), access.Refused)
    assert _authz(_master(None, [_Rule("others", True, False), _Rule("admins", True)]), "alice") is None


def test_login_required():
    for auth in (None, NoAuth()):
        with pytest.raises(access.Refused):
            access.check_auth_configured(_master(auth, []))
    master = _master(UserPasswordAuth({"alice": "pw"}), [])
    access.check_auth_configured(master)
    with pytest.raises(access.Refused, match="log in"):
        access.web_identity(master, {"anonymous": True})
    assert access.web_identity(master, {"username": "alice"}) == ALICE


def test_shell_endpoint_matcher_globs_worker_names():
    matcher = access.ShellEndpointMatcher(role="admins", worker="linux-*")
    matcher.master = None
    hits: list[Any] = []
    matcher.match_WorkerEndpoint_shell(None, {"name": "linux-1"}, {}).addCallback(hits.append)
    matcher.match_WorkerEndpoint_shell(None, {"name": "win-1"}, {}).addCallback(hits.append)
    assert isinstance(hits[0], Match) and hits[1] is None
