"""Storage on the master as an operator sees it: bulk output through `-T` costs about its own size
on disk, comes back exactly through `slaveshell export`, and transcripts past the retention are removed while
their index rows stay, marked, with an audit event."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from master_side.audit.transcripts import attachment_path
from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.transcript import exact_output, parse_lines

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e

MB = 1024 * 1024


def slaveshell(sandbox, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sandbox.socket, *args[1:]],
                          capture_output=True, timeout=timeout)


def history(sandbox):
    done = slaveshell(sandbox, "history", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ended_row(sandbox, marker):
    def find():
        rows = [r for r in history(sandbox) if r["command"] and marker in r["command"] and r["state"] == "ended"]
        return rows[0] if rows else None

    return wait_until(find, timeout=30)


def run_cat(sandbox, path, marker):
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", f"cat {path} # {marker}"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("kind", ["binary", "text"])
def test_20_mb_through_dash_T_costs_at_most_5_percent_more_on_the_masters_disk(sandbox, tmp_path, kind):
    payload = os.urandom(20 * MB) if kind == "binary" else base64.encodebytes(os.urandom(15 * MB))[: 20 * MB]
    src = tmp_path / "payload"
    src.write_bytes(payload)
    assert run_cat(sandbox, src, f"storage-{kind}") == payload
    row = ended_row(sandbox, f"storage-{kind}")
    cast, attached = row["transcript"], attachment_path(row["transcript"])
    on_disk = os.path.getsize(cast) + os.path.getsize(attached)
    assert on_disk / len(payload) <= 1.05, (on_disk, len(payload))
    # The index vouches for both files.
    assert row["transcript_sha256"] == hashlib.sha256(open(cast, "rb").read()).hexdigest()
    assert row["attachment_sha256"] == hashlib.sha256(open(attached, "rb").read()).hexdigest()
    assert os.stat(attached).st_mode & 0o777 == 0o600


def test_an_upload_through_dash_T_costs_its_own_size_and_is_recorded_exactly(sandbox, tmp_path):
    payload = os.urandom(8 * MB)
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--",
                                          "sha256sum # storage-upload"], input=payload, capture_output=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
    row = ended_row(sandbox, "storage-upload")
    on_disk = os.path.getsize(row["transcript"]) + os.path.getsize(attachment_path(row["transcript"]))
    assert on_disk / len(payload) <= 1.05, (on_disk, len(payload))
    exported = slaveshell(sandbox, "export", row["id"])
    cast = parse_lines(exported.stdout.decode("utf-8", "surrogateescape").splitlines(keepends=True))
    assert b"".join(exact_output(cast.events, "i")) == payload


def test_export_of_a_bulk_session_is_a_self_contained_cast_with_the_exact_bytes(sandbox, tmp_path):
    payload = os.urandom(MB) + "bulk-export-needle \u00e9\n".encode() + os.urandom(3000)
    src = tmp_path / "payload"
    src.write_bytes(payload)
    assert run_cat(sandbox, src, "storage-export") == payload
    row = ended_row(sandbox, "storage-export")
    exported = slaveshell(sandbox, "export", row["id"])
    assert exported.returncode == 0, exported.stderr
    cast = parse_lines(exported.stdout.decode("utf-8", "surrogateescape").splitlines(keepends=True))
    assert b"".join(exact_output(cast.events)) == payload
    assert cast.events[-1].data == "exit: code 0"
    found = slaveshell(sandbox, "search", "bulk-export-needle")
    assert row["id"].encode() in found.stdout
    replayed = slaveshell(sandbox, "replay", row["id"], "--speed", "1000")
    assert replayed.returncode == 0 and replayed.stdout == payload


def test_transcripts_past_the_retention_are_pruned_and_their_rows_kept(tmp_path_factory):
    # Two seconds of retention (the setting is in days): the service's timer prunes them soon after the end.
    sb = Sandbox(str(tmp_path_factory.mktemp("retention")), workers=["w1"],
                 service_kwargs="transcript_retention_days=2 / 86400")
    sb.create()
    try:
        sb.start()
        done = subprocess.run(shell_argv() + ["--socket", sb.socket, "-T", "w1", "--",
                                              "head -c 100000 /dev/zero; echo retention-me"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        row = wait_until(lambda: next((r for r in history(sb) if r["command"] and "retention-me" in r["command"]
                                       and r["pruned"]), None), timeout=60)
        assert row["state"] == "ended" and row["end_reason"] == "exit 0"  # the row stays as it was
        assert not os.path.exists(row["transcript"]) and not os.path.exists(attachment_path(row["transcript"]))
        assert os.listdir(os.path.join(sb.master_dir, "transcripts")) == []
        refused = slaveshell(sb, "export", row["id"])
        assert refused.returncode == 255 and b"no transcript" in refused.stderr
        with sqlite3.connect(os.path.join(sb.master_dir, "slaveshell.sqlite")) as db:
            events = db.execute("SELECT kind, detail FROM slaveshell_events WHERE session_id = ?",
                                (row["id"],)).fetchall()
        [(kind, detail)] = [e for e in events if e[0] == "prune"]
        assert "transcript removed after" in detail and "bytes" in detail
    finally:
        sb.stop()


def test_bulk_output_seen_before_a_kill_9_of_the_master_is_kept_and_repaired(tmp_path_factory):
    sb = Sandbox(str(tmp_path_factory.mktemp("bulkcrash")), workers=["k1"])
    sb.create()
    try:
        sb.start()
        client = subprocess.Popen(shell_argv() + ["--socket", sb.socket, "-T", "k1", "--",
                                                  "head -c 300000 /dev/zero | tr '\\0' x; echo; echo BULK-SEEN; "
                                                  "sleep 60"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        try:
            seen = b""
            while b"BULK-SEEN" not in seen:
                line = client.stdout.readline()
                assert line, "the client ended before the output came"
                seen += line
            time.sleep(0.1)
            os.kill(sb.master_pid(), signal.SIGKILL)
            assert client.wait(timeout=30) == 255
        finally:
            client.kill()
            client.wait()
        directory = os.path.join(sb.master_dir, "transcripts")
        [cast] = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".cast")]
        # As the killed master left them: the bytes an operator saw are in the attachment and named by the cast.
        with open(cast, encoding="utf-8", errors="surrogateescape") as f:
            events = parse_lines(f).events
        attached = open(attachment_path(cast), "rb").read()
        shown = b"".join(exact_output(events, attachment=lambda o, n: attached[o:o + n]))
        assert shown == b"x" * 300000 + b"\nBULK-SEEN\n"
        os.unlink(os.path.join(sb.master_dir, "twistd.pid"))
        sb.start_master()
        row = wait_until(lambda: next((r for r in history(sb) if r["state"] == "interrupted"), None), timeout=30)
        exported = slaveshell(sb, "export", row["id"])
        cast_events = parse_lines(exported.stdout.decode("utf-8", "surrogateescape").splitlines(keepends=True)).events
        assert b"".join(exact_output(cast_events)) == shown
        assert cast_events[-1].data == "interrupted: the master stopped while the session was running"
        assert cast_events[-2].data.startswith("attachment: ") and f"{len(attached)} bytes" in cast_events[-2].data
    finally:
        sb.stop()


# The slaveshell CLI, telling its peak resident memory (VmHWM: this program's own, from its exec; getrusage's
# ru_maxrss would count the forked test process before the exec) as its last line on stderr.
_MEASURED = ("import atexit, sys\n"
             "def peak():\n"
             "    with open('/proc/self/status') as f:\n"
             "        print(next(l for l in f if l.startswith('VmHWM:')).split()[1], file=sys.stderr)\n"
             "atexit.register(peak)\n"
             "from slaveshell.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")


def _peak_rss_mb(args: list[str]) -> tuple[int, float]:
    """Run the CLI with `args`, its output thrown away: (exit status, its peak resident memory in MiB)."""
    done = subprocess.run([sys.executable, "-c", _MEASURED, *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    return done.returncode, int(done.stderr.split()[-1]) / 1024


def test_export_and_replay_stream_a_large_transcript_in_bounded_memory(sandbox, tmp_path):
    """A 48 MB transcript is exported and replayed as it arrives from the master: each client's peak memory is
    about that of a tiny transcript's, not in proportion to the transcript's size."""
    size = 48 * MB
    for marker, command in (("stream-tiny", "echo tiny"),
                            ("stream-large", f"head -c {size} /dev/zero | tr '\\0' a")):
        done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", f"{command} # {marker}"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=300)
        assert done.returncode == 0, done.stderr
    tiny, large = ended_row(sandbox, "stream-tiny"), ended_row(sandbox, "stream-large")
    cli = [sys.executable, "-m", "slaveshell.cli"]
    exported = tmp_path / "large.cast"
    with open(exported, "wb") as f:
        assert subprocess.run([*cli, "export", "--socket", sandbox.socket, large["id"]], stdout=f,
                              timeout=300).returncode == 0
    assert os.path.getsize(exported) > size
    for command in (["export"], ["replay", "--speed", "1000", "--idle-limit", "0"]):
        base_status, base = _peak_rss_mb([command[0], "--socket", sandbox.socket, tiny["id"], *command[1:]])
        status, peak = _peak_rss_mb([command[0], "--socket", sandbox.socket, large["id"], *command[1:]])
        assert (base_status, status) == (0, 0)
        print(f"{command[0]}: peak {peak:.1f} MiB, tiny {base:.1f} MiB")
        assert peak - base < 16, f"{command[0]}: {peak:.0f} MiB for a {size // MB} MB transcript, {base:.0f} tiny"
