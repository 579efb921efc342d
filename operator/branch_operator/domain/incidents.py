"""Incidents for the people on call: what one is, and which Branch states and audit records are one.

Pure logic, no I/O. Every incident carries a key naming *the incident* (e.g. the failed run's event id),
not the delivery that revealed it, so the notifier (:mod:`branch_operator.clients.notify`) sends each
once however often it is reported. The watch that feeds Branch changes in is
:mod:`branch_operator.controllers.incidents`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from branch_operator.domain.audit import AuditAction, AuditRecord
from branch_operator.domain.timefmt import parse_time, rfc3339

__all__ = [
    "INDEXING_FAILED",
    "KINDS",
    "LOCK_EXPIRED",
    "MERGE_BLOCKED",
    "MERGE_FAILED",
    "Incident",
    "blocked_since",
    "indexing_failed_incident",
    "merge_blocked_incident",
    "merge_failed_incident",
    "run_key",
]

# The kinds of incident: also the notification kinds (CloudEvent type com.oms.branch.<kind>).
INDEXING_FAILED = "indexing_failed"
MERGE_BLOCKED = "merge_blocked"
LOCK_EXPIRED = "lock_expired"
MERGE_FAILED = "merge_failed"
KINDS = (INDEXING_FAILED, MERGE_BLOCKED, LOCK_EXPIRED, MERGE_FAILED)


@dataclass(frozen=True)
class Incident:
    kind: str
    key: str  # what makes two reports the same incident
    namespace: str | None
    branch: str | None  # Kubernetes name
    branch_name: str | None  # OMS name
    title: str
    message: str
    at: datetime
    severity: str = "warning"
    details: Mapping[str, Any] = field(default_factory=dict)
    skip_sinks: frozenset[str] = frozenset()

    def data(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "incident": self.key, "severity": self.severity, "title": self.title,
            "message": self.message, "namespace": self.namespace, "branch": self.branch,
            "branch_name": self.branch_name, "at": rfc3339(self.at), "details": dict(self.details),
        }


def indexing_failed_incident(record: AuditRecord) -> Incident | None:
    """An indexing failure, from its audit record; None for any other record.

    The NATS notification of a failed run is the event processor's (in its outbox, in the same write as
    the ERROR phase), so this incident skips the NATS sink.
    """
    if record.action != AuditAction.INDEXING_FAILED:
        return None
    run = record.correlation_id or record.indexing_id or record.audit_id
    errors = (record.details or {}).get("validation_errors") or []
    message = f"Indexing run {record.indexing_id or '?'} failed; the branch is in ERROR and its locks released."
    if errors:
        message += f" First error: {str(errors[0])[:300]}"
    return Incident(
        kind=INDEXING_FAILED, key=f"{INDEXING_FAILED}:{record.namespace}/{record.branch}:{run}",
        namespace=record.namespace, branch=record.branch, branch_name=record.branch_name,
        title=f"Indexing failed for {record.branch_name or record.branch}", message=message,
        at=record.timestamp, severity="critical",
        details={"indexing_id": record.indexing_id, "correlation_id": record.correlation_id,
                 "audit_id": record.audit_id, "errors": list(errors)[:10]},
        skip_sinks=frozenset({"nats"}),
    )


def blocked_since(obj: Mapping[str, Any]) -> datetime | None:
    """When a READY branch's merge became blocked, or None if it is not blocked now."""
    status = obj.get("status") or {}
    merge = status.get("merge") or {}
    if status.get("phase") != "READY" or merge.get("decision") != "Blocked":
        return None
    mergeable: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Mergeable"), {})
    for raw in (mergeable.get("lastTransitionTime") if mergeable.get("status") == "False" else None,
                merge.get("evaluatedAt"), status.get("phaseTransitionTime")):
        when = parse_time(raw)
        if when is not None:
            return when
    return None


def run_key(obj: Mapping[str, Any]) -> str:
    """The indexing run a merge decision is about (one blocked/failed incident per run)."""
    indexing = (obj.get("status") or {}).get("indexing") or {}
    return str(indexing.get("eventId") or indexing.get("indexingId") or "")


def merge_failed_incident(obj: Mapping[str, Any], now: datetime) -> Incident | None:
    status = obj.get("status") or {}
    merge = status.get("merge") or {}
    if merge.get("decision") != "Failed":
        return None
    meta = obj["metadata"]
    message = merge.get("message") or "the merge failed"
    return Incident(
        kind=MERGE_FAILED, key=f"{MERGE_FAILED}:{meta.get('uid')}:{run_key(obj)}",
        namespace=meta.get("namespace"), branch=meta["name"], branch_name=(obj.get("spec") or {}).get("branchName"),
        title=f"Merge failed for {(obj.get('spec') or {}).get('branchName') or meta['name']}", message=message,
        at=parse_time(merge.get("evaluatedAt")) or now, severity="critical",
        details={"policy": merge.get("policy"), "target_branch": merge.get("targetBranch"),
                 "reasons": merge.get("reasons") or [], "merge_id": merge.get("mergeId"),
                 "attempts": merge.get("attempts"), "retry_at": merge.get("nextEvaluationTime")},
    )


def merge_blocked_incident(obj: Mapping[str, Any], since: datetime, now: datetime) -> Incident:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    merge = (obj.get("status") or {}).get("merge") or {}
    reasons = merge.get("reasons") or []
    minutes = int((now - since).total_seconds() // 60)
    return Incident(
        kind=MERGE_BLOCKED, key=f"{MERGE_BLOCKED}:{meta.get('uid')}:{run_key(obj)}",
        namespace=meta.get("namespace"), branch=meta["name"], branch_name=spec.get("branchName"),
        title=f"Merge of {spec.get('branchName') or meta['name']} blocked for {minutes} min",
        message=f"Blocked by {', '.join(reasons) or 'unknown reasons'}: {merge.get('message') or ''}".strip(),
        at=now, details={"reasons": reasons, "blocked_since": rfc3339(since), "policy": merge.get("policy")},
    )
