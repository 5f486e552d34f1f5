"""Where a `slaveshell cp`'s credit window sits, hop by hop, through master A to a worker of master B and on B
directly: is the window the bound, or a hop?

    python3 bench/copy_trace.py                 # 3 rounds of 200 MB up and down, destinations on /dev/shm
    python3 bench/copy_trace.py --disk          # destinations on the disk, as bench/cluster_bench.py copies
    python3 bench/copy_trace.py --smoke         # 5 MB, one round: proves the harness

It starts a multi-master site (slaveshell.client.cluster_sandbox: the router, masters A and B, B with
`ClusterConfig(direct=True)`, a worker b1 on B) whose every Python process (the masters, the worker, and each
`slaveshell cp` client) loads this file as a tracer: a `sitecustomize.py` in a directory of its own, first on
PYTHONPATH, imports it when $COPY_TRACE names the directory to write to. The tracer wraps, as each module is
imported, the points of a copy's credit loop and notes the time (time.monotonic: one clock for every process of
the machine) and the count so far:

- the sender (slaveshell.files.sender.Sender: the client up, the worker down): credit spent (`S.sent`),
  credit returned (`S.ack`), and each time it stops for credit (`S.block`);
- master B's relay (master_side.copying.relay): data taken (`B.data`), credit passed back (`B.ack`);
- master A's end of a routed copy (master_side.cluster.copy_relay.RoutedTransfer): the client's data and
  acknowledgements (`A.cdata`, `A.cack`), B's data and acknowledgements to the client (`A.bdata`, `A.back`);
- the receivers: the client's reads and acknowledgements (`C.got`, `C.ack`), the worker's acknowledgements
  (`W.ack`).

Copies alternate (via A and B direct, up and down, the order rotated each round), each timed whole and checked
by size and sha256. Per copy: MB/s; the sender's time stopped for credit (%); its round trips (the time from
spending a byte's credit to that credit's return: p10, median, p90); the stream's time without the start-up and
the commit; where the window's bytes were (the time-averaged MB between each two consecutive points of the
loop: a window that is the bound spreads over the hops' latencies, a hop that is the bound holds the window
before it); and the CPU seconds per GB of master A, master B, the worker and the client (the client's start-up
included). A ratio per pair (via A / B direct, the same round) ends the report, whole and stream-only.

The tracer costs a Python call and a string per chunk at each point: compare paths within one run, not with
bench/cluster_bench.py's figures. To price another window, run it from a tree that has it.
"""

from __future__ import annotations

import argparse
import bisect
import getpass
import importlib.abc
import importlib.machinery
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_bench import cpu_seconds, sha256  # noqa: E402

MB = 1000 * 1000
WORKER = "b1"
ENTRY_COST = 1024  # slaveshell.vocabulary.copying.ENTRY_COST: a file's entry before its first byte
# Points that count credit (data plus ENTRY_COST per entry and done_file); the others count bytes of data.
CREDIT = {"S.sent", "S.ack", "W.ack", "B.ack", "A.back", "A.cack", "C.ack"}
# The loop's points in order, per path and direction: the sender's credit out, ..., its credit back.
LOOPS = {
    ("via A", "up"): ["S.sent", "A.cdata", "B.data", "W.ack", "B.ack", "A.back", "S.ack"],
    ("via A", "down"): ["S.sent", "B.data", "A.bdata", "C.got", "C.ack", "A.cack", "B.ack", "S.ack"],
    ("B direct", "up"): ["S.sent", "B.data", "W.ack", "B.ack", "S.ack"],
    ("B direct", "down"): ["S.sent", "B.data", "C.got", "C.ack", "B.ack", "S.ack"],
}

# -- the tracer, in each process ----------------------------------------------------------------------------

_lines: list[str] = []


def note(point: str, count: int) -> None:
    _lines.append(f"{time.monotonic():.6f} {point} {count}\n")
    if len(_lines) >= 4096:
        flush()


def flush() -> None:
    out = os.environ.get("COPY_TRACE")
    if _lines and out:
        with open(os.path.join(out, f"{os.getpid()}.log"), "a") as f:
            f.writelines(_lines)
    _lines.clear()


def _add(obj: Any, name: str, n: int) -> int:
    total = getattr(obj, name, 0) + n
    setattr(obj, name, total)
    return total


