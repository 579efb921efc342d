"""Stalls of a benchmark process, recorded so that a bad second of a latency run can be attributed.

Two kinds: garbage-collector pauses (``gc.callbacks``: every collection of at least ``min_ms``) and
event-loop lag (a timer that should fire every ``tick`` seconds fired late by at least ``min_ms``;
whatever held the loop -- a collection, a long callback -- shows up there). Times are wall-clock
(``time.time()``) so that records of several processes can be laid side by side.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from typing import Any


class PauseRecorder:
    def __init__(self, min_ms: float = 10.0, tick: float = 0.02, keep: int = 10_000) -> None:
        self.min_ms = min_ms
        self.tick = tick
        self.gc: deque[tuple[float, float, int, int]] = deque(maxlen=keep)  # (at, ms, generation, collected)
        self.lag: deque[tuple[float, float]] = deque(maxlen=keep)  # (at, ms late)
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        ms = 1000 * (time.perf_counter() - self._gc_started)
        if ms >= self.min_ms:
            self.gc.append((time.time(), ms, int(info.get("generation", -1)), int(info.get("collected", 0))))

    async def _watch_loop(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.tick)  # the timer whose lateness is the measurement
            late = 1000 * (time.perf_counter() - before - self.tick)
            if late >= self.min_ms:
                self.lag.append((time.time(), late))

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._watch_loop())

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()

    def since(self, t0: float, t1: float) -> dict[str, list[list[float]]]:
        return {"gc": [list(x) for x in self.gc if t0 <= x[0] <= t1],
                "lag": [list(x) for x in self.lag if t0 <= x[0] <= t1]}
