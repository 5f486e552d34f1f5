"""`slaveshell`'s options as a newcomer types them: --master or --socket before the subcommand as after it, and
usage errors of its own checks exiting 2 as argparse's do."""

from __future__ import annotations

import pytest

from slaveshell.client.cli import main


@pytest.mark.parametrize("argv", [["--master", "/nonexistent/m", "workers"], ["workers", "--master", "/nonexistent/m"],
                                  ["--socket", "/nonexistent/m/shell.sock", "history"],
                                  ["--master", "/elsewhere", "sessions", "--master", "/nonexistent/m"],
                                  ["hold", "--master", "/nonexistent/m", "extend", "7", "30m"],
                                  ["hold", "--master", "/elsewhere", "extend", "--master", "/nonexistent/m", "7",
                                   "30m"]])
def test_the_master_may_be_named_before_or_after_the_subcommand_the_subcommands_own_winning(capsys, argv):
    assert main(argv) == 255
    assert capsys.readouterr().err.startswith("slaveshell: no master socket at /nonexistent/m/shell.sock (")


def test_a_bad_since_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["history", "--since", "yesterday", "--socket", "/nonexistent"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("slaveshell: --since wants an ISO date/time or a duration like 12h, not "
                                       "'yesterday'\n")


def test_version(capsys):
    from slaveshell import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"slaveshell {__version__}\n"


@pytest.mark.parametrize(("limit", "error"), [("-1", "must be between 1 and 10000, not -1"),
                                              ("lots", "invalid int value: 'lots'")])
def test_a_bad_history_limit_is_a_usage_error(capsys, limit, error):
    with pytest.raises(SystemExit) as exited:
        main(["history", "--limit", limit, "--socket", "/nonexistent"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(f"slaveshell history: error: argument --limit: {error}\n")
