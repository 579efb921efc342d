"""Time-triggered re-evaluation: wake a Branch's merge reconciliation when its decision may change.

Every evaluation of a READY branch says when the clock alone could change it
(``status.merge.nextEvaluationTime``: a merge window opening or closing, a freeze ending, a timeout
passing, a failed merge's retry). The reconciler hands that time to :class:`Scheduler`, which keeps one
due time per branch and sleeps until the earliest, so nothing polls: an idle operator with a thousand
deferred branches does no work until the first window opens.

The clock is injectable. :class:`ManualClock` is a clock tests (and ``dev`` experiments) move by hand;
moving it wakes every subscribed scheduler, which then fires whatever became due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, Branch name)

# Wall-clock time may jump (NTP, a suspended VM) while asyncio sleeps on the monotonic clock; the
# longest sleep is bounded so a jump delays a due evaluation by at most this long.
MAX_SLEEP_SECONDS = 300.0
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


class Scheduler:
    """One due time per key; ``run`` calls ``fire(key)`` for each key once its time has come."""

    def __init__(self, clock: Callable[[], datetime], fire: Callable[[Key], Awaitable[object]]) -> None:
        self.clock = clock
        self.fire = fire
        self._due: dict[Key, datetime] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fired = 0  # evaluations started by the scheduler (for tests and metrics)

    def schedule(self, key: Key, when: datetime | None) -> None:
        """Replace ``key``'s due time; None forgets the key."""
        if when is None:
            if self._due.pop(key, None) is not None:
                self._wake.set()
            return
        when = when.astimezone(UTC)
        if self._due.get(key) != when:
            self._due[key] = when
            self._wake.set()

    def poke(self) -> None:
        """Re-read the clock now (it was moved, or may have jumped). Safe to call from any thread."""
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

    def due(self, key: Key) -> datetime | None:
        return self._due.get(key)

    def __len__(self) -> int:
        return len(self._due)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            # Cleared before looking, so a schedule() or poke() during the fires below is never lost.
            self._wake.clear()
            now = self.clock()
            ready = sorted((when, key) for key, when in self._due.items() if when <= now)
            for when, key in ready:
                if self._due.get(key) == when:
                    del self._due[key]
                self.fired += 1
                try:
                    await self.fire(key)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("scheduled re-evaluation of %s/%s failed; retrying later", *key)
                    # A failed wake-up must not lose the branch's time-based transition.
                    self._due.setdefault(key, self.clock() + RETRY_AFTER)
            timeout = MAX_SLEEP_SECONDS
            if self._due:
                timeout = min(timeout, max((min(self._due.values()) - self.clock()).total_seconds(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
