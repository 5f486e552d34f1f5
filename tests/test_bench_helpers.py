"""The benchmark's judging rule, its content kinds and its delaying proxy's byte stream. No timing is asserted:
figures belong in bench/RESULTS.md, never in a test."""

import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from delay_proxy import DelayProxy  # noqa: E402
from fair import Pair, make_content, meets  # noqa: E402
from prompt_split import parse, split  # noqa: E402


def test_a_target_is_met_only_when_the_median_meets_it_and_the_worst_round_is_within_20_percent():
    assert meets([1.1, 1.0, 0.85], 1.0, "higher")
    assert not meets([1.3, 1.2, 0.75], 1.0, "higher")  # the median is ahead, one round is 25 % short
    assert not meets([0.95, 0.99, 1.5], 1.0, "higher")  # the median is short
    assert meets([1.8, 2.0, 2.35], 2.0, "lower")
    assert not meets([1.5, 1.6, 2.5], 2.0, "lower")  # one round 25 % over
    assert not meets([], 1.0, "higher")


def test_a_row_is_judged_on_its_per_round_ratios_not_on_a_ratio_of_medians():
    # Per round: 2.0x, 0.5x, 2.0x: median 2.0x, but the worst round is far below 1.0x.
    row = Pair("PTY `cat`", "MB/s", "higher", 1.0, ours=[100, 50, 100], ssh=[50, 100, 50])
    assert row.ratios() == [2.0, 0.5, 2.0]
    assert row.verdict() == "**missed**"
    ctrl_c = Pair("Ctrl-C", "ms", "lower", 100, "value", ours=[60, 80, 110], ssh=[200, 200, 200])
    assert ctrl_c.verdict() == "met" and ctrl_c.target() == "<= 100 ms"
    assert Pair("bytes", "bytes", "lower", None, ours=[1], ssh=[2]).verdict() == "-"


def test_the_three_content_kinds():
    with tempfile.TemporaryDirectory() as d:
        paths = {kind: Path(d, kind) for kind in ("text", "binary", "escapes")}
        for kind, path in paths.items():
            make_content(kind, path, 3 * 1024 * 1024 + 17)
            assert path.stat().st_size == 3 * 1024 * 1024 + 17
        text = paths["text"].read_bytes()
        assert text.isascii() and b"Building CXX object" in text and b"\x1b" not in text
        escapes = paths["escapes"].read_bytes()
        assert escapes.count(b"\x1b[") > 100_000 and "\u2018".encode() in escapes
        assert len(set(paths["binary"].read_bytes()[:65536])) == 256


def test_the_proxy_delivers_every_byte_in_order_both_ways_under_a_rate_cap_and_jitter():
    server = socket.create_server(("127.0.0.1", 0))
    payload = os.urandom(2 * 1024 * 1024)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proxy = DelayProxy(server.getsockname()[1], 0.002, rate_mbit=400, jitter_s=0.003, queue_s=0.005)
    proxy.start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            received = bytearray()

            def read() -> None:
                while len(received) < len(payload):
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    received.extend(chunk)

            reader = threading.Thread(target=read)
            reader.start()
            client.sendall(payload)
            reader.join(60)
            assert bytes(received) == payload
        # Every byte counted, each way, once delivered (fair.py's bytes on the wire per row).
        deadline = time.monotonic() + 10
        while proxy.delivered != [len(payload), len(payload)] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.delivered == [len(payload), len(payload)]
    finally:
        proxy.stop()
        server.close()


# `perf script` lines of one session: the worker (100) forks 200, which becomes the login shell and runs two
# children, one of them (203) a grandchild; 300 runs the same shell but is no descendant of the worker.
PERF_LINES = """\
python3 100 [000] 10.000100: sched:sched_process_fork: comm=python3 pid=100 child_comm=python3 child_pid=200
            bash   300 [001]    10.001000: sched:sched_process_exec: filename=/bin/bash pid=300 old_pid=300
            bash   200 [000]    10.004000: sched:sched_process_exec: filename=/bin/bash pid=200 old_pid=200
            bash   200 [000]    10.005000: sched:sched_process_fork: comm=bash pid=200 child_comm=bash child_pid=201
              id   201 [001]    10.006000: sched:sched_process_exec: filename=/usr/bin/id pid=201 old_pid=201
              id   201 [001]    10.007000: sched:sched_process_exit: comm=id pid=201 prio=120 group_dead=true
            bash   200 [000]    10.008000: sched:sched_process_fork: comm=bash pid=200 child_comm=bash child_pid=202
Web Content 202 [000] 10.009000: sched:sched_process_fork: comm=Web Content pid=202 child_comm=a b child_pid=203
             x     203 [001]    10.020000: sched:sched_process_exit: comm=x pid=203 prio=120 group_dead=true
             x     202 [001]    10.030000: sched:sched_process_exit: comm=x pid=202 prio=120 group_dead=true
not an event line
"""


def test_a_first_prompt_is_split_at_the_servers_login_shell_and_its_last_childs_exit():
    events = parse(PERF_LINES.splitlines())
    assert len(events) == 10
    got = split(events, server=100, shell="/bin/bash", start=10.0, end=10.032)
    assert got is not None
    assert got.processes == 3  # 201, 202 and the grandchild 203; 300 is not under the server
    assert round(got.to_shell, 3) == 4.0 and round(got.in_shell, 3) == 26.0 and round(got.to_screen, 3) == 2.0
    assert round(got.total, 3) == 32.0
    assert split(events, server=999, shell="/bin/bash", start=10.0, end=10.032) is None
    assert split(events, server=100, shell="/bin/bash", start=10.0045, end=10.032) is None  # exec before the window
