"""Delivery guarantees end to end (docs/delivery.md): poison messages, Kubernetes API faults, the dead-letter
stream and `dlq replay`, a NATS outage, and arbitrary input — over the real nats-server, the embedded API
server and the real operator.

Poison tests use the session's operator. Fault injection, the outage and the fuzzing each get an operator of
their own (a second EmbeddedEnv), so the shared one is never disturbed and settings can be small.

Every test counts per input-stream message: a probe wraps the consumer's ``handle_msg`` and records each
delivery (stream seq, delivery number) with the disposition and outcome the consumer reports through
``IndexingConsumer.results``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from nats.aio.msg import Msg

from branch_operator.cli import dlq
from branch_operator.contracts.funnel_encode import encode_binary, encode_structured, make_event
from branch_operator.controllers.indexing import Outcome, Result
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle
from branch_operator.ingest.consumer import Disposition

from .conftest import Oms, open_oms, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

BIN = Path(sys.executable).parent
PERMANENT_CODES = {"TooLarge", "InvalidJSON", "InvalidCloudEvent", "UnsupportedSpecVersion", "UnknownType",
                   "SubjectTypeMismatch", "InvalidData", "TimeOrder", "NamespaceNotAllowed"}


# ------------------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Handled:
    seq: int  # input-stream sequence
    delivered: int  # JetStream's delivery number (1 = first delivery)
    disposition: Disposition
    event_id: str
    outcome: Outcome | None
    at: float  # loop time the delivery arrived


_delivery: contextvars.ContextVar[tuple[int, int, float]] = contextvars.ContextVar("delivery", default=(0, 0, 0.0))


class Probe:
    """Observes one operator's consumer; detach() restores it."""

    def __init__(self, operator: OperatorHandle) -> None:
        self.consumer = operator.runtime.consumer
        self.handled: list[Handled] = []
        self.arrived: list[int] = []  # input-stream seqs, as deliveries start
        original = self.consumer.handle_msg

        async def handle_msg(msg: Msg) -> Disposition:
            self.arrived.append(int(msg.metadata.sequence.stream))
            token = _delivery.set((int(msg.metadata.sequence.stream), int(msg.metadata.num_delivered or 1),
                                   asyncio.get_running_loop().time()))
            try:
                return await original(msg)
            finally:
                _delivery.reset(token)

        self.consumer.handle_msg = handle_msg  # type: ignore[method-assign]
        self.consumer.results.append(self._result)

    def _result(self, event_id: str, result: Result | None, disposition: Disposition) -> None:
        seq, delivered, at = _delivery.get()
        self.handled.append(Handled(seq, delivered, disposition, event_id, result.outcome if result else None, at))

    def detach(self) -> None:
        self.consumer.results.remove(self._result)
        del self.consumer.handle_msg  # back to the class's method

    def of(self, seq: int) -> list[tuple[int, Disposition, Outcome | None]]:
        return [(h.delivered, h.disposition, h.outcome) for h in self.handled if h.seq == seq]

    def gaps(self, seq: int) -> list[float]:
        """Seconds between consecutive deliveries of one message."""
        times = [h.at for h in self.handled if h.seq == seq]
        return [b - a for a, b in itertools.pairwise(times)]

    def final(self, seq: int) -> list[Handled]:
        return [h for h in self.handled if h.seq == seq and h.disposition is not Disposition.RETRY]


@contextlib.asynccontextmanager
async def probing(operator: OperatorHandle) -> AsyncIterator[Probe]:
    probe = Probe(operator)
    try:
        yield probe
    finally:
        probe.detach()


@contextlib.asynccontextmanager
async def own_operator(**overrides: Any) -> AsyncIterator[tuple[EmbeddedEnv, OperatorHandle]]:
    env = EmbeddedEnv()
    await env.start()
    operator = OperatorHandle(env.settings(**overrides), env.kubeconfig)
    try:
        await operator.start()
        yield env, operator
    finally:
        await operator.stop()
        await env.stop()


@contextlib.asynccontextmanager
async def jetstream(oms: Oms) -> AsyncIterator[Any]:
    nc = await nats.connect(oms.env.nats_url)
    try:
        yield nc.jetstream(timeout=5.0)
    finally:
        await nc.close()


