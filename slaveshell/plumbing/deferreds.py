"""`deferred`: write Twisted code as `async def` (typed `await`s) and still hand callers a `Deferred`.

`@defer.inlineCallbacks` leaves what each `yield` gives back untyped; in an `async def`, `await d` on a
`Deferred[T]` is a `T`. Decorated with `deferred`, the coroutine function returns `Deferred[T]` as an
inlineCallbacks function does, through Twisted's own `Deferred.fromCoroutine` (the same machinery: it runs at
once up to its first wait on an unfired Deferred, an exception fails the returned Deferred, and cancelling that
Deferred cancels the one being awaited). Only Deferreds (and other awaitables) may be awaited.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import ParamSpec, TypeVar

from twisted.internet.defer import Deferred

P = ParamSpec("P")
T = TypeVar("T")


def deferred(fn: Callable[P, Coroutine[Deferred[object], object, T]]) -> Callable[P, Deferred[T]]:
    """`fn` (an `async def`) as a function that returns a Deferred of its result."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return Deferred.fromCoroutine(fn(*args, **kwargs))

    return run
