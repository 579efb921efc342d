"""One embedded environment (API server + real nats-server) and one real operator per test session;
each test works in its own namespace so tests don't see each other's objects."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest_asyncio

from branch_operator.api.models import API_VERSION, AutoMergePolicy, Branch
from branch_operator.cli.publish import build_event, publish_event, subject_for
from branch_operator.clients.kube import KubeClient
from branch_operator.domain.audit import AuditRecord
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle

from ..waiting import wait_for

_ns_counter = itertools.count(1)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def embedded() -> AsyncIterator[tuple[EmbeddedEnv, OperatorHandle]]:
    env = EmbeddedEnv()
    await env.start()
    operator = OperatorHandle(env.settings(), env.kubeconfig)
    await operator.start()
    yield env, operator
    await operator.stop()
    await env.stop()


@dataclass
class Oms:
    env: EmbeddedEnv
    operator: OperatorHandle
    kube: KubeClient
    namespace: str
    audits: list[AuditRecord] = field(default_factory=list)

    @property
    def settings(self) -> Any:
        return self.operator.settings

    async def create_branch(self, name: str, branch_name: str, **spec: Any) -> dict[str, Any]:
        obj = await self.kube.create(Branch.PLURAL, self.namespace, {
            "apiVersion": API_VERSION, "kind": Branch.KIND,
            "metadata": {"name": name, "labels": spec.pop("labels", {})},
            "spec": {"branchName": branch_name, **spec}})
        await self.wait_phase(name, "ACTIVE")
        return obj

    async def create_policy(self, name: str = "default", **spec: Any) -> dict[str, Any]:
        body = {"enabled": True, "requireValidation": True, "blockOnConflicts": True, "timeoutHours": 24}
        body.update(spec)
        return await self.kube.create(AutoMergePolicy.PLURAL, self.namespace, {
            "apiVersion": API_VERSION, "kind": AutoMergePolicy.KIND, "metadata": {"name": name}, "spec": body})

    def event(self, kind: str, branch_name: str, indexing_id: str = "idx-1", **kw: Any) -> dict[str, Any]:
        kw.setdefault("namespace", self.namespace)
        return build_event(kind, branch_name, indexing_id=indexing_id, **kw)

    async def publish(self, kind: str, event: dict[str, Any], *, binary: bool = False) -> int:
        return await publish_event(self.env.nats_url, subject_for(kind, self.settings), event, binary=binary)

    async def publish_raw(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        nc = await nats.connect(self.env.nats_url)
        try:
            await nc.jetstream().publish(subject, payload, headers=headers)
        finally:
            await nc.drain()

    async def run_indexing(self, branch_name: str, indexing_id: str, **kw: Any) -> dict[str, Any]:
        """started, then (once the lock is visible) completed: one whole indexing run."""
        await self.publish("started", self.event("started", branch_name, indexing_id))
        async def locked() -> bool:
            return any(lk["spec"].get("indexingId") == indexing_id
                       for lk in await self.kube.list_objects("branchlocks", self.namespace))
        await wait_for(locked, what=f"INDEXING lock for {indexing_id}")
        completed = self.event("completed", branch_name, indexing_id, **kw)
        await self.publish("completed", completed)
        return completed

    async def branch(self, name: str) -> dict[str, Any]:
        return await self.kube.get_branch(self.namespace, name)

    async def wait_phase(self, name: str, phase: str, timeout: float = 10.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            obj = await self.branch(name)
            return obj if (obj.get("status") or {}).get("phase") == phase else None
        return await wait_for(check, timeout, f"{name} to reach {phase}")

    async def wait_branch(self, name: str, predicate: Callable[[dict[str, Any]], bool],
                          timeout: float = 10.0, what: str = "branch condition") -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            obj = await self.branch(name)
            return obj if predicate(obj) else None
        return await wait_for(check, timeout, what)

    def audits_for(self, branch_name: str | None = None, action: str | None = None) -> list[AuditRecord]:
        return [a for a in self.audits
                if (branch_name is None or a.branch_name == branch_name)
                and (action is None or str(a.action) == action or getattr(a.action, "value", None) == action)]

    async def k8s_events(self, name: str) -> list[dict[str, Any]]:
        result = await self.kube.core.list_namespaced_event(self.namespace)
        items = [self.kube.api.sanitize_for_serialization(i) for i in result.items]
        return [e for e in items if e.get("involvedObject", {}).get("name") == name]

    async def stream_messages(
        self, stream: str, subject_filter: str | None = None
    ) -> list[tuple[dict[str, str], bytes]]:
        """Every message in a JetStream stream (read with an ephemeral ordered consumer)."""
        nc = await nats.connect(self.env.nats_url)
        out: list[tuple[dict[str, str], bytes]] = []
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(stream, seq)
                except Exception:
                    continue
                if subject_filter and msg.subject != subject_filter:
                    continue
                out.append((dict(msg.headers or {}), msg.data or b""))
        finally:
            await nc.drain()
        return out

    async def stream_json(self, stream: str) -> list[dict[str, Any]]:
        return [json.loads(data) for _h, data in await self.stream_messages(stream)]

    async def consumer_idle(self, durable: str) -> bool:
        nc = await nats.connect(self.env.nats_url)
        try:
            info = await nc.jetstream().consumer_info(self.settings.stream, durable)
            return info.num_ack_pending == 0 and info.num_pending == 0
        finally:
            await nc.drain()


@pytest_asyncio.fixture(loop_scope="session")
async def oms(embedded: tuple[EmbeddedEnv, OperatorHandle]) -> AsyncIterator[Oms]:
    env, operator = embedded
    kube = await KubeClient.connect(str(env.kubeconfig))
    namespace = f"t{next(_ns_counter)}"
    await kube.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    h = Oms(env, operator, kube, namespace)
    observer = h.audits.append
    operator.runtime.emitter.audit_observers.append(observer)
    yield h
    operator.runtime.emitter.audit_observers.remove(observer)
    await kube.close()



@contextlib.asynccontextmanager
async def open_oms(env: EmbeddedEnv, operator: OperatorHandle) -> AsyncIterator[Oms]:
    """What the ``oms`` fixture gives, for any environment (e.g. a module's own, for fault injection)."""
    kube = await KubeClient.connect(str(env.kubeconfig))
    namespace = f"t{next(_ns_counter)}"
    await kube.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    h = Oms(env, operator, kube, namespace)
    observer = h.audits.append
    operator.runtime.emitter.audit_observers.append(observer)
    try:
        yield h
    finally:
        operator.runtime.emitter.audit_observers.remove(observer)
        await kube.close()


# ------------------------------------------------------------------ helpers for the fault tests (issue 3)


@dataclass(frozen=True)
class StreamMsg:
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)


