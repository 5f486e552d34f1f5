"""What `buildbot-shell` says and exits with when its arguments are wrong: as ssh, 255 (a remote command's own
status, 2 say, is never taken for a usage error), one error line after the usage, naming only what is missing; and
how the console script ends its process (slaveshell.shell_cli)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from slaveshell.client.shell_cli import main


@pytest.mark.parametrize(("argv", "error"), [
    ([], "buildbot-shell: error: the following argument is required: WORKER\n"),
    (["-Z", "w1"], "buildbot-shell: error: unrecognized arguments: -Z\n"),
    (["-E", "ab", "w1"], "buildbot-shell: error: -E takes one character or 'none'\n"),
    (["-e", "FOO", "w1"], "buildbot-shell: error: -e wants NAME=VALUE, not 'FOO'\n"),
    (["--build", "x", "w1"], "buildbot-shell: error: argument --build: invalid int value: 'x'\n"),
])
def test_bad_arguments_exit_255_with_the_usage_and_one_line(capsys, argv, error):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 255
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: buildbot-shell [-h] [-V] [--master DIR | --socket PATH]")
    assert "WORKER [COMMAND...]" in err and err.endswith(error)


def test_help_exits_0_and_says_the_exit_statuses(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["-h"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "128+N when it died of signal N, 255 when buildbot-shell failed" in out


def test_dash_v_says_the_version_as_ssh_does(capsys):
    from slaveshell import __version__

    with pytest.raises(SystemExit) as exited:
        main(["-V"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"buildbot-shell (slaveshell) {__version__}\n"


# The console script, its session replaced by one that leaves text in Python's stdout buffer (a pipe's is not
# flushed at each line) and ends with status 3; with `full`, stdout is /dev/full by then (nothing can be written).
_SCRIPT_WITH_HELD_OUTPUT = (
    "import os, sys\n"
    "import slaveshell.shell_cli as script\n"
    "def session(argv=None):\n"
    "    sys.stdout.write('held by Python')\n"
    "    if sys.argv[1:] == ['full']:\n"
    "        os.dup2(os.open('/dev/full', os.O_WRONLY), 1)\n"
    "    return 3\n"
    "script.client_main = session\n"
    "script.main()\n"
    "print('main returned', file=sys.stderr)\n"
)
# Python's stdout buffered, as it is by default (PYTHONUNBUFFERED would write it at once).
_BUFFERED = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}


def test_the_console_script_ends_with_the_session_status_once_its_output_is_written():
    done = subprocess.run([sys.executable, "-c", _SCRIPT_WITH_HELD_OUTPUT], capture_output=True, text=True,
                          env=_BUFFERED, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "held by Python", "")


def test_the_console_script_exits_120_when_its_output_cannot_be_written_as_python_does():
    done = subprocess.run([sys.executable, "-c", _SCRIPT_WITH_HELD_OUTPUT, "full"], capture_output=True, text=True,
                          env=_BUFFERED, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (120, "", "")