def _sender(mod: Any) -> None:
    cls = mod.Sender
    pump, ack, close = cls.pump, cls.ack, cls.close

    def traced_pump(self: Any) -> None:
        pump(self)
        spent = getattr(self, "_trace_acked", 0) + self.credit.outstanding
        if spent != getattr(self, "_trace_spent", 0):
            self._trace_spent = spent
            note("S.sent", spent)
        if not self.done and self._next is not None:
            note("S.block", self.credit.outstanding)

    def traced_ack(self: Any, credit: Any) -> None:
        note("S.ack", _add(self, "_trace_acked", int(credit)))
        ack(self, credit)

    def traced_close(self: Any) -> None:
        close(self)
        flush()

    cls.pump, cls.ack, cls.close = traced_pump, traced_ack, traced_close


def _relay(mod: Any) -> None:
    from slaveshell.vocabulary.copying import Ack, Data

    handlers = mod._HANDLERS
    data, ack = handlers[Data], handlers[Ack]

    def traced_data(self: Any, side: str, event: Any) -> None:
        data(self, side, event)
        note("B.data", self.bytes)

    def traced_ack(self: Any, side: str, event: Any) -> None:
        note("B.ack", _add(self, "_trace_acked", event.credit))
        ack(self, side, event)

    handlers[Data], handlers[Ack] = traced_data, traced_ack
    end = mod.MasterTransfer.end

    def traced_end(self: Any, *args: Any, **kwargs: Any) -> None:
        end(self, *args, **kwargs)
        flush()

    mod.MasterTransfer.end = traced_end


def _routed(mod: Any) -> None:
    from slaveshell.vocabulary.copying import Ack, Data

    cls = mod.RoutedTransfer
    decoded, deliver, finish = cls.decoded, cls._deliver, cls._finish

    def traced_decoded(self: Any, side: str, decode: Callable[[], Any]) -> None:
        events: list[Any] = []

        def keep() -> Any:
            events.append(decode())
            return events[0]

        decoded(self, side, keep)
        if events and isinstance(events[0], Data):
            note("A.cdata", _add(self, "_trace_cdata", len(events[0].chunk)))
        elif events and isinstance(events[0], Ack):
            note("A.cack", _add(self, "_trace_cack", events[0].credit))

    def traced_deliver(self: Any, event: Any) -> None:
        deliver(self, event)
        if isinstance(event, Data):
            note("A.bdata", _add(self, "_trace_bdata", len(event.chunk)))
        elif isinstance(event, Ack):
            note("A.back", _add(self, "_trace_back", event.credit))

    def traced_finish(self: Any) -> None:
        finish(self)
        flush()

    cls.decoded, cls._deliver, cls._finish = traced_decoded, traced_deliver, traced_finish


def _client(mod: Any) -> None:
    from slaveshell.vocabulary.copying import Ack

    cls = mod.CopyClient
    send, read = cls.send, cls.read

    def traced_send(self: Any, event: Any) -> None:
        if isinstance(event, Ack):
            note("C.ack", _add(self, "_trace_ack", event.credit))
        send(self, event)

    def traced_read(self: Any, frames: Any) -> None:
        n = sum(len(f) if isinstance(f, memoryview) else len(f.payload) for f in frames
                if isinstance(f, memoryview) or f.type.name == "DATA")
        if n:
            note("C.got", _add(self, "_trace_got", n))
        read(self, frames)

    cls.send, cls.read = traced_send, traced_read


def _worker(mod: Any) -> None:
    from slaveshell.vocabulary.copying import Ack

    peer, transfer = mod._Peer, mod.WorkerTransfer
    call, end = peer._call, transfer._end

    def traced_call(self: Any, event: Any) -> None:
        if isinstance(event, Ack):
            note("W.ack", _add(self, "_trace_ack", event.credit))
        call(self, event)

    def traced_end(self: Any, *args: Any, **kwargs: Any) -> None:
        end(self, *args, **kwargs)
        flush()

    peer._call, transfer._end = traced_call, traced_end


_WRAP: dict[str, Callable[[Any], None]] = {
    "slaveshell.files.sender": _sender, "master_side.copying.relay": _relay,
    "master_side.cluster.copy_relay": _routed, "slaveshell.client.copy_client": _client,
    "slave_side.transfer": _worker}


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loop's points as their modules are imported."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _WRAP:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            try:
                _WRAP[name](module)
            except Exception as e:  # the module changed: not traced (the report says so), never broken
                sys.stderr.write(f"copy trace: cannot trace {name}: {e!r}\n")

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """The tracer in this process (the sitecustomize's call), when $COPY_TRACE names where to write."""
    if os.environ.get("COPY_TRACE"):
        import atexit

        sys.meta_path.insert(0, _Finder())
        atexit.register(flush)


