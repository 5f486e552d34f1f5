"""Hidden input end to end: what a prompt does not display is never stored in clear, and is
never silent either: each hidden span is marked with its length, counted in the index, flagged when it is more
than a password, and, with the auditors' age key configured, sealed so that only they can reveal it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pyrage
import pytest
from pyrage import x25519

from slaveshell.client.sandbox import Sandbox

from .conftest import Terminal, wait_until

pytestmark = pytest.mark.e2e

SECRET = "Zq7xW3kP9mV2bN8cT4yL"  # 20 characters, typed one by one at `read -s -n 20`


def cli(sb: Sandbox, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, timeout=timeout)


def ended_session(sb: Sandbox, marker: str) -> dict:
    """The ended login-shell session whose transcript holds `marker`."""
    def find() -> dict | None:
        done = cli(sb, "history", "--json")
        assert done.returncode == 0, done.stderr
        for row in json.loads(done.stdout):
            if row["state"] == "ended" and row["command"] is None and row["transcript"] and \
                    marker.encode() in open(row["transcript"], "rb").read():
                return row
        return None

    row = wait_until(find, timeout=20)
    assert row, f"no ended session with {marker}"
    return row


def events(path: str) -> list[list]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().splitlines()[1:]]


def type_password_at_read_s_n(t: Terminal, secret: str = SECRET) -> None:
    t.child.sendline(f"read -s -n {len(secret)} -p 'Pass: ' pw; echo \"got ${{#pw}}\"")
    t.expect("Pass: ")
    for ch in secret:  # as a person types: one keystroke per message
        t.child.send(ch)
        time.sleep(0.05)
    t.expect(f"got {len(secret)}")
    t.expect("PROMPT> ")


def assert_nothing_of(secret: str, blob: str) -> None:
    pieces = [secret[i:i + 3] for i in range(len(secret) - 2)]
    assert not [p for p in pieces if p in blob], "part of the hidden input is in clear"


def assert_not_in_transcript(secret: str, path: str) -> None:
    """Neither in the file as it is, nor in what was typed taken together (one keystroke per event). Sealed
    events (`is`, an armored age file) are left out: their base64 holds any 3 characters now and then."""
    lines = open(path, encoding="utf-8").read().splitlines()
    assert_nothing_of(secret, "\n".join(line for line in lines if not line.startswith("[") or
                                        json.loads(line)[1] != "is"))
    assert_nothing_of(secret, "".join(e[2] for e in events(path) if e[1] == "i"))


def test_a_password_read_in_non_canonical_mode_is_hidden_marked_and_counted(sandbox):
    t = Terminal(sandbox, ["w1"]).ready()
    try:
        t.run("echo nc-pass-session")
        type_password_at_read_s_n(t)
        t.run("echo typed-after-the-password-$((6*7))")
        t.child.sendline("exit")
        assert t.wait() == 0
    finally:
        t.close()
    row = ended_session(sandbox, "nc-pass-session")
    assert_not_in_transcript(SECRET, row["transcript"])  # not in the transcript file
    evs = events(row["transcript"])
    assert [e[1:] for e in evs if e[1] in ("ih", "is")] == [["ih", "20"]]  # no seal key on this master
    assert ["i", "[hidden input: 20 bytes]"] in [e[1:] for e in evs]
    # bash's command lines (readline: echo off, non-canonical, echoed by bash) stay recorded and searchable.
    typed = "".join(e[2] for e in evs if e[1] == "i")
    assert "typed-after-the-password-$((6*7))" in typed and "echo nc-pass-session" in typed
    assert (row["hidden_bytes"], row["hidden_spans"], row["hidden_flag"]) == (20, 1, False)
    assert_nothing_of(SECRET, json.dumps(row))  # nor in the index
    for needle in (SECRET, SECRET[:6], SECRET[-6:]):
        found = cli(sandbox, "search", needle)
        assert found.returncode == 1 and row["id"].encode() not in found.stdout  # nor in search
    found = cli(sandbox, "search", "typed-after-the-password-$((6*7))")
    assert row["id"].encode() in found.stdout and b"input:" in found.stdout
    found = cli(sandbox, "search", "hidden input: 20")
    assert row["id"].encode() in found.stdout
    # Without a seal key, nothing reveals them.
    key = os.path.join(sandbox.root, "nobody.key")
    with open(key, "w") as f:
        f.write(str(x25519.Identity.generate()) + "\n")
    revealed = cli(sandbox, "reveal", row["id"], "--identity", key)
    assert revealed.returncode == 1 and b"not sealed" in revealed.stdout
    assert_nothing_of(SECRET, revealed.stdout.decode() + revealed.stderr.decode())


def test_commands_typed_with_echo_off_are_marked_counted_and_flagged(sandbox):
    t = Terminal(sandbox, ["w1"]).ready()
    try:
        t.run("echo blind-session")
        t.child.sendline("exec /bin/sh")
        t.child.sendline("PS1='SH> '")
        t.expect("SH> ")
        t.child.sendline("stty -echo")
        t.expect("SH> ")
        t.child.sendline("echo did-something")
        t.expect("did-something")
        t.expect("SH> ")
        t.child.sendline("exit")
        assert t.wait() == 0
    finally:
        t.close()
    row = ended_session(sandbox, "blind-session")
    evs = events(row["transcript"])
    typed = "".join(e[2] for e in evs if e[1] == "i")
    assert "echo did-something" not in typed
    assert "did-something" in "".join(e[2] for e in evs if e[1] == "o")  # what it did shows
    markers = [e[2] for e in evs if e[1] == "i" and e[2].startswith("[hidden input")]
    assert markers == ["[hidden input: 19 bytes]", "[hidden input: 5 bytes]"]  # 'echo did-something\n', 'exit\n'
    # Hidden typing went on after a hidden line: more than a password, flagged in the index and the history.
    assert (row["hidden_bytes"], row["hidden_spans"], row["hidden_flag"]) == (24, 2, True)
    table = cli(sandbox, "history")
    line = next(x for x in table.stdout.decode().splitlines() if x.startswith(row["id"]))
    assert "!24B/2" in line
    assert b"more hidden input than a password" in table.stderr
    found = cli(sandbox, "search", "did-something")
    assert b"[hidden input flagged]" in next(x for x in found.stdout.splitlines() if row["id"].encode() in x)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, str, x25519.Identity]]:
    root = str(tmp_path_factory.mktemp("sealed"))
    identity = x25519.Identity.generate()
    key = os.path.join(root, "auditors.key")
    with open(key, "w") as f:
        f.write(f"# the auditors' age identity\n{identity}\n")
    sb = Sandbox(os.path.join(root, "sb"), workers=["s1"], service_kwargs=f"seal_to={str(identity.to_public())!r}")
    sb.create()
    try:
        sb.start()
        yield sb, key, identity
    finally:
        sb.stop()


def test_sealed_hidden_input_is_revealed_to_the_key_holder_only(sealed, tmp_path):
    sb, key, identity = sealed
    t = Terminal(sb, ["s1"]).ready()
    try:
        t.run("echo sealed-session")
        type_password_at_read_s_n(t)
        t.child.sendline("exit")
        assert t.wait() == 0
    finally:
        t.close()
    row = ended_session(sb, "sealed-session")
    assert_not_in_transcript(SECRET, row["transcript"])
    blobs = [e[2] for e in events(row["transcript"]) if e[1] == "is"]
    assert len(blobs) == 1 and blobs[0].startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    assert pyrage.decrypt(blobs[0].encode(), [identity]) == SECRET.encode()
    revealed = cli(sb, "reveal", row["id"], "--identity", key)
    assert revealed.returncode == 0, revealed.stderr
    assert f"[hidden input: 20 bytes]  {SECRET}".encode() in revealed.stdout
    # The same from the transcript file, as root reads it.
    local = cli(sb, "reveal", "--file", row["transcript"], "--identity", key)
    assert local.returncode == 0 and SECRET.encode() in local.stdout
    # Replay shows none of it; a wrong key opens nothing.
    replay = cli(sb, "replay", row["id"], "--idle-limit", "0.01")
    assert replay.returncode == 0 and b"got 20" in replay.stdout
    assert_nothing_of(SECRET, replay.stdout.decode("utf-8", "replace"))
    other = tmp_path / "other.key"
    other.write_text(str(x25519.Identity.generate()) + "\n")
    wrong = cli(sb, "reveal", row["id"], "--identity", str(other))
    assert wrong.returncode == 1 and b"cannot open it with this identity" in wrong.stdout
    assert_nothing_of(SECRET, wrong.stdout.decode() + wrong.stderr.decode())
    # A standard tool opens it too: age itself, where it is installed (.ci/run installs it).
    if shutil.which("age"):
        blob = tmp_path / "span.age"
        blob.write_text(blobs[0])
        opened = subprocess.run(["age", "-d", "-i", key, str(blob)], capture_output=True, timeout=30)
        assert opened.returncode == 0 and opened.stdout == SECRET.encode()
    # Nothing of it in the master's or the worker's logs.
    for log in (os.path.join(sb.master_dir, "twistd.log"), os.path.join(sb.worker_dir("s1"), "twistd.log")):
        assert_nothing_of(SECRET, open(log, encoding="utf-8", errors="replace").read())
