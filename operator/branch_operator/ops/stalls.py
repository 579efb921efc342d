"""Event-loop stalls: how long the operator could not run anything, and whether garbage collection was why.

Everything the operator does runs on one asyncio loop, so a callback that holds the CPU for 200 ms, or a
full garbage collection of 200 ms, delays every event being processed by that much. Such a stall is
invisible in per-request timings and hard to tell from a slow API server, so it is measured directly:
a timer that should fire every ``tick`` seconds records how late it fired (the loop lag), and
``gc.callbacks`` time every collection. A lag over the warning threshold is logged with the
collections that fell inside it ("event loop ran 180 ms late, of which garbage collection 150 ms ...")
instead of leaving a latency spike to guesswork. The metrics are the loop-lag histogram and GC pause totals.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# 20 wake-ups a second cost ~0.05% of a core; a coarser tick would hide stalls shorter than itself.
TICK_SECONDS = 0.05


class StallMonitor:
    def __init__(self, warn_ms: float = 100.0, tick: float = TICK_SECONDS,
                 on_lag: Callable[[float], None] | None = None,
                 on_gc: Callable[[int, float], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.warn_ms = warn_ms
        self.tick = tick
        self.on_lag = on_lag  # seconds late, every tick
        self.on_gc = on_gc  # (generation, seconds), every collection
        self.clock = clock
        # (ended at, ms, generation) of recent collections, to attribute a lag to them
        self.recent_gc: deque[tuple[float, float, int]] = deque(maxlen=64)
        self.worst_ms = 0.0
        self._gc_started = 0.0

    def gc_event(self, phase: str, info: dict[str, Any]) -> None:
        """A ``gc.callbacks`` entry."""
        now = self.clock()
        if phase == "start":
            self._gc_started = now
            return
        seconds = now - self._gc_started
        generation = int(info.get("generation", -1))
        self.recent_gc.append((now, 1000 * seconds, generation))
        if self.on_gc is not None:
            self.on_gc(generation, seconds)

    def lag(self, started: float, ended: float) -> float:
        """Record one tick that was due ``tick`` after ``started`` and ran at ``ended``; its lag in ms."""
        late_ms = max(0.0, 1000 * (ended - started - self.tick))
        if self.on_lag is not None:
            self.on_lag(late_ms / 1000)
        if late_ms >= self.warn_ms:
            self.worst_ms = max(self.worst_ms, late_ms)
            log.warning("event loop ran %.0f ms late%s", late_ms, self._attribution(started, ended))
        return late_ms

    def _attribution(self, started: float, ended: float) -> str:
        collections = [(ms, gen) for at, ms, gen in self.recent_gc if started <= at <= ended]
        if not collections:
            # Under load this is queueing (many callbacks each ready to run); when idle, one long callback.
            return ", no garbage collection in it: long or many callbacks, or no CPU for this process"
        longest_ms, generation = max(collections)
        total = sum(ms for ms, _ in collections)
        count = f"{len(collections)} collection" + ("s" if len(collections) > 1 else "")
        longest = f"the longest gen{generation} {longest_ms:.0f} ms"
        return f", of which garbage collection {total:.0f} ms ({count}, {longest})"

    async def run(self) -> None:
        gc.callbacks.append(self.gc_event)
        try:
            while True:
                started = self.clock()
                await asyncio.sleep(self.tick)  # the timer whose lateness is the measurement
                self.lag(started, self.clock())
        finally:
            gc.callbacks.remove(self.gc_event)
