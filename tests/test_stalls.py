"""The stall monitor: loop lag measured, attributed to garbage collection when a collection fell inside it."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest

from branch_operator.ops.metrics import OperatorMetrics
from branch_operator.ops.stalls import StallMonitor
from tests.waiting import wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lag_over_the_threshold_is_logged_with_the_collections_inside_it(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    lags: list[float] = []
    monitor = StallMonitor(warn_ms=100, tick=0.05, on_lag=lags.append, clock=clock)
    started = clock.now
    clock.now += 0.010
    monitor.gc_event("start", {"generation": 2})
    clock.now += 0.150
    monitor.gc_event("stop", {"generation": 2, "collected": 7})
    clock.now += 0.040
    with caplog.at_level(logging.WARNING, logger="branch_operator.ops.stalls"):
        late = monitor.lag(started, clock.now)
    assert late == pytest.approx(150.0)
    assert lags == [pytest.approx(0.150)]
    assert ("event loop ran 150 ms late, of which garbage collection 150 ms (1 collection, the longest gen2 150 ms)"
            in caplog.text)
    assert monitor.worst_ms == pytest.approx(150.0)


def test_a_lag_without_collections_says_so_and_a_small_lag_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    monitor = StallMonitor(warn_ms=100, tick=0.05, clock=clock)
    # A collection that ended before this tick began is not part of its lag.
    monitor.gc_event("start", {"generation": 2})
    clock.now += 0.2
    monitor.gc_event("stop", {"generation": 2})
    with caplog.at_level(logging.WARNING, logger="branch_operator.ops.stalls"):
        assert monitor.lag(clock.now, clock.now + 0.05 + 0.030) == pytest.approx(30.0)
        assert "late" not in caplog.text
        monitor.lag(clock.now + 1, clock.now + 1 + 0.05 + 0.120)
    assert "event loop ran 120 ms late, no garbage collection in it" in caplog.text


async def test_a_blocked_loop_is_measured_and_collections_reach_the_metrics(caplog: pytest.LogCaptureFixture) -> None:
    metrics = OperatorMetrics()
    monitor = StallMonitor(warn_ms=80, tick=0.01, on_lag=metrics.observe_lag, on_gc=metrics.observe_gc)
    task = asyncio.create_task(monitor.run())
    try:
        def ticks() -> float:
            return metrics.registry.get_sample_value("oms_branch_operator_event_loop_lag_seconds_count") or 0

        await wait_for(lambda: ticks() >= 1, timeout=5, what="a first tick")
        with caplog.at_level(logging.WARNING, logger="branch_operator.ops.stalls"):
            time.sleep(0.2)  # noqa: ASYNC251 -- the stall under test: blocking the loop is the point
            await wait_for(lambda: monitor.worst_ms >= 100, timeout=5, what="the stall measured")
        assert "event loop ran" in caplog.text
        gc.collect(2)
        assert (metrics.registry.get_sample_value("oms_branch_operator_gc_pause_seconds_count",
                                                  {"generation": "2"}) or 0) >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert monitor.gc_event not in gc.callbacks  # removed when the monitor stops
