"""The benchmarks at a tiny size, so they do not rot. Their figures are not judged here: timing belongs in
bench/RESULTS.md, never in a test."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

HAVE_SSHD = bool(shutil.which("sshd") or os.path.exists("/usr/sbin/sshd"))


def run_bench(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script; past the time allowed, SIGTERM (its sandbox and sshd are then stopped), not SIGKILL."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"{argv[1]} took over 600 s: {err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_benchmark_runs_at_a_tiny_size():
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"]
    if not HAVE_SSHD:
        argv.append("--no-ssh")  # the full run installs openssh-server; the smoke run does not
    done = run_bench(argv)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for metric in ("RSS growth, master", "concurrent sessions alive", "build step slowdown",
                   "Buildbot's FileUpload (worker -> master)", "Buildbot's FileDownload (master -> worker)"):
        assert metric in table, table
    if HAVE_SSHD:  # bench/fair.py's rows, in a table of their own
        for metric in ("PTY `cat`, text", "`-T cat`, text", "keystroke echo, median", "open + `true`",
                       "first prompt", "Ctrl-C under a flood, to the prompt", "Ctrl-C under a flood, bytes after"):
            assert metric in table, table
    assert "| 5 concurrent sessions alive (sessions) | 5.0 |" in table


@pytest.mark.skipif(not HAVE_SSHD, reason="the ssh -J rows need OpenSSH's sshd")
def test_cluster_bench_runs_at_a_tiny_size():
    """bench/cluster_bench.py: a session through master A against the same on B and against ssh -J."""
    done = run_bench([sys.executable, str(ROOT / "bench" / "cluster_bench.py"), "--smoke"])
    if done.returncode == 2 and "cannot start a multi-master site here" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-3000:]
    for metric in ("-T throughput (MB/s)", "PTY throughput (MB/s)", "echo, median (ms)", "open + true (ms)",
                   "Ctrl-C under a flood, to the prompt (ms)", "cp up, 2 MB (MB/s)", "cp down, 2 MB (MB/s)",
                   "| -T, via A |", "| -T, B direct |",
                   "| cp up, via A |", "| cp down, B direct |"):
        assert metric in done.stdout, done.stdout


def test_copy_trace_follows_every_point_of_the_credit_loop_at_a_tiny_size():
    """bench/copy_trace.py: each process of a site traces the copies' credit loops (its exit status says every copy
    completed, checked, and traced at every point of its loop)."""
    done = run_bench([sys.executable, str(ROOT / "bench" / "copy_trace.py"), "--smoke"])
    if done.returncode == 2 and "cannot start a multi-master site here" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout
    assert "no trace" not in done.stdout, done.stdout  # every point of every copy's loop was traced
    for held in ("A.cdata>B.data", "B.data>A.bdata", "S.sent>B.data"):
        assert held in done.stdout, done.stdout
    assert "- up, round 1:" in done.stdout and "- down, round 1:" in done.stdout, done.stdout


@pytest.mark.skipif(not HAVE_SSHD, reason="the alternated rows need OpenSSH's sshd")
def test_alternated_rounds_through_the_delaying_proxy_at_a_tiny_size():
    argv = [sys.executable, str(ROOT / "bench" / "fair.py"), "--smoke", "--rtt-ms", "10", "--rate-mbit", "50",
            "--jitter-ms", "2", "--kinds", "escapes", "--only", "throughput,input,ctrlc,cp"]
    done = run_bench(argv)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    assert ("both links through bench/delay_proxy.py: 10 ms round trip, 50 Mbit/s each way, jitter 0-2 ms, "
            "queue 20 ms") in table, table
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    at = " @ 10 ms, 50 Mbit/s, jitter 2 ms"
    moved = [f"PTY `cat`, escapes{at} (MB/s)", f"`-T cat`, escapes{at} (MB/s)",
             f"piped into `-T wc -c`, escapes{at} (MB/s)", f"cp of one 1 MB file, up{at} (MB/s)",
             f"cp of one 1 MB file, down{at} (MB/s)"]
    for name in moved + [f"Ctrl-C under a flood, to the prompt{at} (ms)",
                         f"Ctrl-C under a flood, bytes after ^C{at} (bytes)"]:
        assert name in rows, table
        # Two rounds each: both systems' figures and the per-round ratios come with their min-max; a verdict.
        cells = rows[name].split(" | ")
        assert all(re.search(r"\(\S+-\S+\)", cell) for cell in cells[1:4]), rows[name]
        assert cells[5] in ("met", "**missed**"), rows[name]
    for name in moved:  # CPU per GB beside each row that moves data, per process of both systems
        assert all(f"{process} " in rows[name] for process in ("client", "master", "worker", "ssh", "sshd")), \
            rows[name]
    # The bytes each system's proxy carried per row, each way: a 1 MB stream toward the operator (`-T cat`), and
    # toward the worker or sshd (piped input), at least its size on both (escapes do not deflate below 1/20).
    wire = {line.split(": ")[0].lstrip("- "): line for line in table.split("Bytes through each system's proxy")[1]
            .splitlines() if line.startswith("- ")}
    for name, way in ((f"`-T cat`, escapes{at}", 0), (f"piped into `-T wc -c`, escapes{at}", 1)):
        counts = re.fullmatch(r".*: slaveshell ([\d.]+) / ([\d.]+); OpenSSH ([\d.]+) / ([\d.]+)", wire[name])
        assert counts, wire
        ours, ssh = float(counts[1 + way]), float(counts[3 + way])
        assert ours > 1024 * 1024 / 1000 / 20 and ssh > 1024 * 1024 / 1000, wire[name]


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="the web rows need /usr/bin/chromium")
def test_web_terminal_against_the_cli_at_a_tiny_size():
    argv = [sys.executable, str(ROOT / "bench" / "web_bench.py"), "--smoke", "--kinds", "escapes"]
    done = run_bench(argv)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| row ")}
    names = ["keystroke echo, median, 10 keys 10 ms apart: received in the page (ms)",
             "keystroke echo, p99, 3 keys 100 ms apart: drawn (the next frame) (ms)",
             "`cat` 1 MB, escapes: received in the page (MB/s)", "`cat` 1 MB, escapes: written by the terminal (MB/s)",
             "Ctrl-C under a flood, to the prompt: received in the page (ms)",
             "Ctrl-C under a flood, to the prompt: written by the terminal (ms)",
             "Ctrl-C under a flood, bytes after ^C (bytes)"]
    for name in names:
        assert name in rows, table
        web, cli, ratio = rows[name][1:4]
        # One round each: a figure for the page and for the CLI, and their ratio.
        assert float(web) > 0 and float(cli) > 0 and re.match(r"\d+\.\d+x \(", ratio), rows[name]
    # CPU per GB beside the throughput row, per process of both: the browser's and the CLI client's.
    cpu = rows["`cat` 1 MB, escapes: received in the page (MB/s)"][4]
    assert all(f"{process} " in cpu for process in ("browser", "master", "worker", "client")), cpu
