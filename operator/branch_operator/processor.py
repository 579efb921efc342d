"""Applies one parsed indexing event to its Branch: the I/O half of domain.states.

Order of effects (why): the Branch status write is the commit point — it records the event id, so a
redelivered copy is recognised as a duplicate. It carries the resourceVersion it was computed from;
on 409 the branch is re-read and the plan re-made. Lock changes happen before the commit (an INDEXING
lock exists whenever the phase says LOCKED_FOR_WRITE, and no released lock is visible once the phase
says READY or ERROR); the Kubernetes Event, the audit records and notifications follow it. Every effect is idempotent (lock
names are deterministic, audit ids are seeded by the event id and de-duplicated by JetStream), so a
redelivery after a crash between commit and ack repairs what was missed without doubling anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from .api.models import LockType, Phase
from .api.models import BranchStatus as BranchStatusModel
from .config import Settings
from .domain.audit import AuditAction, AuditRecord
from .domain.states import plan_indexing_event
from .emit import Emitter
from .events import IndexingEvent
from .kube import Conflict, KubeClient, NotFound, Obj, Transient
from .locks import label_value, lock_body, locks_to_release

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5


class Outcome(str, enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    UNEXPECTED = "unexpected"
    UNKNOWN_BRANCH = "unknown_branch"


@dataclass
class Result:
    outcome: Outcome
    namespace: str
    branch: str | None = None
    from_phase: str | None = None
    to_phase: str | None = None
    audit_ids: list[str] = field(default_factory=list)


class BranchLookup(Protocol):
    """Finds a Branch's Kubernetes name from its OMS name (a kopf index in the operator)."""

    def find(self, namespace: str, branch_name: str) -> str | None: ...


