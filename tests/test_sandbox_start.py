"""How the sandbox follows a master's or worker's twistd.log while it starts (what `buildbot start` and
`buildbot-worker start` watch for): the line that ends the wait, read from where the log was at launch."""

from __future__ import annotations

import pathlib
import threading
import time

from slaveshell.client.sandbox import MASTER_FAILED, MASTER_STARTED, _follow_log


def test_a_line_written_after_the_launch_ends_the_wait_and_earlier_ones_do_not(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "twistd.log"
    log.write_text("old run [-] BuildMaster is running\n")
    offset = log.stat().st_size

    def write() -> None:
        time.sleep(0.2)
        with open(log, "a") as f:
            f.write("[-] Loading configuration from 'master.cfg'\n[-] BuildMaster is ")
            f.flush()
            time.sleep(0.2)
            f.write("running\n")

    writer = threading.Thread(target=write)
    writer.start()
    end, text = _follow_log(str(log), offset, MASTER_STARTED + MASTER_FAILED, time.monotonic() + 30)
    writer.join()
    assert end == "BuildMaster is running"
    assert text.splitlines() == ["[-] Loading configuration from 'master.cfg'", "[-] BuildMaster is running"]


def test_a_failure_line_is_told_apart(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "twistd.log"
    log.write_text("[-] configuration update aborted without making any changes\n")
    end, _ = _follow_log(str(log), 0, MASTER_STARTED + MASTER_FAILED, time.monotonic() + 30)
    assert end == "configuration update aborted"


def test_a_gone_process_or_the_deadline_ends_the_wait_with_what_was_read(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "twistd.log"
    log.write_text("[-] Starting BuildMaster\n[-] half a line")
    began = time.monotonic()
    assert _follow_log(str(log), 0, MASTER_STARTED, began + 30, alive=lambda: False) == (
        "", "[-] Starting BuildMaster\n[-] half a line")
    assert time.monotonic() - began < 5
    assert _follow_log(str(tmp_path / "missing.log"), 0, MASTER_STARTED, time.monotonic() + 0.3) == ("", "")


def test_a_log_rotated_while_followed_is_read_from_its_start(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "twistd.log"
    log.write_text("x" * 1000 + "\n")
    (tmp_path / "rotated").write_text("[-] BuildMaster is running\n")
    (tmp_path / "rotated").replace(log)
    end, _ = _follow_log(str(log), 1001, MASTER_STARTED, time.monotonic() + 30)
    assert end == "BuildMaster is running"
