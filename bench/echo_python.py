"""The in-process parts of a keystroke's echo round trip: the master's, the worker's and the framing's Python per
keystroke, each called as the tree's own code calls it (bench/echo_breakdown.py puts them together with
bench/echo_parts.py's parts between processes). ns per call (time.perf_counter_ns), one list per step.

Which code path a tree has (`worker_link`, read from the tree's files, not from an installed package):

- ``pb-ack-ahead`` (main before 9daf5db, e.g. 13a98dc): the worker sends input_ack as its own PB message as it
  writes the PTY, ahead of the echo; the master records the input and acknowledges it to the client then.
- ``pb`` (9daf5db to ca146e5): the input_ack rides in the echo's `output` PB message (slave_side.session
  ACK_DELAY); the master records the input before the output and sends the client's input_ack after the echo.
- ``lean`` (8401fbf on): as ``pb``, but input, output and acks travel as lean calls (slaveshell.plumbing.lean_calls).
"""

from __future__ import annotations

import inspect
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = b"k"
WORKER_LINKS = ("pb-ack-ahead", "pb", "lean")



def timed(steps: list[tuple[str, Callable[[], object]]], keys: int, spacing: float) -> dict[str, list[int]]:
    """Each step's time (ns) for `keys` keystrokes, a keystroke's gap apart (cold caches, as between keys)."""
    out: dict[str, list[int]] = {name: [] for name, _ in steps}
    for _ in range(keys):
        for name, step in steps:
            t0 = time.perf_counter_ns()
            step()
            out[name].append(time.perf_counter_ns() - t0)
        time.sleep(gap(spacing))
    return out

def gap(spacing: float) -> float:
    return random.uniform(spacing, 2 * spacing)  # keystrokes are not a metronome


def worker_link(root: Path = ROOT) -> str:
    """The tree's worker link (module docstring): ``lean`` when it has slaveshell/plumbing/lean_calls.py, ``pb`` when
    its worker holds input_acks for the echo (ACK_DELAY in slave_side/session.py), else ``pb-ack-ahead``."""
    if (root / "slaveshell" / "lean_calls.py").exists():
        return "lean"
    session = root / "slave_side" / "session.py"
    return "pb" if session.exists() and "ACK_DELAY" in session.read_text() else "pb-ack-ahead"


def echo_args(link: str) -> tuple[object, ...]:
    """The arguments of the echo's `output` message on `link`: stream, data and (when the ack rides on it) the
    keystroke's input_ack as slave_side.server.PbSessionSink sends it."""
    return (1, KEY) if link == "pb-ack-ahead" else (1, KEY, [[1, False]])


def master_python(keys: int, spacing: float, link: str) -> dict[str, list[int]]:
    """ns per call of the master's per-keystroke work, on `link`'s code path: the door's View.input (a tree
    before the typed view: ViewerHandle.remote_input), WorkerSink.remote_output (a real transcript file, written
    through as the master does; with the keystroke's ack on ``pb``/``lean``, so the input's record is in it) and
    the View's ack; on ``pb-ack-ahead`` also remote_input_ack (recorded there). The peers' sends are no-ops: their
    wire cost is priced by echo_parts' pb1/lean parts and the framing steps."""
    from master_side.audit.recorder import SessionRecorder
    from master_side.sessions.session import MasterSession
    from slaveshell.vocabulary.policy import Identity
    from slaveshell.vocabulary.protocol import OpenRequest
    from slaveshell.vocabulary.transcript import CastEncoder

    with tempfile.TemporaryDirectory(prefix="echo-bd-") as d:
        session = MasterSession(OpenRequest(worker="w1"), Identity(1000, 1000, 1, "op", frozenset()),
                                lambda s: None)
        rec = SessionRecorder(session.id, os.path.join(d, "s.cast"), CastEncoder(), None, started=time.time())
        rec.create(CastEncoder.header(80, 24, 0))
        session.recorder = rec
        from master_side.operators.terms import View
        from master_side.sessions.worker_sink import WorkerSink
        from tests.recorded import ToViewer, ToWorker

        view = View(session, session.start(ToViewer(), ToWorker()), lambda *a: None)
        typing, acking = (lambda: view.input(KEY)), (lambda: view.ack(1))
        worker = WorkerSink(session, lambda *a: None)
        steps = [("input", typing)]
        if link == "pb-ack-ahead":
            steps.append(("input_ack", lambda: worker.remote_input_ack(1, False)))
        steps += [("output", lambda: worker.remote_output(*echo_args(link))), ("ack", acking)]
        out = timed(steps, keys, spacing)
        rec.file.close()
    return out


