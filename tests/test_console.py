"""The console, driven as prompt_toolkit's own tests do: pipe input, dummy output, a fake backend."""

from typing import Any

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from slaveshell.client.console import BackendError, Console, ConsoleCompleter
from slaveshell.client.jobcontrol import Job


class FakeBackend:
    def __init__(self):
        self.ran: list[list[str]] = []
        self.killed: list[str] = []
        self.sessions_live = [{"id": "abc123def456", "worker": "w1", "operator": "alice", "started": 0.0,
                               "state": "detached", "viewers": [], "command": None, "idle": 3.0}]

    def workers(self) -> list[dict[str, Any]]:
        return [
            {"name": "linux-1", "connected": True, "shell": True, "paused": False, "allowed": True,
             "sessions": 1, "system": "posix", "info": "Debian GNU/Linux 12"},
            {"name": "win-1", "connected": False, "shell": False, "paused": False, "allowed": False,
             "sessions": 0, "system": "", "info": ""},
        ]

    def sessions(self) -> list[dict[str, Any]]:
        return self.sessions_live

    def history(self, worker):
        return [{"id": "0123456789ab", "started": "2026-11-29T05:00:00+00:00", "operator": "alice",
                 "worker": worker or "linux-1", "end_reason": "exit 0", "state": "ended", "command": None}]

    def kill(self, session_id):
        if session_id != "abc123def456":
            raise BackendError(f"no live session {session_id}")
        self.killed.append(session_id)
        return "hangup sent"

    def run_interactive(self, argv):
        self.ran.append(argv)
        return 7


@pytest.fixture
def drive():
    def run(keys: str):
        backend = FakeBackend()
        out: list[str] = []
        with create_pipe_input() as inp, create_app_session(input=inp, output=DummyOutput()):
            inp.send_text(keys)
            console = Console(backend, input=inp, output=DummyOutput(), write=out.append)
            status = console.run()
        return status, "".join(out), backend

    return run


def test_console_shows_the_fleet_and_leaves_on_quit(drive):
    status, out, _ = drive("quit\r")
    assert status == 0
    assert "linux-1" in out and "connected" in out and "Debian GNU/Linux 12" in out
    assert "win-1" in out and "offline" in out


def test_ctrl_d_leaves(drive):
    status, out, _ = drive("\x04")
    assert status == 0


def test_shell_hands_the_terminal_over_and_comes_back(drive):
    status, out, backend = drive("shell linux-1 uname -a\rsessions\rquit\r")
    assert backend.ran == [["buildbot-shell", "linux-1", "uname", "-a"]]
    assert "[buildbot-shell linux-1 uname -a: exit 7]" in out
    assert "abc123def456" in out  # the console carried on after the session


def test_attach_watch_replay_kill_history(drive):
    status, out, backend = drive("attach abc123def456\rwatch abc123def456\rreplay 0123456789ab\r"
                                 "kill abc123def456\rkill nope\rhistory linux-1\rbogus\rquit\r")
    assert backend.ran == [["slaveshell", "attach", "abc123def456"], ["slaveshell", "watch", "abc123def456"],
                           ["slaveshell", "replay", "0123456789ab"]]
    assert backend.killed == ["abc123def456"]
    assert "error: no live session nope" in out
    assert "0123456789ab" in out and "exit 0" in out
    assert "unknown command 'bogus'" in out


def test_completion_of_commands_workers_and_sessions():
    backend = FakeBackend()
    with create_pipe_input() as inp:
        console = Console(backend, input=inp, output=DummyOutput(), write=lambda s: None)
        console.refresh()
        completer = ConsoleCompleter(console)

        def complete(text):
            return [c.text for c in completer.get_completions(Document(text), None)]

        assert complete("sh") == ["shell"]
        assert complete("shell li") == ["linux-1"]
        assert complete("attach ab") == ["abc123def456"]
        assert complete("kill x") == []


class StoppingBackend(FakeBackend):
    """Sessions that stop when handed the terminal (~^Z), and end when continued."""

    def __init__(self):
        super().__init__()
        self.resumed = []
        self.hung_up = []

    def run_interactive(self, argv):
        self.ran.append(argv)
        return Job(argv, None)

    def resume(self, job):
        self.resumed.append(job.argv)
        return 0

    def hang_up(self, job):
        self.hung_up.append(job.argv)
        return 255


def drive_with(backend, keys):
    out: list[str] = []
    with create_pipe_input() as inp, create_app_session(input=inp, output=DummyOutput()):
        inp.send_text(keys)
        status = Console(backend, input=inp, output=DummyOutput(), write=out.append).run()
    return status, "".join(out)


def test_a_stopped_session_is_a_job_that_fg_continues():
    backend = StoppingBackend()
    status, out = drive_with(backend, "shell w1\rshell w2 top\rjobs\rfg 1\rfg 9\rfg\rfg\rquit\r")
    assert "[1] stopped  buildbot-shell w1  ('fg' continues it)" in out
    assert "[2] stopped  buildbot-shell w2 top" in out
    assert "[1] stopped  buildbot-shell w1\n[2] stopped  buildbot-shell w2 top\n" in out
    assert "fg: no job '9'" in out
    assert backend.resumed == [["buildbot-shell", "w1"], ["buildbot-shell", "w2", "top"]]
    assert "no stopped sessions" in out
    assert backend.hung_up == []


