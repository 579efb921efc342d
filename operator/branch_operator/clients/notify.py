"""Notifications for the people on call: one message per incident, to pluggable sinks.

The notifier is the one producer of incident notifications (what an incident is, and which states are
one: :mod:`branch_operator.domain.incidents`): an indexing run failed, a READY branch's merge stayed
blocked past a threshold (:mod:`branch_operator.controllers.incidents`), a lock expired, a merge failed.
Sinks: the NATS subject ``oms.notifications.branch`` (a CloudEvent, stream
``OMS_NOTIFICATIONS``) and an HTTP webhook (generic JSON, or a Slack incoming-webhook payload) with
retries. Every incident carries a key naming *the incident* (e.g. the failed run's event id), not the
delivery that revealed it: the notifier sends a key once, and the NATS message id is derived from it, so a
redelivered event or a re-listed watch does not page anyone twice. The memory of sent keys is
per process (bounded); after a restart the NATS stream's duplicate window still drops repeats within it,
and an incident still open may be notified once more.

Indexing failures are already put on NATS by the event processor (in its outbox, in the same write as the
ERROR phase), so for those the NATS sink is skipped here and only the webhook is added.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiohttp

from branch_operator.clients.emitter import Emitter
from branch_operator.config import Settings
from branch_operator.domain.audit import AuditRecord
from branch_operator.domain.incidents import Incident, indexing_failed_incident
from branch_operator.domain.timefmt import rfc3339
from branch_operator.kit.backoff import Backoff, RetryLater, call_with_backoff, parse_retry_after

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class Sink(Protocol):
    name: str

    async def send(self, incident: Incident) -> None: ...


# ----------------------------------------------------------------------------------------------- sinks


class NatsSink:
    name = "nats"

    def __init__(self, emitter: Emitter) -> None:
        self.emitter = emitter

    async def send(self, incident: Incident) -> None:
        await self.emitter.notify(msg_id=f"incident:{incident.key}", kind=incident.kind,
                                  branch_name=incident.branch_name or incident.branch or "unknown",
                                  data=incident.data())


def webhook_payload(incident: Incident, fmt: str) -> dict[str, Any]:
    """The body posted to the webhook: the incident as JSON, or a Slack incoming-webhook message."""
    if fmt != "slack":
        return incident.data()
    where = f"{incident.namespace}/{incident.branch}" if incident.branch else (incident.namespace or "")
    icon = ":rotating_light:" if incident.severity == "critical" else ":warning:"
    text = f"{icon} *{incident.title}*: {incident.message}"
    fields = [{"type": "mrkdwn", "text": f"*Branch*\n`{incident.branch_name or incident.branch or '-'}`"},
              {"type": "mrkdwn", "text": f"*Object*\n`{where or '-'}`"},
              {"type": "mrkdwn", "text": f"*Kind*\n{incident.kind}"},
              {"type": "mrkdwn", "text": f"*At*\n{rfc3339(incident.at)}"}]
    return {
        "text": text,  # what notifications and clients without blocks show
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"incident `{incident.key}`"}]},
        ],
    }


class _Refused(Exception):
    """An answer that asking again cannot change (a 4xx other than 408, 425 and 429)."""


class WebhookSink:
    name = "webhook"

    def __init__(
        self, url: str, *, fmt: str = "json", retries: int = 5, timeout: float = 5.0, backoff: float = 0.5,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.url = url
        self.fmt = fmt
        self.retries = max(0, retries)
        self.timeout = timeout
        # A Retry-After beyond a minute is not waited out: the Notifier's queue would stall behind it.
        self.policy = Backoff(base=backoff, cap=30.0, attempts=self.retries + 1, retry_after_cap=60.0)
        self.sleep = sleep  # injectable so tests don't wait out real backoff delays
        self._session: aiohttp.ClientSession | None = None

    async def send(self, incident: Incident) -> None:
        """POST with retries on connection errors, timeouts, 429 and 5xx (waiting out a ``Retry-After``);
        other 4xx fail at once."""
        body = webhook_payload(incident, self.fmt)
        headers = {"Idempotency-Key": incident.key}  # lets a receiver drop a retry we could not confirm
        attempts = 0

        async def attempt() -> None:
            nonlocal attempts
            attempts += 1
            try:
                async with self._session_().post(self.url, json=body, headers=headers,
                                                 timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    if resp.status < 300:
                        return
                    last = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    if resp.status not in _RETRYABLE_STATUS:
                        raise _Refused(last)
                    raise RetryLater(last, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise RetryLater(f"{type(exc).__name__}: {exc}") from exc

        try:
            await call_with_backoff(attempt, policy=self.policy, retry_on=lambda e: isinstance(e, RetryLater),
                                    sleep=self.sleep)
        except (RetryLater, _Refused) as exc:
            raise RuntimeError(f"webhook {self.url} failed after {attempts} attempt(s): {exc}") from exc

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# ------------------------------------------------------------------------------------------- notifier


class Notifier:
    """Queues incidents (callers never wait on a webhook) and sends each new one to every sink."""

    def __init__(self, sinks: Sequence[Sink], *, metrics: Any = None, remember: int = 10_000) -> None:
        self.sinks: list[Sink] = list(sinks)
        self.metrics = metrics
        self._sent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remember = remember
        self._queue: asyncio.Queue[Incident] = asyncio.Queue()
        self.delivered: list[Callable[[Incident, str, bool], None]] = []  # (incident, sink, ok) observers

    @classmethod
    def from_settings(cls, settings: Settings, emitter: Emitter, metrics: Any = None) -> Notifier:
        sinks: list[Sink] = [NatsSink(emitter)]
        if settings.notify_webhook_url:
            sinks.append(WebhookSink(settings.notify_webhook_url, fmt=settings.notify_webhook_format,
                                     retries=settings.notify_webhook_retries,
                                     timeout=settings.notify_webhook_timeout_seconds))
        return cls(sinks, metrics=metrics)

    def submit(self, incident: Incident) -> bool:
        """Queue ``incident`` unless its key was sent already. Safe to call from sync observers."""
        if incident.key in self._sent:
            return False
        self._sent[incident.key] = None
        while len(self._sent) > self._remember:
            self._sent.popitem(last=False)
        self._queue.put_nowait(incident)
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        while True:
            incident = await self._queue.get()
            try:
                await self._deliver(incident)
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        """Until everything queued so far has been delivered (or given up on)."""
        await self._queue.join()

    async def _deliver(self, incident: Incident) -> None:
        for sink in self.sinks:
            if sink.name in incident.skip_sinks:
                continue
            ok = True
            try:
                await sink.send(incident)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ok = False
                log.warning("notification %s via %s failed: %s", incident.key, sink.name, exc)
            if self.metrics is not None:
                self.metrics.notification(incident.kind, sink.name, ok)
            for observer in self.delivered:
                observer(incident, sink.name, ok)

    async def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                await close()

    # ------------------------------------------------------------------------------ incident sources

    def observe_audit(self, record: AuditRecord) -> None:
        """Audit observer: an indexing failure is an incident (the NATS part is the processor's)."""
        incident = indexing_failed_incident(record)
        if incident is not None:
            self.submit(incident)
