"""Prometheus metrics from the observer hooks (unit level; tests/e2e/test_operations.py scrapes a real operator)."""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
from prometheus_client import generate_latest

import branch_operator
from branch_operator.domain.audit import AuditRecord
from branch_operator.ops.health import HealthServer
from branch_operator.ops.metrics import OperatorMetrics, event_kind

from .promtool import check_metrics

WHEN = datetime(2025, 6, 26, 10, 30, tzinfo=UTC)


def record(action: str, **fields: Any) -> AuditRecord:
    return AuditRecord.build(action, branch_name="feature/x", when=WHEN, seed=f"{action}{fields}", **fields)


def result(outcome: str) -> Any:
    return SimpleNamespace(outcome=outcome)


def value(m: OperatorMetrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(f"oms_branch_operator_{name}", labels)
    return 0.0 if got is None else got


def test_event_kind() -> None:
    assert event_kind("com.oms.indexing.completed") == "completed"
    assert event_kind("funnel.indexing.failed") == "failed"
    assert event_kind("started") == "started"
    assert event_kind(None) == event_kind("com.example.other") == "unknown"


def test_results_by_type_from_the_processors_audit_records() -> None:
    m = OperatorMetrics()
    m.observe_audit(record("indexing.completed", correlation_id="e1",
                           details={"type": "com.oms.indexing.completed", "duration_seconds": 1800.0,
                                    "records_indexed": 1250}))
    m.observe_result("e1", result("applied"), "acked")
    m.observe_audit(record("event.unexpected", correlation_id="e2", details={"type": "com.oms.indexing.failed"}))
    m.observe_result("e2", result("unexpected"), "acked")
    m.observe_audit(record("event.stale", correlation_id="e3", details={"type": "com.oms.indexing.started"}))
    m.observe_result("e3", result("stale"), "acked")
    m.observe_result("e4", None, "retry")

    assert value(m, "events_received_total", type="completed") == 1
    assert value(m, "events_applied_total", type="completed") == 1
    assert value(m, "events_ignored_total", type="failed", outcome="unexpected") == 1
    assert value(m, "events_stale_total", type="started") == 1
    assert value(m, "events_retried_total", type="unknown") == 1
    assert value(m, "indexing_duration_seconds_count", result="completed") == 1
    assert value(m, "indexing_duration_seconds_sum", result="completed") == 1800
    assert value(m, "indexed_records_total") == 1250


def test_audit_derived_counters() -> None:
    m = OperatorMetrics()
    m.observe_audit(record("branch.state_changed", from_state="ACTIVE", to_state="LOCKED_FOR_WRITE"))
    m.observe_audit(record("branch.merged"))
    m.observe_audit(record("branch.merge_blocked", reason="NoMatchingPolicy,ValidationFailed"))
    m.observe_audit(record("event.rejected", reason="InvalidJSON", details={"subject": "funnel.indexing.completed"}))
    m.observe_audit(record("event.rejected", reason="UnknownSubject", details={"subject": "funnel.indexing.COMPLETED"}))
    m.observe_audit(record("lock.expired", details={"lock_type": "WRITE"}))
    m.observe_audit(record("admin.set_state", details={"status": "refused"}))
    m.observe_timing("completed", 0.012)
    m.notification("lock_expired", "webhook", False)
    m.locks_held_now(["INDEXING", "WRITE", "WRITE"])

    assert value(m, "state_transitions_total", from_state="ACTIVE", to_state="LOCKED_FOR_WRITE") == 1
    assert value(m, "merges_total", result="merged") == 1
    assert value(m, "merge_blocks_total", reason="NoMatchingPolicy") == 1
    assert value(m, "merge_blocks_total", reason="ValidationFailed") == 1
    assert value(m, "events_rejected_total", type="completed", reason="InvalidJSON") == 1
    assert value(m, "events_rejected_total", type="unknown", reason="UnknownSubject") == 1
    assert value(m, "locks_expired_total", lock_type="WRITE") == 1
    assert value(m, "admin_actions_total", action="set_state", result="refused") == 1
    assert value(m, "event_processing_seconds_count", type="completed") == 1
    assert value(m, "notifications_total", kind="lock_expired", sink="webhook", result="failed") == 1
    assert value(m, "locks_held", lock_type="WRITE") == 2 and value(m, "locks_held", lock_type="MERGE") == 0
    text = generate_latest(m.registry).decode()
    assert "# TYPE oms_branch_operator_event_processing_seconds histogram" in text


async def test_scrape_time_values() -> None:
    class Js:
        async def consumer_info(self, stream: str, durable: str) -> Any:
            return SimpleNamespace(num_pending=7 if durable == "c1" else 0, num_ack_pending=2)

    bus = SimpleNamespace(connected=True, js=Js(), consumer_names=lambda: {"completed": ("c1", "s"),
                                                                            "failed": ("c2", "s")})
    runtime = SimpleNamespace(bus=bus, settings=SimpleNamespace(stream="FUNNEL_INDEXING"),
                              readiness=lambda: {"kubernetes": True, "nats": True, "consumers": False})
    m = OperatorMetrics()
    m.runtime = runtime
    text = (await m.exposition()).decode()
    assert 'oms_branch_operator_consumer_pending_messages{consumer="c1"} 7.0' in text
    assert 'oms_branch_operator_consumer_ack_pending_messages{consumer="c2"} 2.0' in text
    assert "oms_branch_operator_nats_connected 1.0" in text
    assert 'oms_branch_operator_ready{check="consumers"} 0.0' in text
    bus.connected = False
    await m.refresh()
    assert value(m, "nats_connected") == 0


def test_attach_uses_the_hooks_that_exist() -> None:
    runtime = SimpleNamespace(emitter=SimpleNamespace(audit_observers=[]),
                              consumer=SimpleNamespace(results=[], timings=[]))
    m = OperatorMetrics()
    m.attach(runtime)
    assert runtime.emitter.audit_observers == [m.observe_audit]
    assert runtime.consumer.results == [m.observe_result] and runtime.consumer.timings == [m.observe_timing]


def test_duplicates_are_counted_under_their_type() -> None:
    from branch_operator.ingest.consumer import IndexingConsumer

    consumer = IndexingConsumer.__new__(IndexingConsumer)
    consumer.results, consumer.timings, consumer.received = [], [], []
    runtime = SimpleNamespace(emitter=SimpleNamespace(audit_observers=[]), consumer=consumer)
    m = OperatorMetrics()
    m.attach(runtime)
    # What the consumer would do for a redelivered `completed` event that the processor finds duplicate:
    for hook in getattr(consumer, "received", []):
        hook("dup-1", "completed")
    for cb in consumer.results:
        cb("dup-1", result("duplicate"), "acked")
    assert value(m, "events_received_total", type="completed") == 1
    assert value(m, "events_ignored_total", type="completed", outcome="duplicate") == 1


def test_the_receipt_hook_is_used_when_present() -> None:
    """The same scenario against a stub of the hook asked for above: the metric side is ready for it."""
    runtime = SimpleNamespace(emitter=SimpleNamespace(audit_observers=[]),
                              consumer=SimpleNamespace(results=[], timings=[], received=[]))
    m = OperatorMetrics()
    m.attach(runtime)
    for hook in runtime.consumer.received:
        hook("dup-1", "completed")
    for cb in runtime.consumer.results:
        cb("dup-1", result("duplicate"), "acked")
    assert value(m, "events_received_total", type="completed") == 1  # counted once, at receipt
    assert value(m, "events_ignored_total", type="completed", outcome="duplicate") == 1


async def test_metrics_endpoint_is_what_prometheus_expects() -> None:
    """The real /metrics listener: process and platform metrics, build_info, no `_created` series, and
    nothing `promtool check metrics` objects to."""
    m = OperatorMetrics()
    m.observe_audit(record("indexing.completed", correlation_id="e1",
                           details={"type": "com.oms.indexing.completed", "duration_seconds": 60.0,
                                    "records_indexed": 3}))
    m.observe_result("e1", result("applied"), "acked")
    m.observe_timing("completed", 0.02)
    m.observe_lag(0.001)
    server = HealthServer(SimpleNamespace(metrics=m), port=0, host="127.0.0.1")
    await server.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    finally:
        await server.stop()
    lines = text.splitlines()
    names = {line.split("{")[0].split(" ")[0] for line in lines if not line.startswith("#")}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
            "process_open_fds", "python_info"} <= names
    [build] = [line for line in lines if line.startswith("oms_branch_operator_build_info{")]
    labels, value = build.removeprefix("oms_branch_operator_build_info{").split("} ")
    assert dict(re.findall(r'(\w+)="([^"]*)"', labels)) == {
        "version": branch_operator.__version__, "python_version": platform.python_version()}
    assert float(value) == 1
    assert "oms_branch_operator_events_applied_total{type=\"completed\"} 1.0" in lines
    assert not [line for line in lines if "_created" in line]
    assert check_metrics(text) == ""