def test_leaving_hangs_up_stopped_sessions():
    backend = StoppingBackend()
    status, out = drive_with(backend, "shell w1\r\x04")
    assert status == 0
    assert backend.hung_up == [["buildbot-shell", "w1"]]
    assert "[buildbot-shell w1: hung up, exit 255]" in out


def test_ctrl_c_while_a_command_waits_for_the_master_stops_that_command_only():
    class Interrupting(FakeBackend):
        calls = 0

        def sessions(self):
            self.calls += 1
            if self.calls == 2:  # the first is the console's own refresh at start
                raise KeyboardInterrupt
            return super().sessions()

    backend = Interrupting()
    out: list[str] = []
    with create_pipe_input() as inp, create_app_session(input=inp, output=DummyOutput()):
        inp.send_text("sessions\rworkers\rquit\r")
        status = Console(backend, input=inp, output=DummyOutput(), write=out.append).run()
    text = "".join(out)
    assert status == 0
    assert "interrupted" in text
    assert text.count("linux-1") >= 2  # the fleet at start, and again after the interrupted command


def test_after_the_master_went_away_sessions_and_workers_show_the_error_and_no_stale_table():
    class Gone(FakeBackend):
        gone = False

        def workers(self):
            if self.gone:
                raise BackendError("cannot reach the master: connection refused")
            return super().workers()

        def sessions(self):
            if self.gone:
                raise BackendError("cannot reach the master: connection refused")
            return super().sessions()

    backend = Gone()
    out: list[str] = []
    with create_pipe_input() as inp, create_app_session(input=inp, output=DummyOutput()):
        console = Console(backend, input=inp, output=DummyOutput(), write=out.append)
        console.show_sessions()
        assert "abc123def456" in "".join(out)  # the table, while the master answers
        backend.gone = True
        out.clear()
        inp.send_text("sessions\rworkers\rquit\r")
        assert console.run() == 0
    text = "".join(out)
    assert text.count("error: cannot reach the master: connection refused") == 3  # at start, and each command
    for stale in ("abc123def456", "linux-1", "SESSION", "WORKER"):
        assert stale not in text, text


def test_on_a_multi_master_site_each_worker_row_says_which_master_holds_it():
    class SiteBackend(FakeBackend):
        def workers(self):
            rows = super().workers()
            rows[0].update(master="A", here=True, masters=["A"])
            rows[1].update(master=None, here=False, masters=[])
            return rows + [
                {"name": "b1", "connected": True, "shell": True, "paused": False, "allowed": True, "sessions": 0,
                 "system": "posix", "info": "", "master": "B", "here": False, "masters": ["B"]},
                {"name": "dup", "connected": True, "shell": True, "paused": False, "allowed": True, "sessions": 0,
                 "system": "", "info": "", "master": "A", "here": True, "masters": ["A", "B\x1b[31m"]}]

    out: list[str] = []
    with create_pipe_input() as inp, create_app_session(input=inp, output=DummyOutput()):
        inp.send_text("quit\r")
        Console(SiteBackend(), input=inp, output=DummyOutput(), write=out.append).run()
    out_text = "".join(out)
    assert "MASTER" in out_text.splitlines()[0]
    line = {row.split()[0]: row for row in out_text.splitlines()[1:] if row.strip()}
    assert "here (master A)" in line["linux-1"] and "on master B" in line["b1"]
    assert "on 2 masters: A, B\\x1b[" in line["dup"]  # a name from another master, escaped (and cut to the column)
    assert "master" not in line["win-1"]


def test_on_one_master_there_is_no_master_column(drive):
    _, out, _ = drive("quit\r")
    assert "MASTER" not in out


def test_workers_include_offline_asks_for_the_other_masters_offline_workers():
    class SiteBackend(FakeBackend):
        asked: list[bool] = []

        def workers(self, include_offline=False):
            self.asked.append(include_offline)
            rows = [{**r, "master": None, "here": False, "masters": []} for r in super().workers()]
            if include_offline:
                rows.append({"name": "z1", "connected": False, "shell": False, "paused": False, "allowed": True,
                             "sessions": 0, "system": "", "info": "", "master": None, "here": False, "masters": [],
                             "last_master": "B", "configured_on": ["B"]})
            rows.append({"name": "ghost", "connected": False, "shell": False, "paused": False, "allowed": True,
                         "sessions": 0, "system": "", "info": "", "master": None, "here": False, "masters": [],
                         "disputed": [{"master": "C", "why": "..."}]})
            return rows

    backend = SiteBackend()
    out: list[str] = []
    with create_pipe_input() as inp, create_app_session(input=inp, output=DummyOutput()):
        inp.send_text("workers --include-offline\rworkers --bogus\rquit\r")
        Console(backend, input=inp, output=DummyOutput(), write=out.append).run()
    text = "".join(out)
    line = {row.split()[0]: row for row in text.splitlines() if row.strip() and not row.startswith(" ")}
    assert "offline (last on B)" in line["z1"] and "offline" in line["z1"].split()[1]
    assert "disputed: C (not routed)" in line["ghost"]
    assert "usage: workers [--include-offline]" in text
    assert True in backend.asked
