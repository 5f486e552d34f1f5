"""The web terminal against the command line, through the same master, alternated round by round.

    python3 bench/web_bench.py                 # 5 rounds, 100 MB per `cat` (a quiet machine: ~15-25 minutes)
    python3 bench/web_bench.py --quick         # 2 rounds, 10 MB: proves the harness, judges nothing
    python3 bench/web_bench.py --smoke         # 1 round, tiny sizes (tests/e2e/test_bench_smoke.py)
    python3 bench/web_bench.py --only echo,ctrlc --rounds 7 --screenshots /tmp/shots

One throwaway master with Buildbot's web UI and slaveshell's web plugin (a user/password login, the `shell` action
granted to a role) and one worker; one headless Chromium (Debian's /usr/bin/chromium, driven over its DevTools pipe
with no Network domain enabled: see `Cdp`) logged in to it. The web side is the terminal page itself: its xterm.js,
its WebSocket and its credit acks, in a fresh session per measurement (the CLI starts a fresh `buildbot-shell -t`
per measurement). Keys go in through the page's own input path (xterm's `input()`: what a keystroke becomes after
the keyboard, through the page's onData, input window and WebSocket), and every web time is taken in the page with
performance.now(): when the bytes arrive on the page's WebSocket (a listener of the bench's, after the page's own),
when xterm has written them into its buffer (the callback of a write queued after them), and when the next frame has
been drawn (requestAnimationFrame after that).

Rows (PARTS):
- echo: keystrokes in `stty -icanon; cat >/dev/null` (the PTY's echo), each a fixed spacing after the previous
  echo, 10 ms and 100 ms apart (the page's: after the frame that drew it, plus a random part of a frame, so that
  keys meet the frame clock at every phase); per round the median and p99. The CLI's is bench/run.py's loop
  (fair.py's echo).
- throughput: `cat FILE; echo @@$((6*7))@@` in the page, for each content kind: build-log text lines, random
  bytes in base64 lines (raw random bytes would hold terminal queries that xterm.js answers into the shell), and
  escape-heavy output (fair.py's); MB of the file per second from the first byte after the command line's echo to
  the marker, as received on the WebSocket and as written by the terminal. The CLI's: fair.py's PTY `cat` row.
- ctrlc: `yes`, 0.7 s of flood taken as fast as the page takes it, then ^C: milliseconds until the prompt (received;
  written), and the bytes that arrived after the ^C. The CLI's: bench/run.py's.

Each row's ratio is web / CLI per round, the two measured back to back, the order swapped from row to row and
from round to round; the table gives the median of those ratios with their min-max. CPU seconds per GB beside each
throughput row, per process: the browser's (every Chromium process of the bench's, with their reaped children),
the master's and the worker's (with its reaped children: the remote `cat`) for the web; the client's, the master's
and the worker's for the CLI. Nothing here is a timed assertion in a test.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import random
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fair import Side, make_content, output_rate  # noqa: E402
from run import MB, Slaveshell, ctrl_c_latency, echo_rtts, med, p99  # noqa: E402
from transfer_bench import Tools, cpu_seconds  # noqa: E402

from slaveshell.client.sandbox import Sandbox  # noqa: E402

GB = 1024 * MB
CHROMIUM = "/usr/bin/chromium"
PARTS = ("echo", "throughput", "ctrlc")
KINDS = ("text", "binary", "escapes")
USER, PASSWORD = "bench", "bench-pw"
WWW_CONFIG = f"""\
from buildbot.plugins import util as _util
from master_side.www.access import ShellEndpointMatcher
c['www']['plugins']['slaveshell'] = {{}}
c['www']['auth'] = _util.UserPasswordAuth({{{USER!r}: {PASSWORD!r}}})
c['www']['authz'] = _util.Authz(allowRules=[ShellEndpointMatcher(role='shellers')],
                                roleMatchers=[_util.RolesFromUsername(roles=['shellers'], usernames=[{USER!r}])])
