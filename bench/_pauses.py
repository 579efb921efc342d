"""Stalls of a benchmark process, recorded so that a bad second of a latency run can be attributed.

The operator's own :class:`~branch_operator.ops.stalls.StallMonitor` does the measuring (event-loop lag from
a timer, garbage-collection pauses from ``gc.callbacks``); this keeps what it measures with wall-clock
times (``time.time()``), so that records of several processes can be laid side by side, instead of
logging it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from branch_operator.ops.stalls import StallMonitor


class PauseRecorder:
    def __init__(self, min_ms: float = 10.0, tick: float = 0.02, keep: int = 10_000) -> None:
        self.min_ms = min_ms
        self.gc: deque[tuple[float, float, int]] = deque(maxlen=keep)  # (at, ms, generation)
        self.lag: deque[tuple[float, float]] = deque(maxlen=keep)  # (at, ms late)
        self._monitor = StallMonitor(warn_ms=float("inf"), tick=tick, on_lag=self._on_lag, on_gc=self._on_gc)
        self._task: asyncio.Task[None] | None = None

    def _on_lag(self, seconds: float) -> None:
        if 1000 * seconds >= self.min_ms:
            self.lag.append((time.time(), 1000 * seconds))

    def _on_gc(self, generation: int, seconds: float) -> None:
        if 1000 * seconds >= self.min_ms:
            self.gc.append((time.time(), 1000 * seconds, generation))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._monitor.run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def since(self, t0: float, t1: float) -> dict[str, list[list[float]]]:
        return {"gc": [list(x) for x in self.gc if t0 <= x[0] <= t1],
                "lag": [list(x) for x in self.lag if t0 <= x[0] <= t1]}
