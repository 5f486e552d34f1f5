"""Hidden input on the master: spans marked with their length, counted for the index, flagged when more than a
password, sealed to the auditors' age key (slaveshell.vocabulary.hidden, master_side.audit.recorder)."""

from __future__ import annotations

import json

import pyrage
import pytest
from buildbot import config
from pyrage import x25519

from master_side.audit.recorder import SPAN_IDLE, SessionRecorder
from master_side.audit.trail import IndexWriter
from master_side.service import ShellService
from master_side.sessions.session import MasterSession
from slaveshell.vocabulary import hidden
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import OpenRequest
from slaveshell.vocabulary.transcript import CastEncoder, parse_lines

ROOT = Identity(0, 0, 1, "root", frozenset({"root"}))


class Audit:
    def __init__(self) -> None:
        self.updates: list[dict] = []

    def update_session(self, session_id: str, **values: object) -> None:
        self.updates.append(values)

    def add_event(self, *args: object, **kw: object) -> None:
        pass


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def recorder(tmp_path, seal=None, record_input=True):
    tmp_path.mkdir(exist_ok=True)
    clock = Clock()
    audit = Audit()
    rec = SessionRecorder("s1", str(tmp_path / "s1.cast"), CastEncoder(record_input=record_input),
                          IndexWriter(audit),  # type: ignore[arg-type]
                          started=100.0, clock=clock, seal=seal)
    rec.create(CastEncoder.header(80, 24, 100.0))
    return rec, clock, audit


def finish(rec) -> list[list]:
    session = MasterSession(OpenRequest(worker="w1"), ROOT, on_end=lambda s: None)
    rec.end(session)
    with open(rec.path, encoding="utf-8") as f:
        text = f.read()
    assert parse_lines(text.splitlines())  # still a valid asciicast file
    return [json.loads(line) for line in text.splitlines()[1:]]


def test_a_password_is_one_span_ended_by_its_line_end(tmp_path):
    rec, clock, audit = recorder(tmp_path)
    rec.input(b"ls\r", hidden=False)
    for ch in (b"h", b"u", b"n", b"t", b"e", b"r", b"2", b"\r"):
        clock.now += 0.1
        rec.input(ch, hidden=True)
    evs = finish(rec)
    assert [e[1:] for e in evs if e[1] in ("i", "ih", "is")] == [
        ["i", "ls\r"], ["i", "[hidden input: 8 bytes]"], ["ih", "8"]]
    assert "hunter2" not in json.dumps(evs)
    assert audit.updates[0] == {"hidden_bytes": 8, "hidden_spans": 1, "hidden_flag": False}  # at once
    assert audit.updates[-1]["hidden_bytes"] == 8 and audit.updates[-1]["state"] == "ended"


def test_a_span_without_line_end_ends_at_visible_input_or_when_idle(tmp_path):
    rec, clock, audit = recorder(tmp_path)
    rec.input(b"abc", hidden=True)
    rec.input(b"ls", hidden=False)
    rec.input(b"de", hidden=True)
    rec.output(b"got 2")  # output does not end a span ('*' feedback comes between keystrokes)
    rec.flush()
    clock.now += SPAN_IDLE
    rec.flush()
    evs = finish(rec)
    assert [e[2] for e in evs if e[1] == "i"] == ["[hidden input: 3 bytes]", "ls", "[hidden input: 2 bytes]"]
    assert evs[-1][1:] == ["ih", "2"] and evs[-1][0] > evs[-3][0]  # marked when it ended, times in order


def test_hidden_typing_after_a_hidden_line_or_past_64_bytes_is_flagged(tmp_path):
    rec, clock, audit = recorder(tmp_path)
    rec.input(b"echo did-something\n", hidden=True)
    assert not rec.hidden_flag
    rec.input(b"exit\n", hidden=True)  # still hidden after a line: `stty -echo`, not a password
    assert rec.hidden_flag
    rec2, _, _ = recorder(tmp_path / "second")
    rec2.input(b"pw1\r", hidden=True)
    rec2.input(b"ls\r", hidden=False)  # a visible command between two passwords: not flagged
    rec2.input(b"pw2\r", hidden=True)
    assert not rec2.hidden_flag
    rec2.input(b"x" * (hidden.HIDDEN_FLAG_BYTES - 7), hidden=True)
    assert rec2.hidden_flag and rec2.hidden_bytes == hidden.HIDDEN_FLAG_BYTES + 1


def test_a_long_span_is_cut_into_bounded_pieces(tmp_path):
    rec, clock, audit = recorder(tmp_path)
    rec.input(b"y" * (hidden.MAX_SPAN + 10), hidden=True)
    rec.input(b"z" * 10, hidden=True)
    evs = finish(rec)
    assert [e[2] for e in evs if e[1] == "ih"] == [str(hidden.MAX_SPAN + 10), "10"]


