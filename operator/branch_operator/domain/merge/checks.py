"""The checks of a merge decision: each one passed or failed, with the evidence it was decided on.

Pure logic, no I/O. :func:`run_checks` evaluates every check, in REASON_ORDER, against :class:`Facts`
gathered once by :func:`~branch_operator.domain.merge.decision.evaluate_merge`; the branch facts the I/O
layer passes in (its blocking locks, the target's Branch) are computed by :func:`blocking_locks` and
:func:`target_branch_object`.

Every check is always evaluated and reported, so a blocked Branch shows every obstacle at once rather
than one per fix. Check evidence contains only times that stay the same from one evaluation to the next
(when indexing completed, when a window opens), never an age: the trace is written to status, and text
that changed on every evaluation would make every re-evaluation write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from branch_operator.api.models import AutoMergePolicySpec, BlockReason, Conflict, IndexingStatus, LockType
from branch_operator.domain.conditions import count_errors, truncate
from branch_operator.domain.merge.selection import PolicyRef
from branch_operator.domain.timefmt import rfc3339, to_utc
from branch_operator.domain.windows import WindowVerdict

__all__ = [
    "Check",
    "Facts",
    "ManualRequest",
    "blocking_locks",
    "expires_at",
    "freeze_active",
    "quote_names",
    "run_checks",
    "target_branch_object",
]

# Names quoted in a message before "and N more".
_QUOTED_NAMES = 5
_MAX_EVIDENCE = 1024


@dataclass(frozen=True, slots=True)
class ManualRequest:
    """A break-glass ``oms.dev/merge-request`` annotation: why, and who asked."""

    reason: str
    requested_by: str | None = None


# ----------------------------------------------------------------------------------------- branch facts


def blocking_locks(locks: Sequence[Mapping[str, Any]], branch: str, *, include_indexing: bool) -> list[str]:
    """Names of ``branch``'s locks (the Kubernetes name) that block a merge, sorted.

    On the branch itself its INDEXING lock is the operator's own bookkeeping of a run (released when the
    run ends), so only other lock types count; on the target branch every lock does, because a target
    being indexed or written is no place to merge into.
    """
    return sorted(
        str(lk["metadata"]["name"])
        for lk in locks
        if (lk.get("spec") or {}).get("branch") == branch
        and (include_indexing or lk["spec"].get("lockType") != LockType.INDEXING.value)
    )


def target_branch_object(
    branches: Sequence[Mapping[str, Any]], target_branch: str
) -> Mapping[str, Any] | None:
    """The Branch whose ``spec.branchName`` is ``target_branch`` (first by name if several)."""
    found = [b for b in branches if (b.get("spec") or {}).get("branchName") == target_branch]
    return min(found, key=lambda b: str(b["metadata"]["name"])) if found else None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    evidence: str
    reason: BlockReason  # what a failure of this check is reported as


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the checks read, gathered once."""

    policy: PolicyRef | None
    spec: AutoMergePolicySpec
    tied: Sequence[str]
    auto_merge: bool
    indexing: IndexingStatus | None
    conflicts: Sequence[Conflict]
    other_locks: Sequence[str]
    branch_name: str
    target_branch: str
    target_object: str | None
    target_locks: Sequence[str]
    manual: ManualRequest | None
    now: datetime
    windows: WindowVerdict | None


def run_checks(f: Facts) -> list[Check]:
    """Every check, in REASON_ORDER."""
    return [
        _check_policy(f),
        _check_target(f),
        _check_freeze(f),
        _check_enabled(f),
        _check_validation(f),
        _check_records(f),
        _check_conflicts(f),
        _check_expiry(f),
        _check_locks(f),
        _check_target_locks(f),
        _check_window(f),
    ]


def _policy_label(policy: PolicyRef) -> str:
    generation = f", generation {policy.generation}" if policy.generation is not None else ""
    return f"policy {policy.name} (priority {policy.spec.priority}{generation})"


def _bypassed(f: Facts, evidence: str) -> str:
    who = f" from {f.manual.requested_by}" if f.manual is not None and f.manual.requested_by else ""
    return f"{evidence}; bypassed by merge request{who}"


