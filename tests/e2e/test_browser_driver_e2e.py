"""The browser tests' chromium (tests/e2e/browser.py) when playwright's driver dies: in a pytest session of its
own (pytest-twisted runs every test's body in its reactor's greenlet, as here), a driver killed during a test
fails the tests that use it and no other (started in the main greenlet, it made every later test fail with
"illegal switch in blockon"); a driver that ends while starting is started again; one that cannot start fails
the tests that use it with how it ended."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

from .browser import CHROMIUM

pytestmark = pytest.mark.e2e

sync_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SESSION = '''\
import os, signal, subprocess, time

import pytest

from tests.e2e.browser import chromium


@pytest.fixture(scope="module")
def browser(twisted_greenlet):
    with chromium(twisted_greenlet) as b:
        yield b


def test_before():
    pass


def test_browser(browser):
    browser.new_context().close()
    if os.environ.get("KILL_DRIVER"):
        # The driver (node) is this process's only child.
        for pid in subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.5)
    browser.new_context().close()


def test_browser_again(browser):
    browser.new_context().close()


def test_after():
    pass


def test_after_too():
    pass
'''
TESTS = ["test_before", "test_browser", "test_browser_again", "test_after", "test_after_too"]


def session(tmp: Any, **env: str) -> dict[str, str]:
    """Runs SESSION in a pytest of its own; each test's outcome by name (PASSED, FAILED, ERROR), and its output
    under "output"."""
    (tmp / "test_session.py").write_text(SESSION)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test_session.py"],
                          cwd=tmp, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
                                   **env))
    outcomes = {name: outcome for outcome, name in
                re.findall(r"^(PASSED|FAILED|ERROR) test_session\.py::(\w+)", done.stdout, re.M)}
    outcomes["output"] = done.stdout + done.stderr
    return outcomes


def driver(tmp: Any, body: str) -> str:
    """A program in place of the driver's node (PLAYWRIGHT_NODEJS_PATH): `body`, then the real node."""
    from playwright._impl._driver import compute_driver_executable

    node, _ = compute_driver_executable()
    path = tmp / "node"
    path.write_text(f"#!/bin/sh\n{body}\nexec {node} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def test_a_driver_killed_during_a_test_fails_the_browser_tests_and_no_other(tmp_path: Any) -> None:
    got = session(tmp_path, KILL_DRIVER="1")
    assert [got.get(t) for t in TESTS] == ["PASSED", "FAILED", "FAILED", "PASSED", "PASSED"], got["output"]
    assert "illegal switch" not in got["output"] and "connection closed" in got["output"].lower(), got["output"]


def test_a_driver_that_ends_while_starting_is_started_again(tmp_path: Any) -> None:
    mark = tmp_path / "ended-once"
    node = driver(tmp_path, f'[ -e {mark} ] || {{ : > {mark}; kill -TERM $$; }}')
    got = session(tmp_path, PLAYWRIGHT_NODEJS_PATH=node)
    assert mark.exists()
    assert [got.get(t) for t in TESTS] == ["PASSED"] * len(TESTS), got["output"]


def test_a_driver_that_cannot_start_fails_only_the_browser_tests_saying_how_it_ended(tmp_path: Any) -> None:
    got = session(tmp_path, PLAYWRIGHT_NODEJS_PATH=driver(tmp_path, "exit 3"))
    assert [got.get(t) for t in TESTS] == ["PASSED", "ERROR", "ERROR", "PASSED", "PASSED"], got["output"]
    assert "playwright's driver (node) ended while starting, twice: exit status 3" in got["output"], got["output"]
