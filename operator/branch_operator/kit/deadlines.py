"""One timer task over many keyed deadlines, and a clock that tests move by hand.

Its users: the merge reconciler's time-based re-evaluations (``status.merge.nextEvaluationTime``: a
merge window opening or closing, a freeze ending, a timeout passing, a failed merge's retry), lock
expiries, and blocked-merge notifications. Watch handlers and reconcilers call
:meth:`DeadlineScheduler.schedule` / :meth:`~DeadlineScheduler.cancel` as objects change; a single task
sleeps until the earliest deadline and hands the key to a callback. Nothing polls (kopf timers would
wake every object on an interval, whether it has a deadline or not): an idle operator with a thousand
deferred branches does no work until the first window opens. The callback must re-read the object and
decide afresh: a deadline is a hint to look, not a verdict.

The clock is injectable. :class:`ManualClock` is a clock tests (and ``dev`` experiments) move by hand;
moving it tells its subscribers (each scheduler's :meth:`~DeadlineScheduler.poke`), which then fire
whatever became due.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

# Wall-clock time may jump (NTP, a suspended VM) while asyncio sleeps on the monotonic clock; the
# longest sleep is bounded so a jump delays a due deadline by at most this long.
MAX_SLEEP_SECONDS = 300.0
# When a failed callback is looked at again, for schedulers whose deadlines must not be lost to one
# failure (a branch's time-based transition); see ``retry_after``.
RETRY_AFTER = timedelta(seconds=30)


class ManualClock:
    """A clock that stands still until moved; ``subscribe`` is told after every move."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when.astimezone(UTC)
        for listener in list(self._listeners):
            listener()

    def advance(self, delta: timedelta) -> datetime:
        self.set(self._now + delta)
        return self._now

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)


class DeadlineScheduler(Generic[K]):
    """One deadline per key; ``run`` calls ``fire(key)`` for each key once its deadline has come.

    ``retry_after``: when ``fire`` fails and has not rescheduled the key itself, look again this much
    later (None: log the failure and forget the key, for callbacks that retry on their own terms).
    """

    def __init__(
        self, fire: Callable[[K], Awaitable[object]], *, name: str = "deadlines",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC), retry_after: timedelta | None = None,
    ) -> None:
        self.fire = fire
        self.name = name
        self.clock = clock
        self.retry_after = retry_after
        self._heap: list[tuple[datetime, int, K]] = []
        self._current: dict[K, tuple[datetime, int]] = {}  # the live entry per key; older heap entries are stale
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fired = 0  # callbacks started (for tests and metrics)

    def schedule(self, key: K, deadline: datetime | None) -> None:
        """Fire ``key`` at ``deadline``, replacing any earlier schedule for it; None cancels it."""
        if deadline is None:
            self.cancel(key)
            return
        when = deadline.astimezone(UTC)
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
        """Look at the clock again (it was moved, or may have jumped). Safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not running: run() reads the clock when it starts
        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            self._wake.set()
        else:
            # A test's ManualClock is moved from the test's thread; asyncio.Event is not thread-safe.
            loop.call_soon_threadsafe(self._wake.set)

    def deadline(self, key: K) -> datetime | None:
        entry = self._current.get(key)
        return entry[0] if entry else None

    def __len__(self) -> int:
        return len(self._current)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            # Drop heap entries replaced or cancelled since they were pushed.
            while self._heap and self._current.get(self._heap[0][2]) != self._heap[0][:2]:
                heapq.heappop(self._heap)
            # Cleared before looking, so a schedule() or poke() during a fire is never lost.
            self._wake.clear()
            timeout = MAX_SLEEP_SECONDS
            if self._heap:
                when, _seq, key = self._heap[0]
                delay = (when - self.clock()).total_seconds()
                if delay <= 0:
                    heapq.heappop(self._heap)
                    del self._current[key]
                    await self._fire(key)
                    continue
                timeout = min(timeout, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _fire(self, key: K) -> None:
        self.fired += 1
        try:
            await self.fire(key)
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad object must not stop every other deadline
            if self.retry_after is None:
                log.exception("%s: handling %r failed", self.name, key)
                return
            log.exception("%s: handling %r failed; retrying in %.0fs", self.name, key,
                          self.retry_after.total_seconds())
            if key not in self._current:  # unless the callback rescheduled it itself
                self.schedule(key, self.clock() + self.retry_after)
