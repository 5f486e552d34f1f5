"""Real-time playback of a transcript to a terminal, as `asciinema play` does it, event by event as they come
(memory: one event, whatever the transcript's size)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import BinaryIO

from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.transcript import Event, event_bytes


def play(header: Mapping[str, object], events: Iterable[Event], out: BinaryIO, speed: float = 1.0,
         idle_limit: float | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
    """Write the output events with their original pauses (divided by `speed`, each capped at `idle_limit`, by
    default the header's `idle_time_limit`). An output event is written once the next event is read: that one
    may hold its exact bytes (an `ob` event, slaveshell.vocabulary.transcript)."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    if idle_limit is None:
        limit = header.get("idle_time_limit")
        idle_limit = float(limit) if isinstance(limit, int | float) and not isinstance(limit, bool) else None
    last = 0.0
    held: Event | None = None

    def write(after: Event | None) -> None:
        assert held is not None
        out.write(event_bytes([held, after] if after is not None else [held], 0))
        out.flush()

    for event in events:
        if held is not None:
            write(event)
            held = None
        if event.code != "o":
            continue
        pause = event.time - last
        last = event.time
        if idle_limit is not None:
            pause = min(pause, idle_limit)
        if pause > 0:
            sleep(pause / speed)
        held = event
    if held is not None:
        write(None)


def is_transfer(header: Mapping[str, object]) -> bool:
    """A `slaveshell cp` transfer's record (its header's "slaveshell" object says ``"kind": "transfer"``)."""
    meta = header.get("slaveshell")
    return isinstance(meta, dict) and meta.get("kind") == "transfer"


def show_transfer(events: Iterable[Event], out: BinaryIO) -> None:
    """A transfer's record as text: its markers and the text of the files it kept, line by line, every control
    character escaped (slaveshell.vocabulary.display.visible): a file is not terminal output, and an uploaded file's
    escape sequences or bytes must not act on the auditor's terminal."""
    for event in events:
        if event.code == "m":
            out.write(f"# {visible(event.data)}\n".encode())
        elif event.code == "o":
            lines = event.data.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            out.write("".join(f"{visible(line)}\n" for line in lines).encode())
    out.flush()
