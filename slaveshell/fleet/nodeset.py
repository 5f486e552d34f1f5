"""Worker names folded into ClusterShell's compact range form (``w[1-3,7],build-[01-05]``), as its
``NodeSet`` prints them (ClusterShell 1.9+, default settings: every digit run of a name is an axis, no
autostep, mixed zero padding).

The rules, following ClusterShell's ``NodeSet`` and ``RangeSet``/``RangeSetND``:

- A name is split into digit runs and the text between them: ``rack1-n02`` has the pattern ``rack%s-n%s``
  and the indexes ``1`` and ``02``. Names with the same pattern are folded together; patterns are shown in
  the order of their pattern text, joined by commas. A name with no digit is shown as it is.
- An index keeps its digits as written: ``01`` and ``1`` are two indexes. Indexes are ordered by length, then
  text. A range is a run of consecutive numbers with the same padding: a zero-padded index (``07``) only
  continues with indexes of its length, an unpadded one stops at the first padded one; ``09,10`` folds to
  ``09-10``.
- A one-axis pattern with more than one index is shown bracketed (``w[1-3,7]``), a single index bare
  (``w7``). Patterns of several axes are folded as ``RangeSetND`` does: along the one axis that varies when
  only one does (``da[1-4]c1``), otherwise by merging vectors that differ on one axis only.

Names are text the worker chose: callers show the result through `slaveshell.vocabulary.display.visible`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_DIGITS = re.compile(r"([0-9]+)")
MAX_DIGITS = 100

Pattern = tuple[str, ...]  # the texts around the digit runs: one more than the axes
Ranges = frozenset[str]  # one axis's indexes, as written
Vector = tuple[Ranges, ...]


def split(name: str) -> tuple[Pattern, tuple[str, ...]]:
    """`name`'s pattern (the texts between its digit runs) and its indexes (the digit runs). A run longer than
    MAX_DIGITS is text, not an index (ClusterShell refuses such indexes; a name is never refused here)."""
    texts = [""]
    indexes: list[str] = []
    for i, part in enumerate(_DIGITS.split(name)):
        if i % 2 and len(part) <= MAX_DIGITS:
            indexes.append(part)
            texts.append("")
        else:
            texts[-1] += part
    return tuple(texts), tuple(indexes)


def _index_key(index: str) -> tuple[int, str]:
    return (len(index), index)


def _padded(index: str) -> bool:
    return len(index) > 1 and index[0] == "0"


def fold_indexes(indexes: Iterable[str]) -> str:
    """One axis's indexes as ClusterShell's ``RangeSet`` prints them (no autostep): ``1-3,7``, ``01-05``,
    ``1-2,01-02``. A run takes its padding from its first index: ``01`` starts a run that a later index of
    another length breaks."""
    shown: list[str] = []

    def emit(first: int, last: int, pad: int, step: int) -> None:
        if step == 1 or first == last:
            shown.append(f"{first:0{pad}d}" if first == last else f"{first:0{pad}d}-{last:0{pad}d}")
        else:
            shown.extend(f"{i:0{pad}d}" for i in range(first, last + 1, step))

    start = last = step = 0
    pad = -1  # the run's padding (0: unpadded); -1 before the first index
    stepping = False  # whether `step` is the run's step so far
    for index in sorted(set(indexes), key=_index_key):
        value = int(index)
        if pad < 0:
            start = last = value
            pad = len(index) if _padded(index) else 0
            continue
        padding_breaks = len(index) != pad if pad else _padded(index)
        step_breaks = not padding_breaks and stepping and step != value - last
        if padding_breaks or step_breaks:
            if not stepping or step == 1:
                emit(start, last, pad, 1)
                start = value
                pad = len(index) if _padded(index) else 0
            elif padding_breaks:
                emit(start, last, pad, step)
                start = value
                pad = len(index) if _padded(index) else 0
            else:
                emit(start, last - step, pad, step)
                start = last
            stepping = step_breaks
            step = value - last
            last = value
            continue
        stepping = True
        step = value - last
        last = value
    if pad >= 0:
        emit(start, last, pad, step if stepping else 1)
    return ",".join(shown)


def _axis_key(ranges: Ranges) -> tuple[int, str, str]:
    ordered = sorted(ranges, key=_index_key)
    return (-len(ranges), ordered[0], ordered[-1])


def _vector_key(vector: Vector) -> tuple[int, tuple[tuple[int, str, str], ...]]:
    size = 1
    for ranges in vector:
        size *= len(ranges)
    return (-size, tuple(_axis_key(r) for r in vector))


def _merged(one: Vector, other: Vector) -> Vector | None:
    """The vector covering both when they differ on at most one axis (disjoint there, or one containing the
    other), as RangeSetND's merge pass does; None otherwise."""
    merged: list[Ranges] = []
    differ = 0
    for a, b in zip(one, other, strict=True):
        if a == b:
            merged.append(a)
            continue
        differ += 1
        if differ > 1:
            return None
        if not a & b:
            merged.append(a | b)
        elif a > b or a < b:
            merged.append(a if a > b else b)
        else:
            return None
    return tuple(merged)


