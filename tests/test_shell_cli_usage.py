"""What `buildbot-shell` says and exits with when its arguments are wrong: as ssh, 255 (a remote command's own
status, 2 say, is never taken for a usage error), one error line after the usage, naming only what is missing."""

from __future__ import annotations

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
