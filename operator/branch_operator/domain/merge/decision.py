"""Whether a READY Branch may be merged now, and what a merge backend's result means.

Pure logic, no I/O. :func:`evaluate_merge` turns the checks into a decision. When that decision is to
merge, the I/O layer asks :func:`pending_retry` whether an earlier failure of the same merge still waits
for its retry time, calls the merge backend (whose answers :func:`classify_answer` interprets), and
records what :func:`merge_step` (or, after OMS reported conflicts, :func:`conflict_step`) says the result
came to: merged, blocked by the conflicts, or failed with a retry at a given time.

Every check of :func:`evaluate_merge` is always evaluated and reported
(:mod:`branch_operator.domain.merge.checks`), so a blocked Branch shows every obstacle at once rather
than one per fix. Messages contain only times that stay the same from one evaluation to the next, never
an age: the trace is written to status, and text that changed on every evaluation would make every
re-evaluation write.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from branch_operator.api.models import (
    AutoMergePolicySpec,
    BlockReason,
    Conflict,
    IndexingStatus,
    MergeDecision,
    Phase,
)
from branch_operator.domain.audit import AuditAction
from branch_operator.domain.conditions import count_errors, truncate
from branch_operator.domain.merge.checks import (
    Check,
    Facts,
    ManualRequest,
    expires_at,
    freeze_active,
    quote_names,
    run_checks,
)
from branch_operator.domain.merge.selection import PolicyRef, policy_windows
from branch_operator.domain.timefmt import rfc3339, to_utc
from branch_operator.domain.windows import evaluate_windows

__all__ = [
    "REASON_ORDER",
    "TIME_REASONS",
    "Answer",
    "DecisionReport",
    "MergeEvaluation",
    "MergeStep",
    "Outcome",
    "Step",
    "classify_answer",
    "conflict_step",
    "decision_report",
    "evaluate_merge",
    "failed_attempts",
    "merge_step",
    "pending_retry",
]


# The order checks and reasons are reported in: from "nothing to evaluate against" to the most transient.
REASON_ORDER: tuple[BlockReason, ...] = (
    BlockReason.NO_MATCHING_POLICY,
    BlockReason.SELF_MERGE,
    BlockReason.FROZEN,
    BlockReason.AUTO_MERGE_DISABLED,
    BlockReason.VALIDATION_FAILED,
    BlockReason.INSUFFICIENT_RECORDS,
    BlockReason.CONFLICTS_DETECTED,
    BlockReason.EXPIRED,
    BlockReason.LOCK_HELD,
    BlockReason.TARGET_LOCK_HELD,
    BlockReason.OUTSIDE_MERGE_WINDOW,
)
# Reasons that pass by themselves as time goes by: when they are the only ones, the decision is Deferred.
TIME_REASONS = frozenset({BlockReason.OUTSIDE_MERGE_WINDOW})

# status.merge.message is capped at 4096 characters.
_MAX_MESSAGE = 4096
# An expiry is re-evaluated just after the limit: exactly at the limit the branch is still in time.
_PAST_LIMIT = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class MergeEvaluation:
    decision: MergeDecision  # Merged = "merge now"; WouldMerge = dry run; Deferred = only a window closed; Blocked
    reasons: list[BlockReason]  # every failing check, in REASON_ORDER; empty iff Merged or WouldMerge
    checks: list[Check]  # every check, in REASON_ORDER
    message: str
    policy: str | None
    policy_generation: int | None
    dry_run: bool
    event_id: str | None  # the indexing CloudEvent this decision is about
    next_evaluation: datetime | None  # when the clock alone may change the decision; None = never
    manual: ManualRequest | None

    @property
    def should_merge(self) -> bool:
        return self.decision is MergeDecision.MERGED


def evaluate_merge(
    *,
    phase: Phase | None,
    auto_merge: bool,
    indexing: IndexingStatus | None,
    conflicts: Sequence[Conflict],
    other_locks: Sequence[str],
    policy: PolicyRef | None,
    now: datetime,
    branch_name: str,
    target_branch: str = "main",
    target_object: str | None = None,
    target_locks: Sequence[str] = (),
    manual: ManualRequest | None = None,
    tied: Sequence[str] = (),
) -> MergeEvaluation:
    """Decide whether a READY Branch may be merged now, reporting every check.

    ``branch_name`` and ``target_branch`` are the Branch's spec (a branch never merges into itself);
    ``other_locks`` are the branch's blocking locks (:func:`.checks.blocking_locks`), ``target_object``
    the Kubernetes name of the target's Branch (None: there is none) and ``target_locks`` its locks.
    ``manual`` is a break-glass request: it bypasses ``enabled``/``autoMerge``, the timeout and the
    merge windows, and failed validation only when the policy allows it. ``tied`` names the policies
    that share the winner's priority (from :class:`Selection`).

    Only READY Branches have a result to merge: any other phase raises ``ValueError`` (a caller bug,
    not a block reason). Without a policy the remaining checks run against the CRD defaults, so the
    person reading the status sees what would still block once a policy matches. ``policy`` must be
    accepted (:func:`review_policies`); windows that do not parse raise ``ValueError``.
    """
    if phase is not Phase.READY:
        raise ValueError(f"merge is only evaluated for READY branches, not {phase}")
    spec = policy.spec if policy is not None else AutoMergePolicySpec()
    windows = policy_windows(spec)
    facts = Facts(
        policy=policy, spec=spec, tied=tied, auto_merge=auto_merge, indexing=indexing, conflicts=conflicts,
        other_locks=other_locks, branch_name=branch_name, target_branch=target_branch, target_object=target_object,
        target_locks=target_locks, manual=manual, now=to_utc(now),
        windows=evaluate_windows(windows, to_utc(now)) if windows else None,
    )
    checks = run_checks(facts)
    reasons = [c.reason for c in checks if not c.passed]
    if reasons and all(r in TIME_REASONS for r in reasons):
        decision = MergeDecision.DEFERRED
    elif reasons:
        decision = MergeDecision.BLOCKED
    elif spec.dry_run:
        decision = MergeDecision.WOULD_MERGE
    else:
        decision = MergeDecision.MERGED
    return MergeEvaluation(
        decision=decision,
        reasons=reasons,
        checks=checks,
        message=_message(decision, facts, checks),
        policy=policy.name if policy is not None else None,
        policy_generation=policy.generation if policy is not None else None,
        dry_run=spec.dry_run,
        event_id=indexing.event_id if indexing is not None else None,
        next_evaluation=None if decision is MergeDecision.MERGED else _next_evaluation(facts),
        manual=manual,
    )


def _next_evaluation(f: Facts) -> datetime | None:
    """The first time after ``now`` at which the clock alone can change some check's outcome."""
    candidates: list[datetime] = []
    freeze = f.spec.freeze
    if freeze is not None and freeze.until is not None and freeze_active(f):
        candidates.append(to_utc(freeze.until))
    expires = expires_at(f)
    if expires is not None and f.now <= expires:
        candidates.append(expires + _PAST_LIMIT)
    if f.windows is not None:
        change = f.windows.next_change if f.windows.open else f.windows.next_opening
        if change is not None:
            candidates.append(change)
    later = [c for c in candidates if c > f.now]
    return min(later) if later else None


