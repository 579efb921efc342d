"""The deadline scheduler: one timer task over keyed deadlines, on the wall clock or a ManualClock."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

from branch_operator.kit.deadlines import RETRY_AFTER, DeadlineScheduler, ManualClock
from tests.waiting import wait_for

T0 = datetime(2024, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------------ on the wall clock


async def test_one_task_fires_deadlines_in_order_and_honours_changes() -> None:
    fired: list[str] = []
    done = asyncio.Event()

    async def fire(key: str) -> None:
        fired.append(key)
        if key == "last":
            done.set()

    s: DeadlineScheduler[str] = DeadlineScheduler(fire)
    now = datetime.now(UTC)
    s.schedule("b", now + timedelta(milliseconds=60))
    s.schedule("a", now + timedelta(milliseconds=20))
    s.schedule("cancelled", now + timedelta(milliseconds=10))
    s.cancel("cancelled")
    s.schedule("moved", now + timedelta(milliseconds=5))
    s.schedule("moved", now + timedelta(milliseconds=80))  # rescheduled later: fires once, at the new time
    s.schedule("last", now + timedelta(milliseconds=100))
    task = asyncio.create_task(s.run())
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        task.cancel()
    assert fired == ["a", "b", "moved", "last"] and len(s) == 0


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    fired: list[str] = []
    done = asyncio.Event()

    async def fire(key: str) -> None:
        if key == "bad":
            raise RuntimeError("boom")
        fired.append(key)
        done.set()

    s: DeadlineScheduler[str] = DeadlineScheduler(fire)
    s.schedule("bad", datetime.now(UTC))
    s.schedule("good", datetime.now(UTC) + timedelta(milliseconds=10))
    task = asyncio.create_task(s.run())
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        task.cancel()
    assert fired == ["good"]


# ------------------------------------------------------------------------------- driven by a ManualClock


async def test_scheduler_fires_when_the_clock_reaches_each_due_time_and_only_then() -> None:
    clock = ManualClock(T0)
    fired: list[tuple[str, str]] = []

    async def fire(key: tuple[str, str]) -> None:
        fired.append(key)

    scheduler = DeadlineScheduler(fire, clock=clock, retry_after=RETRY_AFTER)
    clock.subscribe(scheduler.poke)
    task = asyncio.create_task(scheduler.run())
    try:
        scheduler.schedule(("ns", "late"), T0 + timedelta(hours=2))
        scheduler.schedule(("ns", "soon"), T0 + timedelta(hours=1))
        scheduler.schedule(("ns", "gone"), T0 + timedelta(minutes=1))
        scheduler.schedule(("ns", "gone"), None)  # forgotten: a merged branch has nothing to wait for
        await asyncio.sleep(0.05)  # give a wrong implementation the chance to fire early
        assert fired == [] and len(scheduler) == 2

        clock.advance(timedelta(hours=1))
        await wait_for(lambda: fired == [("ns", "soon")])
        clock.advance(timedelta(hours=5))
        await wait_for(lambda: fired == [("ns", "soon"), ("ns", "late")])
        assert len(scheduler) == 0 and scheduler.fired == 2
    finally:
        task.cancel()


async def test_scheduler_is_woken_from_another_thread() -> None:
    clock = ManualClock(T0)
    fired = asyncio.Event()

    async def fire(key: tuple[str, str]) -> None:
        fired.set()

    scheduler = DeadlineScheduler(fire, clock=clock, retry_after=RETRY_AFTER)
    clock.subscribe(scheduler.poke)
    task = asyncio.create_task(scheduler.run())
    try:
        scheduler.schedule(("ns", "b"), T0 + timedelta(days=3))
        await asyncio.sleep(0.02)
        # Tests move the clock from their own thread while the operator runs on its own loop.
        mover = threading.Thread(target=clock.advance, args=(timedelta(days=3),))
        mover.start()
        mover.join()
        await asyncio.wait_for(fired.wait(), 5)
    finally:
        task.cancel()


async def test_a_failing_wake_up_is_retried_later() -> None:
    clock = ManualClock(T0)
    calls = 0

    async def fire(key: tuple[str, str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("API server unavailable")

    scheduler = DeadlineScheduler(fire, clock=clock, retry_after=RETRY_AFTER)
    clock.subscribe(scheduler.poke)
    task = asyncio.create_task(scheduler.run())
    try:
        scheduler.schedule(("ns", "b"), T0)
        await wait_for(lambda: calls == 1)
        assert scheduler.deadline(("ns", "b")) == T0 + timedelta(seconds=30)
        clock.advance(timedelta(seconds=30))
        await wait_for(lambda: calls == 2)
    finally:
        task.cancel()


async def test_without_retry_after_a_failed_key_is_left_to_its_callback() -> None:
    clock = ManualClock(T0)
    calls = 0

    async def fire(key: str) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    scheduler: DeadlineScheduler[str] = DeadlineScheduler(fire, clock=clock)
    task = asyncio.create_task(scheduler.run())
    try:
        scheduler.schedule("k", T0)
        await wait_for(lambda: calls == 1)
        assert scheduler.deadline("k") is None and len(scheduler) == 0
    finally:
        task.cancel()
