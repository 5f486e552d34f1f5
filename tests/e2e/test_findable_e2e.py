"""What an operator did stays findable, against a real master and worker: an uploaded script that deletes itself
after it ran is found by `slaveshell search`, shown by `slaveshell export` and linked from the session that ran
it; retention removes every file a record owns; the master's and the worker's twistd.log name no copied file,
command, directory or content; an allowed_dirs refusal names only what the operator gave."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.transcript import Event, exact_output

from .conftest import Terminal, shell_argv, wait_until

pytestmark = pytest.mark.e2e

# keep_uploaded_text of this sandbox: a smaller bound than the default, to see both sides of it.
TEXT_BOUND = 4096


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """f1 allows <root>/allowed and its own directory; <root>/allowed/escape is a symlink to a directory
    outside."""
    root = str(tmp_path_factory.mktemp("findable"))
    allowed = os.path.join(root, "allowed")
    outside = os.path.join(root, "target-zq9-hidden")
    os.makedirs(allowed)
    os.makedirs(outside)
    with open(os.path.join(outside, "secret"), "w") as f:
        f.write("not yours\n")
    os.symlink(outside, os.path.join(allowed, "escape"))
    sb = Sandbox(root, workers=["f1"],
                 opt_in_args=f"allowed_dirs=[{allowed!r}, {os.path.join(root, 'worker-f1')!r}]",
                 service_kwargs=f"keep_uploaded_text={TEXT_BOUND}, redact=[r'SECRET-\\w+']")
    sb.create()
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()


def cli(sb: Sandbox, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=timeout)


def shell(sb: Sandbox, *args: str, stdin: int | None = subprocess.DEVNULL,
          input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shell_argv() + ["--socket", sb.socket, *args], capture_output=True, text=True,
                          timeout=60, **({"input": input_text} if input_text is not None else {"stdin": stdin}))


def history(sb: Sandbox) -> list[dict[str, object]]:
    done = cli(sb, "history", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def closed_row(sb: Sandbox, needle: str, linked: bool = False) -> dict[str, object]:
    """The newest row whose command holds `needle`, once closed (and, with `linked`, once its link is written)."""

    def find() -> dict[str, object] | None:
        rows = [r for r in history(sb) if needle in str(r["command"])]
        if rows and rows[0]["state"] != "running" and (rows[0].get("uploads") or not linked):
            return rows[0]
        return None

    row = wait_until(find, 15)
    assert row, f"no closed row for {needle!r}"
    return row


def test_an_uploaded_script_that_deletes_itself_is_found_exported_and_linked_to_its_run(box, tmp_path):
    script = tmp_path / "x.sh"
    script.write_text('#!/bin/sh\n# fetch-token zq-needle-31337\nrm -f -- "$0"\n')
    up = cli(box, "cp", str(script), "f1:")
    assert up.returncode == 0, up.stderr
    ran = shell(box, "-T", "f1", "--", "sh x.sh")
    assert ran.returncode == 0 and ran.stdout == "", ran.stderr  # silent, and the script is gone
    assert not os.path.exists(os.path.join(box.worker_dir("f1"), "x.sh"))

    upload = closed_row(box, "x.sh -> f1:")
    found = cli(box, "search", "zq-needle-31337")
    assert found.returncode == 0, found.stderr
    assert upload["id"] in found.stdout and "file: " in found.stdout and "zq-needle-31337" in found.stdout
    hits = json.loads(cli(box, "search", "--json", "zq-needle-31337").stdout)
    assert [(h["session"], h["stream"]) for h in hits] == [(upload["id"], "file")]

    exported = cli(box, "export", str(upload["id"]))
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    text = [e[2] for e in lines[1:] if e[1] == "o"]
    assert text == [script.read_text()]
    assert any(e[1] == "m" and e[2].startswith("file x.sh ") and e[2].endswith(" text kept") for e in lines[1:])

    run = closed_row(box, "sh x.sh", linked=True)
    assert run["uploads"] == upload["id"]
    table = cli(box, "history").stdout
    assert f"sh x.sh  [names upload {upload['id']}]" in table


def test_a_renamed_upload_a_tree_and_a_script_through_stdin_stay_findable(box, tmp_path):
    # Copied to another name: the run names the new name.
    script = tmp_path / "innocent.sh"
    script.write_text("echo zq-renamed-needle\n")
    assert cli(box, "cp", str(script), "f1:notes.txt").returncode == 0
    assert shell(box, "-T", "f1", "--", "sh notes.txt; rm notes.txt").returncode == 0
    upload = closed_row(box, "innocent.sh -> f1:notes.txt")
    assert closed_row(box, "sh notes.txt", linked=True)["uploads"] == upload["id"]
    # A tree: the run names a file deep in it by a path of its own.
    tree = tmp_path / "tools"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "go.sh").write_text("echo zq-tree-needle\n")
    assert cli(box, "cp", "-r", str(tree), "f1:").returncode == 0
    tree_upload = closed_row(box, "tools -> f1:")
    assert shell(box, "-T", "f1", "--", "cd tools && sh ./bin/go.sh").stdout == "zq-tree-needle\n"
    assert closed_row(box, "bin/go.sh", linked=True)["uploads"] == tree_upload["id"]
    hits = json.loads(cli(box, "search", "--json", "zq-tree-needle").stdout)
    assert {(h["session"], h["stream"]) for h in hits} >= {(tree_upload["id"], "file")}
    # Not uploaded at all: piped into the shell's stdin, it is the session's recorded input.
    piped = shell(box, "-T", "f1", "--", "sh", input_text="true zq-stdin-needle\n")
    assert piped.returncode == 0, piped.stderr
    session = closed_row(box, "sh")
    hits = json.loads(cli(box, "search", "--json", "zq-stdin-needle").stdout)
    assert [(h["session"], h["stream"]) for h in hits] == [(session["id"], "input")]


def test_a_script_uploaded_while_a_login_shell_runs_and_typed_there_is_linked(box, tmp_path):
    term = Terminal(box, ["f1"])
    try:
        term.ready()
        script = tmp_path / "typed-zq.sh"
        script.write_text("echo zq-typed-run\n")
        assert cli(box, "cp", str(script), "f1:").returncode == 0
        upload = closed_row(box, "typed-zq.sh -> f1:")
        term.child.send("sh typed-zq.sj")
        term.child.send("\x7f")  # a typo, erased
        assert "zq-typed-run" in term.run("h")
        term.child.sendline("exit")
        assert term.wait() == 0
    finally:
        term.close()
    shell_row = wait_until(lambda: next((r for r in history(box) if r["command"] is None and r["uploads"]), None), 15)
    assert shell_row and shell_row["uploads"] == upload["id"]
    assert f"(login shell)  [names upload {upload['id']}]" in cli(box, "history").stdout
    # Piped into a shell's stdin, with no command naming it: linked by what was piped.
    piped = shell(box, "-T", "f1", "--", "sh", input_text="sh typed-zq.sh\n")
    assert piped.stdout == "zq-typed-run\n"
    row = wait_until(lambda: next((r for r in history(box) if r["command"] == "sh" and r["uploads"]), None), 15)
    assert row and row["uploads"] == upload["id"]


def test_only_small_text_uploads_are_kept_by_default(box, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("zq-small-needle\n" + "x" * (TEXT_BOUND - 100))
    large = tmp_path / "large.txt"
    large.write_text("zq-large-needle\n" + "x" * TEXT_BOUND)
    binary = tmp_path / "blob.dat"
    binary.write_bytes(b"zq-binary-needle\0\1\2")
    latin1 = tmp_path / "latin1.sh"
    latin1.write_bytes("echo 'zq-latin1-needle caf\u00e9'\n".encode("latin-1"))
    for f in (small, large, binary, latin1):
        assert cli(box, "cp", str(f), "f1:").returncode == 0
    rows = {f.name: closed_row(box, f"{f.name} -> f1:") for f in (small, large, binary, latin1)}
    assert cli(box, "search", "zq-small-needle").returncode == 0
    # Text that is not UTF-8 is kept too, its bytes exactly.
    assert cli(box, "search", "zq-latin1-needle").returncode == 0
    exported = [json.loads(line) for line in cli(box, "export", str(rows["latin1.sh"]["id"])).stdout.splitlines()]
    events = [Event(e[0], e[1], e[2]) for e in exported[1:]]
    assert b"".join(exact_output(events)) == latin1.read_bytes()
    # The service's redact patterns apply to kept text as to a session's output.
    secret = tmp_path / "deploy.sh"
    secret.write_text("curl -H 'token: SECRET-zq777' https://example.invalid/ # zq-redact-needle\n")
    assert cli(box, "cp", str(secret), "f1:").returncode == 0
    kept = cli(box, "export", str(closed_row(box, "deploy.sh -> f1:")["id"])).stdout
    assert "zq-redact-needle" in kept and "SECRET-zq777" not in kept and "[REDACTED]" in kept
    assert cli(box, "search", "SECRET-zq777").returncode == 1
    # Replayed, a transfer's record is a listing, every control character escaped: an uploaded file's escape
    # sequences never act on the auditor's terminal.
    hostile = tmp_path / "title.sh"
    hostile.write_text("echo zq-replay\x1b]0;PWNED\x07\x1b[2J\n")
    assert cli(box, "cp", str(hostile), "f1:").returncode == 0
    replayed = cli(box, "replay", str(closed_row(box, "title.sh -> f1:")["id"]))
    assert replayed.returncode == 0 and "\x1b" not in replayed.stdout and "\x07" not in replayed.stdout
    assert "echo zq-replay\\x1b]0;PWNED\\x07\\x1b[2J\n" in replayed.stdout
    assert "# file title.sh " in replayed.stdout and " text kept\n" in replayed.stdout
    # Past the bound or not text: the record has their size and sha256 and says why not their bytes.
    assert cli(box, "search", "zq-large-needle").returncode == 1
    assert cli(box, "search", "zq-binary-needle").returncode == 1
    for name, why in (("large.txt", "larger than keep_uploaded_text"), ("blob.dat", "binary")):
        exported = cli(box, "export", str(rows[name]["id"])).stdout
        assert f"not kept ({why})" in exported and "zq-" not in exported.replace(f"{name}", "")
    # Downloads are not kept: the worker's files are not what the operator did.
    assert cli(box, "cp", "f1:small.txt", str(tmp_path / "back.txt")).returncode == 0
    down = closed_row(box, "f1:small.txt ->")
    hits = json.loads(cli(box, "search", "--json", "zq-small-needle").stdout)
    assert down["id"] not in {h["session"] for h in hits}


def test_an_allowed_dirs_refusal_names_only_what_the_operator_gave(box, tmp_path):
    allowed = os.path.join(box.root, "allowed")
    local = tmp_path / "y"
    local.write_text("y\n")
    given = [
        (str(local), f"f1:{allowed}/escape/", f"{allowed}/escape/"),
        (f"f1:{allowed}/escape/secret", str(tmp_path / "s1"), f"{allowed}/escape/secret"),
        (f"f1:{allowed}/escape", str(tmp_path / "s2"), f"{allowed}/escape"),
    ]
    for src, dst, named in given:
        done = cli(box, "cp", "-r", src, dst)
        assert done.returncode == 1, done.stderr
        assert f"{named}: outside the directories this worker allows" in done.stderr, done.stderr
        assert "target-zq9-hidden" not in done.stderr
    session = shell(box, "-T", "-C", f"{allowed}/escape", "f1", "--", "true")
    assert session.returncode != 0
    assert f"working directory {allowed}/escape is outside" in session.stderr, session.stderr
    assert "target-zq9-hidden" not in session.stderr


def test_twistd_logs_name_no_copied_file_command_directory_or_content(box, tmp_path):
    marks = ["zq-file-name-a1", "zq-dir-name-b2", "zq-content-c3", "zq-command-d4", "zq-dest-e5", "zq-cwd-f6"]
    os.makedirs(os.path.join(box.worker_dir("f1"), "zq-cwd-f6"), exist_ok=True)
    tree = tmp_path / "zq-dir-name-b2"
    tree.mkdir()
    (tree / "zq-file-name-a1.sh").write_text("echo zq-content-c3\n")
    runs = [
        cli(box, "cp", "-r", str(tree), "f1:"),  # an upload
        cli(box, "cp", str(tree / "zq-file-name-a1.sh"), "f1:zq-dest-e5"),  # to a name
        cli(box, "cp", "-r", "f1:zq-dir-name-b2", str(tmp_path / "back")),  # a download
        cli(box, "cp", str(tree / "zq-file-name-a1.sh"), "f1:no-such-dir-zq-dest-e5/"),  # fails
        cli(box, "cp", "f1:zq-file-name-a1-missing", str(tmp_path / "none")),  # refused by the worker
        cli(box, "cp", str(tree / "zq-file-name-a1.sh"), f"f1:{box.root}/allowed/escape/zq-dest-e5"),  # outside
        shell(box, "-T", "f1", "--", "sh zq-dir-name-b2/zq-file-name-a1.sh; echo zq-command-d4"),
        shell(box, "-T", "-C", "zq-cwd-f6", "f1", "--", "echo zq-command-d4"),
        shell(box, "-T", "-C", "no-such-zq-cwd-f6", "f1", "--", "echo zq-command-d4"),
    ]
    assert [r.returncode for r in runs] == [0, 0, 0, 1, 1, 1, 0, 0, 255], [r.stderr for r in runs]
    closed_row(box, "zq-dir-name-b2 -> ")  # the download's row is closed: its log line is written
    wait_until(lambda: all(r["state"] != "running" for r in history(box)), 15)
    for directory in (box.master_dir, box.worker_dir("f1")):
        with open(os.path.join(directory, "twistd.log"), errors="replace") as f:
            log = f.read()
        assert "slaveshell transfer" in log  # the copies are logged: who, where, which way, how it ended
        assert [m for m in marks if m in log] == [], directory


@pytest.fixture(scope="module")
def pruning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(str(tmp_path_factory.mktemp("prune-copies")), workers=["p1"],
                 service_kwargs="transcript_retention_days=2 / 86400, keep_transfer_bytes=True")
    sb.create()
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()


def test_retention_removes_every_file_a_transfer_record_owns(pruning, tmp_path):
    directory = os.path.join(pruning.master_dir, "transcripts")
    secret = tmp_path / "secret.txt"
    secret.write_text("zq-pruned-secret\n")
    assert cli(pruning, "cp", str(secret), "p1:").returncode == 0
    row = wait_until(lambda: next((r for r in history(pruning) if "secret.txt" in str(r["command"])
                                   and r["pruned"]), None), timeout=60)
    stem = str(row["transcript"])[: -len(".cast")]
    for suffix in (".cast", ".bin"):
        assert not os.path.exists(stem + suffix)
    assert cli(pruning, "search", "zq-pruned-secret").returncode == 1
    # A record kept by an earlier version, whose copy of the bytes was `<name>.bytes`: removed with it.
    legacy = os.path.join(directory, "20200101-000000-p1-legacy.cast")
    with open(legacy, "w") as f:
        f.write('{"version": 2, "width": 80, "height": 24, "timestamp": 1577836800}\n')
    with open(legacy[: -len(".cast")] + ".bytes", "w") as f:
        f.write("zq-legacy-secret\n")
    with sqlite3.connect(os.path.join(pruning.master_dir, "slaveshell.sqlite")) as db:
        db.execute("INSERT INTO slaveshell_sessions (id, worker, operator, uid, master, command, pty, term, started,"
                   " ended, state, transcript, bytes_in, bytes_out) VALUES ('legacy', 'p1', 'old', 0, ?, 'cp up: a"
                   " -> p1:', 0, 'transfer', '2020-01-01 00:00:00', '2020-01-01 00:00:01', 'ended', ?, 0, 0)",
                   (row["master"], legacy))
    assert wait_until(lambda: next((r for r in history(pruning) if r["id"] == "legacy" and r["pruned"]), None),
                      timeout=60)
    assert os.listdir(directory) == []