def _check_policy(f: Facts) -> Check:
    reason = BlockReason.NO_MATCHING_POLICY
    if f.policy is None:
        return Check("policy", False, "no AutoMergePolicy matches this branch", reason)
    evidence = f"governed by {_policy_label(f.policy)}"
    others = [n for n in f.tied if n != f.policy.name]
    if others:
        evidence += f"; tied at priority {f.policy.spec.priority} with {quote_names(others)}, chosen by name order"
    return Check("policy", True, evidence, reason)


def _check_target(f: Facts) -> Check:
    # The CRD refuses such a Branch; this holds for one stored before that rule, and no request bypasses it.
    if f.branch_name == f.target_branch:
        evidence = f"spec.targetBranch {f.target_branch} is spec.branchName: the branch targets itself"
        return Check("target", False, _clip(evidence), BlockReason.SELF_MERGE)
    return Check("target", True, _clip(f"merges into {f.target_branch}"), BlockReason.SELF_MERGE)


def freeze_active(f: Facts) -> bool:
    freeze = f.spec.freeze
    return freeze is not None and (freeze.until is None or f.now < to_utc(freeze.until))


def _check_freeze(f: Facts) -> Check:
    reason = BlockReason.FROZEN
    freeze = f.spec.freeze
    if freeze is None:
        return Check("freeze", True, "no freeze", reason)
    if not freeze_active(f):
        return Check("freeze", True, f"freeze ended at {rfc3339(freeze.until)}" if freeze.until else "", reason)
    until = f" until {rfc3339(freeze.until)}" if freeze.until is not None else " until lifted"
    return Check("freeze", False, _clip(f"frozen{until}: {freeze.reason}"), reason)


def _check_enabled(f: Facts) -> Check:
    parts = []
    if f.policy is not None:
        parts.append(f"policy {f.policy.name} {'enables' if f.spec.enabled else 'disables'} auto-merge")
    parts.append(f"branch spec.autoMerge is {str(f.auto_merge).lower()}")
    evidence = "; ".join(parts)
    passed = f.auto_merge and (f.policy is None or f.spec.enabled)
    if not passed and f.manual is not None:
        return Check("autoMerge", True, _bypassed(f, evidence), BlockReason.AUTO_MERGE_DISABLED)
    return Check("autoMerge", passed, evidence, BlockReason.AUTO_MERGE_DISABLED)


def _check_validation(f: Facts) -> Check:
    reason = BlockReason.VALIDATION_FAILED
    validation = f.indexing.validation if f.indexing is not None else None
    if validation is None:
        evidence = "no validation results recorded"
    elif validation.passed:
        evidence = "validation passed"
    else:
        evidence = f"validation failed with {count_errors(len(validation.errors), validation.errors_total)} error(s)"
        if validation.errors:
            evidence += f", first: {validation.errors[0]}"
    if f.indexing is not None and f.indexing.event_id:
        evidence += f" (event {f.indexing.event_id})"
    if not f.spec.require_validation:
        return Check("validation", True, _clip(f"not required by policy; {evidence}"), reason)
    passed = validation is not None and validation.passed
    if not passed and f.manual is not None and f.spec.allow_manual_merge_with_failed_validation:
        evidence = f"{evidence}; accepted for a merge request (allowManualMergeWithFailedValidation)"
        return Check("validation", True, _clip(evidence), reason)
    return Check("validation", passed, _clip(evidence), reason)


def _check_records(f: Facts) -> Check:
    reason = BlockReason.INSUFFICIENT_RECORDS
    minimum = f.spec.min_records_indexed
    records = f.indexing.records_indexed if f.indexing is not None else None
    if minimum is None:
        return Check("minRecords", True, "no minimum configured", reason)
    if records is None:
        return Check("minRecords", False, f"no record count recorded (minimum {minimum})", reason)
    return Check("minRecords", records >= minimum, f"{records} records indexed (minimum {minimum})", reason)


