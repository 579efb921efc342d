"""Executes admin requests (see :mod:`branch_operator.domain.admin` for the annotations and the decisions).

Order of effects: (1) claim — remove the request annotations with the resourceVersion the request was
read at, so exactly one handler run (of one replica) owns it; a 409 means the object changed and the
newer watch event brings the request again. (2) Decide on the claimed object and the locks as they are
now. (3) Release locks, then write the status (phase, conditions, ``lastAdminAction``) with the claimed
resourceVersion, re-deciding on conflict. (4) Event, audit records.

At most once: if the operator dies between (1) and (3) the request is dropped, visible as no
``lastAdminAction`` and no Event for it; the admin re-runs the command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from branch_operator.api.models import Branch
from branch_operator.clients.emitter import Emitter
from branch_operator.clients.kube import Conflict, KubeClient, KubeError, NotFound, Obj
from branch_operator.config import Settings
from branch_operator.domain import admin
from branch_operator.domain.audit import AuditAction, AuditRecord
from branch_operator.domain.locks import label_value, release_record
from branch_operator.kit.retry import retry

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5


class AdminExecutor:
    def __init__(self, kube: KubeClient, emitter: Emitter, settings: Settings, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kube = kube
        self.emitter = emitter
        self.settings = settings
        self.clock = clock

    async def handle(self, branch: Mapping[str, Any]) -> admin.AdminDecision | None:
        """Handle the request on ``branch`` (as a watch event delivered it); None if there was none to claim."""
        meta = branch["metadata"]
        if not admin.has_request(meta.get("annotations")) or meta.get("deletionTimestamp"):
            return None
        request = admin.parse_request(meta)
        claimed = await self._claim(branch)
        if claimed is None:
            return None
        if not isinstance(request, admin.AdminRequest):
            phase = (claimed.get("status") or {}).get("phase")
            decision = admin.AdminDecision(None, refused=str(request), from_phase=phase, to_phase=phase)
            await self._refused(claimed, decision, admin.requester_of(meta), attempted=admin.attempted(meta))
            return decision
        return await self._execute(claimed, request)

    async def _claim(self, branch: Mapping[str, Any]) -> Obj | None:
        meta = branch["metadata"]
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                              "annotations": {a: None for a in admin.CLAIMED_ANNOTATIONS}}}
        try:
            return await self.kube.patch(Branch.PLURAL, meta["namespace"], meta["name"], patch)
        except (Conflict, NotFound):
            return None  # changed since this event (the next one carries the request) or deleted

    async def _execute(self, branch: Obj, request: admin.AdminRequest) -> admin.AdminDecision:
        meta = branch["metadata"]
        ns, name = meta["namespace"], meta["name"]
        released: list[str] = []  # kept across attempts: a lock deleted once stays deleted

        async def attempt() -> tuple[admin.AdminDecision, Obj | None, datetime]:
            now = self.clock()
            locks = await self.kube.list_locks(ns, label_value(name))
            decision = admin.decide(request, branch, locks, now)
            if not decision.applied:
                await self._refused(branch, decision, request.requested_by)
                return decision, None, now
            for lock_name in decision.release:
                if lock_name not in released and await self.kube.delete_lock(ns, lock_name):
                    released.append(lock_name)
            updated = await self.kube.patch_branch_status(
                ns, name, decision.status_patch, resource_version=branch["metadata"].get("resourceVersion"))
            return decision, updated, now

        async def reread(_conflict: BaseException) -> None:
            nonlocal branch
            branch = await self.kube.get_branch(ns, name)  # e.g. an indexing event landed: decide again

        decision, updated, now = await retry(
            attempt, on=Conflict, attempts=MAX_CONFLICT_RETRIES, after_failure=reread,
            give_up=lambda: KubeError(409, f"gave up on admin request for {ns}/{name} "
                                           f"after {MAX_CONFLICT_RETRIES} conflicts"))
        if updated is not None:
            await self._applied(updated, decision, released, now)
        return decision

    async def _applied(self, branch: Obj, decision: admin.AdminDecision, released: list[str], now: datetime) -> None:
        request = decision.request
        assert request is not None
        reason = "AdminForceUnlock" if request.action is admin.AdminAction.FORCE_UNLOCK else "AdminSetState"
        await self.kube.post_event(branch, type_="Normal", reason=reason, action="Admin",
                                   message=f"{decision.result} (requested by {request.requested_by}: "
                                           f"{request.reason}){_tag(request)}")
        action = (AuditAction.ADMIN_FORCE_UNLOCK if request.action is admin.AdminAction.FORCE_UNLOCK
                  else AuditAction.ADMIN_SET_STATE)
        seed = f"{branch['metadata'].get('uid')}|{request.request_id or ''}|{now.isoformat()}"
        details = {"status": "applied", "result": decision.result, "requested_by": request.requested_by,
                   "value": request.value, "released_locks": released, "request_id": request.request_id}
        records = [self._record(branch, action, now, seed, request, decision, details=details)]
        if decision.from_phase != decision.to_phase:
            records.append(self._record(branch, AuditAction.BRANCH_STATE_CHANGED, now, seed, request, decision,
                                        reason_override=reason))  # AdminForceUnlock: a run abandoned
        meta = branch["metadata"]
        records += [release_record(
            lock_name, seed=f"{seed}|{lock_name}|{AuditAction.LOCK_RELEASED.value}", when=now,
            actor=request.requested_by, reason=reason, namespace=meta["namespace"], branch=meta["name"],
            branch_name=(branch.get("spec") or {}).get("branchName"), from_state=decision.from_phase,
            to_state=decision.to_phase, correlation_id=request.request_id,
        ) for lock_name in released]
        for record in records:
            await self.emitter.audit(record)
        log.info("%s/%s: admin %s by %s: %s", branch["metadata"]["namespace"], branch["metadata"]["name"],
                 admin.describe(request), request.requested_by, decision.result)

    async def _refused(self, branch: Obj, decision: admin.AdminDecision, requester: str, *,
                       attempted: list[admin.AdminRequest] | None = None) -> None:
        """Warn, and audit the refusal once per attempted action (a request that could not even be parsed
        included): who tried what, and why it was not done, matters on call."""
        request = decision.request
        what = admin.describe(request)
        by = request.requested_by if request else requester
        message = f"Refused {what} requested by {by}: {decision.refused}. Nothing was changed.{_tag(request)}"
        await self.kube.post_event(branch, type_="Warning", reason="AdminActionRefused", action="Admin",
                                   message=message)
        now = self.clock()
        for attempt in attempted if attempted is not None else [request] if request is not None else []:
            action = (AuditAction.ADMIN_FORCE_UNLOCK if attempt.action is admin.AdminAction.FORCE_UNLOCK
                      else AuditAction.ADMIN_SET_STATE)
            await self.emitter.audit(self._record(
                branch, action, now, f"{branch['metadata'].get('uid')}|refused|{now.isoformat()}", attempt, decision,
                details={"status": "refused", "result": decision.refused, "requested_by": attempt.requested_by,
                         "value": attempt.value, "request_id": attempt.request_id}))
        log.warning("%s/%s: %s", branch["metadata"]["namespace"], branch["metadata"]["name"], message)

    def _record(
        self, branch: Obj, action: AuditAction, now: datetime, seed: str, request: admin.AdminRequest,
        decision: admin.AdminDecision, *, reason_override: str | None = None, details: dict[str, Any] | None = None,
    ) -> AuditRecord:
        meta = branch["metadata"]
        return AuditRecord.build(
            action, branch_name=(branch.get("spec") or {}).get("branchName"), when=now,
            seed=f"{seed}|{action.value}", actor=request.requested_by, namespace=meta["namespace"],
            branch=meta["name"], from_state=decision.from_phase, to_state=decision.to_phase,
            reason=reason_override or request.reason or None, correlation_id=request.request_id,
            details=details or {},
        )


def _tag(request: admin.AdminRequest | None) -> str:
    # The plugin finds the outcome of its own request by this tag.
    return f" [request {request.request_id}]" if request is not None and request.request_id else ""
