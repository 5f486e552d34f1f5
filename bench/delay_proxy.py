"""A TCP proxy on 127.0.0.1 that behaves like a WAN link, without touching the machine's loopback (netem on `lo`
would slow every other process's loopback too). For benchmarks only.

Each direction of each connection is a link of its own: a bottleneck of `rate_mbit` (a token bucket whose bucket
holds one read of 16 KiB: bytes leave at the rate, a read at a time), in front of it a queue of at most `queue_ms`
worth of bytes at that rate (a router's buffer: when it is full the proxy stops reading, and the sender's TCP
pushes back), then a fixed one-way delay of rtt/2 plus, when asked, a uniform random jitter of 0..`jitter_ms`
(bytes stay in order, as TCP delivers them). Without a rate, bytes are only delayed (reads of 256 KiB, at most
16 MiB held per direction).

    proxy = DelayProxy(target_port, one_way_s=0.010, rate_mbit=50); proxy.start(); ... proxy.port ...; proxy.stop()
    proxy.configure(one_way_s=0.1, rate_mbit=50, jitter_s=0.005)   # applies to the next bytes, open links too

As its own process (the benchmark's own loops then do not share a GIL with it):

    python3 bench/delay_proxy.py --target PORT --rtt-ms 100 --rate-mbit 50 [--jitter-ms 5] [--queue-ms 100]

prints `port N` once listening; each line on its stdin `RTT_MS RATE_MBIT JITTER_MS [QUEUE_MS]` reconfigures it
(answered `ok`), `bytes` asks for the bytes it has delivered so far, over all its connections (answered
`bytes TO_TARGET FROM_TARGET`); it exits when its stdin closes. `ProxyProcess` runs it so.

What it does not model: packet loss, TCP's own congestion window (each side's TCP sees a loopback peer; the
application's own windows, an SSH channel's or slaveshell's credits, see the whole delay), and the TCP handshake's
round trip (a connection is accepted locally: this costs OpenSSH's connection nothing it would pay in life,
so it does not flatter slaveshell, whose worker connection is already up).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

HELD_MAX = 16 * 1024 * 1024  # bytes held per direction, past the bottleneck's queue, at most


class DelayProxy:
    def __init__(self, target_port: int, one_way_s: float, rate_mbit: float = 0, jitter_s: float = 0,
                 queue_s: float | None = None) -> None:
        self.target_port = target_port
        self.port = 0
        # Bytes delivered so far, over every connection: [to the target, from the target to the connecting side].
        self.delivered = [0, 0]
        self._server: asyncio.Server | None = None
        self.configure(one_way_s, rate_mbit, jitter_s, queue_s)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    def configure(self, one_way_s: float, rate_mbit: float = 0, jitter_s: float = 0,
                  queue_s: float | None = None) -> None:
        """The link's settings for the bytes read from now on (one-way delay, Mbit/s with 0 for no cap, jitter,
        the bottleneck's queue: by default one round trip's worth, at least 20 ms)."""
        self.delay = one_way_s
        self.rate = rate_mbit * 1e6 / 8  # bytes per second; 0: no cap
        self.jitter = jitter_s
        self.queue = queue_s if queue_s is not None else max(2 * one_way_s, 0.020)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay proxy did not start")

    def stop(self) -> None:
        """Close the listener and every open link, then end the proxy's thread."""
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer, 0), self._pipe(up_reader, writer, 1))
        except asyncio.CancelledError:  # stop(): end quietly (asyncio reports a cancelled connection task)
            writer.close()
            up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: int) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        held = 0  # bytes read and not yet delivered
        room = asyncio.Event()
        room.set()

        async def deliver() -> None:
            nonlocal held
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.close()
                    return
                writer.write(data)
                self.delivered[way] += len(data)
                await writer.drain()
                held -= len(data)
                if held <= HELD_MAX:
                    room.set()

        sender = asyncio.ensure_future(deliver())
        link_free = 0.0  # when the bottleneck has sent everything it was given
        last_due = 0.0
        try:
            while True:
                data = await reader.read(16 * 1024 if self.rate else 256 * 1024)
                now = time.monotonic()
                sent = now
                if self.rate:
                    link_free = max(now, link_free) + len(data) / self.rate
                    sent = link_free
                jitter = random.uniform(0, self.jitter) if self.jitter else 0.0
                last_due = max(last_due, sent + self.delay + jitter)  # in order, as TCP delivers
                held += len(data)
                queue.put_nowait((last_due, data))
                if not data:
                    break
                if self.rate:  # the bottleneck's queue is full: stop reading until it has room
                    backlog = link_free - time.monotonic()
                    if backlog > self.queue:
                        await asyncio.sleep(backlog - self.queue)
                if held > HELD_MAX:
                    room.clear()
                    await room.wait()
            await sender
        except (OSError, asyncio.CancelledError):
            sender.cancel()
            writer.close()


