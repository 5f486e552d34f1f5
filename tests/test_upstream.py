"""The changes to upstream code, each checked against the installed Twisted, Buildbot and buildbot-worker: the
shape check passes on them, the change does what it is for, and a shape that differs changes nothing (the
bounds' refusal keeps slaveshell off)."""

from __future__ import annotations

import json
import os
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.spread import banana, pb
from zope.interface import implementer

import slave_side
from master_side.glue import rest_write_fix
from master_side.glue import upstream as master_upstream
from master_side.www import session_hook
from slave_side import reading
from slave_side import upstream as worker_upstream
from slaveshell.plumbing import lean_calls, upstream
from slaveshell.vocabulary.protocol import WORKER_COMMAND, WORKER_OPEN_METHOD


@pytest.fixture
def fresh(monkeypatch):
    """Each change's outcome forgotten for the test (and restored after), its log lines captured."""
    monkeypatch.setattr(upstream, "installed", {})
    monkeypatch.setattr(upstream, "_logged", set())
    lines: list[str] = []

    def observe(event: dict) -> None:
        if "slaveshell" in str(event.get("log_format", "")):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_shape_names_what_differs():
    def two(self, chunk):
        return self.buffer + chunk

    assert upstream.shape(two, ("self", "chunk"), ("buffer",)) is None
    assert "expected" in str(upstream.shape(two, ("self", "data")))
    assert "listStack" in str(upstream.shape(two, ("self", "chunk"), ("buffer", "listStack")))
    assert upstream.shape(42, ()) == "not a function"


def test_twisted_banana_write_buffer_and_broker_have_the_shape_the_changes_were_written_for():
    assert upstream.banana_shape() is None
    assert upstream.write_buffer_shape() is None
    assert upstream.lean_dispatch_shape() is None
    assert upstream.install() is True
    assert getattr(banana.Banana.dataReceived, "slaveshell_bounded", False)
    assert getattr(banana.Banana.dataReceived, "slaveshell_gathers", False)
    assert getattr(pb.Broker.connectionLost, "slaveshell_forgets", False)


def test_a_banana_of_another_shape_is_not_changed_and_slaveshell_stays_off(fresh, monkeypatch):
    def other(self, data):  # Twisted renamed the parameter: the code may differ too
        pass

    monkeypatch.setattr(banana.Banana, "dataReceived", other)
    assert upstream.install() is False
    assert banana.Banana.dataReceived is other  # nothing wrapped
    assert upstream.install() is False
    assert len([line for line in fresh if "banana not changed" in line]) == 1  # logged once
    assert "slaveshell stays off" in fresh[0]


def test_a_broker_that_does_not_dispatch_by_name_gets_no_lean_calls(fresh, monkeypatch):
    def expressionReceived(self, sexp):
        return self.handlers[sexp[0]](*sexp[1:])

    monkeypatch.setattr(pb.Broker, "expressionReceived", expressionReceived)
    broker = pb.Broker()
    assert lean_calls.accept(broker) is False
    assert "proto_slaveshell" not in broker.__dict__
    assert any("lean dispatch not changed" in line and "plain PB" in line for line in fresh)


def test_a_broker_of_the_installed_twisted_takes_lean_calls():
    broker = pb.Broker()
    assert lean_calls.accept(broker) is True
    assert "proto_slaveshell" in broker.__dict__


# Buildbot's REST writer


class Request:
    """What `_write_json_data` uses of a Twisted request; `site` as Buildbot's (its master's reactor)."""

    method = b"GET"
    finished = False
    channel = "open"

    def __init__(self, site: object = None) -> None:
        self.site = site
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.written_on: list[threading.Thread] = []

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def write(self, data: bytes) -> None:
        self.written_on.append(threading.current_thread())
        self.body.append(data)


