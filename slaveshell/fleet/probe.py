"""The facts probe: a POSIX sh script a fleet run runs on each worker (in the worker's basedir), and the
parser of what it prints into typed facts.

The script prints one line ``slaveshell-facts 1``, then one ``NAME<TAB>VALUE`` line per fact it found (the
first line of each value): the built-in facts (`BUILTIN`) and the master's configured probes
(``{'gcc': 'gcc -dumpfullversion'}``: the first line of the command's output, standard error included, when it
exits 0; nothing when it fails). A fact it cannot find is left out (shown as missing).

A worker controls every byte of what comes back, so the parser trusts none of it: it reads at most
`MAX_INPUT` bytes, `MAX_LINES` lines, keeps only the facts it asked for (first line of each wins), cuts
values to `MAX_VALUE` characters, replaces bytes that are not UTF-8, drops control characters, checks that
numbers are numbers, and says what it dropped in `Facts.problems` (shown escaped)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from slaveshell.fleet.targets import FACT_NAME

HEADER = "slaveshell-facts 1"
MAX_INPUT = 64 * 1024
MAX_LINES = 256
MAX_VALUE = 256
MAX_PROBES = 64

# The built-in facts and what each is.
BUILTIN: dict[str, str] = {
    "os": "operating system (uname -s)",
    "distribution": "distribution and version (/etc/os-release, sw_vers)",
    "kernel": "kernel release (uname -r)",
    "arch": "machine architecture (uname -m)",
    "cpus": "online CPUs",
    "memory": "memory in bytes",
    "disk_free": "free disk in the worker's basedir, in bytes",
}
NUMBERS = frozenset({"cpus", "memory", "disk_free"})
_NUMBER = re.compile(r"[0-9]{1,20}")

_BUILTIN_SCRIPT = r"""LC_ALL=C; export LC_ALL
nl='
'
fact() { v=${2%%"$nl"*}; [ -n "$v" ] && printf '%s\t%s\n' "$1" "$v"; }
printf 'slaveshell-facts 1\n'
fact os "$(uname -s 2>/dev/null)"
fact kernel "$(uname -r 2>/dev/null)"
fact arch "$(uname -m 2>/dev/null)"
d=''
if [ -r /etc/os-release ]; then
  d=$( . /etc/os-release 2>/dev/null; if [ -n "$PRETTY_NAME" ]; then printf '%s' "$PRETTY_NAME";
       else printf '%s %s' "$ID" "$VERSION_ID"; fi )
elif command -v sw_vers >/dev/null 2>&1; then
  d="$(sw_vers -productName 2>/dev/null) $(sw_vers -productVersion 2>/dev/null)"
fi
fact distribution "$d"
n=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null)
fact cpus "$n"
m=''
if [ -r /proc/meminfo ]; then
  m=$(awk '$1 == "MemTotal:" { printf "%.0f", $2 * 1024; exit }' /proc/meminfo 2>/dev/null)
else
  m=$(sysctl -n hw.memsize 2>/dev/null || sysctl -n hw.physmem 2>/dev/null)
fi
fact memory "$m"
fact disk_free "$(df -Pk . 2>/dev/null | awk 'NR == 2 { printf "%.0f", $4 * 1024 }' 2>/dev/null)"
"""

_PROBE_LINE = "o=$( ({command}) </dev/null 2>&1 ) && fact {name} \"$o\"\n"


class ProbeError(ValueError):
    """A configured probe the master refuses (its name or command), for the master's configuration check."""


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def check_probes(probes: Mapping[str, str]) -> None:
    """Raise `ProbeError` unless `probes` are at most MAX_PROBES, each named like a fact (not a built-in
    one) with a non-empty one-line command."""
    if len(probes) > MAX_PROBES:
        raise ProbeError(f"at most {MAX_PROBES} fact probes")
    for name, command in probes.items():
        if not FACT_NAME.fullmatch(name) or name in BUILTIN:
            raise ProbeError(f"fact probe {name!r}: a name is a letter or _, then letters, digits, _ . - "
                             f"(not a built-in fact: {', '.join(BUILTIN)})")
        if not command.strip() or "\n" in command or "\0" in command:
            raise ProbeError(f"fact probe {name!r}: the command is one non-empty line")


def script(probes: Mapping[str, str] | None = None) -> str:
    """The probe script: built-in facts, then each configured probe run by ``sh -c`` (the master's
    configuration chose the commands; each is quoted as one argument)."""
    probes = dict(probes or {})
    check_probes(probes)
    lines = [_BUILTIN_SCRIPT]
    for name, command in probes.items():
        lines.append(_PROBE_LINE.format(command=f"sh -c {_quoted(command)}", name=name))
    lines.append("exit 0\n")
    return "".join(lines)


@dataclass
class Facts:
    """What a worker's probe reported: fact name to value (text; numbers for `NUMBERS`), and what the parser
    dropped, why (worker-controlled parts included: show them escaped)."""

    values: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _clean(value: str) -> str:
    kept = "".join(c if c.isprintable() else " " for c in value).strip()
    return kept[:MAX_VALUE]


def parse(data: bytes, probes: Mapping[str, str] | None = None) -> Facts:
    """The facts in `data` (the probe's output, as the worker sent it). Only the built-in facts and the
    names in `probes` are kept."""
    wanted = set(BUILTIN) | set(probes or {})
    facts = Facts()
    if len(data) > MAX_INPUT:
        facts.problems.append(f"the probe's output was cut at {MAX_INPUT} bytes")
        data = data[:MAX_INPUT]
    lines = data.decode("utf-8", "replace").split("\n")
    if lines[0].rstrip("\r") != HEADER:
        facts.problems.append("the probe's output does not start with its header")
        return facts
    if len(lines) > MAX_LINES + 1:
        facts.problems.append(f"the probe printed more than {MAX_LINES} lines")
    ignored = 0
    for line in lines[1:MAX_LINES + 1]:
        name, tab, raw = line.rstrip("\r").partition("\t")
        if not line.strip():
            continue
        if not tab or name not in wanted:
            ignored += 1
            continue
        if name in facts.values:
            facts.problems.append(f"{name}: reported more than once; the first value is kept")
            continue
        value = _clean(raw)
        if len(raw) > MAX_VALUE:
            facts.problems.append(f"{name}: the value was cut at {MAX_VALUE} characters")
        if not value:
            continue
        if name in NUMBERS and not _NUMBER.fullmatch(value):
            facts.problems.append(f"{name}: not a number: {value[:40]}")
            continue
        facts.values[name] = str(int(value)) if name in NUMBERS else value
    if ignored:
        facts.problems.append(f"{ignored} lines were not facts the master asked for")
    return facts
