"""The one retry policy (kit/backoff.py) and every outbound caller that uses it, against servers that
answer 429 and 503 with ``Retry-After``: the merge endpoint, the notification webhook, the Kubernetes API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from branch_operator.api.models import Branch
from branch_operator.clients.kube import Transient
from branch_operator.clients.merge_backends import MergeRequest, Outcome, WebhookBackend
from branch_operator.clients.notify import WebhookSink
from branch_operator.domain.incidents import Incident
from branch_operator.kit.backoff import Backoff, RetryLater, call_with_backoff, parse_retry_after

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


# ------------------------------------------------------------------------------------------- the policy


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(NOW + timedelta(seconds=90), usegmt=True), now=NOW) == 90.0
    assert parse_retry_after(format_datetime(NOW - timedelta(seconds=5), usegmt=True), now=NOW) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None


def test_delays_are_jittered_within_a_doubling_window_up_to_the_cap() -> None:
    policy = Backoff(base=0.5, cap=4.0)
    for failures, window in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (80, 4.0)]:
        delays = {policy.delay(failures) for _ in range(200)}
        assert all(window / 2 <= d <= window for d in delays), (failures, min(delays), max(delays))
        assert len(delays) > 100, "the delays must differ (jitter)"


async def test_a_retry_after_is_waited_out_capped_and_the_attempts_are_bounded() -> None:
    sleeps = Sleeps()
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise RetryLater("busy", retry_after=[3.0, 500.0, None][min(calls - 1, 2)])

    with pytest.raises(RetryLater, match="busy"):
        await call_with_backoff(attempt, policy=Backoff(base=1.0, cap=8.0, attempts=4, retry_after_cap=60.0),
                                retry_on=lambda e: isinstance(e, RetryLater), sleep=sleeps)
    assert calls == 4
    assert sleeps[:2] == [3.0, 60.0]  # what the server asked for, then the cap
    assert 2.0 <= sleeps[2] <= 4.0  # no Retry-After: the third window (1 s doubled twice), jittered


async def test_what_the_predicate_refuses_is_not_retried() -> None:
    sleeps = Sleeps()

    async def attempt() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await call_with_backoff(attempt, policy=Backoff(), retry_on=lambda e: isinstance(e, RetryLater),
                                sleep=sleeps)
    assert sleeps == []


# --------------------------------------------------------------------------------- HTTP callers


@pytest_asyncio.fixture
async def busy_server() -> AsyncIterator[tuple[str, list[tuple[int, dict[str, str]]], list[float]]]:
    """Answers from the queue ((status, headers)), then 200; records when each request arrived."""
    answers: list[tuple[int, dict[str, str]]] = []
    arrivals: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        arrivals.append(asyncio.get_running_loop().time())
        status, headers = answers.pop(0) if answers else (200, {})
        return web.Response(status=status, text="{}", headers=headers)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", answers, arrivals
    await runner.cleanup()


REQUEST = MergeRequest(key="merge-1", namespace="ns", name="b", branch_name="feature/b", target_branch="main",
                       policy="p", policy_generation=1, indexing_id="idx", event_id="evt")


async def test_the_merge_endpoint_s_retry_after_is_waited_out(busy_server: Any) -> None:
    url, answers, _ = busy_server
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    answers.extend([(429, {"Retry-After": "12"}), (503, {"Retry-After": later}), (503, {})])
    sleeps = Sleeps()
    backend = WebhookBackend(url, timeout=2, retries=3, backoff=0.5, backoff_max=1.0, sleep=sleeps)
    try:
        result = await backend.execute(REQUEST)
    finally:
        await backend.close()
    assert (result.outcome, result.attempts) == (Outcome.MERGED, 4)
    assert sleeps[0] == 12.0
    assert 28.0 <= sleeps[1] <= 30.0  # the HTTP-date, read a moment later
    assert 0.5 <= sleeps[2] <= 1.0  # no Retry-After: jittered backoff (third window, capped at 1 s)


async def test_a_real_wait_happens_when_the_merge_endpoint_says_so(busy_server: Any) -> None:
    url, answers, arrivals = busy_server
    answers.append((429, {"Retry-After": "1"}))
    backend = WebhookBackend(url, timeout=2, retries=1, backoff=0.01, backoff_max=0.01)
    try:
        result = await backend.execute(REQUEST)
    finally:
        await backend.close()
    assert result.outcome is Outcome.MERGED
    assert arrivals[1] - arrivals[0] >= 0.95  # the backoff alone would have come back after 10 ms


async def test_the_notification_webhook_s_retry_after_is_waited_out(busy_server: Any) -> None:
    url, answers, _ = busy_server
    answers.extend([(429, {"Retry-After": "5"}), (503, {"Retry-After": "3600"})])
    sleeps = Sleeps()
    sink = WebhookSink(url, retries=3, backoff=0.5, sleep=sleeps)
    incident = Incident(kind="indexing_failed", key="k1", namespace="ns", branch="b", branch_name="feature/b",
                        title="Indexing failed", message="failed", at=NOW)
    try:
        await sink.send(incident)
    finally:
        await sink.close()
    assert sleeps == [5.0, 60.0]  # an hour is not waited: the notifier's cap


# ------------------------------------------------------------------------------------- Kubernetes API


async def test_the_api_server_shedding_load_is_asked_again_after_its_retry_after(kube: Any) -> None:
    client, server = kube
    await client.create(Branch.PLURAL, "default", {
        "apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": "b"},
        "spec": {"branchName": "feature/b"}})
    sleeps = Sleeps()
    client.sleep = sleeps
    server.inject_fault(method="GET", path_regex="/branches/b$", status=429, retry_after="2")
    server.inject_fault(method="GET", path_regex="/branches/b$", status=503, retry_after="1")
    obj = await client.get_branch("default", "b")
    assert obj["spec"]["branchName"] == "feature/b"
    assert sleeps == [2.0, 1.0]


async def test_the_api_server_is_not_asked_forever(kube: Any) -> None:
    client, server = kube
    sleeps = Sleeps()
    client.sleep = sleeps
    server.inject_fault(method="GET", path_regex="/branches/b$", status=429, times=-1)
    with pytest.raises(Transient) as raised:
        await client.get_branch("default", "b")
    assert raised.value.status == 429
    assert sleeps == [1.0] * (client.backoff.attempts - 1)  # kube-apiserver's Retry-After: 1


async def test_api_errors_without_retry_after_are_left_to_the_caller(kube: Any) -> None:
    client, server = kube
    sleeps = Sleeps()
    client.sleep = sleeps
    server.inject_fault(method="GET", path_regex="/branches/b$", status=503)  # no Retry-After
    with pytest.raises(Transient):
        await client.get_branch("default", "b")
    assert sleeps == []  # the caller's own retry (a nak, the scheduler) takes it
