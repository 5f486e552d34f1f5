"""`--workers` and `--where` resolved against the fleet: every named worker accounted for, one-line errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slaveshell.fleet.outcome import State
from slaveshell.fleet.targets import Selection, TargetError, Where, Worker, parse_where, resolve

GCC12 = {"os": "Linux", "gcc": "12.2.0"}
GCC11 = {"os": "Linux", "gcc": "11.4.0"}

FLEET = [
    Worker("w1", True, facts=GCC12),
    Worker("w2", True, facts=GCC11),
    Worker("w3", False, facts=GCC12),  # disconnected
    Worker("w4", True, opted_in=False, facts=GCC12),
    Worker("w5", True, allowed=False, refusal="alice may not run on worker w5", facts=GCC12),
    Worker("w6", True, facts={"os": "Linux"}),  # never reported gcc
    Worker("w10", True, facts=GCC12),
    Worker("build-01", True, facts={"os": "FreeBSD", "gcc": "12.2.0"}),
    Worker("lab", True, facts=None),  # no facts at all
]


def test_no_selection_targets_every_worker_and_lists_the_others_by_state():
    got = resolve(Selection(), FLEET)
    assert got.targets == ["build-01", "lab", "w1", "w2", "w6", "w10"]
    assert got.listed == {"w3": (State.NOT_CONNECTED, ""), "w4": (State.NOT_OPTED_IN, ""),
                          "w5": (State.REFUSED, "alice may not run on worker w5")}


def test_globs_are_any_of_and_where_is_all_of_with_globs_and_negation():
    got = resolve(Selection.parse(["w*"], ["gcc=12.*", "os!=Free*"]), FLEET)
    assert got.targets == ["w1", "w10"]
    # w2 does not match (11.4.0): it was not asked for. w6 has no gcc: listed, never silently skipped.
    assert got.listed == {"w3": (State.NOT_CONNECTED, ""), "w4": (State.NOT_OPTED_IN, ""),
                          "w5": (State.REFUSED, "alice may not run on worker w5"),
                          "w6": (State.MISSING_FACT, "no gcc")}
    assert resolve(Selection.parse(["build-*", "w2"]), FLEET).targets == ["build-01", "w2"]
    assert resolve(Selection.parse([], ["gcc!=12.2.0"]), FLEET).targets == ["w2"]


def test_a_worker_without_facts_is_listed_as_missing_each_fact_asked():
    got = resolve(Selection.parse(["lab"], ["os=Linux", "gcc=*"]), FLEET)
    assert got.targets == [] and got.listed == {"lab": (State.MISSING_FACT, "no gcc, os")}
    assert [o.state for o in got.outcomes()] == [State.MISSING_FACT]


def test_an_unknown_fact_is_one_line_naming_the_known_ones():
    with pytest.raises(TargetError) as e:
        resolve(Selection.parse([], ["gc=12"]), FLEET)
    assert str(e.value) == "--where gc=12: unknown fact gc; known facts: gcc, os"
    # A fact the probe gives is known before any worker reported it.
    assert resolve(Selection.parse([], ["python3=*"]), FLEET, ["python3"]).listed["w1"][0] is State.MISSING_FACT


def test_an_empty_target_set_is_one_line():
    with pytest.raises(TargetError) as e:
        resolve(Selection.parse(["x*"], ["gcc=13"]), FLEET)
    assert str(e.value) == "no worker matches --workers x* --where gcc=13"
    with pytest.raises(TargetError, match="^the master has no workers$"):
        resolve(Selection(), [])


@pytest.mark.parametrize(("text", "message"), [
    ("gcc", "--where gcc: expected FACT=VALUE or FACT!=VALUE"),
    ("=12", "--where =12: the fact is not a fact's name (a letter or _, then letters, digits, _ . -)"),
    ("9gcc=1", "--where 9gcc=1: 9gcc is not a fact's name (a letter or _, then letters, digits, _ . -)"),
    ("gcc=", "--where gcc=: the value is empty (use '*' for any value)"),
    ("gcc!=", "--where gcc!=: the value is empty (use '*' for any value)"),
    ("gcc==12", "--where gcc==12: expected FACT=VALUE or FACT!=VALUE, not =="),
    ("gcc=\x1b[2J", "--where gcc=\\x1b[2J: the value has control characters"),
    ("g\x1bc=1", "--where g\\x1bc=1: g\\x1bc is not a fact's name (a letter or _, then letters, digits, _ . -)"),
])
def test_a_malformed_where_is_one_escaped_line(text, message):
    with pytest.raises(TargetError) as e:
        parse_where(text)
    assert str(e.value) == message and "\n" not in str(e.value)


def test_a_malformed_workers_pattern_is_one_line():
    with pytest.raises(TargetError, match="^--workers needs a pattern of 1 to 1024 characters$"):
        Selection.parse([""])
    with pytest.raises(TargetError) as e:
        Selection.parse(["w\x1b]0;x\x07"])
    assert str(e.value) == "--workers w\\x1b]0;x\\x07: the pattern has control characters"


def test_where_parses_negation_and_globs():
    assert parse_where("gcc!=11.*") == Where("gcc", "11.*", negated=True)
    assert parse_where("os=Linux") == Where("os", "Linux")
    assert parse_where("distribution=Debian GNU/Linux 12 (bookworm)").matches("Debian GNU/Linux 12 (bookworm)")
    assert str(parse_where("gcc!=11.*")) == "gcc!=11.*"


names = st.text(alphabet="abw0123456789-", min_size=1, max_size=6)
workers = st.builds(Worker, names, st.booleans(), st.booleans(), st.booleans(), st.just(""),
                    st.one_of(st.none(), st.dictionaries(st.sampled_from(["os", "gcc"]),
                                                         st.sampled_from(["Linux", "12", "11"]))))


@settings(max_examples=200, deadline=None)
@given(st.lists(workers, max_size=20, unique_by=lambda w: w.name), st.lists(st.sampled_from(["w*", "*1", "b?"])),
       st.lists(st.sampled_from(["os=Linux", "gcc!=11", "gcc=1*"]), max_size=2))
def test_every_named_worker_is_a_target_or_listed_unless_its_facts_do_not_match(fleet, globs, where):
    selection = Selection.parse(globs, where)
    try:
        got = resolve(selection, fleet, ["os", "gcc"])
    except TargetError:
        assert not any(selection.named(w.name) and all(
            w.facts is None or x.fact not in w.facts or x.matches(w.facts[x.fact]) for x in selection.where)
            for w in fleet)
        return
    assert not set(got.targets) & set(got.listed)
    for w in fleet:
        if not selection.named(w.name):
            assert w.name not in got.targets and w.name not in got.listed
        elif w.name in got.targets:
            assert w.connected and w.opted_in and w.allowed
        elif w.name not in got.listed:  # left out: a fact it has does not match
            assert any(not x.matches((w.facts or {})[x.fact]) for x in selection.where)


def test_workers_chosen_or_left_out_by_old_facts_are_flagged_with_their_age():
    fleet = [Worker("w1", True, facts=GCC12, facts_taken=1000.0), Worker("w2", True, facts=GCC12, facts_taken=9000.0),
             Worker("w3", False, facts=GCC12, facts_taken=10.0), Worker("w4", True, facts=GCC11, facts_taken=10.0),
             Worker("w5", True, facts=GCC12)]
    got = resolve(Selection.parse([], ["gcc=12*"]), fleet, now=10_000.0, stale_after=3600)
    assert got.targets == ["w1", "w2", "w5"]
    # w4 was left out by old facts: flagged too (it may match today); an unknown age is infinite.
    assert got.stale == {"w1": 9000.0, "w3": 9990.0, "w4": 9990.0, "w5": float("inf")}
    assert resolve(Selection.parse(["w*"]), fleet, now=10_000.0, stale_after=3600).stale == {}