def _fold_vectors(points: Sequence[tuple[str, ...]]) -> list[Vector]:
    """Several-axes indexes folded as RangeSetND folds them (univariate when one axis varies, else the
    multivariate merge passes)."""
    dims = len(points[0])
    varying = [axis for axis in range(dims) if len({p[axis] for p in points}) > 1]
    if len(varying) == 1:
        axis = varying[0]
        return [tuple(frozenset({p[axis] for p in points}) if i == axis else frozenset({points[0][i]})
                      for i in range(dims))]
    vectors: list[Vector] = [tuple(frozenset({i}) for i in p) for p in sorted(set(points))]
    full = False
    changed = True
    while changed:
        changed = False
        vectors.sort(key=_vector_key)
        first = 0
        while first + 1 < len(vectors):
            item = vectors[first]
            second = first + 1
            first += 1
            while second < len(vectors):
                merged = _merged(item, vectors[second])
                if merged is not None:
                    changed = True
                    item = vectors[first - 1] = merged
                    vectors.pop(second)
                elif not full:
                    break
                else:
                    second += 1
        if not changed and not full:
            changed = full = True
    return vectors


def _shown(pattern: Pattern, vector: Vector) -> str:
    out = [pattern[0]]
    for ranges, text in zip(vector, pattern[1:], strict=True):
        folded = fold_indexes(ranges)
        out.append(f"[{folded}]" if len(ranges) > 1 else folded)
        out.append(text)
    return "".join(out)


def fold(names: Iterable[str]) -> str:
    """`names` in ClusterShell's compact form: ``fold(["w1", "w2", "w3", "w7"]) == "w[1-3,7]"``."""
    by_pattern: dict[Pattern, set[tuple[str, ...]]] = {}
    for name in set(names):
        pattern, indexes = split(name)
        by_pattern.setdefault(pattern, set()).add(indexes)
    shown: list[str] = []
    for pattern in sorted(by_pattern, key="%s".join):
        points = sorted(by_pattern[pattern])
        if len(pattern) == 1:
            shown.append(pattern[0])
        elif len(pattern) == 2:
            shown.append(_shown(pattern, (frozenset(p[0] for p in points),)))
        else:
            shown.extend(_shown(pattern, v) for v in _fold_vectors(points))
    return ",".join(shown)


def count(names: Iterable[str]) -> str:
    """`fold(names)` with ClusterShell's ``(n)`` count when there is more than one name."""
    distinct = set(names)
    folded = fold(distinct)
    return f"{folded} ({len(distinct)})" if len(distinct) > 1 else folded


def natural_key(name: str) -> tuple[tuple[str, ...], tuple[int, ...], str]:
    """Sort key putting ``w2`` before ``w10``: the pattern, then the indexes as numbers, then the name."""
    pattern, indexes = split(name)
    return (pattern, tuple(int(i) for i in indexes), name)
