"""The fleet core driving real processes: a small driver in this test plays the run path's part (one local
`sh -c` per "worker" instead of a session), so that what the scheduler decides and what the operator reads
are checked against real commands that succeed, fail, flood, hang and print escapes."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time

from slaveshell.fleet.batch import End, Scheduler, Start
from slaveshell.fleet.gather import exit_status, render
from slaveshell.fleet.outcome import Output, State
from slaveshell.vocabulary.display import visible

COMMANDS = {
    "w1": "uname -s",
    "w2": "uname -s",
    "w3": "echo 'gcc: not found' >&2; exit 2",
    "w4": "head -c 1000000 /dev/zero | tr '\\0' x",  # floods
    "w5": "exec sleep 60",  # hangs: the timeout ends it
    "w6": "printf '\\033[2J\\033]0;owned\\007\\r\\n'",
    "w10": "uname -s",
}


def drive(scheduler: Scheduler, commands: dict[str, str], interrupt_after: float | None = None) -> float:
    """Run the scheduler's decisions with local processes until it is done; return the largest number of
    processes alive at once."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    outputs: dict[str, Output] = {}
    sel = selectors.DefaultSelector()
    most = 0
    begun = time.monotonic()
    interrupted = False

    def act(decisions: list[Start | End]) -> None:
        nonlocal most
        for d in decisions:
            if isinstance(d, Start):
                p = subprocess.Popen(["sh", "-c", commands[d.worker]], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
                procs[d.worker] = p
                outputs[d.worker] = Output(4096)
                assert p.stdout is not None
                os.set_blocking(p.stdout.fileno(), False)
                sel.register(p.stdout, selectors.EVENT_READ, d.worker)
                most = max(most, len(procs))
                act(scheduler.started(d.worker, time.monotonic(), f"session-{d.worker}"))
            else:
                os.killpg(procs[d.worker].pid, signal.SIGHUP)

    act(scheduler.begin())
    while not scheduler.done:
        if interrupt_after is not None and not interrupted and time.monotonic() - begun > interrupt_after:
            interrupted = True
            act(scheduler.interrupted())
        for key, _ in sel.select(timeout=0.05):
            worker = key.data
            data = key.fileobj.read(65536)  # type: ignore[union-attr]
            if data:
                outputs[worker].add(data)
                continue
            sel.unregister(key.fileobj)
            p = procs.pop(worker)
            code = p.wait()
            act(scheduler.ended(worker, code, outputs[worker], time.monotonic()))
        act(scheduler.expired(time.monotonic()))
    return most


def test_a_run_over_real_processes_batches_times_out_gathers_and_escapes():
    scheduler = Scheduler(COMMANDS, batch=3, timeout=1.5)
    most = drive(scheduler, COMMANDS)
    assert most == 3
    outcomes = scheduler.outcomes()
    by = {o.worker: o for o in outcomes}
    assert by["w5"].state is State.TIMED_OUT and by["w5"].exit_status == -signal.SIGHUP
    assert 1.4 < (by["w5"].duration or 0) < 30
    assert by["w4"].state is State.OK and by["w4"].output is not None and by["w4"].output.cut
    assert by["w4"].output.size == 1_000_000 and len(by["w4"].output.kept) == 4096
    shown = render(outcomes)
    system = visible(os.uname().sysname)
    assert f"---------------\nw[1-2,10] (3)\n---------------\n{system}\n" in shown
    assert "---------------\nw3\n---------------\ngcc: not found\n" in shown
    assert "[output cut: 4096 of 1000000 bytes shown; the transcripts hold all]" in shown
    assert "\\x1b[2J\\x1b]0;owned\\x07\n" in shown and "\x1b" not in shown
    assert "exit status 2: w3\ntimed out: w5\n" in shown
    assert shown.endswith("5 ok, 1 failed (w3), 1 timed out (w5)\n")
    assert exit_status(outcomes) == 1


def test_ctrl_c_over_real_processes_ends_the_running_ones_and_starts_no_more():
    commands = {f"w{i}": "exec sleep 30" for i in range(1, 6)}
    scheduler = Scheduler(commands, batch=2)
    drive(scheduler, commands, interrupt_after=0.3)
    states = [(o.worker, o.state) for o in scheduler.outcomes()]
    assert states == [("w1", State.INTERRUPTED), ("w2", State.INTERRUPTED), ("w3", State.NOT_STARTED),
                      ("w4", State.NOT_STARTED), ("w5", State.NOT_STARTED)]
    assert render(scheduler.outcomes()).endswith("2 interrupted (w1, w2), 3 not started\n")