async def read_stream(nats_url: str, stream: str) -> list[StreamMsg]:
    """Every message of a JetStream stream, in order, fetched in batches by an ephemeral consumer."""
    from nats.js import api as js_api

    nc = await nats.connect(nats_url)
    out: list[StreamMsg] = []
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        if not total:
            return out
        sub = await js.pull_subscribe("", stream=stream, config=js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.NONE, deliver_policy=js_api.DeliverPolicy.ALL, inactive_threshold=30.0))
        while len(out) < total:
            for msg in await sub.fetch(min(1000, total - len(out)), timeout=5.0):
                out.append(StreamMsg(msg.metadata.sequence.stream, msg.subject, dict(msg.headers or {}),
                                     msg.data or b""))
        await sub.unsubscribe()
    finally:
        await nc.drain()
    return out


async def consumers_idle(nats_url: str, stream: str, durables: list[str]) -> dict[str, tuple[int, int]]:
    """{durable: (num_pending, num_ack_pending)} for the durables that still have work (empty: all idle).
    A message nak'ed with a delay counts as ack-pending until it is redelivered and acknowledged."""
    nc = await nats.connect(nats_url)
    busy: dict[str, tuple[int, int]] = {}
    try:
        js = nc.jetstream()
        for durable in durables:
            info = await js.consumer_info(stream, durable)
            if info.num_pending or info.num_ack_pending:
                busy[durable] = (int(info.num_pending or 0), int(info.num_ack_pending or 0))
    finally:
        await nc.drain()
    return busy