def _check_conflicts(f: Facts) -> Check:
    evidence = f"{len(f.conflicts)} conflict(s)"
    if f.conflicts:
        evidence += ": " + quote_names([c.path for c in f.conflicts])
    if not f.spec.block_on_conflicts:
        return Check("conflicts", True, _clip(f"not blocking by policy; {evidence}"), BlockReason.CONFLICTS_DETECTED)
    return Check("conflicts", not f.conflicts, _clip(evidence), BlockReason.CONFLICTS_DETECTED)


def expires_at(f: Facts) -> datetime | None:
    completed = f.indexing.completed_at if f.indexing is not None else None
    if f.spec.timeout_hours is None or completed is None:
        return None
    return to_utc(completed) + timedelta(hours=f.spec.timeout_hours)


def _check_expiry(f: Facts) -> Check:
    reason = BlockReason.EXPIRED
    completed = f.indexing.completed_at if f.indexing is not None else None
    if f.spec.timeout_hours is None:
        return Check("expiry", True, "no timeout configured", reason)
    limit = f"timeoutHours {f.spec.timeout_hours:g}"
    expires = expires_at(f)
    if completed is None or expires is None:
        # Without a completion time the age cannot be bounded; refusing is the safe side of a timeout.
        evidence, passed = f"no completion time recorded ({limit})", False
    elif f.now <= expires:
        evidence, passed = f"indexing completed {rfc3339(completed)}; in time until {rfc3339(expires)} ({limit})", True
    else:
        evidence, passed = f"expired at {rfc3339(expires)}: indexing completed {rfc3339(completed)} ({limit})", False
    if not passed and f.manual is not None:
        return Check("expiry", True, _bypassed(f, evidence), reason)
    return Check("expiry", passed, evidence, reason)


def _check_locks(f: Facts) -> Check:
    reason = BlockReason.LOCK_HELD
    held = f"held: {quote_names(f.other_locks)}" if f.other_locks else "no other locks held"
    if not f.spec.block_on_locks:
        return Check("locks", True, _clip(f"not checked by policy; {held}"), reason)
    return Check("locks", not f.other_locks, _clip(held), reason)


def _check_target_locks(f: Facts) -> Check:
    reason = BlockReason.TARGET_LOCK_HELD
    if f.target_object is None:
        held = f"target {f.target_branch} has no Branch in this namespace"
        locks: Sequence[str] = ()
    else:
        locks = f.target_locks
        what = f"target {f.target_branch} (Branch {f.target_object})"
        held = f"{what}: held: {quote_names(locks)}" if locks else f"{what}: no locks held"
    if not f.spec.block_on_target_locks:
        return Check("targetLocks", True, _clip(f"not checked by policy; {held}"), reason)
    return Check("targetLocks", not locks, _clip(held), reason)


def _check_window(f: Facts) -> Check:
    reason = BlockReason.OUTSIDE_MERGE_WINDOW
    verdict = f.windows
    if verdict is None:
        return Check("window", True, "no merge windows configured", reason)
    if verdict.open:
        if verdict.allows:
            first = min(verdict.allows, key=lambda o: (o.start, o.window.label))
            evidence = f"inside {first.window.label} from {rfc3339(first.start)} until {rfc3339(first.end)}"
        else:
            evidence = "no allow window configured and no deny window active"
        return Check("window", True, _clip(evidence), reason)
    if verdict.denies:
        last = max(verdict.denies, key=lambda o: (o.end, o.window.label))
        evidence = f"denied by {last.window.label} from {rfc3339(last.start)} until {rfc3339(last.end)}"
    else:
        evidence = "outside every allow window"
    opening = verdict.next_opening
    evidence += f"; next opening {rfc3339(opening)}" if opening else "; no opening found"
    if f.manual is not None:
        return Check("window", True, _bypassed(f, evidence), reason)
    return Check("window", False, _clip(evidence), reason)


def quote_names(names: Sequence[str]) -> str:
    # Sorted so the same set of names always yields the same text, whatever order the API listed them in.
    ordered = sorted(set(names))
    shown = ", ".join(ordered[:_QUOTED_NAMES])
    rest = len(ordered) - _QUOTED_NAMES
    return shown + (f" and {rest} more" if rest > 0 else "")


def _clip(text: str) -> str:
    return truncate(text, _MAX_EVIDENCE)
