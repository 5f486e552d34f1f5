"""A transfer that makes no progress ends (master_side.copying.relay: MasterTransfer.stalled, Transfers.tick), with
the party it waited for named, and the option that bounds it (ShellService's transfer_stall_timeout)."""

from __future__ import annotations

from master_side.config import ShellConfig
from master_side.copying.relay import OPERATOR, WORKER, MasterTransfer, Party, Transfers
from slaveshell.vocabulary.copying import CHUNK, DOWN, UP, TransferRequest
from slaveshell.vocabulary.policy import Identity


class FakeRef:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def callRemote(self, method: str, *args: object, **kw: object) -> None:
        self.calls.append((method, args))


def transfer(direction: str, now: list[float]) -> tuple[MasterTransfer, FakeRef, FakeRef]:
    who = Identity(uid=0, gid=0, pid=1, user="root", groups=frozenset())
    t = MasterTransfer("t1", who, TransferRequest(direction, "w1", ("f",), "/d"), None, lambda _t: None,
                       lambda: now[0])
    operator, worker = FakeRef(), FakeRef()
    t.parties[OPERATOR] = Party(operator)  # type: ignore[arg-type]
    t.parties[WORKER] = Party(worker)  # type: ignore[arg-type]
    return t, operator, worker


def test_a_worker_that_stops_sending_ends_the_transfer_after_the_timeout_and_not_before():
    now = [100.0]
    t, operator, worker = transfer(DOWN, now)
    t.received(WORKER, "entry", ("file", "f", 0o644, 10 * CHUNK, 0.0))
    t.received(WORKER, "data", (b"x" * CHUNK,))
    now[0] += 59.0
    assert not t.stalled(now[0], 60.0)
    t.received(OPERATOR, "ack", (CHUNK,))  # any call is progress
    now[0] += 59.0
    assert not t.stalled(now[0], 60.0) and not t.stalled(now[0] + 1000, None)
    now[0] += 1.0
    assert t.stalled(now[0], 60.0)
    assert t.outcome == (False, "no progress for 60 s: the worker w1 stopped sending")
    assert ("result", (False, "no progress for 60 s: the worker w1 stopped sending")) in operator.calls
    assert worker.calls[-1][0] == "cancel"


def test_empty_chunks_move_nothing_and_do_not_hold_the_transfer_open():
    now = [100.0]
    t, _, _ = transfer(DOWN, now)
    t.received(WORKER, "entry", ("file", "f", 0o644, 10 * CHUNK, 0.0))
    t.received(WORKER, "data", (b"x" * CHUNK,))
    for _ in range(60):
        now[0] += 1.0
        t.received(WORKER, "data", (b"",))
    assert t.stalled(now[0], 60.0)
    assert t.outcome == (False, "no progress for 60 s: the worker w1 stopped sending")


def test_the_party_waited_for_is_named():
    now = [0.0]
    t, _, _ = transfer(UP, now)
    t.received(OPERATOR, "entry", ("file", "f", 0o644, 3, 0.0))
    t.received(OPERATOR, "data", (b"abc",))
    t.received(OPERATOR, "done_file", ("",))
    t.received(OPERATOR, "finish", ())
    assert t.stalled(100.0, 5.0) and t.outcome == (False, "no progress for 5 s: the worker w1 did not put the "
                                                          "files in place")
    t, _, _ = transfer(UP, now)
    t.received(OPERATOR, "entry", ("file", "f", 0o644, 100 * CHUNK, 0.0))
    for _ in range(11):
        t.received(OPERATOR, "data", (b"x" * CHUNK,))
    assert t.stalled(100.0, 5.0) and t.outcome == (False, "no progress for 5 s: the worker w1 stopped taking "
                                                          "what was sent")


def test_the_masters_tick_ends_stalled_transfers_only():
    now = [0.0]
    transfers = Transfers(lambda: now[0])
    transfers.stall_timeout = 10.0
    stalled, _, _ = transfer(UP, now)
    stalled.on_end = transfers._ended
    transfers.live["t1"] = stalled
    now[0] = 9.0
    transfers.tick()
    assert not stalled.ended
    now[0] = 10.0
    transfers.tick()
    assert stalled.ended and transfers.live == {}


def test_the_option_is_checked():
    assert ShellConfig().transfer_stall_timeout == 60.0
    assert ShellConfig(transfer_stall_timeout=None).errors() == []
    assert ShellConfig(transfer_stall_timeout=-1).errors() == [
        "transfer_stall_timeout must be a non-negative number or None"]


def test_an_operator_putting_a_download_in_place_is_not_timed():
    now = [0.0]
    t, _, _ = transfer(DOWN, now)
    t.received(WORKER, "entry", ("file", "f", 0o644, 3, 0.0))
    t.received(WORKER, "data", (b"abc",))
    t.received(WORKER, "done_file", ("",))
    t.received(WORKER, "finish", ())
    assert not t.stalled(1000.0, 5.0) and not t.ended
