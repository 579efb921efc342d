"""One timer task over many keyed deadlines (lock expiries, merges blocked too long).

Watch handlers call :meth:`DeadlineScheduler.schedule` / :meth:`cancel` as objects change; a single task
sleeps until the earliest deadline and hands the key to a callback. This replaces one poller per object
(kopf timers would wake every object on an interval, whether it has a deadline or not). The callback
must re-read the object and decide afresh: a deadline is a hint to look, not a verdict.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class DeadlineScheduler(Generic[K]):
    def __init__(
        self, fire: Callable[[K], Awaitable[None]], *, name: str = "deadlines",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.fire = fire
        self.name = name
        self.clock = clock
        self._heap: list[tuple[float, int, K]] = []
        self._current: dict[K, tuple[float, int]] = {}  # the live entry per key; older heap entries are stale
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    def schedule(self, key: K, deadline: datetime) -> None:
        """Fire ``key`` at ``deadline`` (replacing any earlier schedule for it)."""
        when = deadline.timestamp()
        if self._current.get(key, (None,))[0] == when:
            return
        entry = (when, next(self._seq))
        self._current[key] = entry
        heapq.heappush(self._heap, (*entry, key))
        self._wake.set()

    def cancel(self, key: K) -> None:
        if self._current.pop(key, None) is not None:
            self._wake.set()

    def poke(self) -> None:
        """Look at the clock again (a manual clock that was moved calls this)."""
        self._wake.set()

    def deadline(self, key: K) -> datetime | None:
        entry = self._current.get(key)
        return datetime.fromtimestamp(entry[0], UTC) if entry else None

    def __len__(self) -> int:
        return len(self._current)

    async def run(self) -> None:
        while True:
            # Drop heap entries replaced or cancelled since they were pushed.
            while self._heap and self._current.get(self._heap[0][2]) != self._heap[0][:2]:
                heapq.heappop(self._heap)
            self._wake.clear()
            if not self._heap:
                await self._wake.wait()
                continue
            when, _seq, key = self._heap[0]
            delay = when - self.clock().timestamp()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                except TimeoutError:
                    pass
                continue
            heapq.heappop(self._heap)
            del self._current[key]
            try:
                await self.fire(key)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad object must not stop every other deadline
                log.exception("%s: handling %r failed", self.name, key)