class ProxyProcess:
    """delay_proxy.py run as a process of its own, reconfigured through its stdin."""

    def __init__(self, target_port: int, rtt_ms: float, rate_mbit: float = 0, jitter_ms: float = 0,
                 queue_ms: float | None = None) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--target", str(target_port), "--rtt-ms",
                str(rtt_ms), "--rate-mbit", str(rate_mbit), "--jitter-ms", str(jitter_ms)]
        if queue_ms is not None:
            argv += ["--queue-ms", str(queue_ms)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "port":
            self.proc.kill()
            raise RuntimeError(f"the delay proxy did not start: {line!r}")
        self.port = int(line[1])

    def configure(self, rtt_ms: float, rate_mbit: float = 0, jitter_ms: float = 0,
                  queue_ms: float | None = None) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        fields = [rtt_ms, rate_mbit, jitter_ms] + ([queue_ms] if queue_ms is not None else [])
        self.proc.stdin.write(" ".join(str(f) for f in fields) + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError("the delay proxy did not take its new settings")

    def delivered(self) -> tuple[int, int]:
        """The bytes delivered so far, over all connections: to the target, and from it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("bytes\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if len(answer) != 3 or answer[0] != "bytes":
            raise RuntimeError(f"the delay proxy did not say its bytes: {answer!r}")
        return int(answer[1]), int(answer[2])

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _settings(fields: list[str]) -> tuple[float, float, float, float | None]:
    rtt, rate, jitter = (float(f) for f in fields[:3])
    return rtt / 2000, rate, jitter / 1000, float(fields[3]) / 1000 if len(fields) > 3 else None


async def _delivered(proxy: DelayProxy) -> tuple[int, int]:
    return proxy.delivered[0], proxy.delivered[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=int, required=True, help="the port on 127.0.0.1 to forward to")
    ap.add_argument("--rtt-ms", type=float, default=0)
    ap.add_argument("--rate-mbit", type=float, default=0, help="each direction's cap (0: none)")
    ap.add_argument("--jitter-ms", type=float, default=0)
    ap.add_argument("--queue-ms", type=float, default=None, help="the bottleneck's queue (default: one RTT)")
    args = ap.parse_args()
    proxy = DelayProxy(args.target, args.rtt_ms / 2000, args.rate_mbit, args.jitter_ms / 1000,
                       None if args.queue_ms is None else args.queue_ms / 1000)
    proxy.start()
    print(f"port {proxy.port}", flush=True)
    for line in sys.stdin:
        fields = line.split()
        if fields == ["bytes"]:
            # Read in the proxy's thread: its two counts from the same moment.
            counts = asyncio.run_coroutine_threadsafe(_delivered(proxy), proxy._loop).result(10)
            print(f"bytes {counts[0]} {counts[1]}", flush=True)
        elif len(fields) in (3, 4):
            proxy._loop.call_soon_threadsafe(proxy.configure, *_settings(fields))
            print("ok", flush=True)
        else:
            print("error: RTT_MS RATE_MBIT JITTER_MS [QUEUE_MS], or bytes", flush=True)
    proxy.stop()


if __name__ == "__main__":
    main()
