"""Merge execution: what "merging" a READY branch means, chosen by configuration (``OMS_MERGE_BACKEND``).

* ``event`` (default): the merge is the announcement. Nothing is called before the Branch status
  records the merge; ``com.oms.branch.merged`` on ``oms.branch.merged`` then tells OMS to merge.
* ``webhook``: an HTTP POST to the OMS merge endpoint *before* the status records the merge. The
  request carries the merge's idempotency key (``Idempotency-Key``), so a retry after a timeout or
  after an operator crash merges once. What an answer means is decided by
  :func:`branch_operator.domain.merge.decision.classify_answer`: 2xx is merged; 409 means OMS found
  conflicts (the response's ``conflicts`` list, if any, is recorded); 5xx, 408, 425, 429 and transport
  errors are retried with jittered exponential backoff, a ``Retry-After`` waited out
  (:mod:`branch_operator.kit.backoff`); other 4xx and exhausted retries are a failure.

Either way the announcement (Event, ``com.oms.branch.merged``, audit) follows the status write.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from branch_operator import __version__
from branch_operator.api.models import Conflict
from branch_operator.config import Settings
from branch_operator.domain.merge.decision import Answer, Outcome, classify_answer
from branch_operator.kit.backoff import Backoff, RetryLater, call_with_backoff, parse_retry_after

log = logging.getLogger(__name__)

__all__ = [
    "EventBackend",
    "MergeBackend",
    "MergeRequest",
    "MergeResult",
    "Outcome",
    "WebhookBackend",
    "build_backend",
]

_MAX_DETAIL = 300


@dataclass(frozen=True, slots=True)
class MergeRequest:
    key: str  # idempotency key (domain.merge.trace.merge_key)
    namespace: str
    name: str
    branch_name: str
    target_branch: str
    policy: str | None
    policy_generation: int | None
    indexing_id: str | None
    event_id: str | None
    manual_reason: str | None = None
    requested_by: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "branch_name": self.branch_name,
            "target_branch": self.target_branch,
            "namespace": self.namespace,
            "branch": self.name,
            "policy": self.policy,
            "policy_generation": self.policy_generation,
            "indexing_id": self.indexing_id,
            "correlation_id": self.event_id,
            "merge_id": self.key,
            "manual_request": (
                None if self.manual_reason is None
                else {"reason": self.manual_reason, "requested_by": self.requested_by}
            ),
        }


@dataclass(frozen=True, slots=True)
class MergeResult:
    outcome: Outcome
    detail: str  # what happened, for status and Events
    attempts: int = 1
    conflicts: list[Conflict] = field(default_factory=list)


class MergeBackend(Protocol):
    name: str

    async def execute(self, request: MergeRequest) -> MergeResult: ...

    async def close(self) -> None: ...


class EventBackend:
    """The merge is announced by ``com.oms.branch.merged`` after the status write; nothing to call first."""

    name = "event"

    async def execute(self, request: MergeRequest) -> MergeResult:
        return MergeResult(Outcome.MERGED, "announced on the merged-event subject")

    async def close(self) -> None:
        return None


class WebhookBackend:
    """POST to the OMS merge endpoint with an idempotency key, a timeout, and retries with backoff."""

    name = "webhook"

    def __init__(
        self, url: str, *, timeout: float, retries: int, backoff: float, backoff_max: float,
        auth_header_file: Path | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.policy = backoff_policy(retries, backoff, backoff_max)
        self.auth_header_file = auth_header_file
        self.sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    def _headers(self, request: MergeRequest) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": request.key,
            "User-Agent": f"oms-branch-operator/{__version__}",
        }
        if self.auth_header_file is not None:
            # Read per request so a rotated Secret (mounted as a file) is picked up without a restart.
            headers["Authorization"] = self.auth_header_file.read_text(encoding="utf-8").strip()
        return headers

    async def execute(self, request: MergeRequest) -> MergeResult:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        session = self._session
        body = json.dumps(request.body()).encode()
        attempts = 0

        async def attempt() -> MergeResult:
            nonlocal attempts
            attempts += 1
            try:
                async with session.post(
                    self.url, data=body, headers=self._headers(request),
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp:
                    text = await resp.text(errors="replace")
                    answer = classify_answer(resp.status)
                    if answer is Answer.MERGED:
                        return MergeResult(Outcome.MERGED, f"merge endpoint answered {resp.status}", attempts)
                    if answer is Answer.CONFLICT:
                        return MergeResult(Outcome.CONFLICT, f"merge endpoint answered 409: {_short(text)}",
                                           attempts, _conflicts(text))
                    last = f"merge endpoint answered {resp.status}: {_short(text)}"
                    if answer is Answer.FAILED:
                        return MergeResult(Outcome.FAILED, last, attempts)  # retrying cannot fix a 4xx
                    raise RetryLater(last, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise RetryLater(f"merge endpoint unreachable: {type(exc).__name__}: {_short(str(exc))}") from exc

        def logged(n: int, exc: BaseException, delay: float) -> None:
            log.info("merge %s attempt %d failed (%s); retrying in %.2fs", request.key, n, exc, delay)

        try:
            return await call_with_backoff(attempt, policy=self.policy, retry_on=_retry_later, sleep=self.sleep,
                                      before_sleep=logged)
        except RetryLater as exc:
            return MergeResult(Outcome.FAILED, f"{exc} (after {attempts} attempts)", attempts)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def backoff_policy(retries: int, base: float, cap: float) -> Backoff:
    """``retries`` after the first attempt, jittered in a window doubling from ``base`` to ``cap``; a
    ``Retry-After`` is believed up to 5 minutes (a merge waits; the reconciler's timeout still applies)."""
    return Backoff(base=base, cap=cap, attempts=max(0, retries) + 1, retry_after_cap=300.0)


def _retry_later(exc: BaseException) -> bool:
    return isinstance(exc, RetryLater)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _conflicts(text: str) -> list[Conflict]:
    """The conflicts a 409 body lists (``{"conflicts": [{"path", "message"}]}``), else one describing it."""
    try:
        data = json.loads(text)
        items = data.get("conflicts") if isinstance(data, dict) else None
        parsed = [Conflict.model_validate(i) for i in items or [] if isinstance(i, dict) and i.get("path")]
        if parsed:
            return parsed[:256]
    except (ValueError, TypeError):
        pass
    return [Conflict(path="<merge endpoint>", message=_short(text) or "409 Conflict")]


def build_backend(settings: Settings) -> MergeBackend:
    if settings.merge_backend == "webhook":
        if not settings.merge_webhook_url:
            raise ValueError("OMS_MERGE_BACKEND=webhook needs OMS_MERGE_WEBHOOK_URL")
        return WebhookBackend(
            settings.merge_webhook_url,
            timeout=settings.merge_webhook_timeout_seconds,
            retries=settings.merge_webhook_retries,
            backoff=settings.merge_webhook_backoff_seconds,
            backoff_max=settings.merge_webhook_backoff_max_seconds,
            auth_header_file=settings.merge_webhook_auth_header_file,
        )
    return EventBackend()