"""
# The web user's role may open shells; so may the local user (the CLI, and the sandbox's wait for its worker). The
# bounds on sessions are bench/run.py's: a CLI measurement's client is killed at its end, and its session stays,
# detached, for the detach grace.
SERVICE_KWARGS = (f"policy=[dict(groups=['web:shellers'], rights=['shell']), dict(users=[{os.getuid()}])], "
                  "max_connections_per_uid=256, max_sessions_per_operator=200, max_sessions_per_worker=200")
MARKER, MARKER_OUT = "@@$((6*7))@@", "@@42@@"
TIMEOUT_MS = 60_000

# The bench's side of the page: a listener on the page's WebSocket (added after the page's own, so the page has
# handed each message to xterm by the time it runs), waiters for a text in what arrives, and the times.
INSTALL = """() => {
  const ws = window.slaveshellSocket, term = window.slaveshellTerminal;
  const B = { ws: ws, term: term, bytes: 0, tail: "", waiters: [], probe: null };
  window.slaveshellBench = B;
  function latin1(a) { let s = ""; for (let i = 0; i < a.length; i++) s += String.fromCharCode(a[i]); return s; }
  ws.addEventListener("message", function (ev) {
    if (typeof ev.data === "string") return;
    const now = performance.now(), d = new Uint8Array(ev.data);
    B.bytes += d.length;
    if (B.probe) B.probe(now);
    if (!B.waiters.length) return;
    const text = B.tail + latin1(d.subarray(Math.max(0, d.length - 256)));
    B.tail = text.slice(-64);
    B.waiters = B.waiters.filter(function (w) {
      if (text.indexOf(w.text) < 0) return true;
      w.hit(now);
      return false;
    });
  });
  // A promise of {recv, written, painted, bytes}: when `text` next arrives; when xterm has written it (a write
  // queued after it calls back); the next frame after that; the bytes that arrived from now to it.
  B.expect = function (text, ms) {
    B.tail = "";
    const since = B.bytes;
    return new Promise(function (resolve, reject) {
      const timer = setTimeout(function () {
        reject(new Error("no " + JSON.stringify(text) + " within " + ms + " ms"));
      }, ms);
      B.waiters.push({ text: text, hit: function (now) {
        const got = { recv: now, bytes: B.bytes - since };
        term.write("", function () {
          got.written = performance.now();
          requestAnimationFrame(function () { got.painted = performance.now(); clearTimeout(timer); resolve(got); });
        });
      } });
    });
  };
  B.sleep = function (ms) { return new Promise(function (r) { setTimeout(r, ms); }); };
  return ws.readyState;
}"""

ECHO = """async ({count, spacing}) => {
  const B = window.slaveshellBench, out = [];
  for (let i = 0; i < count; i++) {
    const ch = String.fromCharCode(97 + i % 26);
    const echoed = B.expect(ch, 30000);
    const t0 = performance.now();
    B.term.input(ch, true);
    const got = await echoed;
    out.push([got.recv - t0, got.written - t0, got.painted - t0]);
    // Spaced from the frame that drew it, plus a random part of a frame: a key anchored to the frame clock would
    // always meet the next frame at the same phase (10 ms after one: 6.7 ms before the next, at 60 Hz).
    await B.sleep(spacing + Math.random() * 1000 / 60);
  }
  return out;
}"""

CAT = """async ({command, marker, timeout}) => {
  const B = window.slaveshellBench;
  const typed = B.expect(command.slice(-8), 30000);
  B.term.input(command, true);
  await typed;
  let first = 0;
  const since = B.bytes;
  B.probe = function (now) { if (B.bytes - since > 2) { first = now; B.probe = null; } };  // past the Enter's echo
  const done = B.expect(marker, timeout);
  B.term.input("\\r", true);
  const got = await done;
  return { first: first, recv: got.recv, written: got.written, bytes: got.bytes };
}"""

CTRLC = """async ({flood}) => {
  const B = window.slaveshellBench;
  const flooding = B.expect("y\\r\\ny\\r\\n", 30000);
  B.term.input("yes\\r", true);
  await flooding;
  await B.sleep(flood);
  const back = B.expect("P> ", 60000);
  const t0 = performance.now();
  B.term.input("\\x03", true);
  const got = await back;
  return { recv: got.recv - t0, written: got.written - t0, bytes: got.bytes };
}"""


def process_tree(root: int) -> dict[int, str]:
    """pid -> comm of every live descendant of `root`."""
    parent, comm = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = text.split(" (", 1)[1].rsplit(") ", 1)
        parent[int(entry)], comm[int(entry)] = int(rest.split()[1]), name
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in out:
                out[child] = comm[child]
                todo.append(child)
    return out


def browser_cpu() -> float:
    """CPU seconds of the bench's Chromium processes, with their reaped children (playwright's node left out)."""
    total = 0.0
    for pid, name in process_tree(os.getpid()).items():
        if "chrom" in name.lower():
            try:
                total += cpu_seconds(pid, True)
            except OSError:  # ended meanwhile
                pass
    return total


class Site(Slaveshell):
    """bench/run.py's slaveshell with the web UI and the plugin: one master for both the page and the CLI."""

    def __init__(self, workdir: Path) -> None:  # noqa: D107 - no build step: the parent's is for its own rows
        self.sandbox = Sandbox(str(workdir / "bb"), workers=["w1"], www=True, www_config=WWW_CONFIG,
                               opt_in_args="max_sessions=200", service_kwargs=SERVICE_KWARGS)


