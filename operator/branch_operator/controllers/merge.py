"""Merge reconciliation for READY branches: the I/O half of domain.merge.

Level-triggered: it is called with a Branch (on Branch, policy and lock changes, when the scheduler
says a window opened or a freeze ended, and on the periodic resync), re-reads it, and either merges
it or records why not. A re-evaluation that changes nothing writes nothing.

Order of effects for a merge (why): the merge backend runs first (the webhook is the real merge; the
event backend does nothing yet), then the status write READY -> ACTIVE, carrying the resourceVersion
the decision was made on, is the commit point. The same write holds the announcements as an outbox
(``com.oms.branch.merged`` and the audit records, ids derived from the merge key and
``status.merge.mergedAt``), published right after it together with the ``AutoMerged`` Event (its name
derived from the merge key). A crash or a failed publish in between leaves an outbox this process has not
published: the next look at the Branch (a retry scheduled a few seconds later, any watch event, or the
start-up listing of a restarted operator) publishes it again with the same ids, which JetStream and the
Event name de-duplicate. No separate "announced" write is needed.

A break-glass request (annotation ``oms.dev/merge-request``) is consumed before anything is decided on
it: the annotation is removed with a resourceVersion precondition, so two replicas (or a retry)
cannot both act on one request, and a crash after the removal loses the request rather than merging
twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from branch_operator.api.models import (
    ANNOTATION_MERGE_REQUEST,
    ANNOTATION_REQUESTED_BY,
    GROUP,
    VERSION,
    AutoMergePolicy,
    BranchStatus,
    MergeDecision,
    Outbox,
    Phase,
)
from branch_operator.clients.emitter import OUTBOX_FLUSH_WINDOW_SECONDS, Emitter, Outgoing, outbox
from branch_operator.clients.kube import Conflict, KubeClient, NotFound, Obj
from branch_operator.clients.merge_backends import EventBackend, MergeBackend, MergeRequest, MergeResult
from branch_operator.config import Settings
from branch_operator.domain.audit import AuditAction, AuditRecord
from branch_operator.domain.locks import label_value
from branch_operator.domain.merge import (
    ManualRequest,
    MergeEvaluation,
    MergeStep,
    PolicyRef,
    Step,
    blocking_locks,
    conflict_step,
    decision_report,
    evaluate_merge,
    failed_attempts,
    merge_changed,
    merge_key,
    merge_status_patch,
    merge_step,
    pending_retry,
    review_policies,
    select_policy,
)
from branch_operator.domain.text import safe_text
from branch_operator.domain.timefmt import parse_time, rfc3339
from branch_operator.kit.deadlines import RETRY_AFTER, DeadlineScheduler
from branch_operator.kit.keyed import KeyedLocks

log = logging.getLogger(__name__)

Key = tuple[str, str]
# After a failed announcement (NATS away), the next attempt; the announcement's ids make it safe to repeat.
ANNOUNCE_RETRY_SECONDS = 5.0
DECIDED_VERSIONS_REMEMBERED = 16384


class PolicySource(Protocol):
    def policies(self, namespace: str) -> Sequence[PolicyRef]: ...

    def find(self, namespace: str, branch_name: str) -> str | None: ...


def manual_request(meta: Mapping[str, Any]) -> ManualRequest | None:
    annotations = meta.get("annotations") or {}
    if ANNOTATION_MERGE_REQUEST not in annotations:
        return None
    # Admin text, shown in Events, logs and audit records: escaped and bounded like every admin annotation.
    requested_by = safe_text(str(annotations.get(ANNOTATION_REQUESTED_BY) or ""), 253) or None
    reason = safe_text(str(annotations[ANNOTATION_MERGE_REQUEST]), 1024) or "(no reason given)"
    return ManualRequest(reason=reason, requested_by=requested_by)


def announcement_key(merge_id: str) -> str:
    """The key of the outbox a merge's status write holds."""
    return f"merge:{merge_id}"


def needs_announcement(status: Mapping[str, Any], *, now: datetime,
                       sent: Callable[[Mapping[str, Any]], bool] = lambda _box: False) -> bool:
    """A merge recorded in ``status`` whose outbox may not have been published yet.

    ``sent`` tells the outboxes this process published. An outbox older than the flush window is taken
    as published: re-publishing it after JetStream's duplicate window could double it.
    """
    merge = status.get("merge") or {}
    box = status.get("outbox") or {}
    if (status.get("phase") != Phase.ACTIVE.value or merge.get("decision") != MergeDecision.MERGED.value
            or not merge.get("mergeId") or merge.get("announcedAt")):
        return False
    key = announcement_key(str(merge["mergeId"]))
    written = parse_time(box.get("writtenAt"))
    return (box.get("key") == key and written is not None and not sent(box)
            and (now - written).total_seconds() <= OUTBOX_FLUSH_WINDOW_SECONDS)


