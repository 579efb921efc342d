"""Notifications for the people on call: one message per incident, to pluggable sinks.

Incidents: an indexing run failed, a READY branch's merge stayed blocked past a threshold, a lock
expired, a merge failed. Sinks: the NATS subject ``oms.notifications.branch`` (a CloudEvent, stream
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from branch_operator.clients.emitter import Emitter
from branch_operator.clients.kube import KubeClient, KubeError, NotFound
from branch_operator.config import Settings
from branch_operator.domain.audit import AuditAction, AuditRecord
from branch_operator.domain.lifecycle import rfc3339, to_utc
from branch_operator.kit.deadlines import DeadlineScheduler

log = logging.getLogger(__name__)

INDEXING_FAILED = "indexing_failed"
MERGE_BLOCKED = "merge_blocked"
LOCK_EXPIRED = "lock_expired"
MERGE_FAILED = "merge_failed"

_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Incident:
    kind: str
    key: str  # what makes two reports the same incident
    namespace: str | None
    branch: str | None  # Kubernetes name
    branch_name: str | None  # OMS name
    title: str
    message: str
    at: datetime
    severity: str = "warning"
    details: Mapping[str, Any] = field(default_factory=dict)
    skip_sinks: frozenset[str] = frozenset()

    def data(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "incident": self.key, "severity": self.severity, "title": self.title,
            "message": self.message, "namespace": self.namespace, "branch": self.branch,
            "branch_name": self.branch_name, "at": rfc3339(self.at), "details": dict(self.details),
        }


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
        self.backoff = backoff
        self.sleep = sleep  # injectable so tests don't wait out real backoff delays
        self._session: aiohttp.ClientSession | None = None

    async def send(self, incident: Incident) -> None:
        """POST with retries on connection errors, timeouts, 429 and 5xx; other 4xx fail at once."""
        body = webhook_payload(incident, self.fmt)
        headers = {"Idempotency-Key": incident.key}  # lets a receiver drop a retry we could not confirm
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await self.sleep(min(30.0, self.backoff * 2 ** (attempt - 1)))
            try:
                session = self._session_()
                async with session.post(self.url, json=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    if resp.status < 300:
                        return
                    last = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    if resp.status not in _RETRYABLE_STATUS:
                        break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"webhook {self.url} failed after {attempt + 1} attempt(s): {last}")

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
        if record.action != AuditAction.INDEXING_FAILED:
            return
        run = record.correlation_id or record.indexing_id or record.audit_id
        errors = (record.details or {}).get("validation_errors") or []
        message = f"Indexing run {record.indexing_id or '?'} failed; the branch is in ERROR and its locks released."
        if errors:
            message += f" First error: {str(errors[0])[:300]}"
        self.submit(Incident(
            kind=INDEXING_FAILED, key=f"{INDEXING_FAILED}:{record.namespace}/{record.branch}:{run}",
            namespace=record.namespace, branch=record.branch, branch_name=record.branch_name,
            title=f"Indexing failed for {record.branch_name or record.branch}", message=message,
            at=record.timestamp, severity="critical",
            details={"indexing_id": record.indexing_id, "correlation_id": record.correlation_id,
                     "audit_id": record.audit_id, "errors": list(errors)[:10]},
            skip_sinks=frozenset({"nats"}),
        ))


# ----------------------------------------------------------------------------- incidents from Branches


def blocked_since(obj: Mapping[str, Any]) -> datetime | None:
    """When a READY branch's merge became blocked, or None if it is not blocked now."""
    status = obj.get("status") or {}
    merge = status.get("merge") or {}
    if status.get("phase") != "READY" or merge.get("decision") != "Blocked":
        return None
    mergeable: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Mergeable"), {})
    for raw in (mergeable.get("lastTransitionTime") if mergeable.get("status") == "False" else None,
                merge.get("evaluatedAt"), status.get("phaseTransitionTime")):
        when = _parse_time(raw)
        if when is not None:
            return when
    return None