async def publish(oms: Oms, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> int:
    async with jetstream(oms) as js:
        ack = await js.publish(subject, payload, headers=headers or None)
        return int(ack.seq)


async def publish_event(oms: Oms, kind: str, event: dict[str, Any]) -> int:
    """Like Oms.publish, but returns the input-stream sequence the probe counts by."""
    payload, headers = encode_structured(event)
    return await publish(oms, {"started": oms.settings.subject_started, "completed": oms.settings.subject_completed,
                               "failed": oms.settings.subject_failed}[kind], payload, headers)


async def consumer_info(oms: Oms, durable: str) -> Any:
    async with jetstream(oms) as js:
        return await js.consumer_info(oms.settings.stream, durable)


async def all_idle(oms: Oms) -> bool:
    """Every durable consumer of the input stream (those the server lists, not only the ones we know of)."""
    async with jetstream(oms) as js:
        infos = await js.consumers_info(oms.settings.stream)
    return bool(infos) and all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


async def parked(oms: Oms, original_seq: int | None = None) -> list[dlq.Parked]:
    async with jetstream(oms) as js:
        every = await dlq.read_parked(js, oms.settings)
    return [p for p in every if original_seq is None or p.original_seq == original_seq]


async def stream_ids(oms: Oms, stream: str) -> list[str]:
    return [h.get("Nats-Msg-Id", "") for h, _body in await oms.stream_messages(stream)]


def status_path(oms: Oms, name: str) -> str:
    return rf"/namespaces/{oms.namespace}/branches/{name}/status$"


def actions(oms: Oms, branch_name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in oms.audits_for(branch_name):
        counts[str(record.action)] = counts.get(str(record.action), 0) + 1
    return counts


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "branch-operator"), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


# ------------------------------------------------------------------------- poison (session operator)


def _invalid_json(oms: Oms) -> tuple[str, bytes, dict[str, str], str | None]:
    return oms.settings.subject_completed, b'{"id": "half", "type": "com.oms.indexing.completed", ', {}, None


def _missing_branch_name(oms: Oms) -> tuple[str, bytes, dict[str, str], str | None]:
    event = oms.event("started", "feature/x", "idx-1")
    del event["data"]["branch_name"]
    return oms.settings.subject_started, *encode_structured(event), event["id"]


def _unknown_type(oms: Oms) -> tuple[str, bytes, dict[str, str], str | None]:
    event = oms.event("failed", "feature/x", "idx-1")
    event["type"] = "com.oms.indexing.exploded"
    return oms.settings.subject_failed, *encode_structured(event), event["id"]


def _subject_type_mismatch(oms: Oms) -> tuple[str, bytes, dict[str, str], str | None]:
    event = oms.event("started", "feature/x", "idx-1")
    return oms.settings.subject_completed, *encode_structured(event), event["id"]


def _oversized(oms: Oms) -> tuple[str, bytes, dict[str, str], str | None]:
    event = oms.event("completed", "feature/x", "idx-1",
                      errors=["e" * 1000] * (oms.settings.max_event_bytes // 1000 + 1))
    payload, headers = encode_structured(event)
    assert len(payload) > oms.settings.max_event_bytes
    return oms.settings.subject_completed, payload, headers, event["id"]


def _naive_timestamp(oms: Oms) -> tuple[str, bytes, dict[str, str], str | None]:
    event = oms.event("started", "feature/naive", "idx-1", started_at="2025-06-26T10:00:00")
    return oms.settings.subject_started, *encode_structured(event), event["id"]


POISON: dict[str, tuple[Callable[[Oms], tuple[str, bytes, dict[str, str], str | None]], str]] = {
    "invalid-json": (_invalid_json, "InvalidJSON"),
    "missing-branch-name": (_missing_branch_name, "InvalidData"),
    "unknown-type": (_unknown_type, "UnknownType"),
    "subject-type-mismatch": (_subject_type_mismatch, "SubjectTypeMismatch"),
    "oversized": (_oversized, "TooLarge"),
    "naive-timestamp": (_naive_timestamp, "InvalidData"),
}


@pytest.mark.parametrize("case", list(POISON))
async def test_poison_is_dead_lettered_once_and_never_redelivered(oms: Oms, case: str) -> None:
    build, code = POISON[case]
    subject, payload, headers, event_id = build(oms)
    durable = {oms.settings.subject_started: oms.settings.consumer_started,
               oms.settings.subject_completed: oms.settings.consumer_completed,
               oms.settings.subject_failed: oms.settings.consumer_failed}[subject]
    await wait_for(lambda: all_idle(oms), what="consumers idle before the test")
    before = await consumer_info(oms, durable)

    async with probing(oms.operator) as probe:
        seq = await publish(oms, subject, payload, {**headers, "X-Test-Case": case})
        [p] = await wait_for(lambda: parked(oms, seq), what=f"{case} in the dead-letter stream")
        await wait_for(lambda: all_idle(oms), what="poison message terminated")
        after = await consumer_info(oms, durable)

    assert p.reason_code == code, p.reason
    assert p.reason and p.original_subject == subject and p.delivery_count == 1
    assert p.data == payload and p.header("X-Test-Case") == case  # body and original headers kept
    assert p.event_id == event_id  # `dlq list` shows it whenever the body can be read
    rejected = [a for a in oms.audits_for(action="event.rejected") if a.details.get("stream_seq") == seq]
    assert len(rejected) == 1 and rejected[0].reason == code
    # The operator does not read past the size limit, so an oversized event has no correlation id.
    assert rejected[0].correlation_id == (None if case == "oversized" else event_id)
    if case == "naive-timestamp":
        assert rejected[0].branch_name == "feature/naive"  # valid parts of a rejected event still attribute it
    # Delivered exactly once, terminated: nothing pending, nothing redelivered.
    assert probe.of(seq) == [(1, Disposition.DEAD_LETTERED, None)]
    assert after.delivered.consumer_seq - before.delivered.consumer_seq == 1
    assert after.num_ack_pending == 0 and after.num_redelivered == 0 and after.num_pending == 0
    assert len(await parked(oms, seq)) == 1


# Captured by the input stream (funnel.indexing.>), but none of the three event subjects.
UNREAD_SUBJECTS = ["funnel.indexing.start", "funnel.indexing.started.v2", "funnel.indexing.COMPLETED"]


async def test_messages_on_subjects_nobody_reads_are_dead_lettered(oms: Oms) -> None:
    await wait_for(lambda: all_idle(oms), what="consumers idle before the test")
    metrics = oms.operator.runtime.metrics
    assert metrics is not None

    def rejected_metric() -> float:
        got = metrics.registry.get_sample_value("oms_branch_operator_events_rejected_total",
                                                {"type": "unknown", "reason": "UnknownSubject"})
        return got or 0.0

    counted_before = rejected_metric()
    published: dict[str, tuple[int, str, bytes]] = {}
    for subject in UNREAD_SUBJECTS:
        event = oms.event("started", "feature/unread", "idx-1")
        payload, headers = encode_structured(event)
        published[subject] = (await publish(oms, subject, payload, headers), event["id"], payload)

    for subject, (seq, event_id, payload) in published.items():
        [p] = await wait_for(lambda seq=seq: parked(oms, seq), what=f"{subject} in the dead-letter stream")
        assert p.reason_code == "UnknownSubject", p.reason
        assert subject in p.reason
        assert p.original_subject == subject and p.delivery_count == 1 and p.data == payload
        assert p.event_id == event_id
        rejected = [a for a in oms.audits_for(action="event.rejected") if a.details.get("stream_seq") == seq]
        assert len(rejected) == 1, rejected
        assert rejected[0].reason == "UnknownSubject" and rejected[0].correlation_id == event_id
        assert rejected[0].branch_name == "feature/unread" and rejected[0].details["subject"] == subject

    await wait_for(lambda: all_idle(oms), what="every consumer of the stream idle")
    # Accounted for: each message is covered by a consumer of the stream that acknowledged it.
    async with jetstream(oms) as js:
        infos = await js.consumers_info(oms.settings.stream)
    for subject, (seq, _event_id, _payload) in published.items():
        covering = [i for i in infos if any(subject_matches(f, subject) for f in
                                            ([i.config.filter_subject] if i.config.filter_subject else
                                             i.config.filter_subjects or [">"]))]
        assert covering and all(i.ack_floor.stream_seq >= seq for i in covering), (subject, covering)
    assert rejected_metric() - counted_before == len(UNREAD_SUBJECTS)
    assert not oms.audits_for("feature/unread", action="indexing.started")  # nothing applied


# ------------------------------------------------------------------- Kubernetes API faults (own operator)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def faulty() -> AsyncIterator[tuple[EmbeddedEnv, OperatorHandle]]:
    # Three deliveries (0.5 s and 1 s apart) before RetriesExhausted; ack_wait short so a delayed write outlives it.
    async with own_operator(max_deliver=3, ack_wait_seconds=1.0) as pair:
        yield pair


@pytest_asyncio.fixture(loop_scope="session")
async def foms(faulty: tuple[EmbeddedEnv, OperatorHandle]) -> AsyncIterator[Oms]:
    env, operator = faulty
    async with open_oms(env, operator) as h:
        try:
            yield h
        finally:
            env.api.clear_faults()


def status_writes(oms: Oms, name: str, status: int) -> int:
    return sum(1 for r in oms.env.api.requests
               if r.method == "PATCH" and r.path.endswith(f"/namespaces/{oms.namespace}/branches/{name}/status")
               and r.status == status)


async def assert_applied_once(oms: Oms, name: str, branch_name: str, wanted: dict[str, int]) -> None:
    assert actions(oms, branch_name) == wanted
    locks = await oms.kube.list_locks(oms.namespace, name)
    assert [lk["spec"]["lockType"] for lk in locks] == ["INDEXING"]
    reasons = [e["reason"] for e in await oms.k8s_events(name)]
    assert reasons.count("IndexingStarted") == 1
    # The audit stream holds each record once (its Nats-Msg-Id is the audit id).
    ids = [r.audit_id for r in oms.audits_for(branch_name)]
    stored = await stream_ids(oms, oms.settings.audit_stream)
    assert all(stored.count(i) == 1 for i in ids), ids


STARTED_ONCE = {"indexing.started": 1, "branch.state_changed": 1, "lock.acquired": 1}


async def test_transient_5xx_on_status_write_is_redelivered_and_applied_once(foms: Oms) -> None:
    await foms.create_branch("flaky", "feature/flaky", autoMerge=False)
    foms.env.api.inject_fault(method="PATCH", path_regex=status_path(foms, "flaky"), status=500, times=2)
    async with probing(foms.operator) as probe:
        seq = await publish_event(foms, "started", foms.event("started", "feature/flaky", "idx-1"))
        await foms.wait_phase("flaky", "LOCKED_FOR_WRITE")
        await wait_for(lambda: all_idle(foms), what="event acknowledged")
    # Nak'ed twice (with backoff), applied on the third delivery.
    assert probe.of(seq) == [(1, Disposition.RETRY, None), (2, Disposition.RETRY, None),
                             (3, Disposition.ACKED, Outcome.APPLIED)]
    # With the explicit, jittered backoff (within [0.25, 0.5] s, then [0.5, 1] s), not at once as a bare
    # nak would.
    first, second = probe.gaps(seq)
    assert first >= 0.2 and second >= 0.45, (first, second)
    assert status_writes(foms, "flaky", 500) == 2
    await assert_applied_once(foms, "flaky", "feature/flaky", STARTED_ONCE)
    assert await parked(foms, seq) == []


async def test_conflict_on_status_write_is_reread_and_applied_once(foms: Oms) -> None:
    await foms.create_branch("contended", "feature/contended", autoMerge=False)
    foms.env.api.inject_fault(method="PATCH", path_regex=status_path(foms, "contended"), status=409, times=1)
    ok_before = status_writes(foms, "contended", 200)
    async with probing(foms.operator) as probe:
        seq = await publish_event(foms, "started", foms.event("started", "feature/contended", "idx-1"))
        await foms.wait_phase("contended", "LOCKED_FOR_WRITE")
        await wait_for(lambda: all_idle(foms), what="event acknowledged")
    # Re-read and re-decided within the same delivery: no redelivery needed.
    assert probe.of(seq) == [(1, Disposition.ACKED, Outcome.APPLIED)]
    assert status_writes(foms, "contended", 409) == 1
    assert status_writes(foms, "contended", 200) - ok_before == 1
    await assert_applied_once(foms, "contended", "feature/contended", STARTED_ONCE)


async def test_persistent_outage_dead_letters_then_replay_applies_exactly_once(foms: Oms) -> None:
    await foms.create_branch("outage", "feature/outage", autoMerge=False)
    foms.env.api.inject_fault(method="PATCH", path_regex=status_path(foms, "outage"), status=503, times=-1)
    event = foms.event("started", "feature/outage", "idx-1")
    async with probing(foms.operator) as probe:
        seq = await publish_event(foms, "started", event)
        [p] = await wait_for(lambda: parked(foms, seq), timeout=15, what="RetriesExhausted in the DLQ")
        await wait_for(lambda: all_idle(foms), what="message terminated")
        assert probe.of(seq) == [(1, Disposition.RETRY, None), (2, Disposition.RETRY, None),
                                 (3, Disposition.DEAD_LETTERED, None)]
    assert p.reason_code == "RetriesExhausted" and "503" in p.reason
    assert p.delivery_count == foms.settings.max_deliver == 3
    assert (p.event_id, p.branch_name) == (event["id"], "feature/outage")
    [rejected] = foms.audits_for("feature/outage", "event.rejected")
    assert rejected.reason == "RetriesExhausted" and rejected.correlation_id == event["id"]
    assert (await foms.branch("outage"))["status"]["phase"] == "ACTIVE"
    assert foms.audits_for("feature/outage", "indexing.started") == []

    foms.env.api.clear_faults()
    async with probing(foms.operator) as probe:
        # A replay that dies between publishing and removing the parked copy...
        async with jetstream(foms) as js:
            async def killed(stream: str, seq: int) -> bool:
                raise ConnectionResetError("replay killed before the delete")
            js.delete_msg = killed
            [first] = await dlq.replay(js, foms.settings, [p])
        assert first.published and not first.removed and first.input_seq is not None
        # ...and a second replay, with the CLI: the input stream drops the copy, the DLQ entry goes.
        rc, out, err = await cli("dlq", "replay", "--id", str(p.seq), "--nats", foms.env.nats_url)
        assert rc == 0, out + err
        assert f"replayed dlq seq {p.seq}" in out and "duplicate dropped" in out
        await foms.wait_phase("outage", "LOCKED_FOR_WRITE")
        await wait_for(lambda: all_idle(foms), what="replayed event acknowledged")

        # A copy JetStream does not drop (as past its duplicate window: another Nats-Msg-Id) changes nothing
        # either: the branch remembers the event id.
        late = await publish(foms, foms.settings.subject_started, p.data, p.replay_headers() | {
            "Nats-Msg-Id": "replay-after-the-window"})
        await wait_for(lambda: probe.final(late), what="late copy handled")
        await wait_for(lambda: all_idle(foms), what="late copy acknowledged")
        assert probe.of(first.input_seq) == [(1, Disposition.ACKED, Outcome.APPLIED)]
        assert probe.of(late) == [(1, Disposition.ACKED, Outcome.DUPLICATE)]
        assert {h.seq for h in probe.handled} == {first.input_seq, late}

    await assert_applied_once(foms, "outage", "feature/outage", {**STARTED_ONCE, "event.rejected": 1})
    assert await parked(foms, seq) == []
    rc, _out, err = await cli("dlq", "replay", "--id", str(p.seq), "--nats", foms.env.nats_url)
    assert rc == 1 and "no parked message" in err  # gone: a third replay is refused, not repeated


async def test_status_writes_slower_than_ack_wait_do_not_double_apply(foms: Oms) -> None:
    """Every status write of the branch takes longer than ack_wait, through a whole run and its merge.

    JetStream then redelivers each event while it is still being applied. With one replica the late ack
    simply wins (the consumer pulls again only after its batch); with a second replica pulling on the same
    durable consumers the redelivery is applied concurrently, and only the resourceVersion check stands
    between it and a second transition. So a second replica runs for this test.
    """
    replica = OperatorHandle(foms.settings, foms.env.kubeconfig)
    await replica.start()
    replica.runtime.emitter.audit_observers.append(foms.audits.append)
    try:
        await foms.create_policy()
        await foms.create_branch("slow", "feature/slow")
        foms.env.api.inject_fault(method="PATCH", path_regex=status_path(foms, "slow"), delay=1.5, times=-1)
        async with probing(foms.operator) as one, probing(replica) as two:
            started = await publish_event(foms, "started", foms.event("started", "feature/slow", "idx-1"))
            await foms.wait_phase("slow", "LOCKED_FOR_WRITE", timeout=15)
            completed = await publish_event(foms, "completed", foms.event("completed", "feature/slow", "idx-1"))
            merged = await foms.wait_phase("slow", "ACTIVE", timeout=20)
            await wait_for(lambda: all_idle(foms), timeout=15, what="both events acknowledged")
        foms.env.api.clear_faults()
    finally:
        await replica.stop()
    assert merged["status"]["merge"]["decision"] == "Merged"
    for seq in (started, completed):
        deliveries = sorted(one.of(seq) + two.of(seq))
        # Delivered again after ack_wait, while the first delivery was still waiting for its write...
        assert [d for d, _disp, _o in deliveries][:2] == [1, 2], deliveries
        # ...and applied once: the other delivery found it applied (after a 409 and a re-read, or later).
        outcomes = [(disp, o) for _d, disp, o in deliveries]
        assert outcomes.count((Disposition.ACKED, Outcome.APPLIED)) == 1, deliveries
        assert set(outcomes) == {(Disposition.ACKED, Outcome.APPLIED), (Disposition.ACKED, Outcome.DUPLICATE)}
    # One record per action. Both replicas may announce the merge (the status write that marks it announced
    # is slow too): same ids, so the audit stream keeps one, though each replica logs its copy.
    records: dict[str, set[str]] = {}
    for record in foms.audits_for("feature/slow"):
        records.setdefault(str(record.action), set()).add(record.audit_id)
    assert {action: len(ids) for action, ids in records.items()} == {
        "indexing.started": 1, "lock.acquired": 1, "indexing.completed": 1, "lock.released": 1,
        "branch.state_changed": 3, "branch.merged": 1}
    stored = await stream_ids(foms, foms.settings.audit_stream)
    assert all(stored.count(i) == 1 for ids in records.values() for i in ids)
    merges = [m for m in await foms.stream_json(foms.settings.branch_events_stream)
              if m["data"]["namespace"] == foms.namespace and m["data"]["branch"] == "slow"]
    assert len(merges) == 1
    assert [e["reason"] for e in await foms.k8s_events("slow")].count("AutoMerged") == 1
    assert await foms.kube.list_locks(foms.namespace, "slow") == []


# ------------------------------------------------------------------------------------------ NATS outage


async def test_nats_outage_reports_not_ready_then_resumes_with_nothing_lost() -> None:
    async with own_operator(ack_wait_seconds=2.0) as (env, operator), open_oms(env, operator) as oms:
        runtime = operator.runtime
        names = [f"b{i}" for i in range(10)]
        for name in names:
            await oms.create_branch(name, f"feature/{name}", autoMerge=False)
        async with probing(operator) as probe:
            # Four events are being applied when NATS goes away (their status writes are held up): they
            # commit, but their audit records cannot be published nor the messages acknowledged.
            env.api.inject_fault(method="PATCH", path_regex=rf"/namespaces/{oms.namespace}/branches/b[0-3]/status$",
                                 delay=1.0, times=4)
            before = [await publish_event(oms, "started", oms.event("started", f"feature/{n}", "idx-1"))
                      for n in names[:4]]
            await wait_for(lambda: set(before) <= set(probe.arrived), what="the four events in flight")
            epoch = runtime.bus.epoch
            await asyncio.to_thread(env.nats.stop)
            await wait_for(lambda: not runtime.ready, what="not ready while NATS is down")
            assert runtime.readiness()["nats"] is False and runtime.readiness()["consumers"] is False
            # NATS stays away until the operator gave up publishing (JetStream publish timeout, 5 s).
            await wait_for(lambda: all(probe.of(seq) for seq in before), timeout=15, what="publishing given up")
            caught = [seq for seq in before if probe.of(seq) == [(1, Disposition.RETRY, None)]]
            assert caught  # (the batch that arrived last is in flight for sure; earlier ones may have finished)
            assert operator.alive  # still running

            await asyncio.to_thread(env.nats.start)  # same port, same store
            # The consumers bind their pull subscriptions again (nats.py #504); the reconnect callback that
            # triggers it may run just after the connection reports itself up.
            await wait_for(lambda: runtime.bus.epoch > epoch, timeout=20, what="reconnect seen by the consumers")
            await wait_for(lambda: runtime.ready, timeout=20, what="ready again after NATS is back")
            after = [await publish_event(oms, "started", oms.event("started", f"feature/{n}", "idx-1"))
                     for n in names[4:8]]
            for name in names[:8]:
                await oms.wait_phase(name, "LOCKED_FOR_WRITE", timeout=20)
            await wait_for(lambda: all(probe.final(seq) for seq in before + after), timeout=20,
                           what="every event settled")
            await wait_for(lambda: all_idle(oms), timeout=20, what="everything acknowledged")

        # Applied during the outage, recognised on redelivery (and its outbox published): applied once.
        for seq in caught:
            assert [(h.disposition, h.outcome) for h in probe.final(seq)] == [(Disposition.ACKED, Outcome.DUPLICATE)]
        for seq in set(before + after) - set(caught):
            # (a delivery fetched by a pull subscription as it was replaced may come again after ack_wait)
            assert [(h.disposition, h.outcome) for h in probe.final(seq)] == [(Disposition.ACKED, Outcome.APPLIED)]
        for name in names[:8]:
            assert actions(oms, f"feature/{name}") == STARTED_ONCE  # each record logged and observed once
            assert len(await oms.kube.list_locks(oms.namespace, name)) == 1
            assert [e["reason"] for e in await oms.k8s_events(name)].count("IndexingStarted") == 1
        # ...and each record stored once in the audit stream, including those whose publish failed.
        stored = await stream_ids(oms, oms.settings.audit_stream)
        assert sorted(stored) == sorted(a.audit_id for a in oms.audits)

        # NATS back with empty storage (a lost volume): the operator recreates its streams and durable
        # consumers and goes on with new events.
        await asyncio.to_thread(env.nats.stop)
        await wait_for(lambda: not runtime.ready, what="not ready while NATS is down")
        for path in env.nats.store_dir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
        await asyncio.to_thread(env.nats.start)
        await wait_for(lambda: runtime.ready, timeout=20, what="ready after NATS came back empty")
        async with jetstream(oms) as js:
            async def input_stream() -> bool:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    return bool(await js.stream_info(oms.settings.stream))
                return False
            await wait_for(input_stream, timeout=20, what="input stream recreated")
        for name in names[8:]:
            await publish_event(oms, "started", oms.event("started", f"feature/{name}", "idx-1"))
        for name in names[8:]:
            await oms.wait_phase(name, "LOCKED_FOR_WRITE", timeout=20)


# ----------------------------------------------------------------------------- arbitrary input (hypothesis)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzz() -> AsyncIterator[tuple[Oms, Probe]]:
    # No waiting for overtaken started events (would only slow the examples); small size limit so that
    # TooLarge is reachable; no faults are injected, so RetriesExhausted would mean a bug.
    async with own_operator(max_event_bytes=2048, early_event_retries=1, max_deliver=3) as (env, operator):
        async with open_oms(env, operator) as oms, probing(operator) as probe:
            for i in range(3):
                await oms.create_branch(f"fz{i}", f"feature/fz{i}", autoMerge=False)
            yield oms, probe


_SETTLED = {Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE, Outcome.UNEXPECTED, Outcome.PENDING,
            Outcome.UNKNOWN_BRANCH}
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
_headers = st.dictionaries(
    st.sampled_from(["Content-Type", "ce-id", "ce-type", "ce-source", "ce-specversion", "ce-namespace", "X-Other"]),
    _header_text | st.sampled_from(["application/cloudevents+json", "1.0", "com.oms.indexing.started"]),
    max_size=4,
)


def _subjects(oms: Oms) -> st.SearchStrategy[str]:
    return st.sampled_from([oms.settings.subject_started, oms.settings.subject_completed,
                            oms.settings.subject_failed])


@st.composite
def _mutated_event(draw: st.DrawFn, namespace: str) -> tuple[str, bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["started", "completed", "failed"]))
    event = make_event(
        kind, draw(st.sampled_from(["feature/fz0", "feature/fz1", "feature/fz2", "feature/nope"])),
        draw(st.sampled_from(["idx-1", "idx-2"])), namespace=namespace,
        status=draw(st.sampled_from([None, "success", "failed"])) if kind == "completed" else None)
    for _ in range(draw(st.integers(0, 3))):
        data = event.get("data")
        target = data if isinstance(data, dict) and draw(st.booleans()) else event
        key = draw(st.sampled_from([*sorted(target), "extra"]))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(_json)
    subject = draw(st.sampled_from([f"funnel.indexing.{kind}"] * 3 + ["funnel.indexing.started",
                                                                     "funnel.indexing.failed"]))
    try:
        payload, headers = encode_binary(event) if draw(st.booleans()) else encode_structured(event)
    except (ValueError, TypeError):
        payload, headers = json.dumps(event, default=str).encode(), {}
    return subject, payload, headers


async def _check_one(oms: Oms, probe: Probe, subject: str, payload: bytes, headers: dict[str, str]) -> int:
    seq = await publish(oms, subject, payload, headers)
    [final] = await wait_for(lambda: probe.final(seq), what=f"seq {seq} handled")
    assert final.delivered == 1, probe.of(seq)
    if final.disposition is Disposition.DEAD_LETTERED:
        [p] = await wait_for(lambda: parked(oms, seq), what=f"seq {seq} in the DLQ")
        assert p.reason_code in PERMANENT_CODES, (p.reason_code, p.reason)
        assert p.data == payload
    else:
        assert final.disposition is Disposition.ACKED and final.outcome in _SETTLED, final
    assert oms.operator.runtime.ready and oms.operator.alive
    return seq


async def _property(oms: Oms, probe: Probe, strategy: st.SearchStrategy[tuple[str, bytes, dict[str, str]]]) -> None:
    loop = asyncio.get_running_loop()
    published: list[int] = []

    @hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(message=strategy)
    def prop(message: tuple[str, bytes, dict[str, str]]) -> None:
        published.append(asyncio.run_coroutine_threadsafe(_check_one(oms, probe, *message), loop).result(timeout=30))

    await asyncio.to_thread(prop)
    await wait_for(lambda: all_idle(oms), what="nothing pending")
    # Published = settled + dead-lettered, each message exactly once.
    finals = [h for h in probe.handled if h.seq in set(published) and h.disposition is not Disposition.RETRY]
    assert sorted(h.seq for h in finals) == sorted(published)
    dead = {h.seq for h in finals if h.disposition is Disposition.DEAD_LETTERED}
    assert dead == {p.original_seq for p in await parked(oms) if p.original_seq in set(published)}


async def test_arbitrary_bytes_are_accounted_for(fuzz: tuple[Oms, Probe]) -> None:
    oms, probe = fuzz
    await _property(oms, probe, st.tuples(_subjects(oms), st.binary(max_size=2100), _headers))


async def test_arbitrary_json_is_accounted_for(fuzz: tuple[Oms, Probe]) -> None:
    oms, probe = fuzz
    await _property(oms, probe, st.tuples(
        _subjects(oms), _json.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([{}, {"Content-Type": "application/cloudevents+json"}])))


async def test_mutated_valid_events_are_accounted_for(fuzz: tuple[Oms, Probe]) -> None:
    oms, probe = fuzz
    await _property(oms, probe, _mutated_event(oms.namespace))