def worker_python(keys: int, spacing: float) -> dict[str, list[int]]:
    """ns per keystroke of the worker's work: SessionHandle.remote_input (the terminal's modes, the write, the
    hidden-input decision, and the input_ack: sent on ``pb-ack-ahead``, held for the echo since) and the echo's
    read handler (hidden-input matching, the flush to the sink with the held ack), on a real PTY in `stty -icanon
    echo` modes; tests/fakes' reactor stands in for Twisted's, the sink's sends are no-ops."""
    import termios

    from slave_side.server import PbSessionSink, SessionHandle
    from slave_side.session import WorkerOptions, WorkerSession, _ProcessProtocol
    from slaveshell.vocabulary.protocol import OpenRequest
    from tests.fakes import ProcessReactor

    out: dict[str, list[int]] = {"input": [], "output": []}
    with tempfile.TemporaryDirectory(prefix="echo-bd-") as d:
        session = WorkerSession(ProcessReactor(), "s1", OpenRequest(worker="w1", cwd=d), WorkerOptions(), d,
                                PbSessionSink(lambda *a: None))
        session.start()
        assert session._slave_hold is not None
        modes = termios.tcgetattr(session._slave_hold)
        modes[3] = (modes[3] & ~termios.ICANON) | termios.ECHO
        termios.tcsetattr(session._slave_hold, termios.TCSANOW, modes)
        # Since lean calls the handle also keeps the session's peer (unused by input).
        extra = [None] * (len(inspect.signature(SessionHandle).parameters) - 1)
        handle, proto = SessionHandle(session, *extra), _ProcessProtocol(session)
        for _ in range(keys):
            t0 = time.perf_counter_ns()
            handle.remote_input(KEY)
            t1 = time.perf_counter_ns()
            proto.childDataReceived(1, KEY)
            t2 = time.perf_counter_ns()
            out["input"].append(t1 - t0)
            out["output"].append(t2 - t1)
            session.ack(1)
            time.sleep(gap(spacing))
        session._release_slave()
        if session._pty_fd is not None:
            os.close(session._pty_fd)
    return out


def framing_python(keys: int, spacing: float) -> dict[str, list[int]]:
    """ns per message of the framed operator hop (slaveshell.vocabulary.framing, when the tree has it): an INPUT frame
    and a STDOUT frame encoded and decoded, the client's input_ack CONTROL frame (JSON) encoded and decoded, and that
    frame's encode alone (the master's part, which since 9daf5db runs after the echo's frame in the same reactor
    turn, before Twisted writes both out)."""
    from slaveshell.vocabulary import framing as f  # type: ignore[attr-defined]

    to_master, to_client = f.Decoder(), f.Decoder()
    steps = (("input", lambda: to_master.feed(f.encode(f.FrameType.INPUT, KEY))),
             ("output", lambda: to_client.feed(f.encode(f.FrameType.STDOUT, KEY))),
             ("input_ack_encode", lambda: f.control(f.Op.INPUT_ACK, n=1, hidden=False)),
             ("input_ack", lambda: f.parse_control(to_client.feed(f.control(f.Op.INPUT_ACK, n=1, hidden=False))[0]
                                                   .payload)))
    return timed(steps, keys, spacing)
