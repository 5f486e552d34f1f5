"""Fleet runs end to end (`slaveshell run`, `facts`, `runs`, `history --run`) against a real master with real
workers: f1 and f2 opted in, f3 not opted in, f4 disconnected, f5 where the policy withholds `run`, f6 whose
owner's allowed_users refuses the operator. Each test reads what the operator sees: the gathered answer, the
summary line, the exit status, the --json shape, the audit index's rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import assert_no_traceback, run_as, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("fleet"))
    me = os.getuid()
    sb = Sandbox(root, workers=["f1", "f2", "f3", "f4", "f5", "f6"], opt_in=["f1", "f2", "f4", "f5", "f6"],
                 service_kwargs=(f"policy=[dict(users=[0, {me}], workers=['f5'], rights=['shell', 'watch', "
                                 f"'replay'], withhold=['run']), dict(users=[0, {me}])], "
                                 "facts={'answer': 'echo 42'}"))
    sb.create()
    tac = os.path.join(sb.worker_dir("f6"), "buildbot.tac")
    with open(tac) as f:
        text = f.read()
    with open(tac, "w") as f:
        f.write(text.replace("slave_side.install(", "slave_side.install(allowed_users=['nobody-else'], ", 1))
    try:
        sb.start()
        sb.stop_worker("f4")
        wait_until(lambda: not _connected(sb, "f4"), 30)
        yield sb
    finally:
        sb.stop()


def _connected(sb: Sandbox, name: str) -> bool:
    return any(w["name"] == name and w["connected"] for w in sb.workers_status())


def slaveshell(sb: Sandbox, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert_no_traceback(done.stderr)
    assert_no_traceback(done.stdout)
    return done


def test_a_run_gathers_identical_outputs_and_lists_every_worker_that_did_not_run(box: Sandbox) -> None:
    done = slaveshell(box, "run", "--", "echo", "same everywhere")
    assert done.returncode == 1, done.stderr  # not every targeted worker ran
    out = done.stdout
    assert "f[1-2] (2)\n---------------\nsame everywhere\n" in out, out
    assert "not connected: f4" in out
    assert "not opted in: f3" in out
    assert "refused: f[5-6]" in out or ("refused: f5" in out and "f6" in out), out
    assert "may not run on worker f5" in out
    assert "does not allow" in out  # f6's owner
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("2 ok"), summary
    assert "1 not connected" in summary and "1 not opted in" in summary and "2 refused" in summary, summary
    # Plain lines as each worker ends (stdout is a pipe).
    assert "f1: ok" in out and "f2: ok" in out


def test_every_targeted_worker_ok_exits_0_and_each_got_an_audited_session(box: Sandbox) -> None:
    done = slaveshell(box, "run", "--workers", "f[12]", "--reason", "INC-7: check", "--json", "--",
                      "sh", "-c", "echo $PWD")
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["exit_status"] == 0 and answer["summary"] == "2 ok"
    by_name = {w["worker"]: w for w in answer["workers"]}
    assert set(by_name) == {"f1", "f2"}
    for name, w in by_name.items():
        assert set(w) == {"worker", "state", "exit_status", "duration", "output", "output_cut", "output_bytes",
                          "session", "reason"}
        assert w["state"] == "ok" and w["exit_status"] == 0 and w["output_cut"] is False
        assert w["output"].strip().endswith("worker-" + name)
        assert w["session"]
    runs = json.loads(slaveshell(box, "runs", "--json").stdout)
    run = next(r for r in runs if r["summary"] == "2 ok" and r["reason"] == "INC-7: check")
    assert run["command"] == "sh -c 'echo $PWD'" and run["state"] == "ended" and run["targets"] == "f1 f2"
    one = json.loads(slaveshell(box, "runs", run["id"], "--json").stdout)[0]
    assert {w["worker"]: w["session_id"] for w in one["workers"]} == {n: w["session"] for n, w in by_name.items()}
    history = json.loads(slaveshell(box, "history", "--run", run["id"], "--json").stdout)
    assert {h["id"] for h in history} == {w["session"] for w in by_name.values()}
    assert all(h["run_id"] == run["id"] and h["reason"] == "INC-7: check" and not h["pty"] for h in history)
    shown = slaveshell(box, "runs", run["id"]).stdout
    assert "2 ok" in shown and "f1" in shown and "f2" in shown


def test_the_timeout_ends_a_stuck_worker_and_a_flood_is_cut_in_the_answer(box: Sandbox) -> None:
    started = time.monotonic()
    done = slaveshell(box, "run", "--workers", "f1", "--workers", "f2", "--timeout", "3", "--json", "--",
                      "sh", "-c", 'case "$PWD" in *f1) sleep 300;; *) head -c 3000000 /dev/zero | tr "\\0" x;; esac')
    assert time.monotonic() - started < 60
    assert done.returncode == 1
    by_name = {w["worker"]: w for w in json.loads(done.stdout)["workers"]}
    assert by_name["f1"]["state"] == "timed out"
    assert by_name["f2"]["state"] == "ok"
    assert by_name["f2"]["output_cut"] is True and by_name["f2"]["output_bytes"] == 3000000
    assert len(by_name["f2"]["output"]) == 64 * 1024


def test_bad_usage_is_one_line_and_exit_2_and_nothing_starts(box: Sandbox, tmp_path: object) -> None:
    before = json.loads(slaveshell(box, "runs", "--json").stdout)
    for args, text in ((["--batch", "0"], "--batch 0"),
                       (["--where", "nosuch=1"], "unknown fact nosuch"),
                       (["--workers", "zz*"], "no worker matches"),
                       (["--where", "gcc"], "expected FACT=VALUE"),
                       (["--script", "/nonexistent/script.sh"], "No such file"),
                       ([], "give a command")):
        done = slaveshell(box, "run", *args, *([] if "--script" in args or not args else ["--", "true"]))
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert text in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert json.loads(slaveshell(box, "runs", "--json").stdout) == before


def test_a_script_runs_from_a_private_temporary_file_that_is_removed(box: Sandbox, tmp_path: object) -> None:
    script = os.path.join(str(tmp_path), "fix.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nls -l \"$0\" | cut -c1-10\necho \"script at $0\"\nexit 3\n")
    done = slaveshell(box, "run", "--workers", "f1", "--script", script, "--json")
    assert done.returncode == 1
    w = json.loads(done.stdout)["workers"][0]
    assert w["state"] == "failed" and w["exit_status"] == 3
    lines = w["output"].splitlines()
    assert lines[0] == "-rwx------", lines
    path = lines[1].removeprefix("script at ")
    assert "slaveshell-run." in path and not os.path.exists(path)
    import hashlib

    run = json.loads(slaveshell(box, "runs", "--json").stdout)[0]
    with open(script, "rb") as f:
        assert run["script_sha256"] == hashlib.sha256(f.read()).hexdigest() and run["command"] is None


def test_facts_are_grouped_by_value_and_target_a_run(box: Sandbox) -> None:
    done = slaveshell(box, "facts", "--refresh")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "Linux" in lines["os"] and "2 workers" in lines["os"], out  # f1, f2 (f6's owner refuses the operator)
    assert "42" in lines["answer"], out
    assert "no facts yet: f3 f4 f5 f6" in out
    facts = json.loads(slaveshell(box, "facts", "--json").stdout)
    assert {f["worker"] for f in facts} >= {"f1", "f2"}
    assert all(f["facts"]["arch"] for f in facts)
    run = slaveshell(box, "run", "--where", "answer=4*", "--workers", "f[12]", "--", "echo", "by fact")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "f[1-2] (2)" in run.stdout
    none = slaveshell(box, "run", "--where", "answer!=42", "--workers", "f[12]", "--", "true")
    assert none.returncode == 2 and "no worker matches" in none.stderr


def test_ctrl_c_ends_the_running_workers_and_the_summary_says_which_ran(box: Sandbox) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "slaveshell.cli", "run", "--socket", box.socket,
                             "--workers", "f[12]", "--batch", "1", "--", "sh", "-c", "echo started; sleep 300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: _sleeping(box), 30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_no_traceback(err)
    assert proc.returncode == 1, (out, err)
    assert "interrupted" in err
    last = out.strip().splitlines()[-1]
    assert last == "1 interrupted (f1), 1 not started", out
    wait_until(lambda: not _sleeping(box), 30)


def _sleeping(sb: Sandbox) -> bool:
    found = subprocess.run(["pgrep", "-f", "sleep 300"], capture_output=True, text=True)
    for pid in found.stdout.split():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd.startswith(sb.root):
            return True
    return False


def test_a_local_user_without_access_to_the_socket_runs_nothing(box: Sandbox) -> None:
    before = _runs(box)
    done = run_as("nobody", ["run", "--socket", box.socket, "--", "touch", "/tmp/should-not-exist"])
    assert_no_traceback(done.stderr)
    # The socket is 0600 in a root-only directory: the user cannot reach it (nor see it).
    assert done.returncode == 1 and ("ermission denied" in done.stderr or "no master socket" in done.stderr), done
    assert len(done.stderr.strip().splitlines()) == 1
    assert _runs(box) == before


def test_a_terminal_gets_a_live_table_then_the_gathered_answer(box: Sandbox) -> None:
    import pexpect
    import pyte

    screen = pyte.Screen(100, 24)
    stream = pyte.ByteStream(screen)
    printed = bytearray()

    class Log:
        def write(self, data: bytes) -> None:
            printed.extend(data)
            stream.feed(data)

        def flush(self) -> None:
            pass

    child = pexpect.spawn(sys.executable, ["-m", "slaveshell.cli", "run", "--socket", box.socket, "--workers", "f[12]",
                                           "--", "sh", "-c", "printf 'working \\033[31mred\\n'; sleep 3; echo done"],
                          dimensions=(24, 100), env=dict(os.environ, TERM="xterm"), timeout=30)
    child.logfile_read = Log()
    try:
        child.expect("0/2 done, 2 running")
        child.expect(r"f2 +running +[0-9.]+s  working")
        live = [line.rstrip() for line in screen.display]
        row = next(line for line in live if line.startswith("f2"))
        assert row.endswith("working \\x1b[31mred"), row  # what the worker wrote, escaped
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert_no_traceback(bytes(printed))
    final = [line.rstrip() for line in screen.display]
    assert not any("done, " in line and "running" in line for line in final), final  # the table is gone
    assert "f[1-2] (2)" in final and "2 ok" in final, final
    answer = final[final.index("f[1-2] (2)") - 1:]
    assert answer[:5] == ["-" * 15, "f[1-2] (2)", "-" * 15, "working \\x1b[31mred", "done"], answer


def _runs(sb: Sandbox) -> list[dict[str, object]]:
    return list(json.loads(slaveshell(sb, "runs", "--json").stdout))


def _worker_row(sb: Sandbox, run_id: str, worker: str) -> dict[str, object]:
    run = json.loads(slaveshell(sb, "runs", run_id, "--json").stdout)[0]
    return next(w for w in run["workers"] if w["worker"] == worker)


def test_pending_runs_survive_a_restart_run_when_the_worker_attaches_and_pause_it(box: Sandbox) -> None:
    fix = slaveshell(box, "run", "--workers", "f4", "--include-offline", "--pause", "--json", "--",
                     "sh", "-c", "echo fixed > fixed-by-run.txt")
    assert fix.returncode == 1  # not every targeted worker ran (yet)
    shown = json.loads(fix.stdout)["workers"]
    assert [(w["worker"], w["state"]) for w in shown] == [("f4", "pending")]
    assert "paused in Buildbot until it succeeds" in shown[0]["reason"]
    fix_id = str(_runs(box)[0]["id"])
    broken = slaveshell(box, "run", "--workers", "f4", "--include-offline", "--pause", "--", "sh", "-c", "exit 3")
    assert "pending: f4" in broken.stdout and broken.stdout.strip().endswith("1 pending"), broken.stdout
    broken_id = str(_runs(box)[0]["id"])
    dropped = slaveshell(box, "run", "--workers", "f4", "--include-offline", "--", "touch", "cancelled.txt")
    assert dropped.returncode == 1
    dropped_id = str(_runs(box)[0]["id"])
    cancel = slaveshell(box, "runs", "cancel", dropped_id)
    assert cancel.returncode == 0 and "1 pending worker cancelled" in cancel.stdout, cancel.stdout + cancel.stderr
    assert _worker_row(box, fix_id, "f4")["state"] == "pending"
    # The master restarts: the pending rows are in the index.
    os.kill(box.master_pid(), signal.SIGTERM)
    wait_until(lambda: not os.path.exists(os.path.join(box.master_dir, "twistd.pid")), 60)
    box.start_master()
    box.wait_for_workers(["f1", "f2"])
    box.start_worker("f4")
    box.wait_for_workers(["f4"])
    wait_until(lambda: _worker_row(box, broken_id, "f4")["state"] != "pending"
               and _worker_row(box, fix_id, "f4")["state"] != "pending", 60)
    ok = _worker_row(box, fix_id, "f4")
    assert ok["state"] == "ok" and ok["session_id"], ok
    with open(os.path.join(box.worker_dir("f4"), "fixed-by-run.txt")) as f:
        assert f.read() == "fixed\n"
    failed = _worker_row(box, broken_id, "f4")
    assert failed["state"] == "failed" and failed["exit_status"] == 3
    assert "stays paused" in str(failed["reason"])
    assert _worker_row(box, dropped_id, "f4")["state"] == "cancelled"
    assert not os.path.exists(os.path.join(box.worker_dir("f4"), "cancelled.txt"))
    status = {w["name"]: w for w in box.workers_status()}
    assert status["f4"]["paused"] is True  # its failed run keeps it paused
    history = json.loads(slaveshell(box, "history", "--run", fix_id, "--json").stdout)
    assert [h["id"] for h in history] == [ok["session_id"]]