class EventProcessor:
    def __init__(
        self,
        kube: KubeClient,
        emitter: Emitter,
        settings: Settings,
        lookup: BranchLookup | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.emitter = emitter
        self.settings = settings
        self.lookup = lookup
        self.clock = clock
        # Events for one branch are applied one at a time in this process; across replicas the
        # resourceVersion check on the status write does the same job.
        self._branch_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._branch_users: dict[tuple[str, str], int] = {}

    @contextlib.asynccontextmanager
    async def _serialised(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock = self._branch_locks.setdefault(key, asyncio.Lock())
        self._branch_users[key] = self._branch_users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._branch_users[key] -= 1
            if self._branch_users[key] == 0:  # keep the map bounded by the branches in flight
                del self._branch_users[key]
                del self._branch_locks[key]

    async def find_branch(self, namespace: str, branch_name: str) -> str | None:
        if self.lookup is not None:
            name = self.lookup.find(namespace, branch_name)
            if name is not None:
                return name
        # The index can lag right after start-up or a create: ask the API server before saying "unknown".
        for obj in await self.kube.list_branches(namespace):
            if obj.get("spec", {}).get("branchName") == branch_name:
                return str(obj["metadata"]["name"])
        return None

    async def handle(self, event: IndexingEvent) -> Result:
        namespace = event.namespace or self.settings.default_namespace
        async with self._serialised((namespace, event.data.branch_name)):
            return await self._handle(event, namespace)

    async def _handle(self, event: IndexingEvent, namespace: str) -> Result:
        name = await self.find_branch(namespace, event.data.branch_name)
        if name is None:
            return await self._unknown(event, namespace)

        for _attempt in range(MAX_CONFLICT_RETRIES):
            try:
                obj = await self.kube.get_branch(namespace, name)
            except NotFound:
                # Deleted between lookup and read: the same as never having existed.
                return await self._unknown(event, namespace)
            status = BranchStatusModel.model_validate(obj.get("status") or {})
            plan = plan_indexing_event(status, event, now=self.clock())
            outcome = str(getattr(plan.outcome, "value", plan.outcome)).lower()
            if outcome == "duplicate":
                await self._repair(obj, event, status)
                log.info("event %s already applied to %s/%s", event.id, namespace, name)
                return Result(Outcome.DUPLICATE, namespace, name, _phase(status.phase), _phase(status.phase))
            if outcome == "unexpected":
                if plan.status_patch:
                    # Remember the event id so a redelivered copy is a quiet duplicate, not a second warning.
                    try:
                        await self.kube.patch_branch_status(
                            namespace, name, plan.status_patch,
                            resource_version=obj["metadata"].get("resourceVersion"))
                    except Conflict:
                        continue
                return await self._unexpected(obj, event, plan)

            new_lock = None
            if plan.acquire_lock is not None:
                new_lock = await self._acquire(obj, event, LockType(plan.acquire_lock))
            # Released before the commit too: whoever sees the new phase never sees the old locks.
            released = await self._release(obj, plan.release_locks, keep=new_lock)
            try:
                updated = await self.kube.patch_branch_status(
                    namespace, name, plan.status_patch, resource_version=obj["metadata"].get("resourceVersion")
                )
            except Conflict:
                log.info("status of %s/%s changed underneath; re-reading", namespace, name)
                continue
            audit_ids = await self._after_commit(updated, event, plan, new_lock, released)
            return Result(Outcome.APPLIED, namespace, name, _phase(plan.from_phase), _phase(plan.to_phase), audit_ids)
        raise Transient(409, f"gave up on {namespace}/{name} after {MAX_CONFLICT_RETRIES} conflicting writes")

    # --------------------------------------------------------------------------------- effects

    async def _unknown(self, event: IndexingEvent, namespace: str) -> Result:
        record = self._record(
            AuditAction.EVENT_UNEXPECTED, event, namespace=namespace, branch=None, reason="UnknownBranch",
            details={"message": f"no Branch with spec.branchName={event.data.branch_name!r} in {namespace}",
                     "type": event.type},
        )
        await self.emitter.audit(record)
        log.warning("event %s for unknown branch %r in %s", event.id, event.data.branch_name, namespace)
        return Result(Outcome.UNKNOWN_BRANCH, namespace, audit_ids=[record.audit_id])

    async def _acquire(self, obj: Obj, event: IndexingEvent, lock_type: LockType) -> str:
        body = lock_body(
            obj, lock_type, key=event.data.indexing_id, holder=event.source or "funnel-service",
            reason=f"indexing run {event.data.indexing_id}", indexing_id=event.data.indexing_id,
        )
        lock, _created = await self.kube.create_lock(obj["metadata"]["namespace"], body)
        return str(lock["metadata"]["name"])

    async def _release(self, obj: Obj, scope: Any, *, keep: str | None) -> list[str]:
        scope = str(getattr(scope, "value", scope) or "none")
        if scope == "none":
            return []
        meta = obj["metadata"]
        locks = await self.kube.list_locks(meta["namespace"], label_value(meta["name"]))
        released = []
        for lock_name in locks_to_release(locks, meta["name"], scope, keep=keep):
            if await self.kube.delete_lock(meta["namespace"], lock_name):
                released.append(lock_name)
        return released

    async def _repair(self, obj: Obj, event: IndexingEvent, status: BranchStatusModel) -> None:
        """A redelivered event whose status write already happened: finish lock effects it may have missed."""
        indexing = status.indexing
        if indexing is None or indexing.event_id != event.id:
            return
        if event.kind == "completed" and status.phase == Phase.READY:
            await self._release(obj, "indexing", keep=None)
        elif event.failed and status.phase == Phase.ERROR:
            await self._release(obj, "all", keep=None)

    async def _unexpected(self, obj: Obj, event: IndexingEvent, plan: Any) -> Result:
        meta = obj["metadata"]
        await self.kube.post_event(obj, type_="Warning", reason=plan.event_reason or "UnexpectedEvent",
                                   message=plan.event_message)
        record = self._record(
            AuditAction.EVENT_UNEXPECTED, event, namespace=meta["namespace"], branch=meta["name"],
            from_state=_phase(plan.from_phase), to_state=_phase(plan.from_phase), reason=plan.reason,
            details={"type": event.type, "message": plan.event_message},
        )
        await self.emitter.audit(record)
        return Result(Outcome.UNEXPECTED, meta["namespace"], meta["name"], _phase(plan.from_phase),
                      _phase(plan.from_phase), [record.audit_id])

    async def _after_commit(
        self, obj: Obj, event: IndexingEvent, plan: Any, new_lock: str | None, released: list[str]
    ) -> list[str]:
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        from_phase, to_phase = _phase(plan.from_phase), _phase(plan.to_phase)
        await self.kube.post_event(obj, type_=plan.event_type, reason=plan.event_reason, message=plan.event_message)

        common: dict[str, Any] = {"namespace": ns, "branch": name}
        records = [self._record(
            AuditAction(plan.audit_action), event, from_state=from_phase, to_state=to_phase, reason=plan.reason,
            details=_event_details(event), **common,
        )]
        if from_phase != to_phase:
            records.append(self._record(
                AuditAction.BRANCH_STATE_CHANGED, event, from_state=from_phase, to_state=to_phase,
                reason=plan.event_reason, **common,
            ))
        if new_lock:
            records.append(self._record(
                AuditAction.LOCK_ACQUIRED, event, reason=f"{LockType.INDEXING.value} lock for indexing run",
                details={"lock": new_lock, "lock_type": LockType.INDEXING.value}, seed_extra=new_lock, **common,
            ))
        for lock_name in released:
            records.append(self._record(
                AuditAction.LOCK_RELEASED, event, reason=plan.event_reason,
                details={"lock": lock_name}, seed_extra=lock_name, **common,
            ))
        for record in records:
            await self.emitter.audit(record)
        if plan.notify:
            await self.emitter.notify(
                msg_id=f"notify:{event.id}", kind="indexing_failed", branch_name=event.data.branch_name,
                data={
                    "namespace": ns, "branch": name, "branch_name": event.data.branch_name,
                    "indexing_id": event.data.indexing_id, "reason": plan.event_message,
                    "errors": list(event.data.validation_results.errors) if event.data.validation_results else [],
                    "released_locks": released, "correlation_id": event.id,
                },
            )
        return [r.audit_id for r in records]

    def _record(
        self, action: AuditAction, event: IndexingEvent, *, seed_extra: str = "", **fields: Any
    ) -> AuditRecord:
        return AuditRecord.build(
            action,
            branch_name=event.data.branch_name,
            when=event.occurred_at,
            seed=f"{event.id}|{action.value}|{seed_extra}",
            actor=self.settings.operator_id,
            correlation_id=event.id,
            indexing_id=event.data.indexing_id,
            **fields,
        )


def _phase(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _event_details(event: IndexingEvent) -> dict[str, Any]:
    data = event.data
    details: dict[str, Any] = {"type": event.type, "source": event.source}
    if data.records_indexed is not None:
        details["records_indexed"] = data.records_indexed
    if event.duration_seconds is not None:
        details["duration_seconds"] = event.duration_seconds
    if data.validation_results is not None:
        details["validation_passed"] = data.validation_results.passed
        details["validation_errors"] = list(data.validation_results.errors)[:10]
    return details
