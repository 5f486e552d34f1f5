"""A session's output deflated on a slow link (slaveshell.vocabulary.deflate): which messages the worker deflates,
and the master's inflating, bounded, at its boundary with the worker (master_side.sessions.worker_sink)."""

from __future__ import annotations

import os
import socket
import zlib
from types import SimpleNamespace

import pytest

from master_side.sessions import worker_sink
from slave_side.server import ShellServer
from slave_side.session import WorkerOptions
from slaveshell.plumbing import lean_calls
from slaveshell.plumbing.remote import kernel_rtt, link_rtt
from slaveshell.vocabulary.deflate import ALWAYS, BACKOFF_MAX, MIN_SIZE, SLOW_RTT, Deflater, deflate_setting, inflate
from slaveshell.vocabulary.protocol import OpenRequest, ProtocolError

from .fakes import Bot, ProcessReactor, Sink, call, connected
from .test_hostile import Host

LOG = b"".join(b"[%06d] compiling src/module_%d.c -O2 -Wall ... ok\n" % (i, i % 97) for i in range(4000))


def test_only_large_messages_on_a_slow_link_that_deflate_well_go_deflated():
    rtt: list[float | None] = [0.001]
    deflater = Deflater(lambda: rtt[0])
    assert deflater.pack(LOG) is None  # a fast link: as it is
    rtt[0] = 0.020
    assert deflater.pack(LOG[: MIN_SIZE - 1]) is None  # an echo, a prompt
    packed = deflater.pack(LOG)
    assert packed is not None and len(packed) < len(LOG) / 5 and inflate(packed, len(LOG)) == LOG
    assert (deflater.sent, deflater.packed) == (len(LOG), len(packed))
    assert deflater.report() == f"deflated {len(LOG) // 1024} KiB to {len(packed) // 1024} KiB"
    assert Deflater(lambda: None).pack(LOG) is not None  # no round trip measured yet: taken as slow


def test_output_that_does_not_deflate_is_tried_again_ever_more_rarely():
    deflater = Deflater(lambda: None)
    noise = os.urandom(64 * 1024)
    tried: list[bool] = []
    for _ in range(200):
        before = deflater._skip
        assert deflater.pack(noise) is None
        tried.append(before == 0)
    # Tried at messages 0, 2, 5, 10, ... with gaps doubling up to BACKOFF_MAX: far fewer trials than messages.
    trials = [i for i, t in enumerate(tried) if t]
    gaps = [b - a - 1 for a, b in zip(trials, trials[1:], strict=False)]
    assert gaps[:4] == [1, 2, 4, 8] and max(gaps) == BACKOFF_MAX and len(trials) < 12
    # Text again: sent as it is until the next trial, which deflates well; from then on every message is tried.
    results = [deflater.pack(LOG) for _ in range(BACKOFF_MAX + 3)]
    first = next(i for i, r in enumerate(results) if r is not None)
    assert first <= BACKOFF_MAX and all(r is not None for r in results[first:])


@pytest.mark.parametrize("packed, why", [
    (zlib.compress(b"\0" * (64 * 1024 * 1024)), "inflating past the session's largest message"),
    (zlib.compress(LOG)[:-5], "not one whole zlib stream"),
    (zlib.compress(b"abc") + b"trailing", "not one whole zlib stream"),
    (b"not zlib at all", "does not inflate"),
    (b"", "not one whole zlib stream"),
])
def test_the_master_inflates_one_whole_message_within_its_limit_or_refuses_it(packed, why):
    with pytest.raises(ProtocolError, match=why):
        inflate(packed, 256 * 1024)
    assert inflate(zlib.compress(b"x" * 1000), 1000) == b"x" * 1000  # exactly the limit is fine


def _owner_output(host: Host) -> bytes:
    return b"".join(c[2] for c in host.to_owner if c[0] == "output")


def test_a_worker_told_it_may_deflate_has_its_output_shown_as_it_was_sent():
    host = Host()
    host.session.deflated_output = True
    root, pump, master_broker = connected(host)
    sink = call(pump, root, "sink")
    call(pump, sink, "output_z", 1, zlib.compress(LOG[:60000]))
    lean_calls.accept(master_broker)
    root.broker.sendEncoded([b"slaveshell", sink.luid, b"output_z", 1, [], zlib.compress(LOG[60000:120000])])
    pump.flush()
    assert _owner_output(host) == LOG[:120000] and host.errors == [] and not host.ended


def test_a_worker_that_was_not_told_or_sends_a_bomb_ends_its_session_with_the_reason():
    host = Host()  # the master did not tell this worker it may deflate
    root, pump, master_broker = connected(host)
    call(pump, call(pump, root, "sink"), "output_z", 1, zlib.compress(LOG[:60000]))
    assert host.errors == ["deflated output from a worker that was not told it may send it"]
    assert _owner_output(host) == b"" and len(host.ended) == 1 and not master_broker.disconnected

    host = Host()
    host.session.deflated_output = True
    root, pump, master_broker = connected(host)
    call(pump, call(pump, root, "sink"), "output_z", 1, zlib.compress(b"\0" * (16 * 1024 * 1024)))
    assert host.errors and "inflating past the session's largest message" in host.errors[0]
    assert _owner_output(host) == b"" and len(host.ended) == 1 and not master_broker.disconnected