def _message(decision: MergeDecision, f: Facts, checks: Sequence[Check]) -> str:
    name = f.policy.name if f.policy is not None else ""
    by = ""
    if f.manual is not None:
        by = " for the merge request" + (f" of {f.manual.requested_by}" if f.manual.requested_by else "")
    if decision is MergeDecision.WOULD_MERGE:
        return f"All auto-merge checks passed{by}; policy {name} is in dry-run mode, so nothing was merged."
    if decision is MergeDecision.MERGED:
        return f"All auto-merge checks passed{by} under policy {name}."
    phrases = [p for check in checks if not check.passed for p in _phrases(check, f)]
    head = "Auto-merge deferred: " if decision is MergeDecision.DEFERRED else "Auto-merge blocked: "
    if f.manual is not None:
        head = head.replace("Auto-merge", "Merge request")
    return truncate(head + "; ".join(phrases) + ".", _MAX_MESSAGE)


def _phrases(check: Check, f: Facts) -> list[str]:
    reason = check.reason
    if reason is BlockReason.NO_MATCHING_POLICY:
        return ["no AutoMergePolicy matches the branch"]
    if reason is BlockReason.SELF_MERGE:
        return ["the branch targets itself (spec.targetBranch is spec.branchName)"]
    if reason is BlockReason.FROZEN:
        return [f"policy {f.policy.name if f.policy else ''} is frozen ({truncate(f.spec.freeze.reason, 200)})"
                if f.spec.freeze else "frozen"]
    if reason is BlockReason.AUTO_MERGE_DISABLED:
        out = []
        if f.policy is not None and not f.spec.enabled:
            out.append(f"policy {f.policy.name} disables auto-merge")
        if not f.auto_merge:
            out.append("the branch sets autoMerge to false")
        return out
    if reason is BlockReason.VALIDATION_FAILED:
        validation = f.indexing.validation if f.indexing is not None else None
        if validation is None:
            return ["no validation results are recorded"]
        return [f"validation failed with {count_errors(len(validation.errors), validation.errors_total)} error(s)"]
    if reason is BlockReason.INSUFFICIENT_RECORDS:
        records = f.indexing.records_indexed if f.indexing is not None else None
        shown = "an unknown number of" if records is None else f"only {records}"
        return [f"{shown} records indexed (minimum {f.spec.min_records_indexed})"]
    if reason is BlockReason.CONFLICTS_DETECTED:
        return [f"{len(f.conflicts)} merge conflict(s) ({quote_names([c.path for c in f.conflicts])})"]
    if reason is BlockReason.EXPIRED:
        completed = f.indexing.completed_at if f.indexing is not None else None
        if completed is None:
            return ["no indexing completion time is recorded"]
        return [f"indexing completed more than {f.spec.timeout_hours:g}h ago"]
    if reason is BlockReason.LOCK_HELD:
        return [f"lock(s) held: {quote_names(f.other_locks)}"]
    if reason is BlockReason.TARGET_LOCK_HELD:
        return [f"lock(s) held on target {f.target_branch}: {quote_names(f.target_locks)}"]
    # OUTSIDE_MERGE_WINDOW
    opening = f.windows.next_opening if f.windows is not None else None
    when = f"next opening {rfc3339(opening)}" if opening else "no opening found"
    if f.windows is not None and f.windows.denies:
        return [f"a deny merge window is active ({when})"]
    return [f"outside the merge windows ({when})"]


