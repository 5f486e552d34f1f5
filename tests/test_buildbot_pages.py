"""The Buildbot ids behind the web pages' links (master_side.www.buildbot_pages): one data API query per answer,
only what was asked, nothing (and no error) when Buildbot does not answer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from buildbot.data import resultspec
from twisted.internet import defer

from master_side.www import buildbot_pages
from master_side.www.lists import _builder_of

WORKERS = [{"workerid": 3, "name": "w1"}, {"workerid": 4, "name": "w2"}, {"workerid": 5, "name": "w3"}]
BUILDS = [{"buildid": 10, "builderid": 2, "number": 7}, {"buildid": 11, "builderid": 2, "number": 8},
          {"buildid": 12, "builderid": 6, "number": 1}]


class _Data:
    """Buildbot's data connector's `get`, with its result spec applied to fixed rows."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[tuple[str, ...], Any]] = []

    def get(self, path: tuple[str, ...], filters: Any = None) -> defer.Deferred[list[dict[str, Any]]]:
        self.calls.append((path, filters))
        if self.fail:
            return defer.fail(RuntimeError("database is locked"))
        rows = {("workers",): WORKERS, ("builds",): BUILDS}[path]
        return defer.succeed(resultspec.ResultSpec(filters=filters).apply([dict(r) for r in rows]))


def _result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def test_worker_ids_of_the_names_asked_in_one_query():
    data = _Data()
    master = SimpleNamespace(data=data)
    assert _result(buildbot_pages.worker_ids(master, ["w1", "w3", "w1", "gone"])) == {"w1": 3, "w3": 5}
    assert len(data.calls) == 1
    assert _result(buildbot_pages.worker_ids(master, [])) == {} and len(data.calls) == 1


def test_build_pages_of_the_builds_asked_in_one_query():
    data = _Data()
    master = SimpleNamespace(data=data)
    assert _result(buildbot_pages.build_pages(master, [10, 12, 99])) == {10: (2, 7), 12: (6, 1)}
    assert len(data.calls) == 1


def test_no_answer_from_buildbot_means_no_links():
    master = SimpleNamespace(data=_Data(fail=True))
    assert _result(buildbot_pages.worker_ids(master, ["w1"])) == {}
    assert _result(buildbot_pages.build_pages(master, [10])) == {}


def test_a_rows_build_page_needs_the_number_the_index_recorded():
    pages = {10: (2, 7)}
    assert _builder_of(pages, {"build_id": 10, "build_number": 7}) == 2
    # Another build under that id (a database the index does not belong to): no link rather than a wrong one.
    assert _builder_of(pages, {"build_id": 10, "build_number": 8}) is None
    assert _builder_of(pages, {"build_id": None, "build_number": None}) is None
    assert _builder_of(pages, {"build_id": 11, "build_number": 8}) is None
