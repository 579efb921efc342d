"""Administrator actions requested through one-shot annotations on a Branch: pure decisions, no I/O.

An on-call admin (usually through ``kubectl branch unlock|set-state``) sets on the Branch::

    oms.dev/force-unlock: all | <lock name or type>[,...]      or      oms.dev/set-state: <PHASE>
    oms.dev/reason: <why>                       (required)
    oms.dev/requested-by: <who>                 (else the last manager in metadata.managedFields)
    oms.dev/request-id: <id>                    (optional; echoed in status.lastAdminAction and the Event)

Annotations rather than a status field or a separate CRD so that the only RBAC an admin needs is
``patch branches``. The operator (``handlers/branches.py``) claims the request by removing these
annotations with a resourceVersion precondition, then executes what :func:`decide` says. Claiming
first makes a request apply at most once, even with two replicas or a redelivered watch event.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from branch_operator.api.models import (
    ANNOTATION_FORCE_UNLOCK,
    ANNOTATION_REASON,
    ANNOTATION_REQUEST_ID,
    ANNOTATION_REQUESTED_BY,
    ANNOTATION_SET_STATE,
    LockType,
    Phase,
)
from branch_operator.domain.lifecycle import (
    ALLOWED_MANUAL_TRANSITIONS,
    abandoned_run_status,
    check_manual_transition,
    manual_transition_status,
)
from branch_operator.domain.text import safe_text
from branch_operator.domain.timefmt import rfc3339

ACTION_ANNOTATIONS = (ANNOTATION_FORCE_UNLOCK, ANNOTATION_SET_STATE)
# Removed together when a request is claimed. Not merge-request: that one belongs to the reconciler.
CLAIMED_ANNOTATIONS = (*ACTION_ANNOTATIONS, ANNOTATION_REASON, ANNOTATION_REQUESTED_BY, ANNOTATION_REQUEST_ID)

UNKNOWN_REQUESTER = "unknown"
# Bounds of what a request may carry into logs, Events, audit records and status (the CRD's own limits
# for status.lastAdminAction); every annotation value passes safe_text, so none of it arrives raw.
MAX_REASON = 1024
MAX_REQUESTER = 253
MAX_REQUEST_ID = 63
MAX_VALUE = 1024  # a phase, or a list of lock names
MAX_QUOTED = 80  # of the value, where a message names it: enough to recognise, short enough to read the rest


class AdminAction(enum.StrEnum):
    FORCE_UNLOCK = "force-unlock"
    SET_STATE = "set-state"


@dataclass(frozen=True)
class AdminRequest:
    action: AdminAction
    value: str  # the target phase, or the force-unlock lock selector
    reason: str
    requested_by: str
    request_id: str | None = None


@dataclass(frozen=True)
class AdminDecision:
    request: AdminRequest | None
    refused: str | None = None  # why nothing was done; None = apply
    release: list[str] = field(default_factory=list)  # BranchLock names to delete
    from_phase: str | None = None
    to_phase: str | None = None
    status_patch: dict[str, Any] = field(default_factory=dict)
    result: str = ""

    @property
    def applied(self) -> bool:
        return self.refused is None


def has_request(annotations: Mapping[str, str] | None) -> bool:
    return any(a in (annotations or {}) for a in ACTION_ANNOTATIONS)


# ------------------------------------------------------------------------------------------ requester


def last_manager(managed_fields: Sequence[Mapping[str, Any]] | None, annotation: str | None = None) -> str | None:
    """Who last wrote ``annotation`` according to managedFields, else whoever wrote the object last.

    managedFields names the client (its field manager, e.g. ``kubectl-annotate``), not the person; it is
    the fallback when a requester did not say who they are. The API server's audit log has the user.
    """
    entries = [e for e in managed_fields or () if e.get("manager")]
    if annotation is not None:
        touching = [e for e in entries if _touches_annotation(e, annotation)]
        if touching:
            entries = touching
    if not entries:
        return None
    # Entries without a time sort first; among equals the later entry in the list wins.
    latest = max(enumerate(entries), key=lambda ie: (str(ie[1].get("time") or ""), ie[0]))[1]
    return str(latest["manager"])


def _touches_annotation(entry: Mapping[str, Any], annotation: str) -> bool:
    fields = entry.get("fieldsV1") or {}
    annotations = (fields.get("f:metadata") or {}).get("f:annotations") or {}
    return f"f:{annotation}" in annotations


# ------------------------------------------------------------------------------------------- parsing


def parse_request(metadata: Mapping[str, Any]) -> AdminRequest | str | None:
    """The request in ``metadata.annotations``: None if there is none, a str saying why it is invalid."""
    requests = attempted(metadata)
    if not requests:
        return None
    if len(requests) > 1:
        both = " and ".join(_annotation(r.action) for r in requests)
        return f"{both} were both set; request one admin action at a time"
    request = requests[0]
    if not request.reason:
        return f"{_annotation(request.action)} needs a reason: set {ANNOTATION_REASON} (kubectl branch ... --reason)"
    return request


def attempted(metadata: Mapping[str, Any]) -> list[AdminRequest]:
    """Each action requested in ``metadata.annotations``, valid or not (the reason may be empty).

    A refusal is audited once per attempted action, so even an invalid request says what it asked for.
    """
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    requests = []
    for key in (a for a in ACTION_ANNOTATIONS if a in annotations):
        action = AdminAction.FORCE_UNLOCK if key == ANNOTATION_FORCE_UNLOCK else AdminAction.SET_STATE
        requester = annotations.get(ANNOTATION_REQUESTED_BY) or ""
        if not requester.strip():
            requester = last_manager(metadata.get("managedFields"), key) or UNKNOWN_REQUESTER
        requests.append(AdminRequest(
            action=action,
            value=safe_text(annotations.get(key) or "", MAX_VALUE),
            reason=safe_text(annotations.get(ANNOTATION_REASON) or "", MAX_REASON),
            requested_by=safe_text(requester, MAX_REQUESTER),
            request_id=safe_text(annotations.get(ANNOTATION_REQUEST_ID) or "", MAX_REQUEST_ID) or None,
        ))
    return requests


def _annotation(action: AdminAction) -> str:
    return ANNOTATION_FORCE_UNLOCK if action is AdminAction.FORCE_UNLOCK else ANNOTATION_SET_STATE


def requester_of(metadata: Mapping[str, Any]) -> str:
    """Who to name in a refusal, even when the request itself could not be parsed."""
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    who = annotations.get(ANNOTATION_REQUESTED_BY) or ""
    if not who.strip():
        who = last_manager(metadata.get("managedFields")) or UNKNOWN_REQUESTER
    return safe_text(who, MAX_REQUESTER)


# ------------------------------------------------------------------------------------------ decisions


def decide(request: AdminRequest, branch: Mapping[str, Any], locks: Iterable[Mapping[str, Any]],
           now: datetime) -> AdminDecision:
    """What to do about ``request`` for ``branch`` (as read) holding ``locks`` (that branch's BranchLocks)."""
    name = branch["metadata"]["name"]
    own = [lk for lk in locks if (lk.get("spec") or {}).get("branch") == name]
    if request.action is AdminAction.FORCE_UNLOCK:
        return decide_force_unlock(request, branch, own, now)
    return decide_set_state(request, branch, own, now)


def decide_force_unlock(request: AdminRequest, branch: Mapping[str, Any], locks: Sequence[Mapping[str, Any]],
                        now: datetime) -> AdminDecision:
    phase = _phase(branch)
    tokens = [t.strip() for t in (request.value or "all").split(",") if t.strip()] or ["all"]
    types = {t.value for t in LockType}
    names = {lk["metadata"]["name"] for lk in locks}
    unknown = [t for t in tokens if t.lower() != "all" and t.upper() not in types and t not in names]
    if unknown:
        held = ", ".join(sorted(names)) or "none"
        return AdminDecision(request, refused=f"no lock {_quoted(', '.join(unknown))} on this branch (held: {held})",
                             from_phase=phase, to_phase=phase)
    selected = sorted((lk for lk in locks if _selected(lk, tokens)), key=lambda o: o["metadata"]["name"])
    release = [lk["metadata"]["name"] for lk in selected]
    if not release:
        why = "the branch holds no locks" if not locks else f"no lock matches {_quoted(request.value or 'all')}"
        return AdminDecision(request, refused=why, from_phase=phase, to_phase=phase)
    result = f"released {len(release)} lock{'s' if len(release) != 1 else ''}: {', '.join(release)}"
    patch: dict[str, Any] = {}
    to_phase = phase
    run_lock = next((lk for lk in selected if (lk.get("spec") or {}).get("lockType") == LockType.INDEXING.value), None)
    if run_lock is not None and phase == Phase.LOCKED_FOR_WRITE.value:
        # While LOCKED_FOR_WRITE the INDEXING lock *is* the running run: forcing it off ends the run.
        status = branch.get("status") or {}
        run = ((status.get("indexing") or {}).get("indexingId") or (run_lock.get("spec") or {}).get("indexingId")
               or run_lock["metadata"]["name"])
        note = f"indexing run {safe_text(str(run), MAX_QUOTED)} abandoned by {request.requested_by}: {request.reason}"
        patch = abandoned_run_status(status.get("conditions") or [], note=note, now=now,
                                     observed_generation=branch["metadata"].get("generation"))
        to_phase = Phase.ERROR.value
        result += f"; {note} ({phase} -> {to_phase})"
    patch["lastAdminAction"] = admin_action_status(request, now, result)
    return AdminDecision(request, release=release, from_phase=phase, to_phase=to_phase,
                         status_patch=patch, result=result)


def decide_set_state(request: AdminRequest, branch: Mapping[str, Any], locks: Sequence[Mapping[str, Any]],
                     now: datetime) -> AdminDecision:
    phase = _phase(branch) or Phase.ACTIVE.value  # no phase yet = ACTIVE, as the create handler initialises it
    try:
        target = Phase(request.value.upper())
    except ValueError:
        allowed = ", ".join(p.value for p in Phase)
        return AdminDecision(request, refused=f"unknown state {_quoted(request.value)!r}; one of {allowed}",
                             from_phase=phase, to_phase=phase)
    current = Phase(phase)
    why_not = check_manual_transition(current, target)
    if why_not is not None:
        return AdminDecision(request, refused=why_not, from_phase=phase, to_phase=phase)
    rule = ALLOWED_MANUAL_TRANSITIONS[(current, target)]
    release = sorted(
        lk["metadata"]["name"] for lk in locks
        if rule.release_locks == "all"
        or (rule.release_locks == "indexing" and (lk.get("spec") or {}).get("lockType") == LockType.INDEXING.value)
    )
    result = f"{current.value} -> {target.value} ({rule.why})"
    if release:
        result += f"; released {', '.join(release)}"
    status = branch.get("status") or {}
    patch = manual_transition_status(
        status.get("conditions") or [], current, target,
        note=f"Set to {target.value} by {request.requested_by}: {request.reason}", now=now,
        observed_generation=branch["metadata"].get("generation"),
    )
    patch["lastAdminAction"] = admin_action_status(request, now, result)
    return AdminDecision(request, release=release, from_phase=phase, to_phase=target.value,
                         status_patch=patch, result=result)


def admin_action_status(request: AdminRequest, now: datetime, result: str) -> dict[str, Any]:
    status: dict[str, Any] = {
        "action": request.action.value,
        "requestedBy": request.requested_by,
        "reason": request.reason,
        "at": rfc3339(now),
        "result": safe_text(result, 1024),
    }
    if request.request_id:
        status["requestId"] = request.request_id
    return status


def describe(request: AdminRequest | None) -> str:
    """``set-state ERROR`` / ``force-unlock all``: how Events and logs name a request."""
    if request is None:
        return "admin request"
    return f"{request.action.value} {_quoted(request.value or 'all')}"


def _quoted(value: str) -> str:
    return safe_text(value, MAX_QUOTED)


def _selected(lock: Mapping[str, Any], tokens: Sequence[str]) -> bool:
    lock_type = (lock.get("spec") or {}).get("lockType")
    return any(t.lower() == "all" or t.upper() == lock_type or t == lock["metadata"]["name"] for t in tokens)


def _phase(branch: Mapping[str, Any]) -> str | None:
    phase = (branch.get("status") or {}).get("phase")
    return str(phase) if phase else None
