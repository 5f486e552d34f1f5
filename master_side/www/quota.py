"""`Quota`: places per key and in total, for the web door's sockets (master_side.www.terminal_ws). The door keeps
one quota for what authorization admitted and tighter ones for the rest, so that those never take the places of
the others."""

from __future__ import annotations


class Quota:
    """At most `per_key` places per key and `total` in all: `take(key)` gives one (True) or refuses (False);
    `give_back(key)` returns one."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self.held: dict[object, int] = {}

    def __len__(self) -> int:
        return sum(self.held.values())

    def refusal(self, key: object) -> str | None:
        """Why no place is left for `key` ("per_key" or "total"), or None."""
        if self.held.get(key, 0) >= self.per_key:
            return "per_key"
        if len(self) >= self.total:
            return "total"
        return None

    def take(self, key: object) -> bool:
        if self.refusal(key) is not None:
            return False
        self.held[key] = self.held.get(key, 0) + 1
        return True

    def give_back(self, key: object) -> None:
        left = self.held.get(key, 0) - 1
        if left > 0:
            self.held[key] = left
        else:
            self.held.pop(key, None)
