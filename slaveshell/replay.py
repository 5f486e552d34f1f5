"""Real-time playback of a transcript to a terminal, as `asciinema play` does it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import BinaryIO

from .display import visible
from .transcript import Cast, event_bytes


def play(cast: Cast, out: BinaryIO, speed: float = 1.0, idle_limit: float | None = None,
         sleep: Callable[[float], None] = time.sleep) -> None:
    """Write the output events with their original pauses (divided by `speed`, each capped at `idle_limit`)."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    if idle_limit is None:
        limit = cast.header.get("idle_time_limit")
        idle_limit = float(limit) if isinstance(limit, int | float) and not isinstance(limit, bool) else None
    last = 0.0
    events = cast.events
    for i, event in enumerate(events):
        if event.code != "o":
            continue
        pause = event.time - last
        last = event.time
        if idle_limit is not None:
            pause = min(pause, idle_limit)
        if pause > 0:
            sleep(pause / speed)
        # The exact bytes when the transcript has them (output that was not UTF-8).
        out.write(event_bytes(events, i))
        out.flush()


def is_transfer(cast: Cast) -> bool:
    """A `slaveshell cp` transfer's record (its header's "slaveshell" object says ``"kind": "transfer"``)."""
    meta = cast.header.get("slaveshell")
    return isinstance(meta, dict) and meta.get("kind") == "transfer"


def show_transfer(cast: Cast, out: BinaryIO) -> None:
    """A transfer's record as text: its markers and the text of the files it kept, line by line, every control
    character escaped (slaveshell.display.visible): a file is not terminal output, and an uploaded file's escape
    sequences or bytes must not act on the auditor's terminal."""
    for event in cast.events:
        if event.code == "m":
            out.write(f"# {visible(event.data)}\n".encode())
        elif event.code == "o":
            lines = event.data.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            out.write("".join(f"{visible(line)}\n" for line in lines).encode())
    out.flush()