# -- the run -----------------------------------------------------------------------------------------------


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    from slaveshell.client.cluster_sandbox import ClusterSandbox

    work = Path(tempfile.mkdtemp(prefix="slaveshell-copy-trace-"))
    shim = work / "shim"
    shim.mkdir()
    # Loaded by its path: the bench directory is not put on the processes' path (its run.py would shadow).
    (shim / "sitecustomize.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('slaveshell_copy_trace', {str(Path(__file__).resolve())!r})\n"
        "module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)\nmodule.install()\n")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(shim), str(Path(__file__).resolve().parent.parent),
                                                os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ["COPY_TRACE"] = str(out)
    dest = work if args.disk else Path(tempfile.mkdtemp(prefix="slaveshell-copy-trace-", dir="/dev/shm"))
    size = args.mb * MB
    source = work / "copy.bin"
    with open(source, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[:size % len(block)])
    want = sha256(source)
    policy = (f"[dict(users=[{os.getuid()}]), dict(users=[{'cluster:A/' + getpass.getuser()!r}], "
              "workers=['b*'])]")
    site = ClusterSandbox(str(work / "site"), {"A": ["a1"], "B": [WORKER]}, policies={"B": policy},
                          clusters={"B": "direct=True"})
    runs: list[dict[str, Any]] = []
    try:
        print("copy trace: starting the site ...", file=sys.stderr, flush=True)
        site.start(together=True)
        for _ in range(60):  # A's routing table: a first open through A waits for it
            if subprocess.run([sys.executable, "-m", "slaveshell.shell_cli", "--socket", site.a.socket, "-T",
                               WORKER, "--", "true"], capture_output=True, timeout=120).returncode == 0:
                break
            time.sleep(1)
        there, here = dest / "there", dest / "here"
        there.mkdir()
        here.mkdir()
        items = [(path, direction) for direction in ("up", "down") for path in ("via A", "B direct")]
        for r in range(args.rounds):
            order = items[r % len(items):] + items[:r % len(items)]
            for path, direction in order:
                runs.append(_copy(site, path, direction, source, want, here, there, r))
                with open(out / "runs.json", "w") as f:
                    json.dump(runs, f, indent=1)
    finally:
        site.stop()
        shutil.rmtree(work, ignore_errors=True)
        if not args.disk:
            shutil.rmtree(dest, ignore_errors=True)
    return runs


def _copy(site: Any, path: str, direction: str, source: Path, want: str, here: Path, there: Path,
          r: int) -> dict[str, Any]:
    sock = site.a.socket if path == "via A" else site.b.socket
    remote, local = there / "copy.bin", here / "copy.bin"
    if direction == "up":
        argv, result = [str(source), f"{WORKER}:{remote}"], remote
    else:
        if not remote.exists():
            shutil.copyfile(source, remote)
        argv, result = [f"{WORKER}:{remote}", str(local)], local
    with open(os.path.join(site.b.worker_dir(WORKER), "twistd.pid")) as f:
        pids = {"A": site.a.master_pid(), "B": site.b.master_pid(), "W": int(f.read())}
    before = {k: cpu_seconds(v) for k, v in pids.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    load, t0 = _load(), time.monotonic()
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "cp", "-q", "--socket", sock, *argv],
                          capture_output=True, timeout=600)
    t1 = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    size = source.stat().st_size
    gb = size / 1e9
    cpu = {k: (cpu_seconds(v) - before[k]) / gb for k, v in pids.items()}
    cpu["client"] = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / gb
    ok = done.returncode == 0 and result.stat().st_size == size and sha256(result) == want
    result.unlink(missing_ok=True)
    print(f"copy trace: round {r + 1} {path} {direction}: {size / (t1 - t0) / MB:.1f} MB/s"
          f"{'' if ok else ' FAILED ' + done.stderr[-300:].decode(errors='replace')}", file=sys.stderr, flush=True)
    return {"round": r, "path": path, "dir": direction, "t0": t0, "t1": t1, "bytes": size, "ok": ok,
            "mbps": size / (t1 - t0) / MB, "load": load, "cpu": cpu}


# -- the analysis ------------------------------------------------------------------------------------------


def read_points(out: Path) -> dict[str, list[tuple[float, int]]]:
    points: dict[str, list[tuple[float, int]]] = {}
    for log in out.glob("*.log"):
        for line in log.read_text().splitlines():
            t, point, count = line.split()
            points.setdefault(point, []).append((float(t), int(count)))
    for series in points.values():
        series.sort()
    return points


