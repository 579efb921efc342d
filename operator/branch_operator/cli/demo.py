"""`branch-operator demo`: the three scenarios of the original design, end to end on the embedded default.

(1) indexing succeeds with validation passed → READY → auto-merged → ACTIVE;
(2) indexing fails → ERROR, every lock released, admins notified;
(3) indexing succeeds but validation failed → READY, merge blocked with ValidationFailed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from branch_operator.api.models import API_VERSION, AutoMergePolicy, Branch, LockType
from branch_operator.cli.publish import build_event, publish_event, subject_for
from branch_operator.clients.kube import KubeClient
from branch_operator.domain.audit import AuditAction, AuditRecord
from branch_operator.domain.locks import lock_body
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle

Print = Callable[[str], None]


@dataclass
class Scenario:
    title: str
    name: str
    branch_name: str
    events: list[tuple[str, dict[str, Any]]]
    expect_phase: str
    expect_reasons: list[str]


def scenarios(now: datetime) -> list[Scenario]:
    start, end = now - timedelta(minutes=30), now

    def ev(kind: str, branch: str, idx: str, **kw: Any) -> tuple[str, dict[str, Any]]:
        started_at = start
        completed_at = None if kind == "started" else end
        return kind, build_event(kind, branch, indexing_id=idx, started_at=started_at, completed_at=completed_at, **kw)

    return [
        Scenario("1. Successful indexing and auto-merge", "feature-user-schema", "feature/user-schema",
                 [ev("started", "feature/user-schema", "idx-123"),
                  ev("completed", "feature/user-schema", "idx-123", records=1250)],
                 "ACTIVE", []),
        Scenario("2. Indexing failure", "problematic-branch", "problematic-branch",
                 [ev("started", "problematic-branch", "idx-456"),
                  ev("completed", "problematic-branch", "idx-456", status="failed", passed=False,
                     errors=["index build failed: mapping conflict on field 'email'"])],
                 "ERROR", []),
        Scenario("3. Auto-merge blocked by failed validation", "feature-invalid-schema", "feature/invalid-schema",
                 [ev("started", "feature/invalid-schema", "idx-789"),
                  ev("completed", "feature/invalid-schema", "idx-789", records=980, passed=False,
                     errors=["ObjectType 'User': property 'email' has no type"])],
                 "READY", ["ValidationFailed"]),
    ]


DEMO_POLICY = {
    "apiVersion": API_VERSION,
    "kind": AutoMergePolicy.KIND,
    "metadata": {"name": "default"},
    # The original design's auto_merge_config: enabled, require_validation, timeout_hours.
    "spec": {"enabled": True, "requireValidation": True, "blockOnConflicts": True, "timeoutHours": 24,
             "targetBranches": ["main"], "priority": 10},
}


def _phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: (o.get("status") or {}).get("phase") == phase


async def _wait(kube: KubeClient, ns: str, name: str, predicate: Callable[[dict[str, Any]], bool],
                timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        obj = await kube.get_branch(ns, name)
        if predicate(obj):
            return obj
        if loop.time() > deadline:
            return obj
        await asyncio.sleep(0.05)  # polling status with a deadline


async def run_demo(out: Print = print, timeout: float = 20.0) -> bool:
    env = EmbeddedEnv()
    await env.start()
    out(f"Embedded Kubernetes API at {env.api_url}, NATS JetStream at {env.nats_url}")
    settings = env.settings(**env.webhook_settings())
    operator = OperatorHandle(settings, env.kubeconfig)
    kube: KubeClient | None = None
    ok = True
    try:
        await operator.start()

        def show(record: AuditRecord) -> None:
            changed = record.action == AuditAction.BRANCH_STATE_CHANGED
            move = f" {record.from_state} -> {record.to_state}" if changed else ""
            out(f"    audit {record.audit_id}{move}")

        operator.runtime.emitter.audit_observers.append(show)
        kube = await KubeClient.connect(str(env.kubeconfig))
        ns = settings.default_namespace
        await kube.create(AutoMergePolicy.PLURAL, ns, DEMO_POLICY)
        out("Installed CRDs and AutoMergePolicy 'default' (enabled, requireValidation, timeoutHours=24)")

        for sc in scenarios(datetime.now(UTC)):
            out(f"\n== {sc.title}: {sc.branch_name}")
            branch = await kube.create(Branch.PLURAL, ns, {
                "apiVersion": API_VERSION, "kind": Branch.KIND, "metadata": {"name": sc.name},
                "spec": {"branchName": sc.branch_name}})
            await _wait(kube, ns, sc.name, lambda o: bool((o.get("status") or {}).get("phase")), timeout)
            if sc.expect_phase == "ERROR":
                # Another service holds a WRITE lock too: a failure must release every lock.
                await kube.create_lock(ns, lock_body(branch, LockType.WRITE, key="schema-editor", holder="oms-editor",
                                                     reason="schema edit in progress"))
            for kind, event in sc.events:
                out(f"  publish {subject_for(kind, settings)} ({event['data'].get('status') or 'started'}, "
                    f"id {event['id']})")
                await publish_event(settings.nats_url, subject_for(kind, settings), event)
                if kind == "started":
                    await _wait(kube, ns, sc.name, _phase_is("LOCKED_FOR_WRITE"), timeout)

            def done(o: dict[str, Any], sc: Scenario = sc) -> bool:
                st = o.get("status") or {}
                if st.get("phase") != sc.expect_phase:
                    return False
                return not sc.expect_reasons or (st.get("merge") or {}).get("reasons") == sc.expect_reasons
            final = await _wait(kube, ns, sc.name, done, timeout)
            st = final.get("status") or {}
            locks = [lk["metadata"]["name"] for lk in await kube.list_locks(ns, sc.name)]
            good = done(final) and (sc.expect_phase != "ERROR" or not locks)
            ok = ok and good
            out(f"  => phase {st.get('phase')}, merge {json.dumps((st.get('merge') or {}).get('reasons', []))}, "
                f"locks held {locks}  [{'OK' if good else 'UNEXPECTED'}]")
    finally:
        if kube is not None:
            await kube.close()
        await operator.stop()
        await env.stop()
    out("\nAll three scenarios ended as the original design describes." if ok else "\nDemo FAILED.")
    return ok
