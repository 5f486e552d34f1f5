"""Facts grouped by value across the fleet, with their age."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from slaveshell.fleet.drift import Report, age, groups, line, render
from slaveshell.vocabulary.display import visible

NOW = 1_000_000.0


def fleet() -> list[Report]:
    reports = [Report(f"w{i}", {"os": "Linux", "gcc": "12.2.0", "cpus": "8", "memory": str(16 * 2**30 - i * 4096)},
                      NOW - 60) for i in range(1, 42)]
    reports += [Report(f"x{i}", {"os": "Linux", "gcc": "11.4.0", "cpus": "4", "memory": str(8 * 2**30)}, NOW - 60)
                for i in (3, 8, 11, 12, 13, 14, 15, 16, 17)]
    reports += [Report("y1", {"os": "FreeBSD", "cpus": "2"}, NOW - 3 * 86400),
                Report("y2", {"os": "FreeBSD", "cpus": "2"}, NOW - 2 * 3600)]
    return reports


def test_a_fact_is_one_line_grouped_by_value_largest_first_the_others_named():
    assert line("gcc", fleet()) == ("12.2.0  41 workers  |  11.4.0  9 workers: x3 x8 x11 x12 x13 x14 x15 x16 ...  |"
                                    "  (missing)  2 workers: y1 y2")
    assert line("os", fleet()) == "Linux  50 workers  |  FreeBSD  2 workers: y1 y2"
    # Sizes grouped in whole GiB: machines of one kind differ by a few pages.
    assert line("memory", fleet()) == "16 GiB  41 workers  |  8 GiB  9 workers: x3 x8 x11 x12 x13 x14 x15 x16 ...  " \
        "|  (missing)  2 workers: y1 y2"


def test_the_fleet_view_aligns_facts_and_flags_old_reports_and_workers_without_any():
    shown = render(fleet(), probes=["gcc"], now=NOW, without=["z2", "z10"])
    assert shown.splitlines() == [
        "os            Linux  50 workers  |  FreeBSD  2 workers: y1 y2",
        "distribution  (missing)  52 workers: w1 w2 w3 w4 w5 w6 w7 w8 ...",
        "kernel        (missing)  52 workers: w1 w2 w3 w4 w5 w6 w7 w8 ...",
        "arch          (missing)  52 workers: w1 w2 w3 w4 w5 w6 w7 w8 ...",
        "cpus          8  41 workers  |  4  9 workers: x3 x8 x11 x12 x13 x14 x15 x16 ...  |  2  2 workers: y1 y2",
        "memory        16 GiB  41 workers  |  8 GiB  9 workers: x3 x8 x11 x12 x13 x14 x15 x16 ...  |  "
        "(missing)  2 workers: y1 y2",
        "disk_free     (missing)  52 workers: w1 w2 w3 w4 w5 w6 w7 w8 ...",
        "gcc           12.2.0  41 workers  |  11.4.0  9 workers: x3 x8 x11 x12 x13 x14 x15 x16 ...  |  "
        "(missing)  2 workers: y1 y2",
        "older than 1 day: y1 (3 days)",
        "no facts yet: z2 z10",
    ]
    assert render([], now=NOW) == "no facts yet\n"


def test_many_values_are_bounded_on_the_line():
    reports = [Report(f"w{i}", {"kernel": f"6.1.{i}"}, NOW) for i in range(20)]
    assert line("kernel", reports).endswith("  |  14 more values")


def test_ages_read_as_people_say_them():
    assert [age(s) for s in (-5, 40, 300, 7200, 86400, 5 * 86400)] == ["0 s", "40 s", "5 min", "2 h", "1 day",
                                                                      "5 days"]


def test_worker_controlled_values_and_names_are_escaped():
    reports = [Report("w\x1b[2J", {"gcc": "12\u202e.2"}, NOW), Report("w2", {"gcc": "1"}, NOW - 9e9)]
    shown = render(reports, now=NOW)
    assert "\x1b" not in shown and "\u202e" not in shown
    assert "12\\u202e.2  1 worker: w\\x1b[2J" in shown


def test_a_size_in_digits_that_are_not_ascii_is_shown_as_given():
    shown = render([Report("w1", {"memory": "\u00b2"}, NOW), Report("w2", {"memory": "\u0663"}, NOW)], now=NOW)
    assert "\u00b2" in shown and "\u0663" in shown


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=6), st.dictionaries(
    st.sampled_from(["os", "gcc", "memory"]), st.text(min_size=1, max_size=10), max_size=3)),
    max_size=15, unique_by=lambda t: t[0]))
def test_every_worker_is_in_exactly_one_group_and_the_view_is_safe(items):
    reports = [Report(name, values, NOW) for name, values in items]
    for fact in ("os", "gcc", "memory"):
        grouped = [w for _, ws in groups(fact, reports) for w in ws]
        assert sorted(grouped) == sorted(name for name, _ in items)
    shown = render(reports, now=NOW)
    assert all(visible(part) == part for part in shown.split("\n"))


def test_the_json_shape_of_the_facts():
    from slaveshell.fleet.drift import as_json

    got = as_json([Report("w10", {"os": "Linux"}, NOW - 10), Report("w2", {"gcc": "1", "os": "x"}, NOW - 2e5)], NOW)
    assert got == [{"worker": "w2", "facts": {"gcc": "1", "os": "x"}, "taken": NOW - 2e5, "age": 2e5, "stale": True},
                   {"worker": "w10", "facts": {"os": "Linux"}, "taken": NOW - 10, "age": 10.0, "stale": False}]


def test_the_fleet_modules_import_only_the_standard_library_and_slaveshell():
    import subprocess
    import sys

    code = ("import sys; base = set(sys.modules)\n"
            "import slaveshell.fleet.nodeset, slaveshell.fleet.outcome, slaveshell.fleet.targets\n"
            "import slaveshell.fleet.batch, slaveshell.fleet.gather, slaveshell.fleet.probe, "
            "slaveshell.fleet.drift\n"
            "new = {m.split('.')[0] for m in set(sys.modules) - base}\n"
            "print(sorted(new - set(sys.stdlib_module_names) - {'slaveshell'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_old_facts_a_run_decided_on_are_named_oldest_first():
    from slaveshell.fleet.drift import aged

    assert aged({"w1": 7200.0, "w10": float("inf"), "w2": 3 * 86400.0}) == "w10 (never), w2 (3 days), w1 (2 h)"
    assert aged({f"w{i}": 100.0 * i for i in range(1, 11)}).endswith("w3 (5 min), ...")