@pytest.mark.parametrize("allowed", [True, False])
def test_a_worker_says_whether_it_deflates_and_once_told_its_connections_next_sessions_start_deflating(
        tmp_path, allowed):
    server = ShellServer(WorkerOptions(shell="/bin/sh", deflate=allowed), reactor=ProcessReactor())
    root, pump, _ = connected(Bot(server, str(tmp_path)))
    request = OpenRequest(worker="w1", pty=False).to_wire()
    first = call(pump, root, "slaveshell_open", Sink(), request)
    assert first["deflate"] is allowed
    assert [s.deflater for s in server.sessions.values()] == [None]  # not before the master said so
    call(pump, first["session"], "deflate")
    call(pump, root, "slaveshell_open", Sink(), request)
    assert [s.deflater is not None for s in server.sessions.values()] == [allowed, allowed]


@pytest.mark.parametrize("allowed", [True, False])
def test_a_worker_takes_deflated_input_only_when_it_offered_to_and_within_its_largest_message(tmp_path, allowed):
    server = ShellServer(WorkerOptions(shell="/bin/sh", deflate=allowed), reactor=ProcessReactor())
    root, pump, worker_broker = connected(Bot(server, str(tmp_path)))
    opened = call(pump, root, "slaveshell_open", Sink(), OpenRequest(worker="w1", pty=False).to_wire())
    [session] = server.sessions.values()
    taken: list[bytes] = []
    session.input = taken.append  # type: ignore[method-assign]
    answer = call(pump, opened["session"], "input_z", zlib.compress(LOG[:100000]))
    if allowed:
        assert answer is None and taken == [LOG[:100000]]
    else:
        assert "deflated input, which this worker did not offer to take" in str(answer.value) and taken == []
    bomb = call(pump, opened["session"], "input_z", zlib.compress(b"\0" * (64 * 1024 * 1024)))
    assert "deflated input" in str(bomb.value) and not worker_broker.disconnected


@pytest.mark.parametrize("data", [os.urandom(8192) + LOG[:100000], LOG[:8192] + os.urandom(100000),
                                  LOG[:5000], os.urandom(5000), LOG[:100000]])
def test_what_is_sent_deflated_is_always_the_whole_message(data):
    packed = Deflater(lambda: None).pack(data)
    assert packed is None or inflate(packed, len(data)) == data


def test_deflated_output_is_not_inflated_after_the_session_ended_or_past_its_window(monkeypatch):
    inflated: list[int] = []
    real = worker_sink.inflate
    monkeypatch.setattr(worker_sink, "inflate", lambda packed, limit: inflated.append(limit) or real(packed, limit))
    host = Host()
    host.session.deflated_output = True
    root, pump, master_broker = connected(host)
    sink = call(pump, root, "sink")
    bomb = zlib.compress(b"\0" * 60000)  # ~100 bytes, 60,000 to inflate
    sent = 0
    while not host.ended:  # never acknowledged: the session ends once past the window and its tolerance
        call(pump, sink, "output_z", 1, bomb)
        sent += 1
    assert any("past the flow-control window" in e for e in host.errors) and len(inflated) < sent
    before = len(inflated)
    for _ in range(50):
        call(pump, sink, "output_z", 1, bomb)
    assert len(inflated) == before and not master_broker.disconnected


def _broker_on(sock: socket.socket) -> object:
    return SimpleNamespace(transport=SimpleNamespace(getHandle=lambda: sock))


def test_a_loopback_link_is_fast_by_the_kernels_round_trip_however_long_the_processes_took():
    """On a loaded machine the round trip between the processes (the window's) grows past SLOW_RTT on loopback;
    the kernel's TCP round trip does not, and it is the one that says whether deflating pays."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        client.sendall(b"x")
        assert server.recv(1) == b"x"
        kernel = kernel_rtt(_broker_on(client))
        assert kernel is not None and 0 <= kernel < SLOW_RTT
        assert link_rtt(_broker_on(client), measured=0.5) == kernel
        assert Deflater(lambda: link_rtt(_broker_on(client), 0.5)).pack(LOG) is None
    finally:
        for s in (client, server, listener):
            s.close()
    # Where the kernel does not say (a UNIX socket, an in-memory pump), the sender's own measurement decides.
    left, right = socket.socketpair()
    with left, right:
        assert kernel_rtt(_broker_on(left)) is None and link_rtt(_broker_on(left), 0.5) == 0.5
    assert kernel_rtt(object()) is None and link_rtt(object(), None) is None


def test_an_owner_can_say_always_for_a_link_whose_delay_tcp_does_not_see(tmp_path):
    assert [deflate_setting(v) for v in (True, False, "always")] == [True, False, ALWAYS]
    for bad in ("sometimes", 1, None):
        with pytest.raises(ValueError, match="deflate must be True, False or 'always'"):
            deflate_setting(bad)
    server = ShellServer(WorkerOptions(shell="/bin/sh", deflate=ALWAYS), reactor=ProcessReactor())
    root, pump, _ = connected(Bot(server, str(tmp_path)))
    first = call(pump, root, "slaveshell_open", Sink(), OpenRequest(worker="w1", pty=False).to_wire())
    assert first["deflate"] == ALWAYS
    call(pump, first["session"], "deflate")
    [session] = server.sessions.values()
    assert session.deflater is not None and session.deflater.pack(LOG) is not None  # no round trip asked
