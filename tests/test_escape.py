from slaveshell.client.escape import Detach, EscapeParser, Help, Send, Suspend, Terminate


def sent(actions):
    return b"".join(a.data for a in actions if isinstance(a, Send))


def test_tilde_dot_at_line_start_terminates_and_drops_the_rest():
    p = EscapeParser()
    actions = p.feed(b"ls\r~.more")
    assert sent(actions) == b"ls\r"
    assert isinstance(actions[-1], Terminate)


def test_escape_at_the_very_start():
    assert isinstance(EscapeParser().feed(b"~.")[-1], Terminate)


def test_tilde_in_the_middle_of_a_line_is_plain_data():
    assert sent(EscapeParser().feed(b"cd ~.x/~.")) == b"cd ~.x/~."


def test_double_tilde_sends_one():
    assert sent(EscapeParser().feed(b"~~/x")) == b"~/x"


def test_tilde_and_another_char_sends_both():
    assert sent(EscapeParser().feed(b"~a")) == b"~a"


def test_tilde_held_across_reads_until_the_next_byte_decides():
    p = EscapeParser()
    assert p.feed(b"\r~") == [Send(b"\r")]
    assert isinstance(p.feed(b".")[-1], Terminate)


def test_help_lists_the_escapes():
    actions = EscapeParser().feed(b"~?")
    assert isinstance(actions[0], Help) and "~." in actions[0].text


def test_detach_only_when_enabled():
    assert sent(EscapeParser().feed(b"~d")) == b"~d"
    assert isinstance(EscapeParser(detach=True).feed(b"~d")[-1], Detach)


def test_disabled_escapes_pass_everything():
    assert sent(EscapeParser(None).feed(b"~.~?")) == b"~.~?"


def test_other_escape_character():
    p = EscapeParser(b"%")
    assert sent(p.feed(b"~.")) == b"~."
    assert isinstance(EscapeParser(b"%").feed(b"%.")[-1], Terminate)


def test_tilde_ctrl_z_after_a_newline_suspends_and_keeps_what_follows():
    p = EscapeParser(suspend="buildbot-shell")
    actions = p.feed(b"ls\r~\x1a~.")
    assert actions[0] == Send(b"ls\r")
    assert actions[1] == Suspend()
    assert isinstance(actions[2], Terminate)  # another escape is recognised right after the suspend


def test_tilde_ctrl_z_is_data_without_suspend_or_mid_line():
    assert sent(EscapeParser().feed(b"~\x1a")) == b"~\x1a"
    assert sent(EscapeParser(suspend="x").feed(b"a~\x1a")) == b"a~\x1a"


def test_help_lists_suspend_when_offered():
    (help_action,) = EscapeParser(suspend="buildbot-shell").feed(b"~?")
    assert isinstance(help_action, Help) and " ~^Z  - suspend buildbot-shell\r\n" in help_action.text
    (plain,) = EscapeParser().feed(b"~?")
    assert isinstance(plain, Help) and "^Z" not in plain.text


def test_help_for_someone_who_only_leaves_offers_leaving_not_terminating():
    owner = EscapeParser(detach=True)
    [shown] = owner.feed(b"~?")
    assert isinstance(shown, Help) and " ~.   - terminate session\r\n" in shown.text and "~d" in shown.text
    watcher = EscapeParser(detach=True, suspend="slaveshell")
    watcher.leave_only = True
    [shown] = watcher.feed(b"~?")
    assert isinstance(shown, Help)
    assert "terminate" not in shown.text and "~d" not in shown.text
    assert " ~.   - leave the session (it keeps running for its owner)\r\n" in shown.text
    assert " ~^Z  - suspend slaveshell\r\n" in shown.text
