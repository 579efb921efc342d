"""Prometheus metrics (``/metrics``), fed only by the operator's observer hooks.

Sources, so that processor/consumer/emitter need no metrics code of their own:
- every audit record (``Emitter.audit_observers``): transitions, merges, blocks, indexing durations,
  rejected events, expired locks, admin actions;
- every delivery's fate (``IndexingConsumer.results``): received/applied/stale/ignored/retried;
- receipt-to-acknowledgement time (``IndexingConsumer.timings``): the processing latency histogram;
- at scrape time: NATS connection state, readiness, and each durable consumer's pending messages.

The ``type`` label is the event kind (``started``/``completed``/``failed``; ``unknown`` when the message
could not be parsed or nothing named its kind). The results hook carries no kind, so it is looked up from
the audit record the processor wrote for that event id; a duplicate writes none, so its kind shows as
``unknown`` until the consumer offers a receipt hook (``IndexingConsumer.received``: ``(event_id, kind)``),
which :meth:`OperatorMetrics.attach` uses when it exists.

Each operator instance has its own registry, so several can run in one process (tests, ``dev``). The
registry also carries prometheus_client's process and platform collectors (``process_*``, ``python_info``)
and ``build_info``; ``*_created`` series are switched off (they double the series and no rule reads them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import platform
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from branch_operator import __version__
from branch_operator.contracts.dlq import UNKNOWN_SUBJECT
from branch_operator.domain.audit import AuditAction, AuditRecord

log = logging.getLogger(__name__)

PREFIX = "oms_branch_operator"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Receipt -> acknowledgement: milliseconds normally, seconds when the API server is slow or retrying.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Event-loop lag and GC pauses: anything near the 250 ms event budget is worth seeing.
STALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Indexing runs take minutes to hours.
INDEXING_BUCKETS = (10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)

_KINDS = ("started", "completed", "failed")


def event_kind(value: Any) -> str:
    """``com.oms.indexing.completed`` / ``funnel.indexing.completed`` / ``completed`` -> ``completed``."""
    text = str(getattr(value, "value", value) or "").rsplit(".", 1)[-1].lower()
    return text if text in _KINDS else "unknown"


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # Process-wide in prometheus_client (read at every scrape); every registry here wants it off.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, list(labels), registry=r)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, list(labels), registry=r)

        self.events_received = counter("events_received_total", "Funnel event deliveries handled.", ["type"])
        self.events_applied = counter("events_applied_total", "Events that changed a Branch.", ["type"])
        self.events_stale = counter("events_stale_total", "Events older than the run a Branch records.", ["type"])
        self.events_ignored = counter(
            "events_ignored_total", "Events acknowledged without effect (duplicate, unexpected, unknown_branch).",
            ["type", "outcome"])
        self.events_rejected = counter(
            "events_rejected_total", "Events dead-lettered, by reason code.", ["type", "reason"])
        self.events_retried = counter("events_retried_total", "Deliveries handed back for redelivery.", ["type"])
        self.processing_seconds = Histogram(
            f"{PREFIX}_event_processing_seconds", "From receipt of an event to its acknowledgement after the "
            "Kubernetes writes.", ["type"], buckets=LATENCY_BUCKETS, registry=r)
        self.indexing_seconds = Histogram(
            f"{PREFIX}_indexing_duration_seconds", "Indexing run durations reported by Funnel's events.",
            ["result"], buckets=INDEXING_BUCKETS, registry=r)
        self.indexed_records = counter("indexed_records_total", "Records indexed by completed runs.")
        self.transitions = counter("state_transitions_total", "Branch phase transitions.", ["from_state", "to_state"])
        self.merges = counter("merges_total", "Merge outcomes (merged, failed).", ["result"])
        self.merge_blocks = counter("merge_blocks_total", "Merge decisions blocked, by each blocking reason.",
                                    ["reason"])
        self.locks_held = gauge("locks_held", "BranchLocks that exist now.", ["lock_type"])
        self.locks_expired = counter("locks_expired_total", "BranchLocks released after their TTL.", ["lock_type"])
        self.admin_actions = counter("admin_actions_total", "Admin requests handled.", ["action", "result"])
        self.notifications = counter("notifications_total", "Incident notifications sent, per sink.",
                                     ["kind", "sink", "result"])
        self.consumer_pending = gauge("consumer_pending_messages",
                                      "Messages not yet delivered to a durable consumer.", ["consumer"])
        self.consumer_ack_pending = gauge("consumer_ack_pending_messages",
                                          "Messages delivered but not yet acknowledged.", ["consumer"])
        self.nats_connected = gauge("nats_connected", "1 while connected to NATS.")
        self.ready = gauge("ready", "Readiness checks (1 = ok).", ["check"])
        self.build_info = gauge("build_info", "Always 1; the labels say what runs.", ["version", "python_version"])
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.leader = gauge("leader", "1 on the replica in charge (it holds the Lease, or runs alone), else 0.")
        self.loop_lag_seconds = Histogram(
            f"{PREFIX}_event_loop_lag_seconds", "How late a 50 ms timer fired: time the process could run "
            "nothing else (a long callback, a garbage collection, CPU starvation).", buckets=STALL_BUCKETS,
            registry=r)
        self.gc_pause_seconds = Histogram(
            f"{PREFIX}_gc_pause_seconds", "Garbage-collection pauses, by generation.", ["generation"],
            buckets=STALL_BUCKETS, registry=r)
        # event id -> kind, learnt from audit records (bounded: only needed until the result arrives)
        self._kinds: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._receipt_hook = False
        self.runtime: Any = None

    # ------------------------------------------------------------------------------------- wiring

    def attach(self, runtime: Any) -> None:
        self.runtime = runtime
        runtime.emitter.audit_observers.append(self.observe_audit)
        runtime.consumer.results.append(self.observe_result)
        timings = getattr(runtime.consumer, "timings", None)
        if isinstance(timings, list):
            timings.append(self.observe_timing)
        received = getattr(runtime.consumer, "received", None)
        if isinstance(received, list):  # the receipt hook, once the consumer has it
            received.append(self.observe_received)
            self._receipt_hook = True

    # ---------------------------------------------------------------------------------- observers

    def observe_received(self, event_id: str, kind: Any) -> None:
        self._remember(event_id, event_kind(kind))
        self.events_received.labels(event_kind(kind)).inc()

    def observe_lag(self, seconds: float) -> None:
        self.loop_lag_seconds.observe(seconds)

    def observe_gc(self, generation: int, seconds: float) -> None:
        self.gc_pause_seconds.labels(str(generation)).observe(seconds)

    def observe_timing(self, kind: Any, seconds: float) -> None:
        self.processing_seconds.labels(event_kind(kind)).observe(max(0.0, float(seconds)))

    def observe_result(self, event_id: str, result: Any, disposition: Any) -> None:
        kind = self._kinds.get(event_id, "unknown")
        fate = str(getattr(disposition, "value", disposition))
        if not self._receipt_hook:
            self.events_received.labels(kind).inc()
        if fate == "retry":
            self.events_retried.labels(kind).inc()
        elif fate == "acked" and result is not None:
            outcome = str(getattr(result.outcome, "value", result.outcome))
            if outcome == "applied":
                self.events_applied.labels(kind).inc()
            elif outcome == "stale":
                self.events_stale.labels(kind).inc()
            else:
                self.events_ignored.labels(kind, outcome).inc()
        # dead_lettered: counted from its event.rejected audit record, which carries the reason.
        if fate != "retry":
            self._kinds.pop(event_id, None)

    def observe_audit(self, record: AuditRecord) -> None:
        action = str(record.action)
        details = record.details or {}
        if record.correlation_id and "type" in details:
            self._remember(record.correlation_id, event_kind(details["type"]))
        if action in (AuditAction.INDEXING_COMPLETED, AuditAction.INDEXING_FAILED):
            duration = details.get("duration_seconds")
            if isinstance(duration, int | float) and duration >= 0:
                self.indexing_seconds.labels(action.split(".")[1]).observe(float(duration))
            records = details.get("records_indexed")
            if action == AuditAction.INDEXING_COMPLETED and isinstance(records, int) and records > 0:
                self.indexed_records.inc(records)
        elif action == AuditAction.BRANCH_STATE_CHANGED and record.from_state and record.to_state:
            self.transitions.labels(str(record.from_state), str(record.to_state)).inc()
        elif action == AuditAction.BRANCH_MERGED:
            self.merges.labels("merged").inc()
        elif action == AuditAction.BRANCH_MERGE_FAILED:
            self.merges.labels("failed").inc()
        elif action == AuditAction.BRANCH_MERGE_BLOCKED:
            for reason in str(record.reason or "Unknown").split(","):
                self.merge_blocks.labels(reason.strip() or "Unknown").inc()
        elif action == AuditAction.EVENT_REJECTED:
            # A subject nobody reads is no kind, even if its last token looks like one (`….COMPLETED`).
            kind = "unknown" if record.reason == UNKNOWN_SUBJECT else event_kind(details.get("subject"))
            self.events_rejected.labels(kind, str(record.reason or "Unknown")).inc()
        elif action == AuditAction.LOCK_EXPIRED:
            self.locks_expired.labels(str(details.get("lock_type") or "unknown")).inc()
        elif action in (AuditAction.ADMIN_FORCE_UNLOCK, AuditAction.ADMIN_SET_STATE):
            self.admin_actions.labels(action.split(".", 1)[1], str(details.get("status") or "applied")).inc()

    def notification(self, kind: str, sink: str, ok: bool) -> None:
        self.notifications.labels(kind, sink, "sent" if ok else "failed").inc()

    def locks_held_now(self, lock_types: Iterable[str]) -> None:
        counts = collections.Counter(lock_types)
        for lock_type in {"INDEXING", "WRITE", "MERGE", *counts}:
            self.locks_held.labels(lock_type or "unknown").set(counts.get(lock_type, 0))

    def _remember(self, event_id: str, kind: str) -> None:
        if not event_id or kind == "unknown":
            return
        self._kinds[event_id] = kind
        self._kinds.move_to_end(event_id)
        while len(self._kinds) > 4096:
            self._kinds.popitem(last=False)

    # ------------------------------------------------------------------------------------- scrape

    async def refresh(self) -> None:
        """Values read at scrape time: connection state, readiness and consumer backlogs."""
        runtime = self.runtime
        if runtime is None:
            return
        bus = runtime.bus
        self.nats_connected.set(1 if bus.connected else 0)
        for check, ok in runtime.readiness().items():
            self.ready.labels(check).set(1 if ok else 0)
        if not bus.connected:
            return
        for durable, _subject in bus.consumer_names().values():
            with contextlib.suppress(Exception):  # a scrape must answer even if JetStream does not
                info = await asyncio.wait_for(bus.js.consumer_info(runtime.settings.stream, durable), 2.0)
                self.consumer_pending.labels(durable).set(info.num_pending or 0)
                self.consumer_ack_pending.labels(durable).set(info.num_ack_pending or 0)

    async def exposition(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)
