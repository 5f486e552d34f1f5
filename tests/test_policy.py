import pytest

from slaveshell.vocabulary.policy import Identity, Policy, Rule


def who(user="alice", uid=1000, groups=("alice",)):
    return Identity(uid=uid, gid=uid, pid=1, user=user, groups=frozenset(groups))


def test_default_allows_root_and_the_master_user_only():
    p = Policy.default(master_uid=1000)
    assert p.check(who(), "shell", "w1").allowed
    assert p.check(who("root", 0, ["root"]), "shell", "w1").allowed
    decision = p.check(who("mallory", 1001, ["mallory"]), "shell", "w1")
    assert not decision.allowed
    assert "mallory (uid 1001) may not shell on worker w1" in decision.reason


def test_rules_by_group_and_worker_pattern_and_right():
    p = Policy([
        Rule(groups=["ops"], workers=["linux-*"], rights=["shell", "watch"]),
        Rule(users=["*"], workers=["*"], rights=["watch"]),
    ])
    ops = who("bob", 1002, ["bob", "ops"])
    assert p.check(ops, "shell", "linux-1").allowed
    assert not p.check(ops, "shell", "win-1").allowed
    assert p.check(who(), "watch", "win-1").allowed
    assert not p.check(who(), "kill", "win-1").allowed


def test_first_matching_rule_decides():
    p = Policy([Rule(users=["alice"], rights=["watch"]), Rule(users=["alice"])])
    assert not p.check(who(), "shell", "w1").allowed


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="unknown rights"):
        Rule(users=["a"], rights=["sudo"])
    with pytest.raises(ValueError, match="needs users or groups"):
        Rule()


def test_identity_from_kernel_credentials_resolves_names():
    me = Identity.from_credentials(1, 0, 0)
    assert me.user == "root" and "root" in me.groups


def test_shell_implies_run_unless_the_rule_withholds_it():
    p = Policy([
        Rule(users=["alice"], rights=["shell", "watch"]),
        Rule(users=["bob"], rights=["shell"], withhold=["run"]),
        Rule(users=["carol"], rights=["run"]),
        Rule(users=["dave"], rights=["watch"]),
    ])
    assert p.check(who(), "run", "w1").allowed
    bob = p.check(who("bob", 1002, ["bob"]), "run", "w1")
    assert not bob.allowed and bob.reason == "bob (uid 1002) may not run on worker w1"
    assert p.check(who("bob", 1002, ["bob"]), "shell", "w1").allowed
    carol = who("carol", 1003, ["carol"])
    assert p.check(carol, "run", "w1").allowed and not p.check(carol, "shell", "w1").allowed
    assert not p.check(who("dave", 1004, ["dave"]), "run", "w1").allowed


def test_run_is_asked_as_an_action_and_the_default_rules_grant_it():
    from slaveshell.vocabulary.policy import Action

    assert Policy.default(master_uid=1000).may(who(), Action.RUN, "w1").allowed
    assert not Policy.default(master_uid=1000).may(who("eve", 1005, ["eve"]), Action.RUN, "w1").allowed
    assert Rule(users=["*"]).grants("run")


def test_a_rule_cannot_grant_and_withhold_a_right_or_withhold_an_unknown_one():
    with pytest.raises(ValueError, match=r"both grants and withholds \['run'\]"):
        Rule(users=["a"], rights=["shell", "run"], withhold=["run"])
    with pytest.raises(ValueError, match="unknown rights"):
        Rule(users=["a"], withhold=["sudo"])
