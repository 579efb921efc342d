"""Merge reconciliation for READY branches: the I/O half of domain.policy.

Level-triggered: it is called with the Branch as it is now (on Branch, policy and lock changes and on
a periodic resync) and either merges it, or records why not. A re-evaluation that changes nothing
writes nothing.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from .api.models import BranchStatus, LockType, MergeDecision, Phase
from .config import Settings
from .domain.audit import AuditAction, AuditRecord
from .domain.policy import PolicyRef, evaluate_merge, merge_changed, merge_status_patch, select_policy
from .emit import Emitter
from .kube import Conflict, KubeClient, NotFound, Obj
from .locks import label_value

log = logging.getLogger(__name__)


class PolicySource(Protocol):
    def policies(self, namespace: str) -> Sequence[PolicyRef]: ...


class MergeReconciler:
    def __init__(
        self, kube: KubeClient, emitter: Emitter, settings: Settings, policies: PolicySource,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.emitter = emitter
        self.settings = settings
        self.policy_source = policies
        self.clock = clock

    async def reconcile(self, branch: Mapping[str, Any]) -> MergeDecision | None:
        """Decide (and merge) one Branch; returns the decision, or None when not READY."""
        obj: Obj = copy.deepcopy(dict(branch))
        status_raw = obj.get("status") or {}
        if status_raw.get("phase") != Phase.READY.value:
            return None
        meta, spec = obj["metadata"], obj.get("spec", {})
        ns, name = meta["namespace"], meta["name"]
        status = BranchStatus.model_validate(status_raw)
        now = self.clock()

        selection = select_policy(
            self.policy_source.policies(ns),
            branch_name=spec.get("branchName", ""),
            target_branch=spec.get("targetBranch", "main"),
            labels=meta.get("labels") or {},
        )
        # Read locks fresh: a lock taken a moment ago must block the merge even if no watch saw it yet.
        locks = await self.kube.list_locks(ns, label_value(name))
        other_locks = sorted(
            lk["metadata"]["name"] for lk in locks
            if lk.get("spec", {}).get("branch") == name and lk["spec"].get("lockType") != LockType.INDEXING.value
        )
        evaluation = evaluate_merge(
            phase=Phase.READY,
            auto_merge=bool(spec.get("autoMerge", True)),
            indexing=status.indexing,
            conflicts=status.conflicts,
            other_locks=other_locks,
            policy=selection.policy,
            now=now,
        )
        target = spec.get("targetBranch", "main")
        if evaluation.decision == MergeDecision.MERGED:
            await self._merge(obj, evaluation, target, now)
            return evaluation.decision
        if not merge_changed(status_raw, evaluation):
            return evaluation.decision
        patch = merge_status_patch(evaluation, now=now, target_branch=target, merged=False,
                                   conditions=status_raw.get("conditions") or [],
                                   observed_generation=meta.get("generation"))
        try:
            await self.kube.patch_branch_status(ns, name, patch, resource_version=meta.get("resourceVersion"))
        except (Conflict, NotFound):
            return None  # the newer version triggers its own reconciliation
        if evaluation.decision == MergeDecision.WOULD_MERGE:
            await self.kube.post_event(obj, type_="Normal", reason="WouldMerge", message=evaluation.message)
        else:
            await self.kube.post_event(obj, type_="Warning", reason="MergeBlocked", message=evaluation.message)
            await self.emitter.audit(self._record(
                obj, AuditAction.BRANCH_MERGE_BLOCKED, now, status,
                reason=",".join(str(getattr(r, "value", r)) for r in evaluation.reasons),
                seed_extra="|".join([status.indexing.event_id or "" if status.indexing else "",
                                     *(str(getattr(r, "value", r)) for r in evaluation.reasons)]),
                from_state=Phase.READY.value, to_state=Phase.READY.value,
                details={"message": evaluation.message, "policy": evaluation.policy},
            ))
        return evaluation.decision

    async def _merge(self, obj: Obj, evaluation: Any, target: str, now: datetime) -> None:
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        status_raw = obj.get("status") or {}
        # Also moves the phase READY -> ACTIVE; written with the resourceVersion the decision was made on.
        patch = merge_status_patch(evaluation, now=now, target_branch=target, merged=True,
                                   conditions=status_raw.get("conditions") or [],
                                   observed_generation=meta.get("generation"))
        try:
            await self.kube.patch_branch_status(ns, name, patch, resource_version=meta.get("resourceVersion"))
        except (Conflict, NotFound):
            log.info("branch %s/%s changed before merge; re-evaluating on the next event", ns, name)
            return
        status = BranchStatus.model_validate(status_raw)
        indexing = status.indexing
        merge_key = f"{meta.get('uid')}|{indexing.indexing_id if indexing else ''}|{indexing.event_id if indexing else ''}"
        await self.kube.post_event(obj, type_="Normal", reason="AutoMerged",
                                   message=f"Merged into {target} by policy {evaluation.policy}")
        await self.emitter.branch_merged(
            msg_id=f"merged:{merge_key}", namespace=ns, name=name, branch_name=obj["spec"]["branchName"],
            target_branch=target, policy=evaluation.policy,
            indexing_id=indexing.indexing_id if indexing else None, merged_at=now,
            correlation_id=indexing.event_id if indexing else None,
        )
        for action in (AuditAction.BRANCH_MERGED, AuditAction.BRANCH_STATE_CHANGED):
            await self.emitter.audit(self._record(
                obj, action, now, status, reason="AutoMerged", seed_extra=merge_key,
                from_state=Phase.READY.value, to_state=Phase.ACTIVE.value,
                details={"policy": evaluation.policy, "target_branch": target},
            ))

    def _record(
        self, obj: Obj, action: AuditAction, now: datetime, status: BranchStatus, *, seed_extra: str,
        **fields: Any,
    ) -> AuditRecord:
        meta = obj["metadata"]
        indexing = status.indexing
        return AuditRecord.build(
            action,
            branch_name=obj["spec"]["branchName"],
            when=now,
            seed=f"{meta.get('uid')}|{action.value}|{seed_extra}",
            actor=self.settings.operator_id,
            namespace=meta["namespace"],
            branch=meta["name"],
            correlation_id=indexing.event_id if indexing else None,
            indexing_id=indexing.indexing_id if indexing else None,
            **fields,
        )