def wants(branch: Mapping[str, Any], *, now: datetime | None = None,
          sent: Callable[[Mapping[str, Any]], bool] = lambda _box: False) -> bool:
    """Whether ``branch`` (as a watch saw it) has anything for the reconciler to do."""
    status = branch.get("status") or {}
    return (
        status.get("phase") == Phase.READY.value
        or manual_request(branch.get("metadata") or {}) is not None
        or needs_announcement(status, now=now or datetime.now(UTC), sent=sent)
    )


def _merged_view(obj: Obj, patch: Mapping[str, Any]) -> Obj:
    """``obj`` as the merge status write ``patch`` will leave it (enough to build its announcements)."""
    status = dict(obj.get("status") or {})
    merge = {**(status.get("merge") or {}), **patch.get("merge", {})}
    status["merge"] = {k: v for k, v in merge.items() if v is not None}
    return {**obj, "status": status}


class MergeReconciler:
    def __init__(
        self, kube: KubeClient, emitter: Emitter, settings: Settings, policies: PolicySource,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        backend: MergeBackend | None = None,
    ) -> None:
        self.kube = kube
        self.emitter = emitter
        self.settings = settings
        self.policy_source = policies
        self.clock = clock
        self.backend: MergeBackend = backend or EventBackend()
        # Wakes a branch's merge evaluation when a window opens, a freeze ends, a timeout passes
        # (the runtime runs it; a wake-up that fails is tried again after RETRY_AFTER).
        self.scheduler: DeadlineScheduler[Key] = DeadlineScheduler(
            self.reconcile_key, name="merge re-evaluation", clock=clock, retry_after=RETRY_AFTER)
        # One evaluation per branch at a time in this process, so a merge is never executed twice
        # concurrently; across replicas the resourceVersion on every write does the same job.
        self._serialised: KeyedLocks[Key] = KeyedLocks()
        # The resourceVersion each Branch was last decided on (bounded; forgetting one costs one read).
        self._decided: OrderedDict[Key, str] = OrderedDict()

    def wants(self, branch: Mapping[str, Any]) -> bool:
        """:func:`wants`, knowing which announcements this process has already published."""
        return wants(branch, now=self.clock(), sent=self.emitter.box_sent)

    def _schedule(self, key: Key, when: datetime | None) -> None:
        self.scheduler.schedule(key, when)

    async def reconcile(self, branch: Mapping[str, Any], *, fresh: bool = False,
                        watched: bool = False) -> MergeDecision | None:
        """Decide (and merge) one Branch; returns the decision, or None when there was none to make.

        ``branch`` only names the Branch and says whether to look: the decision is made on a fresh read.
        ``fresh``: ``branch`` is the response of this process's own write, as new as a read would be; the
        decision is made on it (a write based on it fails on its resourceVersion if anything changed).
        ``watched``: ``branch`` comes from the Branch watch. A watch event of a version already decided on
        is skipped: it carries nothing new about the Branch (policy, lock and clock changes reach the
        reconciler through their own triggers, which are never skipped).
        """
        if not self.wants(branch):
            return None
        meta = branch["metadata"]
        key = (meta["namespace"], meta["name"])
        version = meta.get("resourceVersion")
        if watched and version is not None and self._decided.get(key) == version:
            return None
        async with self._serialised(key):
            # Checked again: the version may have been decided on while this waited for the branch.
            if (watched or fresh) and version is not None and self._decided.get(key) == version:
                return None
            if fresh:
                obj: Obj = dict(branch)
            else:
                try:
                    obj = await self.kube.get_branch(*key)
                except NotFound:
                    self._schedule(key, None)
                    self._decided.pop(key, None)
                    return None
            decision = await self._reconcile(obj)
            # Only once decided: a decision that failed half-way is retried by that version's watch event.
            self._remember_decided(key, obj["metadata"].get("resourceVersion"))
            return decision

    def _remember_decided(self, key: Key, version: str | None) -> None:
        if version is None:
            return
        self._decided[key] = version
        self._decided.move_to_end(key)
        while len(self._decided) > DECIDED_VERSIONS_REMEMBERED:
            self._decided.popitem(last=False)

    async def reconcile_key(self, key: Key) -> MergeDecision | None:
        """For the scheduler and resync: reconcile by (namespace, name)."""
        return await self.reconcile({"metadata": {"namespace": key[0], "name": key[1]},
                                     "status": {"phase": Phase.READY.value}})

    async def _reconcile(self, obj: Obj) -> MergeDecision | None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        status_raw = obj.get("status") or {}
        manual = manual_request(meta)
        if status_raw.get("phase") != Phase.READY.value:
            self._schedule((ns, name), None)
            if needs_announcement(status_raw, now=self.clock(), sent=self.emitter.box_sent):
                await self._announce(obj)
            if manual is not None:
                await self._refuse_unready(obj, manual)
            return None

        now = self.clock()
        target = str(spec.get("targetBranch", "main"))
        evaluation = await self._evaluate(obj, now, manual)
        if manual is not None:
            consumed = await self._consume(obj)
            if consumed is None:
                return None  # someone changed the Branch first; that change triggers a new look
            obj = consumed
        if evaluation.decision is MergeDecision.MERGED:
            return await self._execute(obj, evaluation, target, now)
        if manual is None and not merge_changed(status_raw, evaluation, target_branch=target):
            self._schedule((ns, name), evaluation.next_evaluation)
            return evaluation.decision
        if not await self._write(obj, merge_status_patch(
                evaluation, now=now, target_branch=target, merged=False,
                conditions=status_raw.get("conditions") or [], observed_generation=meta.get("generation"))):
            return None
        self._schedule((ns, name), evaluation.next_evaluation)
        await self._report(obj, evaluation, now)
        return evaluation.decision

    async def _evaluate(self, obj: Obj, now: datetime, manual: ManualRequest | None,
                        conflicts: Sequence[Any] | None = None) -> MergeEvaluation:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        status = BranchStatus.model_validate(obj.get("status") or {})
        target = str(spec.get("targetBranch", "main"))
        labels = meta.get("labels") or {}
        branch_name = str(spec.get("branchName", ""))
        review = review_policies(self.policy_source.policies(ns))
        selection = select_policy(review.accepted, branch_name=branch_name,
                                  target_branch=target, labels=labels)
        # Locks are read fresh: a lock taken a moment ago must block the merge even if no watch saw it yet.
        own_locks = blocking_locks(await self.kube.list_locks(ns, label_value(name)), name, include_indexing=False)
        target_name = await self._target_name(ns, target)
        target_locks: list[str] = []
        if target_name is not None:
            target_locks = blocking_locks(await self.kube.list_locks(ns, label_value(target_name)), target_name,
                                          include_indexing=True)
        return evaluate_merge(
            phase=Phase.READY,
            auto_merge=bool(spec.get("autoMerge", True)),
            indexing=status.indexing,
            conflicts=status.conflicts if conflicts is None else conflicts,
            other_locks=own_locks,
            policy=selection.policy,
            now=now,
            branch_name=branch_name,
            target_branch=target,
            target_object=target_name,
            target_locks=target_locks,
            manual=manual,
            tied=selection.tied,
        )

    async def _target_name(self, ns: str, target: str) -> str | None:
        # From the catalog only: listing every Branch of the namespace on each evaluation made reconciling
        # O(branches). A target Branch the catalog does not know yet triggers its own event, and the
        # READY branches merging into it are re-evaluated then (handlers.branch_catalog), as they are
        # when its locks change (handlers/locks.py lock_changed).
        return self.policy_source.find(ns, target)

    async def _write(self, obj: Obj, patch: Mapping[str, Any]) -> Obj | None:
        meta = obj["metadata"]
        try:
            return await self.kube.patch_branch_status(meta["namespace"], meta["name"], patch,
                                                       resource_version=meta.get("resourceVersion"))
        except (Conflict, NotFound):
            log.info("branch %s/%s changed before the decision was recorded; re-evaluating on that change",
                     meta["namespace"], meta["name"])
            return None

    # ------------------------------------------------------------------------------- merge request

    async def _consume(self, obj: Obj) -> Obj | None:
        """Remove the merge-request annotations, only from the version decided on; the updated Branch."""
        meta = obj["metadata"]
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                             "annotations": {ANNOTATION_MERGE_REQUEST: None, ANNOTATION_REQUESTED_BY: None}}}
        try:
            return await self.kube.patch("branches", meta["namespace"], meta["name"], body)
        except (Conflict, NotFound):
            return None

    async def _refuse_unready(self, obj: Obj, manual: ManualRequest) -> None:
        phase = (obj.get("status") or {}).get("phase") or "uninitialised"
        if await self._consume(obj) is None:
            return
        message = (f"Merge request refused: the branch is {phase}; only a READY branch (a completed indexing "
                   f"run) can be merged. The request was consumed; annotate again once it is READY.")
        await self.kube.post_event(obj, type_="Warning", reason="MergeRequestRefused", message=message)
        await self.emitter.audit(self._record(
            obj, AuditAction.BRANCH_MERGE_REQUESTED, self.clock(),
            seed_extra=f"{obj['metadata'].get('resourceVersion')}",
            reason="NotReady", from_state=phase, to_state=phase,
            details={"request_reason": manual.reason, "requested_by": manual.requested_by, "outcome": "refused",
                     "message": message},
        ))

    # ------------------------------------------------------------------------------------ reporting

    async def _report(self, obj: Obj, evaluation: MergeEvaluation, now: datetime) -> None:
        """Event and audit record for a decision just written (not for merges: see _announce)."""
        report = decision_report(evaluation)
        await self.kube.post_event(obj, type_=report.event_type, reason=report.event_reason,
                                   message=evaluation.message, related=_policy_ref(obj, evaluation))
        if report.audit is None:
            return
        details: dict[str, Any] = {
            "message": evaluation.message, "policy": evaluation.policy,
            "policy_generation": evaluation.policy_generation,
            "failed_checks": {c.name: c.evidence for c in evaluation.checks if not c.passed}}
        manual = evaluation.manual
        if manual is not None:
            # Seeded by the version answered: each request is answered (and audited) once.
            seed = str(obj["metadata"].get("resourceVersion"))
            details.update(request_reason=manual.reason, requested_by=manual.requested_by,
                           outcome=report.request_outcome)
        else:
            # Seeded by what was decided: the same decision about the same result is one record.
            status = BranchStatus.model_validate(obj.get("status") or {})
            event_id = status.indexing.event_id if status.indexing else None
            seed = "|".join([event_id or "", report.audit_reason, evaluation.message])
        await self.emitter.audit(self._record(
            obj, report.audit, now, seed_extra=seed, reason=report.audit_reason,
            from_state=Phase.READY.value, to_state=Phase.READY.value, details=details,
        ))

    # -------------------------------------------------------------------------------------- merging

    async def _execute(self, obj: Obj, evaluation: MergeEvaluation, target: str, now: datetime) -> MergeDecision | None:
        meta, status_raw = obj["metadata"], obj.get("status") or {}
        ns, name = meta["namespace"], meta["name"]
        status = BranchStatus.model_validate(status_raw)
        indexing = status.indexing
        key = merge_key(meta.get("uid"), indexing.event_id if indexing else None,
                        indexing.indexing_id if indexing else None)
        previous = status_raw.get("merge") or {}
        retry_at = pending_retry(previous, key, now=now, manual=evaluation.manual)
        if retry_at is not None:
            self._schedule((ns, name), retry_at)
            return MergeDecision.FAILED
        result = await self.backend.execute(MergeRequest(
            key=key, namespace=ns, name=name, branch_name=str(obj["spec"]["branchName"]), target_branch=target,
            policy=evaluation.policy, policy_generation=evaluation.policy_generation,
            indexing_id=indexing.indexing_id if indexing else None,
            event_id=indexing.event_id if indexing else None,
            manual_reason=evaluation.manual.reason if evaluation.manual else None,
            requested_by=evaluation.manual.requested_by if evaluation.manual else None,
        ))
        step = merge_step(result.outcome, failed_before=failed_attempts(previous, key), now=now,
                          retry_interval=self._retry_interval)
        if step.step is Step.RECORD_MERGED:
            return await self._merged(obj, evaluation, key, target, now, replaced=status.outbox)
        if step.step is Step.DECIDE_WITH_CONFLICTS:
            return await self._conflicted(obj, result, key, target, now)
        return await self._failed(obj, evaluation, result, key, step, target, now)

    @property
    def _retry_interval(self) -> timedelta:
        return timedelta(seconds=self.settings.merge_retry_interval_seconds)

    async def _merged(self, obj: Obj, evaluation: MergeEvaluation, key: str, target: str, now: datetime,
                      *, replaced: Outbox | None) -> MergeDecision | None:
        meta, status_raw = obj["metadata"], obj.get("status") or {}
        patch = merge_status_patch(evaluation, now=now, target_branch=target, merged=True,
                                   conditions=status_raw.get("conditions") or [],
                                   observed_generation=meta.get("generation"), merge_id=key)
        box_key = announcement_key(key)
        messages = self._announcements(_merged_view(obj, patch))
        # The outbox this write replaces (the indexing result's) must not be lost if it never went out.
        await self.emitter.flush_replaced(replaced, new_key=box_key, now=self.clock())
        patch["outbox"] = outbox(box_key, messages, written_at=self.clock())
        updated = await self._write(obj, patch)
        if updated is None:
            return None
        self._schedule((meta["namespace"], meta["name"]), None)
        await self._announce(updated, messages)
        return MergeDecision.MERGED

    async def _conflicted(
        self, obj: Obj, result: MergeResult, key: str, target: str, now: datetime
    ) -> MergeDecision | None:
        """409 from the merge endpoint: record OMS's conflicts, so the branch waits for them to be resolved."""
        meta, status_raw = obj["metadata"], obj.get("status") or {}
        # Re-decided with the conflicts OMS reported (and without the merge request, already consumed).
        evaluation = await self._evaluate(obj, now, None, conflicts=result.conflicts)
        step = conflict_step(evaluation, now=now, retry_interval=self._retry_interval)
        if step.step is Step.RECORD_FAILED:
            return await self._failed(obj, evaluation, result, key, step, target, now)
        patch = merge_status_patch(evaluation, now=now, target_branch=target, merged=False,
                                   conditions=status_raw.get("conditions") or [],
                                   observed_generation=meta.get("generation"))
        patch["conflicts"] = [c.wire() for c in result.conflicts]
        updated = await self._write(obj, patch)
        if updated is None:
            return None
        self._schedule((meta["namespace"], meta["name"]), step.retry_at)
        await self.kube.post_event(updated, type_="Warning", reason="MergeConflict",
                                   message=f"OMS refused the merge into {target}: {result.detail}",
                                   related=_policy_ref(updated, evaluation))
        await self._report(updated, evaluation, now)
        return evaluation.decision

    async def _failed(self, obj: Obj, evaluation: MergeEvaluation, result: MergeResult, key: str,
                      step: MergeStep, target: str, now: datetime) -> MergeDecision | None:
        meta, status_raw = obj["metadata"], obj.get("status") or {}
        attempts, retry_at = step.attempts, step.retry_at
        assert retry_at is not None, "a failed merge is always tried again"
        updated = await self._write(obj, merge_status_patch(
            evaluation, now=now, target_branch=target, merged=False, conditions=status_raw.get("conditions") or [],
            observed_generation=meta.get("generation"), merge_error=result.detail, merge_id=key,
            attempts=attempts, retry_at=retry_at))
        if updated is None:
            return None
        self._schedule((meta["namespace"], meta["name"]), retry_at)
        message = (f"Merging into {target} failed ({result.detail}); the branch stays READY and is tried "
                   f"again at {rfc3339(retry_at)}.")
        await self.kube.post_event(updated, type_="Warning", reason="MergeFailed", message=message,
                                   related=_policy_ref(updated, evaluation))
        # No notification from here: the incident watch sees this write and the Notifier, the one producer
        # of incident notifications, sends one merge_failed per failed merge.
        await self.emitter.audit(self._record(
            updated, AuditAction.BRANCH_MERGE_FAILED, now, seed_extra=f"{key}|{attempts}", reason="MergeFailed",
            from_state=Phase.READY.value, to_state=Phase.READY.value,
            details={"merge_id": key, "attempts": attempts, "error": result.detail, "backend": self.backend.name,
                     "policy": evaluation.policy},
        ))
        return MergeDecision.FAILED

    # ---------------------------------------------------------------------------------- announcing

    def _announcements(self, obj: Obj) -> list[Outgoing]:
        """The messages announcing the merge recorded in ``obj``'s status; the same ids on every call."""
        meta, status_raw = obj["metadata"], obj.get("status") or {}
        merge = status_raw.get("merge") or {}
        key = str(merge.get("mergeId"))
        merged_at = parse_time(merge.get("mergedAt")) or self.clock()
        target = str(merge.get("targetBranch") or (obj.get("spec") or {}).get("targetBranch", "main"))
        indexing = BranchStatus.model_validate(status_raw).indexing
        manual = merge.get("manualRequest") or {}
        messages = [self.emitter.merged_message(
            msg_id=f"merged:{key}", namespace=meta["namespace"], name=meta["name"],
            branch_name=obj["spec"]["branchName"], target_branch=target, policy=merge.get("policy"),
            indexing_id=indexing.indexing_id if indexing else None, merged_at=merged_at,
            correlation_id=indexing.event_id if indexing else None,
        )]
        details: dict[str, Any] = {"policy": merge.get("policy"), "policy_generation": merge.get("policyGeneration"),
                                   "target_branch": target, "merge_id": key, "backend": self.backend.name}
        if manual:
            details.update(request_reason=manual.get("reason"), requested_by=manual.get("requestedBy"))
        for action in (AuditAction.BRANCH_MERGED, AuditAction.BRANCH_STATE_CHANGED):
            messages.append(self.emitter.audit_message(self._record(
                obj, action, merged_at, seed_extra=key, reason="ManualMerge" if manual else "AutoMerged",
                from_state=Phase.READY.value, to_state=Phase.ACTIVE.value, details=details,
            )))
        if manual:
            messages.append(self.emitter.audit_message(self._record(
                obj, AuditAction.BRANCH_MERGE_REQUESTED, merged_at, seed_extra=key, reason="Merged",
                from_state=Phase.READY.value, to_state=Phase.ACTIVE.value,
                details={**details, "outcome": "merged"},
            )))
        return messages

    async def _announce(self, obj: Obj, messages: list[Outgoing] | None = None) -> None:
        """Tell the world about a merge recorded in status; safe to repeat (every id is deterministic).

        ``messages``: the outbox just committed (first announcement, logged and observed); without them
        the committed outbox is published again (a later look; JetStream drops what it already has).
        """
        meta, status_raw = obj["metadata"], obj.get("status") or {}
        merge = status_raw.get("merge") or {}
        key = str(merge.get("mergeId"))
        target = str(merge.get("targetBranch") or (obj.get("spec") or {}).get("targetBranch", "main"))
        manual = merge.get("manualRequest") or {}
        by = f" (merge request of {manual.get('requestedBy') or 'unknown'}: {manual.get('reason')})" if manual else ""
        box_key = announcement_key(key)
        try:
            await asyncio.gather(
                self._event_once(obj, key, reason="AutoMerged" if not manual else "ManualMerge",
                                 message=f"Merged into {target} by policy {merge.get('policy')}{by}"),
                self.emitter.send_outbox(box_key, messages) if messages is not None
                else self.emitter.republish_outbox(status_raw["outbox"]),
            )
        except Exception as exc:  # NATS away: the merge is committed, its announcement is retried
            retry_at = self.clock() + timedelta(seconds=ANNOUNCE_RETRY_SECONDS)
            log.warning("announcing merge %s of %s/%s failed (%s); retrying at %s", key, meta["namespace"],
                        meta["name"], exc, rfc3339(retry_at))
            self._schedule((meta["namespace"], meta["name"]), retry_at)

    async def _event_once(self, obj: Obj, key: str, *, reason: str, message: str) -> None:
        """The Normal Event of a merge, once per merge key: an announcement repeated posts nothing new."""
        await self.kube.post_event(obj, type_="Normal", reason=reason, message=message, action="Merge", once_per=key)

    def _record(self, obj: Obj, action: AuditAction, when: datetime, *, seed_extra: str,
                **fields: Any) -> AuditRecord:
        meta = obj["metadata"]
        status = BranchStatus.model_validate(obj.get("status") or {})
        indexing = status.indexing
        return AuditRecord.build(
            action,
            branch_name=obj["spec"]["branchName"],
            when=when,
            seed=f"{meta.get('uid')}|{action.value}|{seed_extra}",
            actor=self.settings.operator_id,
            namespace=meta["namespace"],
            branch=meta["name"],
            correlation_id=indexing.event_id if indexing else None,
            indexing_id=indexing.indexing_id if indexing else None,
            **fields,
        )


def _policy_ref(branch: Obj, evaluation: MergeEvaluation) -> Obj | None:
    """The policy a merge decision was made under, for its Event's ``related`` (none: no policy matched)."""
    if evaluation.policy is None:
        return None
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": AutoMergePolicy.KIND, "name": evaluation.policy,
            "namespace": branch["metadata"]["namespace"]}
