"""Which uploads a session's command names (master_side.audit.upload_links): the names an upload keeps, and the
words of a command that match them, over the ways a command may spell a path."""

from __future__ import annotations

import pytest

from master_side.audit.upload_links import (
    MAX_NAMES,
    TYPED_EXAMINED,
    TYPED_KEPT,
    TypedWords,
    named_uploads,
    upload_names,
)


def test_an_upload_keeps_each_file_under_its_destination_and_a_single_file_its_new_name():
    assert upload_names("", True, ["x.sh"]) == "x.sh"
    assert upload_names(".", True, ["x.sh"]) == upload_names("./", True, ["x.sh"]) == "x.sh"
    assert upload_names("/", True, ["x.sh"]) == "/x.sh"
    assert upload_names("/tmp/", True, ["x.sh"]) == "/tmp/x.sh"
    assert upload_names("notes.txt", True, ["x.sh"]) == "notes.txt\nnotes.txt/x.sh"
    assert upload_names("d", False, ["tools/bin/go.sh", "tools/README"]) == "d/tools/bin/go.sh\nd/tools/README"
    assert upload_names("", False, ["a\nb", "c"]) == "c"  # a name with a newline is never a line of its own
    assert len(upload_names("", False, [f"f{i}" for i in range(5000)]).split("\n")) == MAX_NAMES


@pytest.mark.parametrize("command", [
    "sh x.sh", "sh ./x.sh", "bash -c 'cat x.sh|sh'", "sh /home/w/x.sh", "env A=1 sh x.sh", "(sh x.sh)",
    "sh x.sh;true", "sh \"x.sh\"", "source x.sh", ". x.sh", "cp x.sh y && sh y", "python3 -c 'x=1' x.sh",
    "sh $HOME/x.sh", "sh `pwd`/x.sh",
])
def test_a_command_that_names_the_file_is_linked(command):
    assert named_uploads(command, [("u2", "other"), ("u1", "x.sh")]) == ["u1"]


@pytest.mark.parametrize("command", [
    "sh x.s*", "sh \"$(echo x).sh\"", "sh xx.sh", "sh x.shh", "echo hello", "sh .", "sh ..", "",
])
def test_a_command_that_does_not_name_it_is_not(command):
    assert named_uploads(command, [("u1", "x.sh"), ("u0", None)]) == []


def test_every_upload_a_command_names_is_linked_most_recent_first():
    uploads = [("u3", "d/tools/bin/go.sh"), ("u2", "x.sh"), ("u1", "x.sh\nlib.sh")]
    assert named_uploads("cd d/tools && sh bin/go.sh x.sh", uploads) == ["u3", "u2", "u1"]


def typed(*pieces: bytes) -> str:
    words = TypedWords()
    for piece in pieces:
        words.feed(piece)
    return words.text()


def test_words_typed_at_a_prompt_one_key_at_a_time_name_the_upload():
    keys = [bytes([b]) for b in b"sh x.sj\x7fh\r"]
    assert typed(*keys) == "sh x.sh"
    assert named_uploads(typed(*keys), [("u1", "x.sh")]) == ["u1"]
    assert typed(b"ls\r", b"\x1b[A", b"cat x.", b"sh | sh\r") == "ls cat x.sh sh"
    assert typed("caf\u00e9".encode()[:4], "caf\u00e9".encode()[4:], b" y") == "caf\u00e9 y"


def test_typed_words_are_bounded_in_what_is_examined_and_kept():
    words = TypedWords()
    words.feed(b" ".join(b"w%d" % i for i in range(100_000)))
    assert words.size <= TYPED_KEPT and len(words.text()) <= TYPED_KEPT
    words.feed(b" late.sh ")
    assert "late.sh" not in words.text()
    big = TypedWords()
    big.feed(b"x" * (TYPED_EXAMINED + 10) + b" after.sh ")
    assert big.examined == TYPED_EXAMINED and "after.sh" not in big.text()


def test_keep_uploaded_text_is_a_bounded_number_of_bytes():
    from master_side.config import ShellConfig
    from master_side.copying.record import KEEP_UPLOADED_TEXT, KEEP_UPLOADED_TEXT_MAX

    assert ShellConfig().keep_uploaded_text == KEEP_UPLOADED_TEXT == 64 * 1024
    for good in (0, 1, KEEP_UPLOADED_TEXT_MAX):
        assert ShellConfig(keep_uploaded_text=good).errors() == []
    for bad in (-1, KEEP_UPLOADED_TEXT_MAX + 1, True, 1.5, "64k", None):
        assert ShellConfig(keep_uploaded_text=bad).errors() == [  # type: ignore[arg-type]
            f"keep_uploaded_text must be a whole number of bytes from 0 to {KEEP_UPLOADED_TEXT_MAX}"]


def test_names_that_are_not_utf8_are_spelled_with_escapes_so_the_row_can_be_written():
    """An upload of `latin\\xe9.txt` left its row `running`: the index refused the surrogate in its names."""
    names = upload_names("/d\udcff/", False, ["latin\udce9.txt", "plain.txt"])
    names.encode("utf-8")
    assert names.splitlines() == ["/d\\xff/latin\\xe9.txt", "/d\\xff/plain.txt"]
