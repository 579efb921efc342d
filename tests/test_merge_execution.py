"""The webhook merge backend in isolation; end to end in tests/e2e/test_policies.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
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

T0 = datetime(2024, 1, 1, tzinfo=UTC)


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


async def test_retries_back_off_jittered_doubling_up_to_the_cap_then_succeed(endpoint: Any, tmp_path: Path) -> None:
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
    # Jittered in the upper half of a window doubling from 0.5 s, capped at 1 s (no Retry-After here).
    low, high = zip(*[(0.25, 0.5), (0.5, 1.0), (0.5, 1.0)], strict=True)
    sleeps = b.sleeps  # type: ignore[attr-defined]
    assert len(sleeps) == 3 and all(lo <= s <= hi for lo, s, hi in zip(low, sleeps, high, strict=True)), sleeps
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