@dataclass(frozen=True, slots=True)
class DecisionReport:
    """The Event and audit record telling about a decision just written (a merge is announced otherwise)."""

    event_type: str  # Normal | Warning
    event_reason: str
    audit: AuditAction | None  # None: the Event is all
    audit_reason: str
    request_outcome: str | None  # the answer to a merge request: dry-run | refused; None without one


def decision_report(evaluation: MergeEvaluation) -> DecisionReport:
    """What to tell about ``evaluation`` (not Merged: a merge is announced by the merge write)."""
    decision = evaluation.decision
    if decision is MergeDecision.MERGED:
        raise ValueError("a merge is announced from the merge write, not reported as a decision")
    reasons = ",".join(r.value for r in evaluation.reasons)
    dry_run = decision is MergeDecision.WOULD_MERGE
    if evaluation.manual is not None:
        return DecisionReport("Normal" if dry_run else "Warning", "WouldMerge" if dry_run else "MergeRequestRefused",
                              AuditAction.BRANCH_MERGE_REQUESTED, reasons or decision.value,
                              "dry-run" if dry_run else "refused")
    if dry_run:
        return DecisionReport("Normal", "WouldMerge", None, "", None)
    if decision is MergeDecision.DEFERRED:
        return DecisionReport("Normal", "MergeDeferred", AuditAction.BRANCH_MERGE_DEFERRED, reasons, None)
    return DecisionReport("Warning", "MergeBlocked", AuditAction.BRANCH_MERGE_BLOCKED, reasons, None)


# ------------------------------------------------------------------------------------------ execution