def test_sealed_spans_open_with_the_auditors_identity_only(tmp_path):
    identity = x25519.Identity.generate()
    recipients = hidden.load_recipients(str(identity.to_public()))
    rec, clock, audit = recorder(tmp_path, seal=lambda data: hidden.seal(data, recipients))
    rec.input(b"s3cret\r", hidden=True)
    evs = finish(rec)
    found = hidden.spans(parse_lines([json.dumps({"version": 2})] + [json.dumps(e) for e in evs]).events)
    assert len(found) == 1 and found[0].nbytes == 7
    assert hidden.unseal(found[0].sealed, [identity]) == b"s3cret\r"
    assert pyrage.decrypt(found[0].sealed.encode(), [identity]) == b"s3cret\r"
    with pytest.raises(ValueError, match="cannot open"):
        hidden.unseal(found[0].sealed, [x25519.Identity.generate()])
    # An operator typing the text of a marker makes an `i` event, never an `ih`: reveal only trusts `ih`.
    assert not hidden.spans(parse_lines(['{"version": 2}', '[1, "i", "[hidden input: 5 bytes]"]']).events)


def test_no_sealing_when_input_is_not_recorded_and_a_seal_failure_logs_nothing_secret(tmp_path, caplog):
    rec, _, _ = recorder(tmp_path, seal=lambda data: "sealed", record_input=False)
    rec.input(b"pw\r", hidden=True)
    evs = finish(rec)
    assert [e[1:] for e in evs if e[1] != "m"] == [["i", "[hidden input: 3 bytes]"], ["ih", "3"]]

    def broken(data: bytes) -> str:
        raise RuntimeError(f"cannot seal {data!r}")

    messages: list[str] = []
    from twisted.logger import globalLogPublisher

    def observe(event: dict) -> None:
        from twisted.logger import formatEvent

        messages.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        rec2, _, _ = recorder(tmp_path / "second", seal=broken)
        rec2.input(b"pw-typed\r", hidden=True)
        evs = finish(rec2)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [e[1:] for e in evs if e[1] == "ih"] == [["ih", "9"]]  # still marked and counted
    assert any("could not be sealed (RuntimeError)" in m for m in messages)
    assert not any("pw-typed" in m for m in messages)


@pytest.mark.parametrize("seal_to, problem", [
    ("age1nope", "not an age X25519 public key"),
    ("/no/such/recipients.txt", "neither an age public key nor a readable file"),
    (42, "must be an age public key"),
])
def test_a_bad_seal_key_is_a_configuration_error(seal_to, problem):
    with pytest.raises(config.ConfigErrors, match=problem):
        ShellService(seal_to=seal_to)


def test_seal_to_takes_a_key_a_list_or_a_recipients_file(tmp_path):
    keys = [str(x25519.Identity.generate().to_public()) for _ in range(3)]
    path = tmp_path / "auditors.txt"
    path.write_text(f"# auditors\n{keys[1]}\n\n{keys[2]}\n")
    assert len(hidden.load_recipients(keys[0])) == 1
    assert len(hidden.load_recipients([keys[0], str(path)])) == 3
    ShellService(seal_to=str(path))  # accepted by checkConfig


def test_revealed_text_is_shown_escaped():
    assert hidden.escaped(b"pw\r\x1b]0;x\x07\xe2\x80\xae\xff\\") == "pw\\r\\x1b]0;x\\x07\\u202e\\xff\\\\"


# -- property: no hidden byte is ever written ---------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_hidden = st.binary(min_size=1, max_size=40).map(
    lambda b: bytes(0x41 + c % 26 for c in b) + (b"\r" if b[0] % 3 == 0 else b""))
_visible = st.binary(min_size=1, max_size=20).map(lambda b: bytes(0x61 + c % 26 for c in b))


@given(inputs=st.lists(st.one_of(_hidden.map(lambda d: (d, True)), _visible.map(lambda d: (d, False))), max_size=30),
       idle=st.lists(st.booleans(), max_size=30))
def test_hidden_bytes_never_reach_the_transcript_and_every_one_is_counted(tmp_path_factory, inputs, idle):
    rec, clock, audit = recorder(tmp_path_factory.mktemp("p"))
    for (data, is_hidden), pause in zip(inputs, idle + [False] * len(inputs), strict=False):
        rec.input(data, is_hidden)
        if pause:
            clock.now += SPAN_IDLE
            rec.flush()
    evs = finish(rec)
    typed = "".join(e[2] for e in evs if e[1] == "i" and not e[2].startswith("[hidden input"))
    assert not any(c.isupper() for c in typed)  # hidden input was upper case, visible lower case
    total = sum(len(d) for d, h in inputs if h)
    assert sum(int(e[2]) for e in evs if e[1] == "ih") == total == rec.hidden_bytes
    assert rec.hidden_spans == len([e for e in evs if e[1] == "ih"])
