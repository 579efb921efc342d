"""The one retry policy for calls that leave the process: bounded, jittered, and told when to come back.

Built on tenacity rather than a loop per caller: the callers (the merge endpoint, the notification
webhooks, the Kubernetes API, the NATS connection) used to carry one loop each, with fixed doubling
delays and a 429 retried at once whatever its ``Retry-After`` said. Fixed delays make replicas and
restarted pods retry in step; jitter spreads them. "Equal jitter" (a delay drawn from the upper half
of a doubling window) rather than tenacity's full jitter: a delay near zero would let a message
that is nak'ed while it waits for its run's start burn its redeliveries at once. A server that says
when to come back (``Retry-After`` on 429 and 503) is believed, up to ``retry_after_cap``.

Generic: what counts as retryable is the caller's predicate; a failure carries the server's
``Retry-After`` by raising (or wrapping in) :class:`RetryLater`.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import tenacity

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """``attempts`` in all (0 = no limit); the n-th delay lies in [w/2, w], w = min(cap, base * 2^(n-1))."""

    base: float = 0.5
    cap: float = 30.0
    attempts: int = 5
    retry_after_cap: float = 60.0

    def wait(self) -> tenacity.wait.wait_base:
        return _WaitRetryAfter(_EqualJitter(self.base, self.cap), cap=self.retry_after_cap)

    def delay(self, failures: int) -> float:
        """The delay after ``failures`` failures in a row, for callers that wait elsewhere (a JetStream nak)."""
        state = tenacity.RetryCallState(retry_object=tenacity.AsyncRetrying(), fn=None, args=(), kwargs={})
        state.attempt_number = max(1, failures)
        return float(self.wait()(state))


class RetryLater(Exception):
    """A failure worth another attempt; ``retry_after`` (seconds) is when the server asked to be called again."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _EqualJitter(tenacity.wait.wait_base):
    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        window = float(min(self.cap, self.base * 2.0 ** min(64, max(0, retry_state.attempt_number - 1))))
        return window / 2 + random.uniform(0, window / 2)


class _WaitRetryAfter(tenacity.wait.wait_base):
    def __init__(self, fallback: tenacity.wait.wait_base, *, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        asked = getattr(exc, "retry_after", None)
        if isinstance(asked, int | float) and math.isfinite(asked) and asked >= 0:
            return float(min(asked, self.cap))
        return float(self.fallback(retry_state))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110: delay-seconds or an HTTP-date); None if absent
    or unreadable (the caller then backs off as it would without one)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def call_with_backoff(
    attempt: Callable[[], Awaitable[T]], *, policy: Backoff, retry_on: Callable[[BaseException], bool],
    sleep: Sleep = asyncio.sleep,
    before_sleep: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """``attempt()``'s result, calling it again after a delay while it raises something ``retry_on`` accepts.

    After the last attempt the last exception is raised as it was. ``before_sleep(attempts so far,
    exception, delay)`` is for logging.
    """
    stop: tenacity.stop.stop_base = (tenacity.stop_after_attempt(policy.attempts) if policy.attempts > 0
                                     else tenacity.stop_never)

    def log_sleep(state: tenacity.RetryCallState) -> None:
        if before_sleep is not None and state.outcome is not None and state.next_action is not None:
            exc = state.outcome.exception()
            assert exc is not None
            before_sleep(state.attempt_number, exc, state.next_action.sleep)

    retrying = tenacity.AsyncRetrying(
        stop=stop, wait=policy.wait(), retry=tenacity.retry_if_exception(retry_on), sleep=sleep,
        before_sleep=log_sleep, reraise=True,
    )
    return await retrying(attempt)
