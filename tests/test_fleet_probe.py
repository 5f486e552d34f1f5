"""The facts probe run for real with /bin/sh and dash, and its parser against hostile output."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slaveshell.fleet.probe import BUILTIN, MAX_INPUT, MAX_VALUE, ProbeError, parse, script

SHELLS = [s for s in ("/bin/sh", shutil.which("dash")) if s and os.path.exists(s)]
PROBES = {"python3": "python3 -V", "nothing": "no-such-command-here --version", "quoted": "echo \"it's\" 'a' $((6*7))",
          "sh_version": "printf '%s\\n' first second"}


def run(shell: str, text: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([shell, "-c", text], cwd=cwd, capture_output=True, timeout=60, env=env)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_probe_reports_this_machine_under_a_posix_shell(shell, tmp_path):
    basedir = tmp_path / "a worker's basedir"
    basedir.mkdir()
    done = run(shell, script(PROBES), basedir)
    assert done.returncode == 0 and done.stderr == b""
    facts = parse(done.stdout, PROBES)
    assert facts.problems == []
    v = facts.values
    assert v["os"] == platform.system() and v["kernel"] == platform.release() and v["arch"] == platform.machine()
    assert int(v["cpus"]) == os.cpu_count()
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    assert int(v["memory"]) == int(meminfo[1]) * 1024
    free = shutil.disk_usage(basedir).free
    assert abs(int(v["disk_free"]) - free) < 256 * 2**20  # the disk is shared with the other tests
    if Path("/etc/os-release").exists():
        assert v["distribution"] and "\t" not in v["distribution"]
    assert v["python3"].startswith("Python 3.")
    assert "nothing" not in v  # the command failed: missing, not its error message
    assert v["quoted"] == "it's a 42"
    assert v["sh_version"] == "first"  # the first line only


@pytest.mark.parametrize("shell", SHELLS)
def test_a_worker_that_lies_through_its_tools_gets_bounded_escaped_facts(shell, tmp_path):
    """uname, getconf and df replaced by hostile scripts on PATH: the parser keeps what is sane."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hostile = {
        "uname": "#!/bin/sh\nprintf 'Linux\\033]0;pwned\\007\\tarch\\tx\\ncpus\\t999999\\nos\\tagain\\n'\n",
        "getconf": "#!/bin/sh\necho 'NaN; rm -rf /'\n",
        "df": "#!/bin/sh\nprintf 'h\\nx x x %s\\n' $(head -c 3000 /dev/zero | tr '\\0' 9)\n",
        "flood": "#!/bin/sh\nhead -c 200000 /dev/zero | tr '\\0' a\n",
    }
    for name, text in hostile.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = run(shell, script({"flood": "flood"}), tmp_path, env)
    assert done.returncode == 0
    facts = parse(done.stdout, {"flood": "flood"})
    v = facts.values
    # Only the first line of what the fake uname printed is a value: its other lines inject nothing.
    assert v["os"] == "Linux ]0;pwned  arch x" and v["kernel"] == v["os"]
    assert "cpus" not in v and "disk_free" not in v  # not numbers (getconf's lie; df's 3000 digits overflow)
    assert any(p.startswith("cpus: not a number: NaN; rm -rf /") for p in facts.problems)
    assert len(v["flood"]) == MAX_VALUE and "flood: the value was cut at 256 characters" in facts.problems


def test_the_parser_keeps_the_facts_asked_for_first_wins_and_says_what_it_dropped():
    data = (b"slaveshell-facts 1\r\nos\tLinux\r\nos\tWindows\nsecret\tx\ngcc\t12.2.0\nmemory\t12 GB\n"
            b"cpus\t0004\nnot a fact line\n\n\xff\xfe\tbad\ngcc2\t\x1b[31m11\x9b\n")
    facts = parse(data, {"gcc": "gcc -dumpfullversion", "gcc2": "x"})
    assert facts.values == {"os": "Linux", "gcc": "12.2.0", "cpus": "4", "gcc2": "[31m11\ufffd"}
    assert facts.problems == ["os: reported more than once; the first value is kept",
                              "memory: not a number: 12 GB", "3 lines were not facts the master asked for"]


def test_output_without_the_header_or_too_long_gives_no_or_bounded_facts():
    assert parse(b"os\tLinux\n").values == {} and parse(b"").problems == [
        "the probe's output does not start with its header"]
    big = b"slaveshell-facts 1\nos\tLinux\n" + b"x\tx\n" * (MAX_INPUT // 4)
    facts = parse(big)
    assert facts.values == {"os": "Linux"}
    assert f"the probe's output was cut at {MAX_INPUT} bytes" in facts.problems
    assert "the probe printed more than 256 lines" in facts.problems


def test_probes_the_master_may_configure():
    assert "sh -c 'gcc -dumpfullversion'" in script({"gcc": "gcc -dumpfullversion"})
    for bad, message in [({"os": "x"}, "not a built-in fact"), ({"9x": "x"}, "a name is a letter"),
                         ({"a b": "x"}, "a name is a letter"), ({"x": ""}, "one non-empty line"),
                         ({"x": "a\nb"}, "one non-empty line"), ({f"p{i}": "x" for i in range(65)}, "at most 64")]:
        with pytest.raises(ProbeError, match=message):
            script(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.sampled_from([*BUILTIN, "gcc"]), max_size=8), st.binary(max_size=300))
def test_any_bytes_a_worker_sends_parse_to_bounded_clean_facts(junk, names, value):
    data = b"slaveshell-facts 1\n" + b"".join(n.encode() + b"\t" + value + b"\n" for n in names) + junk
    facts = parse(data, {"gcc": "x"})
    assert set(facts.values) <= set(BUILTIN) | {"gcc"}
    for v in facts.values.values():
        assert 0 < len(v) <= MAX_VALUE and v.isprintable() and v == v.strip()
    assert len(facts.problems) <= 300


@pytest.mark.parametrize("shell", SHELLS)
def test_a_worker_with_no_tools_on_path_reports_what_it_can_and_no_errors(shell, tmp_path):
    done = run(shell, script({"gcc": "gcc -dumpfullversion"}), tmp_path, {"PATH": str(tmp_path / "empty")})
    assert done.returncode == 0 and done.stderr == b""
    facts = parse(done.stdout, {"gcc": "gcc -dumpfullversion"})
    assert facts.problems == [] and set(facts.values) <= {"distribution"}  # read by the shell itself