def run_key(obj: Mapping[str, Any]) -> str:
    """The indexing run a merge decision is about (one blocked/failed incident per run)."""
    indexing = (obj.get("status") or {}).get("indexing") or {}
    return str(indexing.get("eventId") or indexing.get("indexingId") or "")


def merge_failed_incident(obj: Mapping[str, Any], now: datetime) -> Incident | None:
    status = obj.get("status") or {}
    merge = status.get("merge") or {}
    if merge.get("decision") != "Failed":
        return None
    meta = obj["metadata"]
    message = merge.get("message") or "the merge failed"
    return Incident(
        kind=MERGE_FAILED, key=f"{MERGE_FAILED}:{meta.get('uid')}:{run_key(obj)}",
        namespace=meta.get("namespace"), branch=meta["name"], branch_name=(obj.get("spec") or {}).get("branchName"),
        title=f"Merge failed for {(obj.get('spec') or {}).get('branchName') or meta['name']}", message=message,
        at=_parse_time(merge.get("evaluatedAt")) or now, severity="critical",
        details={"policy": merge.get("policy"), "target_branch": merge.get("targetBranch"),
                 "reasons": merge.get("reasons") or []},
    )


def merge_blocked_incident(obj: Mapping[str, Any], since: datetime, now: datetime) -> Incident:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    merge = (obj.get("status") or {}).get("merge") or {}
    reasons = merge.get("reasons") or []
    minutes = int((now - since).total_seconds() // 60)
    return Incident(
        kind=MERGE_BLOCKED, key=f"{MERGE_BLOCKED}:{meta.get('uid')}:{run_key(obj)}",
        namespace=meta.get("namespace"), branch=meta["name"], branch_name=spec.get("branchName"),
        title=f"Merge of {spec.get('branchName') or meta['name']} blocked for {minutes} min",
        message=f"Blocked by {', '.join(reasons) or 'unknown reasons'}: {merge.get('message') or ''}".strip(),
        at=now, details={"reasons": reasons, "blocked_since": rfc3339(since), "policy": merge.get("policy")},
    )


class IncidentWatch:
    """Turns Branch changes into incidents: failed merges at once, blocked merges past a threshold."""

    def __init__(self, kube: KubeClient, notifier: Notifier, settings: Settings,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kube = kube
        self.notifier = notifier
        self.threshold = settings.notify_blocked_after_seconds
        self.clock = clock
        self.scheduler: DeadlineScheduler[tuple[str, str]] = DeadlineScheduler(
            self._check_blocked, name="blocked-merge notifications", clock=clock)

    def observe(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event_type == "DELETED":
            self.scheduler.cancel(key)
            return
        failed = merge_failed_incident(obj, self.clock())
        if failed is not None:
            self.notifier.submit(failed)
        since = blocked_since(obj)
        if since is None or self.threshold <= 0:
            self.scheduler.cancel(key)
        else:
            self.scheduler.schedule(key, datetime.fromtimestamp(since.timestamp() + self.threshold, UTC))

    async def _check_blocked(self, key: tuple[str, str]) -> None:
        try:
            obj = await self.kube.get_branch(*key)
        except NotFound:
            return
        except KubeError as exc:
            log.warning("blocked-merge check of %s/%s failed (%s); retrying", key[0], key[1], exc)
            self.scheduler.schedule(key, datetime.fromtimestamp(self.clock().timestamp() + 10, UTC))
            return
        since = blocked_since(obj)
        if since is None:
            return
        now = self.clock()
        due = since.timestamp() + self.threshold
        if due > now.timestamp():  # blocked again more recently: look later
            self.scheduler.schedule(key, datetime.fromtimestamp(due, UTC))
            return
        self.notifier.submit(merge_blocked_incident(obj, since, now))

    async def run(self) -> None:
        await self.scheduler.run()


def _parse_time(raw: Any) -> datetime | None:
    if not raw:
        return None
    if isinstance(raw, datetime):
        return to_utc(raw)
    try:
        return to_utc(datetime.fromisoformat(str(raw).replace("Z", "+00:00")))
    except ValueError:
        return None
