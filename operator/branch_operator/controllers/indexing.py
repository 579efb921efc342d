"""Applies one parsed indexing event to its Branch: the I/O half of domain.states.

Order of effects (why): lock changes first (an INDEXING lock exists whenever the phase says
LOCKED_FOR_WRITE, and no released lock is visible once it says READY or ERROR); then the Branch status
write, the commit point. It records the event id (a redelivered copy is then a duplicate), carries the
resourceVersion it was computed from (on 409 the branch is re-read and the plan re-made), and holds the
outbox: every audit record and notification this event owes, with ids derived from the event. After
the commit: the Kubernetes Event and the publishing of the outbox. A redelivery after a crash anywhere
in between re-publishes the outbox (JetStream drops what it already has), so nothing is lost or doubled.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from branch_operator.api.models import BranchStatus as BranchStatusModel
from branch_operator.api.models import LockType, Phase
from branch_operator.clients.emitter import Emitter, Outgoing, from_outbox, outbox
from branch_operator.clients.kube import Conflict, KubeClient, NotFound, Obj, Transient
from branch_operator.config import Settings
from branch_operator.contracts.funnel import EventRejected, IndexingEvent, parse_message
from branch_operator.domain.audit import AuditAction, AuditRecord
from branch_operator.domain.incidents import INDEXING_FAILED
from branch_operator.domain.indexing_event import event_key
from branch_operator.domain.lifecycle import EventPlan, plan_indexing_event
from branch_operator.domain.lifecycle import Outcome as PlanOutcome
from branch_operator.domain.locks import indexing_lock_key, label_value, lock_body, locks_to_release, release_record
from branch_operator.domain.locks import lock_name as make_lock_name
from branch_operator.domain.timefmt import rfc3339
from branch_operator.kit.keyed import KeyedLocks
from branch_operator.kit.retry import Again, retry

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    UNEXPECTED = "unexpected"
    PENDING = "pending"  # a result kept until its run's started event arrives
    UNKNOWN_BRANCH = "unknown_branch"
    WAIT = "wait"  # not applied yet: redeliver later


@dataclass
class Result:
    outcome: Outcome
    namespace: str
    branch: str | None = None
    from_phase: str | None = None
    to_phase: str | None = None
    audit_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Committed:
    """What an attempt that won its status write hands to the effects after the commit."""

    obj: Obj
    updated: Obj
    status: BranchStatusModel
    plan: EventPlan
    messages: list[Outgoing]


class BranchLookup(Protocol):
    """Finds a Branch's Kubernetes name from its OMS name (the Branch catalog in the operator)."""

    def find(self, namespace: str, branch_name: str) -> str | None: ...

    def forget(self, namespace: str, name: str) -> None:
        """``name`` was not found on the API server: stop answering with it."""


