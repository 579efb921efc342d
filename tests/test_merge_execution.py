"""The merge scheduler and the webhook backend in isolation (issue 4); end to end in tests/e2e/test_policies.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from branch_operator.clients.merge_backends import (
    EventBackend,
    MergeRequest,
    Outcome,
    WebhookBackend,
    build_backend,
)
from branch_operator.config import Settings
from branch_operator.kit.scheduler import ManualClock, Scheduler

T0 = datetime(2024, 1, 1, tzinfo=UTC)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)  # polling a condition with a deadline


# ---------------------------------------------------------------------------------------------- scheduler


async def test_scheduler_fires_when_the_clock_reaches_each_due_time_and_only_then() -> None:
    clock = ManualClock(T0)
    fired: list[tuple[str, str]] = []

    async def fire(key: tuple[str, str]) -> None:
        fired.append(key)

    scheduler = Scheduler(clock, fire)
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
        await until(lambda: fired == [("ns", "soon")])
        clock.advance(timedelta(hours=5))
        await until(lambda: fired == [("ns", "soon"), ("ns", "late")])
        assert len(scheduler) == 0 and scheduler.fired == 2
    finally:
        task.cancel()


async def test_scheduler_is_woken_from_another_thread() -> None:
    clock = ManualClock(T0)
    fired = asyncio.Event()

    async def fire(key: tuple[str, str]) -> None:
        fired.set()

    scheduler = Scheduler(clock, fire)
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

    scheduler = Scheduler(clock, fire)
    clock.subscribe(scheduler.poke)
    task = asyncio.create_task(scheduler.run())
    try:
        scheduler.schedule(("ns", "b"), T0)
        await until(lambda: calls == 1)
        assert scheduler.due(("ns", "b")) == T0 + timedelta(seconds=30)
        clock.advance(timedelta(seconds=30))
        await until(lambda: calls == 2)
    finally:
        task.cancel()


# ------------------------------------------------------------------------------------------------ backends

REQUEST = MergeRequest(key="merge-1", namespace="ns", name="b", branch_name="feature/b", target_branch="main",
                       policy="p", policy_generation=1, indexing_id="idx", event_id="evt")


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[tuple[int, str]], list[dict[str, str]]]]:
    answers: list[tuple[int, str]] = []
    seen: list[dict[str, str]] = []

    async def merge(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        status, text = answers.pop(0) if answers else (200, "{}")
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_post("/merge", merge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/merge", answers, seen
    await runner.cleanup()


def backend(url: str, **kw: Any) -> WebhookBackend:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    b = WebhookBackend(url, timeout=2, retries=kw.pop("retries", 3), backoff=0.5, backoff_max=1.0, sleep=sleep, **kw)
    b.sleeps = sleeps  # type: ignore[attr-defined]
    return b


async def test_a_client_error_is_not_retried(endpoint: Any) -> None:
    url, answers, seen = endpoint
    answers.append((400, "bad request"))
    b = backend(url)
    try:
        result = await b.execute(REQUEST)
    finally:
        await b.close()
    assert (result.outcome, result.attempts, len(seen)) == (Outcome.FAILED, 1, 1)
    assert "400" in result.detail


async def test_retries_back_off_doubling_up_to_the_cap_then_succeed(endpoint: Any, tmp_path: Path) -> None:
    url, answers, seen = endpoint
    answers.extend([(503, "x"), (429, "slow down"), (502, "x")])
    token = tmp_path / "auth"
    token.write_text("Bearer s3cret\n")
    b = backend(url, auth_header_file=token)
    try:
        result = await b.execute(REQUEST)
    finally:
        await b.close()
    assert (result.outcome, result.attempts) == (Outcome.MERGED, 4)
    assert b.sleeps == [0.5, 1.0, 1.0]  # type: ignore[attr-defined]
    assert {h["Idempotency-Key"] for h in seen} == {"merge-1"}
    assert {h["Authorization"] for h in seen} == {"Bearer s3cret"}


async def test_an_unreachable_endpoint_fails_after_the_retries() -> None:
    b = backend("http://127.0.0.1:9/merge", retries=2)  # the discard port: connection refused
    try:
        result = await b.execute(REQUEST)
    finally:
        await b.close()
    assert (result.outcome, result.attempts) == (Outcome.FAILED, 3)
    assert "unreachable" in result.detail and "after 3 attempts" in result.detail


def test_a_409_without_a_conflict_list_still_records_one() -> None:
    from branch_operator.clients.merge_backends import _conflicts

    assert [c.path for c in _conflicts('{"conflicts": [{"path": "a"}, {"nope": 1}]}')] == ["a"]
    assert [c.path for c in _conflicts("diverged")] == ["<merge endpoint>"]


def test_the_backend_is_chosen_by_configuration() -> None:
    assert isinstance(build_backend(Settings()), EventBackend)
    webhook = build_backend(Settings(merge_backend="webhook", merge_webhook_url="http://oms/merge",
                                     merge_webhook_retries=5))
    assert isinstance(webhook, WebhookBackend) and webhook.retries == 5
    with pytest.raises(ValueError, match="OMS_MERGE_WEBHOOK_URL"):
        build_backend(Settings(merge_backend="webhook"))