@implementer(IReactorFromThreads)
class OwnReactor:
    """A reactor of the request's own: runs what a thread hands it when the test says so."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def callFromThread(self, f, *args, **kwargs) -> None:
        self.calls.append((f, args, kwargs))


def test_buildbots_rest_writer_has_the_shape_and_is_replaced():
    from buildbot.www import rest

    assert master_upstream.rest_writer_shape() is None
    assert master_upstream.install_web(session_hook.install) is True
    assert getattr(rest.V2RootResource._write_json_data, "_slaveshell_fix", False)
    assert master_upstream.rest_writer_shape() is None  # still, once replaced


def test_rest_body_written_at_once_when_the_thread_pool_runs_calls_at_once():
    """Buildbot's test reactor runs deferToThread's call on the calling thread: the body must be there when the
    call returns (it was posted to the global reactor, and the answer was empty)."""
    from buildbot.www import rest

    master_upstream.install_web(session_hook.install)
    request = Request()
    data = {"builders": [{"name": "b<1>", "id": i} for i in range(1000)]}
    rest.V2RootResource._write_json_data(request, json.JSONEncoder(), data)
    assert json.loads(b"".join(request.body)) == data
    assert request.headers[b"content-length"] == str(len(b"".join(request.body))).encode()


def test_rest_body_from_a_pool_thread_goes_to_the_requests_own_reactor():
    from buildbot.www import rest

    master_upstream.install_web(session_hook.install)
    own = OwnReactor()
    master = type("Master", (), {"reactor": own})()
    request = Request(site=type("Site", (), {"master": master})())
    thread = threading.Thread(target=rest.V2RootResource._write_json_data,
                              args=(request, json.JSONEncoder(), {"a": 1}))
    thread.start()
    thread.join()
    assert request.body == []  # nothing written from the thread
    assert len(own.calls) == 1
    f, args, kwargs = own.calls[0]
    f(*args, **kwargs)  # the reactor's turn
    assert json.loads(b"".join(request.body)) == {"a": 1}
    assert request.written_on == [threading.current_thread()]


def test_rest_body_from_a_pool_thread_without_a_reactor_of_its_own_goes_to_the_global_one(monkeypatch):
    posted: list[tuple] = []
    monkeypatch.setattr(reactor, "callFromThread", lambda f, *a, **k: posted.append((f, a)))
    request = Request(site=object())
    assert rest_write_fix._reactor_of(request) is reactor
    thread = threading.Thread(target=lambda: rest_write_fix._on_calling_thread() or posted.append(("pool",)))
    thread.start()
    thread.join()
    assert posted == [("pool",)]


def test_a_rest_module_of_another_shape_is_left_as_buildbot_wrote_it(fresh, monkeypatch):
    from buildbot.www import rest

    def _write_json_data(request, data):  # another signature
        pass

    monkeypatch.setattr(rest.V2RootResource, "_write_json_data", staticmethod(_write_json_data))
    assert master_upstream.install_web(session_hook.install) is False
    assert rest.V2RootResource.__dict__["_write_json_data"].__func__ is _write_json_data
    assert any("REST writer not changed" in line and "Buildbot's own writer stays" in line for line in fresh)


@pytest_twisted.inlineCallbacks
def test_the_shell_service_serves_no_socket_when_the_bounds_cannot_be_installed(tmp_path, monkeypatch):
    from master_side.service import ShellService

    monkeypatch.setattr(master_upstream, "install", lambda session_hook: False)

    class Master:
        basedir = str(tmp_path)
        workers = None

    master = Master()
    master.master = master  # type: ignore[attr-defined]
    service = ShellService()
    service.parent = master
    yield service.reconfigService()
    assert not (tmp_path / "shell.sock").exists()
    assert service.trail is None
    yield service.stopService()


# buildbot-worker's BotPb and Twisted's process readers


def test_buildbot_workers_bot_has_the_shape_and_gets_the_shell_methods():
    from buildbot_worker.commands import registry
    from buildbot_worker.pb import BotPb

    assert worker_upstream.bot_shape() is None
    try:
        assert slave_side.install() is not None
        assert hasattr(BotPb, "remote_" + WORKER_OPEN_METHOD)
        assert WORKER_COMMAND in registry.commandRegistry
    finally:
        slave_side.uninstall()
    assert not hasattr(BotPb, "remote_" + WORKER_OPEN_METHOD)


def test_a_worker_whose_upstream_differs_offers_no_shell(fresh, monkeypatch):
    from buildbot_worker.commands import registry
    from buildbot_worker.pb import BotPb

    monkeypatch.setattr(worker_upstream, "bot_shape", lambda: "BotPb is not a BotBase and pb.Referenceable")
    assert slave_side.install() is None
    assert not hasattr(BotPb, "remote_" + WORKER_OPEN_METHOD)
    assert WORKER_COMMAND not in registry.commandRegistry
    assert any("BotPb not changed" in line and "stays off" in line for line in fresh)


def test_twisted_process_readers_have_the_shape_read_more_replaces():
    assert worker_upstream.readers_shape() is None
    assert worker_upstream.readers() is True


def test_process_readers_of_another_shape_keep_twisteds_reading(fresh, monkeypatch):
    from twisted.internet import process

    monkeypatch.setattr(process.ProcessReader, "doRead", lambda self, budget: None)
    transport = object.__new__(process.PTYProcess)
    reading.read_in_larger_pieces(transport, lambda data: None, 65536)
    assert "doRead" not in transport.__dict__
    assert any("process readers not changed" in line for line in fresh)


def test_widen_pipe_leaves_a_negative_descriptor_alone():
    """Twisted's stand-in processes (twisted.test.test_process's mock os) give readers negative descriptors."""
    reading.widen_pipe(-1)
    reading.widen_pipe(-2)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    reading.widen_pipe(r)  # closed: left as it is


def test_the_worker_side_installs_the_shared_changes():
    assert worker_upstream.install() is True
    assert getattr(banana.Banana.dataReceived, "slaveshell_bounded", False)