class EventProcessor:
    def __init__(
        self,
        kube: KubeClient,
        emitter: Emitter,
        settings: Settings,
        lookup: BranchLookup | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        on_ready: Callable[[Obj], None] | None = None,
    ) -> None:
        self.kube = kube
        self.emitter = emitter
        self.settings = settings
        self.lookup = lookup
        self.clock = clock
        # Called with the Branch as a committed event left it READY (the write's response): the merge
        # reconciler starts from it at once, without waiting for the watch to bring it or reading it again.
        self.on_ready = on_ready
        # Events for one branch are applied one at a time in this process; across replicas the
        # resourceVersion check on the status write does the same job.
        self._serialised: KeyedLocks[tuple[str, str]] = KeyedLocks()

    async def find_branch(self, namespace: str, branch_name: str) -> str | None:
        if self.lookup is not None:
            name = self.lookup.find(namespace, branch_name)
            if name is not None:
                return name
        # The catalog can lag right after a create: ask the API server before saying "unknown".
        for obj in await self.kube.list_branches(namespace):
            if obj.get("spec", {}).get("branchName") == branch_name:
                return str(obj["metadata"]["name"])
        return None

    async def handle(self, event: IndexingEvent, *, may_wait: bool = False) -> Result:
        """Apply ``event``. ``may_wait``: the caller can redeliver it later (see Outcome.WAIT)."""
        namespace = event.namespace or self.settings.default_namespace
        async with self._serialised((namespace, event.data.branch_name)):
            return await self._handle(event, namespace, may_wait)

    async def _handle(self, event: IndexingEvent, namespace: str, may_wait: bool) -> Result:
        found = await self.find_branch(namespace, event.data.branch_name)
        if found is None:
            return await self._unknown(event, namespace)

        name = found
        new_lock: str | None = None
        deleted: dict[str, str] = {}  # lock name -> type; kept across conflict retries: deleted once stays deleted

        async def attempt() -> Result | _Committed:
            """Up to the status write (the commit point): a conflict there starts over from the read."""
            nonlocal name, new_lock
            try:
                obj = await self.kube.get_branch(namespace, name)
            except NotFound:
                # Deleted between lookup and read: the same as never having existed. Unless the lookup
                # still held a Branch whose deletion no watch delivered (e.g. gone between start-up's list
                # and kopf's) while another Branch carries the name: then it is that one, if nothing was
                # done to the missing one yet.
                if self.lookup is not None:
                    self.lookup.forget(namespace, name)
                other = await self.find_branch(namespace, event.data.branch_name)
                if other is None or other == name or new_lock is not None or deleted:
                    return await self._unknown(event, namespace)
                name = other
                raise Again from None
            status = BranchStatusModel.model_validate(obj.get("status") or {})
            plan = plan_indexing_event(status, event, now=self.clock(), may_wait=may_wait,
                                       observed_generation=(obj.get("metadata") or {}).get("generation"))
            phase = _phase(status.phase) or Phase.ACTIVE.value
            if plan.outcome is PlanOutcome.WAIT:
                return Result(Outcome.WAIT, namespace, name, phase, phase)
            if plan.outcome is not PlanOutcome.APPLIED:
                await self._drop_orphaned_lock(obj, event, status)
            if plan.outcome is PlanOutcome.DUPLICATE:
                if await self._repair(obj, event, status):
                    # This started was committed, but applying the result kept for it failed last time.
                    return Result(Outcome.APPLIED, namespace, name, phase, phase)
                log.info("event %s already applied to %s/%s", event.id, namespace, name,
                         extra={"namespace": namespace, "branch": name, "event_id": event.id})
                return Result(Outcome.DUPLICATE, namespace, name, phase, phase)

            if plan.outcome is PlanOutcome.APPLIED:
                if plan.acquire_lock is not None:
                    new_lock = await self._acquire(obj, event, LockType(plan.acquire_lock))
                # Released before the commit: whoever sees the new phase never sees the old locks.
                deleted.update(await self._release(obj, plan.release_locks, keep=new_lock))
            uid = obj["metadata"].get("uid")
            released = _reported_releases(name, status, deleted, new_lock, uid=uid) if plan.applied else []
            messages = self._messages(obj, event, plan, new_lock, released)
            # An outbox committed by an earlier event whose publish failed (or whose process died before
            # it), with this event arriving before that one's redelivery, which would find only this one's.
            await self.emitter.flush_replaced(status.outbox, new_key=_key(event), now=self.clock())
            patch = dict(plan.status_patch)
            patch["outbox"] = outbox(_key(event), messages, written_at=self.clock())
            if plan.park:
                patch["pendingResult"] = self._parked(event)
            updated = await self.kube.patch_branch_status(
                namespace, name, patch, resource_version=obj["metadata"].get("resourceVersion"))
            return _Committed(obj, updated, status, plan, messages)

        async def conflicted(_conflict: BaseException) -> None:
            log.info("status of %s/%s changed underneath; re-reading", namespace, name,
                     extra={"namespace": namespace, "branch": name, "event_id": event.id})

        done = await retry(
            attempt, on=Conflict, attempts=MAX_CONFLICT_RETRIES, after_failure=conflicted,
            give_up=lambda: Transient(409, f"gave up on {namespace}/{name} after {MAX_CONFLICT_RETRIES} "
                                           "conflicting writes"))
        if isinstance(done, Result):
            return done
        obj, updated, status, plan, messages = done.obj, done.updated, done.status, done.plan, done.messages
        if plan.applied and _phase(plan.to_phase) == Phase.READY.value:
            if self.on_ready is not None:
                self.on_ready(updated)
        await self.kube.post_event(obj, type_=plan.event_type, reason=plan.event_reason,
                                   message=plan.event_message)
        await self.emitter.send_outbox(_key(event), messages)
        if plan.applied and plan.kind == "started":
            await self._replay_parked(status, event, namespace)
        outcome = {PlanOutcome.APPLIED: Outcome.APPLIED, PlanOutcome.STALE: Outcome.STALE}.get(
            plan.outcome, Outcome.PENDING if plan.park else Outcome.UNEXPECTED)
        return Result(outcome, namespace, name, _phase(plan.from_phase), _phase(plan.to_phase),
                      [m.msg_id for m in messages if m.record is not None])

    # --------------------------------------------------------------------------------- effects

    async def _unknown(self, event: IndexingEvent, namespace: str) -> Result:
        record = self._record(
            AuditAction.EVENT_UNEXPECTED, event, uid=None, namespace=namespace, branch=None, reason="UnknownBranch",
            details={"message": f"no Branch with spec.branchName={event.data.branch_name!r} in {namespace}",
                     "type": event.type},
        )
        await self.emitter.audit(record)
        log.warning("event %s for unknown branch %r in %s", event.id, event.data.branch_name, namespace,
                    extra={"namespace": namespace, "event_id": event.id, "audit_id": record.audit_id})
        return Result(Outcome.UNKNOWN_BRANCH, namespace, audit_ids=[record.audit_id])

    async def _acquire(self, obj: Obj, event: IndexingEvent, lock_type: LockType) -> str:
        body = lock_body(
            obj, lock_type, key=indexing_lock_key(obj["metadata"].get("uid"), event.data.indexing_id),
            holder=event.source or "funnel-service",
            reason=f"indexing run {event.data.indexing_id}", indexing_id=event.data.indexing_id,
        )
        lock, _created = await self.kube.create_lock(obj["metadata"]["namespace"], body)
        return str(lock["metadata"]["name"])

    async def _release(self, obj: Obj, scope: str, *, keep: str | None) -> dict[str, str]:
        """Delete the branch's locks in ``scope`` except ``keep``; returns {name: lock type} of those deleted now."""
        if scope == "none":
            return {}
        meta = obj["metadata"]
        locks = await self.kube.list_locks(meta["namespace"], label_value(meta["name"]))
        types = {lk["metadata"]["name"]: str(lk.get("spec", {}).get("lockType", "")) for lk in locks}
        released = {}
        for lock_name in locks_to_release(locks, meta["name"], scope, keep=keep):
            if await self.kube.delete_lock(meta["namespace"], lock_name):
                released[lock_name] = types.get(lock_name, "")
        return released

    async def _drop_orphaned_lock(self, obj: Obj, event: IndexingEvent, status: BranchStatusModel) -> None:
        """A started event that is not applied (any more) must not leave its run's INDEXING lock behind.

        The lock is taken before the commit; if the commit then loses a conflict to another replica that
        finished the run (or a crash stops it), the re-planned outcome is stale or duplicate and the lock
        would outlive its run. Its name is deterministic, so it is removed here unless the branch is locked
        for exactly this run.
        """
        if event.kind != "started":
            return
        recorded = status.indexing.indexing_id if status.indexing else None
        if status.phase == Phase.LOCKED_FOR_WRITE and recorded == event.data.indexing_id:
            return
        meta = obj["metadata"]
        key = indexing_lock_key(meta.get("uid"), event.data.indexing_id)
        orphan = make_lock_name(meta["name"], LockType.INDEXING, key)
        if await self.kube.delete_lock(meta["namespace"], orphan):
            log.info("removed INDEXING lock %s of run %s, which is not (any more) the branch's current run",
                     orphan, event.data.indexing_id)

    async def _repair(self, obj: Obj, event: IndexingEvent, status: BranchStatusModel) -> bool:
        """A redelivery of the event applied last: finish what a crash after the commit may have left.

        Lock releases are repeated (idempotent) and the outbox is published again; JetStream drops the
        messages it already stored, by their ids.
        """
        replayed = False
        if status.phase == Phase.LOCKED_FOR_WRITE and event.kind == "started":
            # Killed between this started's commit and applying the result that was waiting for it.
            replayed = await self._replay_parked(status, event, obj["metadata"]["namespace"])
        if status.outbox is None or status.outbox.key != _key(event):
            # Another event's outbox, which may never have gone out: e.g. this started applied the result
            # kept for its run and was killed before publishing that result's outbox. The result was
            # acknowledged when it was kept, so this redelivery is the only one left to publish it.
            await self.emitter.flush_replaced(status.outbox, new_key=_key(event), now=self.clock())
            return replayed
        if status.phase == Phase.READY:
            await self._release(obj, "indexing", keep=None)
        elif status.phase == Phase.ERROR:
            await self._release(obj, "all", keep=None)
        await self.emitter.republish(from_outbox(status.outbox.wire()))
        return replayed

    def _parked(self, event: IndexingEvent) -> dict[str, Any]:
        """The result event as it will be re-read when its run's started event arrives (structured JSON)."""
        doc: dict[str, Any] = {"specversion": "1.0", "id": event.id, "source": event.source, "type": event.type,
                               "data": event.data.model_dump(mode="json", exclude_none=True)}
        if event.time is not None:
            doc["time"] = rfc3339(event.time)
        if event.namespace and not event.data.namespace:
            doc["namespace"] = event.namespace
        return {"eventId": _key(event), "indexingId": event.data.indexing_id, "subject": event.subject,
                "event": json.dumps(doc, separators=(",", ":")), "receivedAt": rfc3339(self.clock())}

    async def _replay_parked(self, before: BranchStatusModel, started: IndexingEvent, namespace: str) -> bool:
        """Apply the result that arrived before this started event, now that its run has started."""
        parked = before.pending_result
        if parked is None or parked.indexing_id != started.data.indexing_id:
            return False
        try:
            result = parse_message(parked.subject, parked.event.encode(),
                                   {"content-type": "application/cloudevents+json"},
                                   max_bytes=max(self.settings.max_event_bytes, len(parked.event) + 1))
        except EventRejected as exc:  # it parsed once; if not now, keep the branch's state and say so
            log.error("kept result %s of run %s no longer parses: %s", parked.event_id, parked.indexing_id, exc)
            return False
        log.info("applying result %s kept for run %s", result.id, parked.indexing_id)
        await self._handle(result, namespace, may_wait=False)
        return True

    def _messages(
        self, obj: Obj, event: IndexingEvent, plan: EventPlan, new_lock: str | None, released: list[str]
    ) -> list[Outgoing]:
        """Everything to publish for this event, with ids that are the same on every retry."""
        meta = obj["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta.get("uid")
        from_phase, to_phase = _phase(plan.from_phase), _phase(plan.to_phase)
        common: dict[str, Any] = {"uid": uid, "namespace": ns, "branch": name}
        discard = self._discard_records(event, plan, **common)
        if plan.outcome is not PlanOutcome.APPLIED:
            record = self._record(
                plan.audit_action, event, from_state=from_phase, to_state=from_phase,
                reason=plan.reason, details={"type": event.type, "message": plan.event_message}, **common)
            return [self.emitter.audit_message(r) for r in (record, *discard)]

        records = [self._record(
            plan.audit_action, event, from_state=from_phase, to_state=to_phase, reason=plan.reason,
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
        records += [release_record(
            lock_name, seed=_seed(event, ns, uid, AuditAction.LOCK_RELEASED, lock_name), when=event.occurred_at,
            actor=self.settings.operator_id, reason=plan.event_reason, namespace=ns, branch=name,
            branch_name=event.data.branch_name, correlation_id=event.id, indexing_id=event.data.indexing_id,
        ) for lock_name in released]
        records += discard
        messages = [self.emitter.audit_message(r) for r in records]
        if plan.notify:
            messages.append(self.emitter.notification_message(
                msg_id=f"notify:{uid}:{_key(event)}", kind=INDEXING_FAILED, branch_name=event.data.branch_name,
                data={
                    "namespace": ns, "branch": name, "branch_name": event.data.branch_name,
                    "indexing_id": event.data.indexing_id, "reason": plan.event_message,
                    "errors": list(event.data.validation_results.errors)[:10]
                    if event.data.validation_results else [],
                    "released_locks": released, "correlation_id": event.id,
                },
            ))
        return messages

    def _discard_records(
        self, event: IndexingEvent, plan: EventPlan, *, uid: str | None, **common: Any
    ) -> list[AuditRecord]:
        """``event.discarded`` for the kept result the plan drops: acknowledged long ago, it goes unapplied."""
        dropped = plan.discarded
        if dropped is None:
            return []
        action = AuditAction.EVENT_DISCARDED
        return [AuditRecord.build(
            action, branch_name=event.data.branch_name, when=event.occurred_at,
            seed=_seed(event, common["namespace"], uid, action, dropped.event_key), actor=self.settings.operator_id,
            correlation_id=dropped.event_id, indexing_id=dropped.indexing_id, reason=dropped.reason,
            details={"discarded_by": event.id, "discarded_by_run": event.data.indexing_id}, **common,
        )]

    def _record(
        self, action: AuditAction, event: IndexingEvent, *, uid: str | None, seed_extra: str = "", **fields: Any
    ) -> AuditRecord:
        # Time and uuid come from the event, so a retry builds the very same audit id.
        return AuditRecord.build(
            action,
            branch_name=event.data.branch_name,
            when=event.occurred_at,
            seed=_seed(event, fields.get("namespace"), uid, action, seed_extra),
            actor=self.settings.operator_id,
            correlation_id=event.id,
            indexing_id=event.data.indexing_id,
            **fields,
        )


def _reported_releases(
    branch: str, status: BranchStatusModel, deleted: Mapping[str, str], new_lock: str | None, *,
    uid: str | None = None,
) -> list[str]:
    """The locks an applied event's commit reports released (one ``lock.released`` record each).

    The INDEXING lock of the run the event ends (the branch is LOCKED_FOR_WRITE for it) is reported even if
    someone else deleted it: a losing copy of this event on another replica, or a killed attempt — neither
    committed, so neither reported it. Other locks this event's attempts deleted are reported too, except
    INDEXING locks of other runs: an attempt that lost a conflict may have deleted the lock of a run that the
    winning commit ended and reported (or an orphan whose acquisition was never reported either).
    """
    recorded = status.indexing.indexing_id if status.indexing else None
    ending = None
    if status.phase == Phase.LOCKED_FOR_WRITE and recorded:
        ending = make_lock_name(branch, LockType.INDEXING, indexing_lock_key(uid, recorded))
    names = {n for n, kind in deleted.items() if kind != LockType.INDEXING.value or n == ending}
    if ending is not None and ending != new_lock:
        names.add(ending)
    return sorted(names)


def _key(event: IndexingEvent) -> str:
    return event_key(event.source, event.id)


def _seed(event: IndexingEvent, namespace: str | None, uid: str | None, action: AuditAction, extra: str) -> str:
    """What an audit id (or Nats-Msg-Id) of one effect of ``event`` is derived from: the same on every
    redelivery, distinct per effect. The event's source is in its key; namespace and the Branch's uid tell
    apart Branches that share a slug (``feature/a-b``, ``feature-a/b``) or a name across re-creation."""
    return "|".join((namespace or "", uid or "", _key(event), action.value, extra))


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