def analyse(run: dict[str, Any], points: dict[str, list[tuple[float, int]]]) -> dict[str, Any] | None:
    t0, t1 = run["t0"], run["t1"]
    loop = LOOPS[(run["path"], run["dir"])]
    # Each point as bytes of data so far (credit minus the entry's), within the copy's time.
    series = {p: [(t, max(0, v - ENTRY_COST) if p in CREDIT else v) for t, v in points.get(p, [])
                  if t0 <= t <= t1] for p in loop}
    sent, acked = series["S.sent"], series["S.ack"]
    if not all(series.values()):
        return None  # a point of the loop not traced: its module has changed
    first, last = sent[0][0], acked[-1][0]
    stopped, since = 0.0, None
    for t, kind in sorted([(t, "stop") for t, _ in points.get("S.block", []) if t0 <= t <= t1]
                          + [(t, "go") for t, _ in sent]):
        if kind == "stop" and since is None:
            since = t
        elif kind == "go" and since is not None:
            stopped, since = stopped + t - since, None
    counts = [v for _, v in sent]
    trips = [t - sent[i][0] for t, x in acked if (i := bisect.bisect_left(counts, x)) < len(sent)]
    times = {p: [t for t, _ in s] for p, s in series.items()}

    def at(point: str, t: float) -> int:
        i = bisect.bisect_right(times[point], t) - 1
        return series[point][i][1] if i >= 0 else 0

    steps = max(1, int((last - first) / 0.001))
    held = [0.0] * (len(loop) - 1)
    for j in range(steps):
        values = [at(p, first + j * 0.001) for p in loop]
        for i in range(len(held)):
            held[i] += values[i] - values[i + 1]
    deciles = statistics.quantiles(trips, n=10) if len(trips) >= 10 else [min(trips)] * 8 + [max(trips)]
    # Stopped for credit: a share of the time from its first send to its last.
    return {"stopped": stopped / max(sent[-1][0] - first, 1e-9),
            "rtt": (deciles[0], statistics.median(trips), deciles[-1]),
            "stream": last - first, "start": first - t0, "tail": t1 - last,
            "held": {f"{loop[i]}>{loop[i + 1]}": held[i] / steps / MB for i in range(len(held))}}


def report(runs: list[dict[str, Any]], points: dict[str, list[tuple[float, int]]]) -> str:
    lines = ["| round | path | dir | MB/s | load | stopped for credit | round trip ms p10 / median / p90 | "
             "stream MB/s | MB held between points (time-averaged) | CPU s/GB A, B, worker, client |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    streams: dict[tuple[int, str], dict[str, float]] = {}
    for run in runs:
        a = analyse(run, points)
        if a is None:
            lines.append(f"| {run['round'] + 1} | {run['path']} | {run['dir']} | {run['mbps']:.0f} | "
                         f"{run['load']:.1f} | no trace | | | | |")
            continue
        streams.setdefault((run["round"], run["dir"]), {})[run["path"]] = a["stream"]
        held = ", ".join(f"{k} {v:.2f}" for k, v in a["held"].items())
        cpu = ", ".join(f"{run['cpu'][k]:.2f}" for k in ("A", "B", "W", "client"))
        p10, med, p90 = (x * 1000 for x in a["rtt"])
        lines.append(f"| {run['round'] + 1} | {run['path']} | {run['dir']} | {run['mbps']:.0f} | {run['load']:.1f} "
                     f"| {a['stopped'] * 100:.0f} % | {p10:.1f} / {med:.1f} / {p90:.1f} | "
                     f"{run['bytes'] / a['stream'] / MB:.0f} | {held} | {cpu} |")
    lines += ["", "Via A / B direct per round (whole copy, stream only):", ""]
    whole = {(r["round"], r["dir"], r["path"]): r["mbps"] for r in runs}
    for (r, direction), pair in sorted(streams.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if len(pair) == 2:
            ratio = whole[(r, direction, "via A")] / whole[(r, direction, "B direct")]
            lines.append(f"- {direction}, round {r + 1}: {ratio:.2f}, {pair['B direct'] / pair['via A']:.2f}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mb", type=int, default=200, help="size of the copied file, MB")
    parser.add_argument("--disk", action="store_true", help="destinations on the disk (default: /dev/shm)")
    parser.add_argument("--smoke", action="store_true", help="5 MB, one round")
    parser.add_argument("--keep", help="write the traces and runs.json here (kept)")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.mb = 1, 5
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="slaveshell-copy-trace-out-"))
    out.mkdir(parents=True, exist_ok=True)
    from slaveshell.client.cluster_sandbox import SiteUnavailable

    try:
        runs = run(args, out)
        points = read_points(out)
        print(report(runs, points))
    except SiteUnavailable as e:
        print(f"copy trace: cannot start a multi-master site here: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    # A copy that failed, or one whose loop was not traced (a module the tracer wraps has changed), fails the run.
    return 0 if all(r["ok"] and analyse(r, points) is not None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
