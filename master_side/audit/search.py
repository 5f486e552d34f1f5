"""`slaveshell search` on the master: what was shown ('o') and typed ('i') in transcripts, and the files a transfer
kept (its 'o' events and attached bytes, master_side.copying.record), escape sequences stripped,
case-insensitive, read one event at a time; and the reason each session or transfer was opened for (its row's
`reason`: a hit of stream "reason" at time 0, before the transcript's).

Memory is bounded whatever a session held: one line of the transcript, one attached chunk (at most a bulk
message, slaveshell.vocabulary.flow.BULK_CHUNK) and, per stream, the last ``len(needle) - 1 + CONTEXT`` characters (a
word split across events is still found). Reading a whole transcript at once cost about 16 bytes of memory per
byte of output (events, the stream joined, lowered; four bytes a character once one is outside Latin-1): 2.1 GB
for a 128 MiB `-T` session, so a session's output could take the master down when an auditor searched it.

Blocking file work: call `search` from a thread (the audit trail does), never from the reactor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from master_side.audit.export import iter_cast
from master_side.audit.rows import SearchHit, SessionRow
from slaveshell.vocabulary import hidden as hidden_input
from slaveshell.vocabulary.transcript import strip_ansi

# Characters of context shown either side of a hit.
CONTEXT = 40
STREAMS = {"o": "output", "i": "input"}


def fold(text: str) -> str:
    """Lower case, one character for one: ``str.lower`` turns U+0130 (capital I with a dot) into two characters,
    which shifted every later hit's context and time by one (a session's output could make a hit show text
    other than what matched). Search is case-insensitive through this."""
    return text.replace("\u0130", "i").lower()


@dataclass
class _Hit:
    index: int  # where it starts in the stream (characters of stripped text)
    time: float
    before: str  # up to CONTEXT characters before it, and the match
    after: str = ""  # up to CONTEXT characters after it, as they come


@dataclass
class _Stream:
    """One stream of one transcript being searched: the tail of its text kept for matches and contexts that
    span events, and the hits still waiting for their context after."""

    needle: str
    tail: str = ""
    tail_start: int = 0  # where `tail` starts in the stream
    times: list[tuple[int, float]] = field(default_factory=list)  # (start, time) of the events in `tail`
    search_from: int = 0  # matches do not overlap: the next may start here
    waiting: list[_Hit] = field(default_factory=list)

    def add(self, time: float, text: str, found: list[_Hit], limit: int) -> None:
        """The next event's stripped text; complete hits appended to `found` (up to `limit` in all)."""
        for hit in self.waiting:
            hit.after += text[: CONTEXT - len(hit.after)]
        found += [hit for hit in self.waiting if len(hit.after) >= CONTEXT]
        self.waiting = [hit for hit in self.waiting if len(hit.after) < CONTEXT]
        start = self.tail_start + len(self.tail)
        if self.times and self.times[-1][0] == start:
            self.times[-1] = (start, time)  # the one before added no text: a hit here is in this event
        else:
            self.times.append((start, time))
        buf = self.tail + text
        folded = fold(buf)
        needle = self.needle
        index = folded.find(needle, self.search_from - self.tail_start)
        while index >= 0 and len(found) + len(self.waiting) < limit:
            at = self.tail_start + index
            end = index + len(needle)
            hit = _Hit(at, self._time_at(at), buf[max(0, index - CONTEXT): end], buf[end: end + CONTEXT])
            (found if len(hit.after) >= CONTEXT else self.waiting).append(hit)
            self.search_from = at + len(needle)
            index = folded.find(needle, end)
        keep = len(needle) - 1 + CONTEXT
        cut = max(0, len(buf) - keep)
        self.tail, self.tail_start = buf[cut:], self.tail_start + cut
        self.search_from = max(self.search_from, self.tail_start)
        while len(self.times) > 1 and self.times[1][0] <= self.tail_start:
            del self.times[0]

    def _time_at(self, at: int) -> float:
        """The time of the event that shows the character at `at` (the first event's for one before it)."""
        for start, time in reversed(self.times):
            if start <= at:
                return time
        return self.times[0][1]

    def end(self, found: list[_Hit]) -> None:
        found += self.waiting
        self.waiting = []


def search(paths: list[tuple[SessionRow, str | None]], needle: str, limit: int) -> list[SearchHit]:
    """Up to `limit` hits of `needle` in the transcripts `paths` (those None or missing are skipped, as are
    files that are not transcripts), in order: transcript, stream ('o' then 'i'), place."""
    hits: list[SearchHit] = []
    folded = fold(needle)
    for row, path in paths:
        if len(hits) >= limit:
            break
        reason = row.get("reason")
        if isinstance(reason, str) and folded in fold(reason):
            hits.append({"session": row["id"], "worker": row["worker"], "operator": row["operator"],
                         "started": row["started"], "time": 0.0, "hidden": hidden_input.summary(row),
                         "hidden_flag": bool(row.get("hidden_flag")), "stream": "reason", "context": reason})
            if len(hits) >= limit:
                break
        if path is None or not os.path.exists(path):
            continue
        try:
            found = _search_one(path, folded, limit - len(hits))
        except ValueError:
            continue  # not a transcript, or broken before its end: nothing found in it is kept
        for code, stream_hits in found.items():
            for hit in sorted(stream_hits, key=lambda h: h.index):
                hits.append({"session": row["id"], "worker": row["worker"], "operator": row["operator"],
                             "started": row["started"], "time": round(hit.time, 3),
                             "hidden": hidden_input.summary(row), "hidden_flag": bool(row.get("hidden_flag")),
                             "stream": _stream_name(row, code),
                             "context": (hit.before + hit.after).replace("\n", " ")})
    return hits[:limit]


def _stream_name(row: SessionRow, code: str) -> str:
    """"output" or "input"; a transfer's `o` events are the files it kept (master_side.copying.record): "file"."""
    return "file" if code == "o" and row.get("term") == "transfer" else STREAMS[code]


def _search_one(path: str, needle: str, limit: int) -> dict[str, list[_Hit]]:
    streams = {code: _Stream(needle) for code in STREAMS}
    found: dict[str, list[_Hit]] = {code: [] for code in STREAMS}
    for event in iter_cast(path):
        stream = streams.get(event.code)
        if stream is not None and isinstance(event.data, str):
            stream.add(event.time, strip_ansi(event.data), found[event.code], limit)
    for code, stream in streams.items():
        stream.end(found[code])
    # The output's hits come first, as many as the limit takes; then the input's.
    output = found["o"][:limit]
    return {"o": output, "i": found["i"][: limit - len(output)]}