class Outcome(enum.StrEnum):
    """What one execution of a merge by a merge backend came to."""

    MERGED = "merged"
    CONFLICT = "conflict"  # OMS refused because of conflicts (409)
    FAILED = "failed"  # refused for another reason, or no answer after every attempt


class Answer(enum.StrEnum):
    """What one answer of the merge endpoint means."""

    MERGED = "merged"
    CONFLICT = "conflict"
    RETRY = "retry"  # may work if asked again (within the same execution, after a backoff)
    FAILED = "failed"  # asking again cannot change it


# Besides 5xx and no answer at all: timeout, "too early" and rate limiting are worth another attempt.
_RETRYABLE_STATUS = frozenset({408, 425, 429})


def classify_answer(status: int | None) -> Answer:
    """The meaning of the merge endpoint's HTTP ``status``; None = no answer (connection error, timeout)."""
    if status is None:
        return Answer.RETRY
    if 200 <= status < 300:
        return Answer.MERGED
    if status == 409:
        return Answer.CONFLICT
    if status >= 500 or status in _RETRYABLE_STATUS:
        return Answer.RETRY
    return Answer.FAILED


def failed_attempts(merge: Mapping[str, Any], key: str) -> int:
    """Failed executions of merge ``key`` that ``merge`` (the wire ``status.merge``) records; 0 for any other."""
    if merge.get("decision") != MergeDecision.FAILED.value or merge.get("mergeId") != key:
        return 0
    return int(merge.get("attempts") or 0)


def pending_retry(merge: Mapping[str, Any], key: str, *, now: datetime,
                  manual: ManualRequest | None) -> datetime | None:
    """The retry time a failed merge ``key`` still waits for (nothing is executed before it), else None.

    A merge request does not wait: a person asked for the merge now.
    """
    if manual is not None or not failed_attempts(merge, key):
        return None
    retry_at = _parse_time(merge.get("nextEvaluationTime"))
    return retry_at if retry_at is not None and to_utc(now) < retry_at else None


class Step(enum.StrEnum):
    RECORD_MERGED = "merged"  # record the merge (READY -> ACTIVE) and announce it
    DECIDE_WITH_CONFLICTS = "conflicts"  # decide again with the conflicts OMS reported (conflict_step)
    RECORD_CONFLICTS = "record-conflicts"  # record the conflicts: the branch waits for their resolution
    RECORD_FAILED = "failed"  # record Failed; the branch stays READY and is tried again at retry_at


@dataclass(frozen=True, slots=True)
class MergeStep:
    step: Step
    attempts: int | None = None  # RECORD_FAILED: failed executions of the merge, this one included
    retry_at: datetime | None = None  # RECORD_FAILED: the next try; RECORD_CONFLICTS: the next evaluation


def _failed(failed_before: int, now: datetime, retry_interval: timedelta) -> MergeStep:
    return MergeStep(Step.RECORD_FAILED, attempts=failed_before + 1, retry_at=now + retry_interval)


def merge_step(outcome: Outcome, *, failed_before: int, now: datetime, retry_interval: timedelta) -> MergeStep:
    """What to record after a merge backend's ``outcome`` of a merge that failed ``failed_before`` times."""
    if outcome is Outcome.MERGED:
        return MergeStep(Step.RECORD_MERGED)
    if outcome is Outcome.CONFLICT:
        return MergeStep(Step.DECIDE_WITH_CONFLICTS)
    return _failed(failed_before, now, retry_interval)


def conflict_step(evaluation: MergeEvaluation, *, now: datetime, retry_interval: timedelta) -> MergeStep:
    """What to record once the merge is decided again (``evaluation``) with the conflicts OMS reported.

    Blocked by them: record them, the branch waits for OMS to resolve them. Still a merge (the policy
    does not block on conflicts) although OMS refused it: a failed merge, counted from the first attempt.
    """
    if evaluation.decision is MergeDecision.MERGED:
        return _failed(0, now, retry_interval)
    return MergeStep(Step.RECORD_CONFLICTS, retry_at=evaluation.next_evaluation)


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return to_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        return None