class Servers:
    """CPU seconds of the master and the worker (with its reaped children: the remote command)."""

    def __init__(self, site: Site) -> None:
        self.pids = site.pids()

    def now(self) -> dict[str, float]:
        return {"master": cpu_seconds(self.pids["master"]), "worker": cpu_seconds(self.pids["worker"], True)}


class Cdp:
    """Debian's chromium, headless, driven over its DevTools pipe (--remote-debugging-pipe: JSON messages ended by
    NUL on fds 3 and 4). Only what the bench needs: a page, Runtime.evaluate, navigation, a cookie, screenshots.
    Neither the Network nor the Page domain is enabled: an automation library that does (playwright enables
    Network to report every WebSocket frame, its payload included) makes the browser copy each frame to it, a cost
    that is not the terminal's."""

    def __init__(self, profile: Path) -> None:
        # The child's ends above 9, so that moving them to 3 and 4 in the child never closes one of them (bash:
        # dash takes single-digit descriptors only).
        to_child, self._to_child = os.pipe()
        self._from_child, from_child = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
        os.close(to_child)
        os.close(from_child)
        to_child, from_child = high
        flags = ["--headless", "--no-sandbox", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                 "--hide-scrollbars", "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows", "--window-size=1200,800", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-', CHROMIUM,
             *flags], pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(to_child)
        os.close(from_child)
        self._next, self._buffer = 0, b""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next((t["targetId"] for t in targets if t["type"] == "page"), None)
        if page is None:
            page = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=1200, height=800, deviceScaleFactor=1, mobile=False,
                  session=True)

    def call(self, method: str, session: bool = False, timeout: float = 120, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                got = json.loads(raw)
                if got.get("id") == self._next:
                    if "error" in got:
                        raise RuntimeError(f"web: {method}: {got['error']}")
                    return dict(got["result"])
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise RuntimeError(f"web: no answer to {method} within {timeout:g} s")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("web: chromium ended")
            self._buffer += chunk

    def evaluate(self, function: str, arg: Any = None, timeout: float = 120) -> Any:
        """`function` (a JavaScript function's source) called with `arg` in the page, its promise awaited: the
        value."""
        got = self.call("Runtime.evaluate", session=True, timeout=timeout, awaitPromise=True, returnByValue=True,
                        expression=f"({function})({json.dumps(arg)})")
        if "exceptionDetails" in got:
            details = got["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"web: in the page: {text}")
        return got["result"].get("value")

    def wait(self, function: str, what: str, arg: Any = None, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(function, arg)
            if value:
                return value
            time.sleep(0.1)
        raise RuntimeError(f"web: timed out waiting for {what}")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def url(self) -> str:
        return str(self.evaluate("() => location.href"))

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


class Web:
    """The terminal page in one headless Chromium, logged in; a fresh session per measurement."""

    key = "web"

    def __init__(self, site: Site, shots: str | None, profile: Path) -> None:
        self.site, self.shots = site, shots
        self.browser = Cdp(profile)
        # Buildbot's /auth/login with HTTP basic auth (the credentials in the address) sets the session cookie.
        self.browser.goto(site.sandbox.url.replace("://", f"://{USER}:{PASSWORD}@") + "auth/login")
        deadline = time.monotonic() + 60
        while not any(c["name"] == "TWISTED_SESSION" for c in self.browser.call("Storage.getCookies")["cookies"]):
            if time.monotonic() > deadline:
                raise RuntimeError("web: no session cookie after logging in")
            time.sleep(0.2)

    def close(self) -> None:
        self.browser.close()

    def status(self) -> str:
        return str(self.browser.evaluate(
            "() => { const e = document.querySelector('.slaveshell-status');"
            " return e ? e.getAttribute('data-status') : ''; }"))

    def wait_status(self, pattern: str) -> str:
        self.browser.wait(
            "p => { const e = document.querySelector('.slaveshell-status');"
            " return e && new RegExp(p).test(e.getAttribute('data-status')); }", f"the status {pattern!r}", pattern)
        return self.status()

    def click(self, selector: str) -> None:
        self.browser.wait("s => { const e = document.querySelector(s); if (!e) return false; e.click(); return true; }",
                          f"{selector} to click", selector)

    @contextmanager
    def session(self) -> Iterator[Cdp]:
        """A new session from the terminal page, its prompt set to `P> ` as bench/run.py's spawn_shell does, the
        bench's listener on its socket; ended after."""
        page = self.browser
        try:
            # The fleet page first, drawn, so that the terminal's address mounts a new terminal (from the address
            # it had, or through a hash changed twice in one go, the page would keep the ended one).
            page.goto(self.site.sandbox.url + "#/slaveshell")
            page.wait("() => !!document.querySelector(\"tr[data-worker='w1']\")", "the fleet page")
            page.goto(self.site.sandbox.url + "#/slaveshell/terminal/w1")
            self.click("button.slaveshell-start")
            self.wait_status("^connected$")
            if page.evaluate(INSTALL) != 1:
                raise RuntimeError("web: the page's socket is not open")
            page.wait("""() => { const b = window.slaveshellTerminal.buffer.active;
                for (let i = 0; i < b.length; i++) if (/[#$]\\s*$/.test(b.getLine(i).translateToString()))
                  return true; return false; }""", "the shell's prompt")
            page.evaluate("""async () => { const B = window.slaveshellBench, p = B.expect("P> ", 30000);
                B.term.input("bind 'set enable-bracketed-paste off' 2>/dev/null; PS1='P''> '\\r", true);
                await p; }""")
            yield page
        except Exception as e:
            self.shot(f"failed-{time.strftime('%H%M%S')}.png")
            raise RuntimeError(f"{e} (the page at {page.url()}, its status {self.status()!r})") from None
        finally:
            if page.evaluate("() => !!document.querySelector('button.slaveshell-end')"):
                self.click("button.slaveshell-end")
                self.wait_status("session ended")

    def shot(self, name: str) -> None:
        if self.shots:
            os.makedirs(self.shots, exist_ok=True)
            self.browser.screenshot(os.path.join(self.shots, name))

    def echo(self, count: int, spacing_ms: int) -> list[list[float]]:
        with self.session() as page:
            got = page.evaluate(ECHO, {"count": count, "spacing": spacing_ms}, timeout=count * 40 + 60)
            self.shot(f"echo-{spacing_ms}ms.png")
        return [[float(x) for x in row] for row in got]

    def cat(self, path: Path, size: int) -> tuple[float, float, int]:
        """MB/s received and written, and the bytes the page received."""
        with self.session() as page:
            got = page.evaluate(CAT, {"command": f"cat {path}; echo {MARKER}", "marker": MARKER_OUT,
                                      "timeout": 900_000}, timeout=960)
            self.shot(f"cat-{path.name}.png")
        if got["bytes"] < size:  # a terminal's output may be longer (\n -> \r\n), never shorter
            raise RuntimeError(f"web: the page received {got['bytes']} of {size} bytes")
        first = float(got["first"])
        return (size / MB / max(float(got["recv"]) - first, 1e-3) * 1000,
                size / MB / max(float(got["written"]) - first, 1e-3) * 1000, int(got["bytes"]))

    def ctrlc(self, flood: float) -> tuple[float, float, int]:
        with self.session() as page:
            got = page.evaluate(CTRLC, {"flood": flood * 1000})
            self.shot("ctrlc.png")
        return float(got["recv"]), float(got["written"]), int(got["bytes"])


@dataclass
class Row:
    metric: str
    unit: str
    web: list[float] = field(default_factory=list)
    cli: list[float] = field(default_factory=list)
    cpu_web: dict[str, list[float]] = field(default_factory=dict)
    cpu_cli: dict[str, list[float]] = field(default_factory=dict)

    def ratios(self) -> list[float]:
        return [w / c for w, c in zip(self.web, self.cli, strict=False) if c]


@dataclass
class Step:
    """One measurement per side and round: the rows it fills (the CLI's figure in each row it compares with)."""

    rows: list[Row]
    web: Callable[[], list[float]]
    cli: Callable[[], list[float]]
    gb: float = 0.0  # data moved, for the CPU columns (the first row's)


def metered(run: Callable[[], list[float]], servers: Servers, client: str) -> tuple[list[float], dict[str, float]]:
    """run()'s figures, and the CPU seconds spent meanwhile: master, worker, and the browser or the CLI client."""
    before, b0 = servers.now(), browser_cpu() if client == "browser" else 0.0
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = run()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.3)  # the remote command reaped
    cpu = {name: seconds - before[name] for name, seconds in servers.now().items()}
    if client == "browser":
        cpu["browser"] = browser_cpu() - b0
    else:
        cpu["client"] = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return figures, cpu


def steps(parts: set[str], kinds: list[str], files: dict[str, Path], size: int, keys: int, slow_keys: int,
          web: Web, site: Site) -> list[Step]:
    out: list[Step] = []
    if "echo" in parts:
        for spacing, count in ((10, keys), (100, slow_keys)):
            def web_echo(spacing: int = spacing, count: int = count) -> list[float]:
                got = web.echo(count, spacing)
                recv, painted = [g[0] for g in got], [g[2] for g in got]
                return [med(recv), med(painted), p99(recv), p99(painted)]

            def cli_echo(spacing: int = spacing, count: int = count) -> list[float]:
                rtts = echo_rtts(site, count, spacing / 1000)
                return [med(rtts), med(rtts), p99(rtts), p99(rtts)]
            at = f"{count} keys {spacing} ms apart"
            out.append(Step([Row(f"keystroke echo, median, {at}: received in the page", "ms"),
                             Row(f"keystroke echo, median, {at}: drawn (the next frame)", "ms"),
                             Row(f"keystroke echo, p99, {at}: received in the page", "ms"),
                             Row(f"keystroke echo, p99, {at}: drawn (the next frame)", "ms")], web_echo, cli_echo))
    if "throughput" in parts:
        for kind in kinds:
            path = files[kind]

            def web_cat(path: Path = path) -> list[float]:
                recv, written, _ = web.cat(path, size)
                return [recv, written]

            def cli_cat(path: Path = path) -> list[float]:
                rate = output_rate(Side("cli", site, Tools(site.sandbox, None)), path, size, True)
                return [rate, rate]
            name = "binary (base64 lines)" if kind == "binary" else kind
            out.append(Step([Row(f"`cat` {size // MB} MB, {name}: received in the page", "MB/s"),
                             Row(f"`cat` {size // MB} MB, {name}: written by the terminal", "MB/s")],
                            web_cat, cli_cat, size / GB))
    if "ctrlc" in parts:
        def web_ctrlc() -> list[float]:
            recv, written, after = web.ctrlc(0.7)
            return [recv, written, float(after)]

        def cli_ctrlc() -> list[float]:
            ms, after = ctrl_c_latency(site)
            return [ms, ms, float(after)]
        out.append(Step([Row("Ctrl-C under a flood, to the prompt: received in the page", "ms"),
                         Row("Ctrl-C under a flood, to the prompt: written by the terminal", "ms"),
                         Row("Ctrl-C under a flood, bytes after ^C", "bytes")], web_ctrlc, cli_ctrlc))
    return out


def run_rounds(rows: list[Step], rounds: int, servers: Servers) -> None:
    for r in range(rounds):
        for i, step in enumerate(rows):
            for key in ("web", "cli") if (r + i) % 2 == 0 else ("cli", "web"):
                run = step.web if key == "web" else step.cli
                for attempt in (1, 2):
                    try:
                        figures, cpu = metered(run, servers, "browser" if key == "web" else "client")
                        break
                    except Exception as e:  # once more, said on stderr; a second failure ends the run
                        if attempt == 2:
                            raise
                        print(f"bench: round {r + 1}: {step.rows[0].metric}: {key} failed, once more: {e}",
                              file=sys.stderr, flush=True)
                for row, figure in zip(step.rows, figures, strict=True):
                    getattr(row, key).append(figure)
                if step.gb:
                    into = step.rows[0].cpu_web if key == "web" else step.rows[0].cpu_cli
                    for name, seconds in cpu.items():
                        into.setdefault(name, []).append(seconds / step.gb)
            first = step.rows[0]
            print(f"bench: round {r + 1}/{rounds}: {first.metric}: web {first.web[-1]:.2f}, CLI {first.cli[-1]:.2f} "
                  f"{first.unit}", file=sys.stderr, flush=True)


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m = statistics.median(values)
    digits = 0 if abs(m) >= 1000 else 1 if abs(m) >= 10 else 2
    text = f"{m:.{digits}f}"
    return text + (f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else "")


def _cpu(cpu: dict[str, list[float]], names: tuple[str, ...]) -> str:
    got = [(n, med(cpu[n])) for n in names if n in cpu]
    return " + ".join(f"{n} {v:.2f}" for n, v in got) + f" = {sum(v for _, v in got):.2f}" if got else ""


def render(rows: list[Row], title: str) -> str:
    lines = [title, "",
             "| row | web (page) | CLI | ratio web / CLI per round: median (min-max) | "
             "CPU s/GB, medians: web; CLI |",
             "|---|---|---|---|---|"]
    for row in rows:
        r = row.ratios()
        ratio = f"{med(r):.2f}x ({min(r):.2f}-{max(r):.2f})" if r else "-"
        cpu = (f"{_cpu(row.cpu_web, ('browser', 'master', 'worker'))}; "
               f"{_cpu(row.cpu_cli, ('client', 'master', 'worker'))}") if row.cpu_web else ""
        lines.append(f"| {row.metric} ({row.unit}) | {_fmt(row.web)} | {_fmt(row.cli)} | {ratio} | {cpu} |")
    return "\n".join(lines) + "\n"


def prepare(work: Path, kinds: list[str], size: int) -> dict[str, Path]:
    files = {}
    for kind in kinds:
        files[kind] = work / f"content.{kind}"
        if kind != "binary":
            make_content(kind, files[kind], size)
            continue
        rnd = random.Random(25)
        with open(files[kind], "wb") as f:
            for left in range(size, 0, -MB):
                f.write(base64.encodebytes(rnd.randbytes(MB))[:min(MB, left)])
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds, 10 MB, fewer keys: proves the harness")
    ap.add_argument("--smoke", action="store_true", help="1 round, tiny sizes (the test suite's)")
    ap.add_argument("--only", metavar="PARTS", help=f"comma-separated, of: {','.join(PARTS)}")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"content kinds, of: {','.join(KINDS)}")
    ap.add_argument("--size-mb", type=int, default=100, help="the file `cat` prints (default 100)")
    ap.add_argument("--keys", type=int, default=300, help="keystrokes 10 ms apart (default 300)")
    ap.add_argument("--slow-keys", type=int, default=50, help="keystrokes 100 ms apart (default 50)")
    ap.add_argument("--screenshots", metavar="DIR", help="a screenshot of the page after each web measurement")
    ap.add_argument("--output", help="also write the table to this file")
    args = ap.parse_args()
    parts = set(args.only.split(",")) if args.only else set(PARTS)
    kinds = args.kinds.split(",")
    if parts - set(PARTS) or set(kinds) - set(KINDS):
        ap.error(f"parts: {','.join(PARTS)}; kinds: {','.join(KINDS)}")
    if not os.path.exists(CHROMIUM):
        ap.error(f"no {CHROMIUM} (apt-get install chromium)")
    if args.smoke:
        args.rounds, args.size_mb, args.keys, args.slow_keys = 1, 1, 10, 3
    elif args.quick:
        args.rounds, args.size_mb, args.keys, args.slow_keys = 2, 10, 100, 10
    size = args.size_mb * MB
    signal.signal(signal.SIGTERM, lambda _n, _f: sys.exit(143))  # still stops the browser and the sandbox
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="slaveshell-web-bench-"))
    site = Site(work)
    web: Web | None = None
    try:
        files = prepare(work, kinds, size) if "throughput" in parts else {}
        site.start()
        web = Web(site, args.screenshots, work / "chromium")
        rows = steps(parts, kinds, files, size, args.keys, args.slow_keys, web, site)
        run_rounds(rows, args.rounds, Servers(site))
        report = render([row for step in rows for row in step.rows],
                        f"## The web terminal against the CLI, through the same master\n\n`python3 bench/web_bench.py "
                        f"{' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M')} ({os.cpu_count()} cores, "
                        f"load {os.getloadavg()[0]:.1f}); {args.rounds} rounds, alternated.")
    finally:
        if web is not None:
            web.close()
        site.stop()
        shutil.rmtree(work, ignore_errors=True)
    report += f"\n({time.monotonic() - started:.0f} s)\n"
    print(report)
    if args.output:
        Path(args.output).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
