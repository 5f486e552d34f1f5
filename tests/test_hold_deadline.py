"""master_side.holds.deadline: which limit ends a hold when, and what an extension may do."""

from __future__ import annotations

import pytest

from master_side.holds.deadline import ExtendError, HoldTimes, Limit, duration


def test_legacy_timeout_is_the_only_limit() -> None:
    times = HoldTimes(started=1000, max_hold=1800)
    assert times.deadline() == (2800, Limit.MAX)
    times.active(1500)
    assert times.deadline() == (2800, Limit.MAX)
    assert times.ended(Limit.MAX) == "timed out after 1800 s"


def test_wait_then_idle_then_max() -> None:
    times = HoldTimes(started=0, max_hold=10_000, wait_for_operator=3600, idle_after_attach=600)
    assert times.deadline() == (3600, Limit.WAIT)
    times.active(3000)  # stepped in just before the wait deadline
    assert times.deadline() == (3600, Limit.IDLE)
    times.active(3500)  # typed
    assert times.deadline() == (4100, Limit.IDLE)
    times.active(9900)
    assert times.deadline() == (10_000, Limit.MAX)  # idle would pass the hard maximum


def test_extend_is_bounded_by_max_hold() -> None:
    times = HoldTimes(started=0, max_hold=7200, wait_for_operator=600)
    assert times.extend(100, 3600, "alice") == 3700
    assert times.deadline() == (3700, Limit.EXTENDED)
    with pytest.raises(ExtendError, match="already ends later"):
        times.extend(200, 60, "bob")
    assert times.extend(200, 10 * 3600, "bob") == 7200  # capped
    assert times.deadline() == (7200, Limit.MAX)
    with pytest.raises(ExtendError, match="past max_hold"):
        times.extend(300, 3600, "bob")


def test_durations_read_as_people_say_them() -> None:
    assert [duration(s) for s in (5, 119, 1800, 3600, 5400)] == ["5 s", "119 s", "30 min", "1 h", "1 h 30 min"]


def test_the_cli_reads_durations() -> None:
    from slaveshell.client.hold_cli import parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "30m", "2h", "1h30m", "1d")] == [90, 90, 1800, 7200, 5400, 86400]
    for bad in ("soon", "2h later", "h", "-5m", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_the_step_checks_its_limits_when_configured() -> None:
    from buildbot.config.errors import ConfigErrors
    from buildbot.process.properties import Property

    from master_side.holds.step import HoldForShell

    for bad in (dict(wait_for_operator=-1), dict(idle_after_attach=0), dict(max_hold=60, wait_for_operator=120),
                dict(timeout=float("inf"))):
        with pytest.raises(ConfigErrors):
            HoldForShell(**bad)  # type: ignore[arg-type]
    HoldForShell(timeout=Property("hold_seconds"))  # type: ignore[arg-type]  # rendered when the step runs
    HoldForShell(wait_for_operator=3600, idle_after_attach=600)
