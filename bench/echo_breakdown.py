"""Where a keystroke's echo round trip goes, at keystroke spacing: the totals and their parts, in one run.

    python3 bench/echo_breakdown.py            # ~5 minutes on 2 cores; prints Markdown, writes JSON (--json)
    python3 bench/echo_breakdown.py --keys 150 --rounds 3 --spacing 0.05 --no-ssh
    python3 bench/echo_breakdown.py --client-cmd 'buildbot-shell --socket {socket} -t w1'   # another client
    python3 bench/echo_breakdown.py --smoke    # 10 keys, one round
    python3 bench/echo_breakdown.py --worker-link pb-ack-ahead   # price the path as older code ran it
    python3 bench/echo_breakdown.py --summarize before=a.json,b.json after=c.json,d.json   # grouped, medians

Totals as bench/run.py measures echo (one byte into a local PTY running the client, remote `stty -icanon; cat >
/dev/null`, until its echo is read back) but 50-100 ms apart: the client against a sandbox master and worker,
and `ssh -tt` to a throwaway sshd. Parts, each alone at the same spacing, on this Python and Twisted's epoll
reactor: a PTY echo, a raw-mode Twisted stdin->stdout relay (the client's terminal side), raw UNIX and TCP
ping-pongs between two reactors, PB `callRemote` round trips and answer-less PB ping-pongs (as the product
sends), lean calls one way and back (slaveshell.plumbing.lean_calls, on a tree that has it), and the master's and
worker's Python per keystroke (their session objects in process, with a real transcript file and a real PTY).
`model` counts the hops as the tree's code makes them (--worker-link; bench/echo_python.py says which tree has
which); total minus the parts is "other Python work". Rounds interleave everything (the machine drifts). Wall
time: time.perf_counter_ns. The scripts measure the tree they are in: to price another commit, run copies of
bench/echo_*.py from a worktree of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from echo_parts import (  # noqa: E402  (echo_parts puts the tree first on sys.path and PYTHONPATH)
    LEAN_PARTS,
    STDLIB_PARTS,
    TWISTED_PARTS,
    pty_rtts,
    run_part,
)
from echo_python import (  # noqa: E402
    WORKER_LINKS,
    framing_python,
    master_python,
    worker_link,
    worker_python,
)

DEFAULT_CLIENT = f"{shlex.quote(sys.executable)} -m slaveshell.shell_cli --socket {{socket}} -t w1"
ROOT = Path(__file__).resolve().parent.parent
PARTS = str(ROOT / "bench" / "echo_parts.py")


# -- the model --------------------------------------------------------------------------------------------------

def us(values: list[int], q: float = 0.5) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] / 1000 if s else float("nan")


Row = tuple[str, int, int, float, float, bool]  # part, hops (slaveshell), hops (ssh), unit median, p99, summed


def model(pool: dict[str, list[int]], link: str, wlink: str = "lean") -> tuple[list[Row], dict[str, float]]:
    """(rows, units in us). Counted from the keystroke's path (docs/architecture.md, "A keystroke", "An output
    chunk"; slaveshell/client/shell_session.py, master_side/sessions/session.py worker_output, slave_side/session.py,
    slaveshell/ lean_calls.py): terminal -> client -(UNIX)-> master -(TCP)-> worker -> PTY echo -> worker -(TCP)->
    master -(UNIX)-> client -> terminal.

    `link` is the operator hop: "pb" (Twisted client, PB) or "framed" (a standard-library selectors client,
    slaveshell.vocabulary.framing). `wlink` the worker's link and where the keystroke's input_ack goes (echo_python):
    "pb-ack-ahead": the worker sends input_ack as it writes the PTY, so it crosses both links ahead of the echo
    (the master's part of it may overlap the worker's PTY echo when a core is free); "pb": it rides in the
    echo's output message, the master records the input before the output (in m.output) and encodes the
    client's input_ack after the echo's frame, in the same reactor turn (Twisted writes both after it: the
    encode is on the path, the client's decode is not, it writes the echo first); "lean": as "pb", with input
    and output as lean calls instead of PB messages. The PB client encodes its `ack` of the echo before Twisted
    writes the echo to the terminal (writes wait for the next reactor turn); the rest of the ack (client ->
    master -> worker) follows the echo. ssh: terminal -> ssh -(TCP)-> sshd -> PTY echo -> sshd -(TCP)-> ssh ->
    terminal, priced with the selectors relay and Twisted's TCP hop (upper bounds for C)."""
    def u(name: str, q: float) -> float:
        return us(pool[name], q)

    # A difference of two p99s means nothing: derived units have a median only (p99 NaN).
    nan = float("nan")
    units = {}
    for q, tag in ((0.5, "med"), (0.99, "p99")):
        for link_ in ("unix", "tcp"):
            units[f"{link_}_{tag}"] = u(link_, q) / 2
            units[f"pb_{link_}_{tag}"] = (u(f"pb1-{link_}", q) - u(link_, q)) / 2 if q == 0.5 else nan
        if "lean-tcp" in pool:
            units[f"lean_tcp_{tag}"] = (u("lean-tcp", q) - u("tcp", q)) / 2 if q == 0.5 else nan
        units[f"ack_pb_{tag}"] = units[f"pb_unix_{tag}"] + units[f"pb_tcp_{tag}"]
        units[f"half_pb_unix_{tag}"] = units[f"pb_unix_{tag}"] / 2
        if link == "framed":
            units[f"unix_stdlib_{tag}"] = u("unix-stdlib", q) / 2
    pb, ahead, lean = link == "pb", wlink == "pb-ack-ahead", wlink == "lean"
    wire = "lean_tcp" if lean else "pb_tcp"
    table = [
        ("your terminal <-> client: Twisted stdio relay (2 PTY crossings, a wake-up)", int(pb), 0, "relay", True),
        ("your terminal <-> client: selectors relay (2 PTY crossings, a wake-up)", int(not pb), 1, "relay-stdlib",
         True),
        ("client <-> master: UNIX hop + wake-up (input, echo)", 2 * pb, 0, "unix", True),
        ("client <-> master: UNIX hop + wake-up, selectors client (input, echo)", 2 * (not pb), 0, "unix_stdlib",
         True),
        ("master <-> worker: TCP hop + wake-up (input, echo)", 2, 2, "tcp", True),
        ("worker PTY echo (kernel + one wake-up)", 1, 1, "pty", True),
        ("PB message on the UNIX link (Banana + jelly): input, echo", 2 * pb, 0, "pb_unix", True),
        ("frame on the UNIX link, encode + decode: input", int(not pb), 0, "f.input", True),
        ("frame on the UNIX link, encode + decode: echo", int(not pb), 0, "f.output", True),
        ("PB message on the TCP link (jelly + Banana): input, echo", 2 * (not lean), 0, "pb_tcp", True),
        ("lean call on the TCP link (a Banana list): input, echo", 2 * lean, 0, "lean_tcp", True),
        ("worker Python: input (modes, write, hidden-input decision)", 1, 0, "w.input", True),
        ("worker Python: the echo's read and flush" + ("" if ahead else " (with the held input_ack)"), 1, 0,
         "w.output", True),
        ("master Python: View.input", 1, 0, "m.input", True),
        ("master Python: WorkerSink.output (transcript write" + ("" if ahead else "s: the input, then the echo")
         + ")", 1, 0, "m.output", True),
        ("input_ack ahead of the echo: PB message, TCP link", int(ahead), 0, "pb_tcp", True),
        ("input_ack ahead of the echo: PB message, UNIX link", int(ahead and pb), 0, "pb_unix", True),
        ("input_ack ahead of the echo: control frame (JSON), UNIX link", int(ahead and not pb), 0, "f.input_ack",
         True),
        ("input_ack ahead of the echo: master Python (transcript write)", int(ahead), 0, "m.input_ack", True),
        ("client's input_ack, encoded after the echo's frame, before both are written: 1/2 PB message",
         int(pb and not ahead), 0, "half_pb_unix", True),
        ("client's input_ack, encoded after the echo's frame, before both are written: control frame (JSON)",
         int(not pb and not ahead), 0, "f.input_ack_encode", True),
        ("ack of the echo, encoded before the echo is written out: 1/2 PB message", int(pb), 0, "half_pb_unix",
         True),
        ("client's input_ack after the echo: control frame, encode + decode (not summed)",
         int(not pb and not ahead), 0, "f.input_ack", False),
        ("ack after the echo: PB messages, UNIX + TCP link (not summed)", int(pb), 0, "ack_pb", False),
        (f"ack after the echo: {'lean call' if lean else 'PB message'}, TCP link (not summed)", int(not pb), 0,
         wire, False),
        ("ack after the echo: master Python (not summed)", 1, 0, "m.ack", False)]
    rows: list[Row] = []
    for name, count, ssh, key, summed in table:
        if count or ssh:
            unit = f"{key}_med" in units
            med, p99 = (units[f"{key}_med"], units[f"{key}_p99"]) if unit else (u(key, 0.5), u(key, 0.99))
            rows.append((name, count, ssh, med, p99, summed))
    return rows, units


def bar(value: float) -> str:
    return "█" * int(value // 100) + ("▌" if value % 100 >= 50 else "") if value > 0 else ""


def fmt(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"  # NaN: a derived unit has no p99


def render(pool: dict[str, list[int]], rounds: list[dict[str, list[int]]], args: argparse.Namespace) -> str:
    rows, units = model(pool, args.operator_link, args.worker_link)
    total, total99 = us(pool["slaveshell"]), us(pool["slaveshell"], 0.99)
    ssh_total = us(pool["ssh"]) if pool.get("ssh") else float("nan")
    lines = [f"## Keystroke echo, where each 100 us goes ({len(rounds)} round(s) x {args.keys} keys, "
             f"{args.spacing * 1000:.0f}-{args.spacing * 2000:.0f} ms apart, {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Client: `{args.client_cmd}`; operator link: {args.operator_link}; worker link: "
             f"{args.worker_link}. Medians in us; each █ is 100 us. "
             "A part's unit is its own median (p99: its own p99, none for differences of two measurements).", "",
             "| part of the round trip | hops | unit us | unit p99 | slaveshell us | share | ssh hops | ssh us "
             "| 100 us blocks |", "|---|---|---|---|---|---|---|---|---|"]
    ours = theirs = 0.0
    for name, count, ssh_count, med, p99, summed in rows:
        ours += med * count if summed else 0.0
        theirs += med * ssh_count
        theirs_txt = f"{ssh_count} | {med * ssh_count:.0f}" if ssh_count else "- | -"
        lines.append(f"| {name} | {count} | {med:.0f} | {fmt(p99)} | {med * count:.0f} "
                     f"| {100 * med * count / total:.0f} % | {theirs_txt} | {bar(med * count) if summed else ''} |")
    rest, ssh_rest = total - ours, ssh_total - theirs
    lines += [f"| **sum of the parts** | | | | {ours:.0f} | {100 * ours / total:.0f} % | | {theirs:.0f} | |",
              f"| **other Python work** (round trip - sum; ssh: its own work) | | | | {rest:.0f} "
              f"| {100 * rest / total:.0f} % | | {fmt(ssh_rest)} | {bar(rest)} |",
              f"| **measured round trip** (p99: {total99:.0f}; ssh {fmt(us(pool.get('ssh', []), 0.99))}) | | | "
              f"| {total:.0f} | 100 % | | {fmt(ssh_total)} | {bar(total)} |",
              "", "Each measurement (us): median and p99 of all rounds, and each round's median:", "",
              "| measurement | median | p99 | per-round medians |", "|---|---|---|---|"]
    for name in pool:
        per = ", ".join(f"{us(r[name]):.0f}" for r in rounds if r.get(name))
        lines.append(f"| {name} | {us(pool[name]):.1f} | {us(pool[name], 0.99):.1f} | {per} |")
    return "\n".join(lines) + "\n"


GROUPS = (("wake-ups and hops: terminal relay, 2 UNIX + 2 TCP hops, the worker's PTY echo",
           ("your terminal", "client <-> master", "master <-> worker", "worker PTY")),
          ("PB / lean calls / framing: the messages' encode + decode on the path", ("PB message", "lean call",
                                                                                    "frame", "1/2 PB")),
          ("the master's and worker's Python (relay, transcript writes, hidden-input decision, held acks)",
           ("master Python", "worker Python")))


def grouped(run: dict[str, object]) -> dict[str, float]:
    """One run's JSON (as main writes it) -> us per group of GROUPS, the residue, the medians, the ratio and the
    p99s. A row is in the first group one of whose prefixes its name contains (input_ack rows by their wire)."""
    rows = run["model_us"]
    pool = {name: [v for r in run["rounds"] for v in r.get(name, [])] for name in run["rounds"][0]}  # type: ignore
    out: dict[str, float] = {}
    for title, marks in GROUPS:
        out[title] = sum(r["median"] * r["hops"] for r in rows if r["summed"]  # type: ignore
                         and any(m in r["part"] for m in marks)
                         and not any(m in r["part"] for _, ms in GROUPS[:GROUPS.index((title, marks))] for m in ms))
    total, ssh = us(pool["slaveshell"]), us(pool.get("ssh", []))
    out.update({"residue": total - sum(out.values()), "median": total, "ssh": ssh, "ratio": total / ssh,
                "p99": us(pool["slaveshell"], 0.99), "ssh p99": us(pool.get("ssh", []), 0.99)})
    return out


def summarize(columns: list[tuple[str, list[str]]]) -> str:
    """A Markdown table, one column per (label, JSON files of its runs): each group's median over the runs
    (range)."""
    per = [(label, [grouped(json.loads(Path(f).read_text())) for f in files]) for label, files in columns]
    titles = [t for t, _ in GROUPS] + ["other Python work (the residue)", "**measured round trip, median**",
                                       "`ssh -tt` in the same runs", "ratio to ssh", "p99", "ssh's p99"]
    keys = [t for t, _ in GROUPS] + ["residue", "median", "ssh", "ratio", "p99", "ssh p99"]
    lines = ["| where the echo's round trip goes (us) | " + " | ".join(label for label, _ in per) + " |",
             "|---|" + "---|" * len(per)]
    for title, key in zip(titles, keys, strict=True):
        cells = []
        for _, runs in per:
            vals = sorted(r[key] for r in runs)
            mid = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
            f = (lambda v: f"{v:.1f}x") if key == "ratio" else (lambda v: f"{v:.0f}")
            cells.append(f"{f(mid)} ({f(vals[0])}-{f(vals[-1])})" if len(vals) > 1 else f(mid))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=150, help="keys per measurement per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--spacing", type=float, default=0.05, help="seconds between keys: uniform in [s, 2s]")
    ap.add_argument("--client-cmd", default=DEFAULT_CLIENT,
                    help="the interactive client ({socket}: the sandbox master's socket); default: %(default)s")
    ap.add_argument("--operator-link", choices=("auto", "pb", "framed"), default="auto",
                    help="how the model prices the client's hop; auto: framed when the tree has "
                         "slaveshell.vocabulary.framing")
    ap.add_argument("--worker-link", choices=("auto",) + WORKER_LINKS, default="auto",
                    help="how the model prices the worker's link and the input_ack (bench/echo_python.py); "
                         "auto: from the tree's files")
    ap.add_argument("--no-ssh", action="store_true")
    ap.add_argument("--json", default=str(Path(tempfile.gettempdir()) / "echo_breakdown.json"))
    ap.add_argument("--smoke", action="store_true", help="10 keys, one round, 10 ms apart")
    ap.add_argument("--summarize", nargs="+", metavar="LABEL=JSON[,JSON...]",
                    help="measure nothing: group earlier runs' JSON files into one table, a column per label")
    args = ap.parse_args()
    if args.summarize:
        print(summarize([(label, files.split(",")) for label, files in
                         (c.split("=", 1) for c in args.summarize)]))
        return 0
    if args.smoke:
        args.keys, args.rounds, args.spacing = 10, 1, 0.01
    if args.operator_link == "auto":
        # The tree's own file: an editable install elsewhere may resolve a module this tree does not have.
        args.operator_link = "framed" if (ROOT / "slaveshell" / "framing.py").exists() else "pb"
    if args.worker_link == "auto":
        args.worker_link = worker_link(ROOT)
    # A tree runs its own path or an older one (its master still takes an input_ack alone), not a newer one.
    if WORKER_LINKS.index(args.worker_link) > WORKER_LINKS.index(worker_link(ROOT)):
        ap.error(f"--worker-link {args.worker_link}: this tree's code is {worker_link(ROOT)} (older)")
    os.environ["ECHO_BD_WORKER_LINK"] = args.worker_link  # the pb1 parts' echo message (echo_parts.ECHO)

    from run import OpenSSH, Slaveshell

    work = Path(tempfile.mkdtemp(prefix="echo-breakdown-"))
    ours = Slaveshell(work, work / "marker")
    ssh = None if args.no_ssh else OpenSSH(work)
    rounds: list[dict[str, list[int]]] = []
    try:
        print(f"echo_breakdown: starting a sandbox master and worker{' and sshd' if ssh else ''} ...",
              file=sys.stderr)
        ours.start()
        if ssh:
            ssh.start()
        client = shlex.split(args.client_cmd.format(socket=ours.sandbox.socket))
        for r in range(args.rounds):
            got: dict[str, list[int]] = {}
            print(f"echo_breakdown: round {r + 1} of {args.rounds} ...", file=sys.stderr)
            got["slaveshell"] = pty_rtts(client, args.keys, args.spacing)
            if ssh:
                got["ssh"] = pty_rtts(ssh.argv(None, tty=True), args.keys, args.spacing)
            for relay in ("relay", "relay-stdlib"):
                got[relay] = pty_rtts([sys.executable, PARTS, "--serve", relay, "-"], args.keys, args.spacing,
                                      shell=False)
            parts = TWISTED_PARTS + (LEAN_PARTS if args.worker_link == "lean" else ())
            for part in parts + (STDLIB_PARTS if args.operator_link == "framed" else ()):
                got[part] = run_part(part, args.keys, args.spacing)
            got.update({f"m.{k}": v for k, v in master_python(args.keys, args.spacing, args.worker_link).items()})
            got.update({f"w.{k}": v for k, v in worker_python(args.keys, args.spacing).items()})
            if args.operator_link == "framed":
                got.update({f"f.{k}": v for k, v in framing_python(args.keys, args.spacing).items()})
            rounds.append(got)
    finally:
        ours.stop()
        if ssh:
            ssh.stop()
    pool = {name: [v for r in rounds for v in r.get(name, [])] for name in rounds[0]} if rounds else {}
    report = render(pool, rounds, args)
    print(report)
    rows, units = model(pool, args.operator_link, args.worker_link)
    Path(args.json).write_text(json.dumps({
        "args": vars(args), "unit": "ns",
        "rounds": rounds, "units_us": units,
        "model_us": [dict(zip(("part", "hops", "ssh_hops", "median", "p99", "summed"), r, strict=True)) for r in rows]},
        indent=1))
    print(f"echo_breakdown: raw numbers in {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
