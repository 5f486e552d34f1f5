"""Worker names folded as ClusterShell's NodeSet prints them. The expected strings are what ClusterShell 1.10.1's
``str(NodeSet.fromlist(names))`` prints for the same names (checked against it while writing this module)."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slaveshell.fleet.nodeset import count, fold, fold_indexes, natural_key

CLUSTERSHELL = [
    (["w1", "w2", "w3", "w7"], "w[1-3,7]"),
    (["build-01", "build-02", "build-03", "build-04", "build-05", "w1", "w2", "w3", "w7"],
     "build-[01-05],w[1-3,7]"),
    (["w9", "w10", "w11"], "w[9-11]"),
    (["w09", "w10", "w11"], "w[09-11]"),
    (["w1", "w01", "w2", "w02"], "w[1-2,01-02]"),
    (["w01", "w99", "w100"], "w[01,99,100]"),
    (["alpha", "w1", "beta"], "alpha,beta,w1"),
    (["w7"], "w7"),
    (["da1c1", "da1c2", "da2c1", "da2c2"], "da[1-2]c[1-2]"),
    (["da1c1", "da2c1", "da3c1"], "da[1-3]c1"),
    (["r1n1", "r1n2", "r2n1"], "r1n[1-2],r2n1"),
    (["n1-ilo", "n2-ilo", "n3-ilo", "n5"], "n5,n[1-3]-ilo"),
    (["w0", "w00", "w000", "w1"], "w[0-1,00,000]"),
    (["w1", "w3", "w5", "w6"], "w[1,3,5-6]"),
    (["node-2.example.org", "node-3.example.org"], "node-[2-3].example.org"),
]


@pytest.mark.parametrize(("names", "shown"), CLUSTERSHELL)
def test_names_fold_as_clustershell_prints_them(names, shown):
    assert fold(names) == shown
    assert fold(reversed(names)) == shown  # the order given does not matter
    assert fold(names + names) == shown  # nor repeats


def test_the_count_is_added_as_clush_adds_it_for_more_than_one_worker():
    assert count(["w1", "w2", "w1"]) == "w[1-2] (2)"
    assert count(["w1"]) == "w1"


def test_a_zero_padded_run_keeps_its_padding_across_a_carry():
    assert fold_indexes(["098", "099", "100", "101"]) == "098-101"
    assert fold_indexes(["8", "9", "10"]) == "8-10"


def test_natural_order_puts_w2_before_w10():
    assert sorted(["w10", "w2", "w1", "build-3"], key=natural_key) == ["build-3", "w1", "w2", "w10"]


def expand(folded: str) -> list[str]:
    """ClusterShell's bracket syntax expanded (for the round trip below)."""
    names: list[str] = []
    for part in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", folded):
        pieces = re.split(r"\[([^\]]*)\]", part)
        choices: list[list[str]] = []
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                choices.append([piece])
                continue
            axis: list[str] = []
            for item in piece.split(","):
                a, _, b = item.partition("-")
                b = b or a
                axis += [f"{n:0{len(a)}d}" if a.startswith("0") and len(a) > 1 else str(n)
                         for n in range(int(a), int(b) + 1)]
            choices.append(axis)
        names += ["".join(p) for p in itertools.product(*choices)]
    return names


index = st.one_of(st.integers(0, 120).map(str), st.integers(0, 30).map(lambda i: f"{i:02d}"))
name = st.one_of(index.map(lambda i: "w" + i), index.map(lambda i: f"build-{i}.lan"),
                 st.tuples(index, index).map(lambda t: f"r{t[0]}n{t[1]}"), st.sampled_from(["alpha", "beta"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(name, min_size=1, max_size=40))
def test_folding_loses_no_worker_and_adds_none(names):
    folded = fold(names)
    assert sorted(expand(folded)) == sorted(set(names))


def test_three_hundred_workers_fold_to_a_few_characters():
    names = [f"w{i}" for i in range(1, 301) if i not in (7, 9)] + [f"build-{i:02d}" for i in range(1, 6)]
    assert fold(names) == "build-[01-05],w[1-6,8,10-300]"


def test_absurd_names_are_shown_not_refused():
    long_run = "w" + "9" * 5000
    assert fold([long_run, "w1"]) == f"w1,{long_run}"
    assert fold(["", "w1"]) == ",w1"
    assert sorted([long_run, "w2"], key=natural_key) == ["w2", long_run]
    assert fold([f"n{i}x" * 50 for i in range(3)]) == ",".join(f"n{i}x" * 50 for i in range(3))


def test_digits_that_are_not_ascii_are_part_of_the_name_never_folded():
    assert fold(["w\u0663", "w3", "w4"]) == "w[3-4],w\u0663"
