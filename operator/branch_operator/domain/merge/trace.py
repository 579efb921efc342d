"""Recording merge decisions: the ``status.merge`` trace of a Branch and the status of a policy.

Pure logic, no I/O. :func:`merge_status_patch` renders a :class:`~branch_operator.domain.merge.decision.MergeEvaluation`
(plus what the I/O layer did about it) into a status merge patch; :func:`merge_changed` tells whether
writing it would change anything a reader can see, so re-evaluations that change nothing write nothing.
:func:`policy_statuses` and :func:`policy_status_patch` do the same for ``AutoMergePolicy`` status.

``status.merge`` (the shape ``kubectl branch why`` reads; documented in docs/policies.md)::

    decision            Merged | Blocked | Deferred | WouldMerge | Failed
    reasons             every failing check's reason, in REASON_ORDER
    message             one sentence naming every obstacle
    policy, policyGeneration, eventId
    checks              [{name, passed, reason (only when failed), evidence}], one per check
    nextEvaluationTime  when the clock alone may change the decision (window, freeze, expiry, retry)
    mergeId             the merge's idempotency key (Merged and Failed)
    attempts            failed executions of mergeId so far (Failed)
    manualRequest       {reason, requestedBy, outcome, message, at} of the last break-glass request for
                        this indexing result; kept by later evaluations, reset with status.merge
    mergedAt, targetBranch, evaluatedAt
    announcedAt         set by earlier builds once a merge was announced; now cleared and never set
                        (the merge write's outbox replaced it)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from branch_operator.api.models import AutoMergePolicySpec, ConditionType, MergeDecision, Phase
from branch_operator.domain.conditions import ConditionStatus, find_condition, set_condition, truncate
from branch_operator.domain.lifecycle import merged_status
from branch_operator.domain.merge.decision import MergeEvaluation
from branch_operator.domain.merge.selection import (
    INVALID_SPEC,
    PolicyRef,
    policy_matches,
    review_policies,
    schema_problems,
    select_policy,
)
from branch_operator.domain.readiness import branch_readiness, policy_readiness
from branch_operator.domain.timefmt import rfc3339

__all__ = [
    "PolicyStatusView",
    "merge_changed",
    "merge_key",
    "merge_status_patch",
    "policy_status_patch",
    "policy_statuses",
]

_MAX_MESSAGE = 4096
# Fields of status.merge that only say when something was computed: never a reason to write.
_TIMESTAMPS = frozenset({"evaluatedAt"})


def merge_key(uid: str | None, event_id: str | None, indexing_id: str | None = None) -> str:
    """The idempotency key of merging one indexing result of one Branch.

    Derived from the Branch uid and the indexing CloudEvent id (the indexing id when there is no event
    id, e.g. after an administrator's manual transition), so every replica and every retry after a
    crash computes the same key: JetStream de-duplicates the announcements by it and the OMS merge
    endpoint receives it as ``Idempotency-Key``.
    """
    basis = f"{uid or ''}|{event_id or ''}|{'' if event_id else indexing_id or ''}"
    return "merge-" + hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _outcome(
    evaluation: MergeEvaluation, target_branch: str, merged: bool, merge_error: str | None
) -> tuple[MergeDecision, ConditionStatus, str, str]:
    """(decision to record, Mergeable status, Mergeable reason, message)."""
    if evaluation.decision in (MergeDecision.BLOCKED, MergeDecision.DEFERRED):
        # The condition carries one reason (the first in REASON_ORDER); the message names them all.
        return evaluation.decision, "False", evaluation.reasons[0].value, evaluation.message
    if evaluation.decision is MergeDecision.WOULD_MERGE:
        return MergeDecision.WOULD_MERGE, "True", "DryRun", evaluation.message
    if merged:
        # Merged: nothing is left to merge until a new indexing run completes.
        text = f"Merged into {target_branch} under policy {evaluation.policy}."
        if evaluation.manual is not None:
            who = f" of {evaluation.manual.requested_by}" if evaluation.manual.requested_by else ""
            text = f"Merged into {target_branch} under policy {evaluation.policy} for the merge request{who}."
        return MergeDecision.MERGED, "False", "Merged", text
    if merge_error is not None:
        checked = evaluation.message.removesuffix(".")
        text = f"{checked}, but merging into {target_branch} failed: {merge_error}"
        return MergeDecision.FAILED, "True", "MergeFailed", truncate(text, _MAX_MESSAGE)
    raise ValueError("a Merged evaluation is recorded either as merged or with merge_error")


def _merge_fields(
    evaluation: MergeEvaluation, decision: MergeDecision, message: str, target_branch: str, *,
    merge_id: str | None, attempts: int | None, next_evaluation: datetime | None, now: datetime | None,
) -> dict[str, Any]:
    checks = []
    for check in evaluation.checks:
        entry: dict[str, Any] = {"name": check.name, "passed": check.passed}
        if not check.passed:
            entry["reason"] = check.reason.value
        entry["evidence"] = check.evidence
        checks.append(entry)
    fields: dict[str, Any] = {
        "decision": decision.value,
        "reasons": [r.value for r in evaluation.reasons],
        "message": message,
        "policy": evaluation.policy,
        "policyGeneration": evaluation.policy_generation,
        "eventId": evaluation.event_id,
        "checks": checks,
        "targetBranch": target_branch,
        "nextEvaluationTime": rfc3339(next_evaluation) if next_evaluation is not None else None,
        "mergeId": merge_id,
        "attempts": attempts,
    }
    manual = evaluation.manual
    if manual is not None:
        # Only written with the request: later evaluations leave it (a merge patch keeps absent keys),
        # so a refused request stays visible until the next indexing run resets status.merge.
        request = {"reason": manual.reason, "requestedBy": manual.requested_by, "outcome": decision.value,
                   "message": message, "at": rfc3339(now) if now is not None else None}
        fields["manualRequest"] = {k: v for k, v in request.items() if v is not None}
    return fields


def merge_status_patch(
    evaluation: MergeEvaluation,
    *,
    now: datetime,
    target_branch: str,
    merged: bool,
    conditions: Sequence[Mapping[str, Any]] = (),
    observed_generation: int | None = None,
    merge_error: str | None = None,
    merge_id: str | None = None,
    attempts: int | None = None,
    retry_at: datetime | None = None,
) -> dict[str, Any]:
    """The ``status`` merge patch recording ``evaluation``.

    ``merged`` says whether the I/O layer actually performed the merge; it requires a ``Merged``
    evaluation, and moves the phase READY -> ACTIVE. A ``Merged`` evaluation that was not carried out
    is recorded as ``Failed`` with ``merge_error``, ``attempts`` and ``retry_at`` (the next try).
    ``conditions`` is the current condition list; the patch carries the full updated list.
    """
    if merged and evaluation.decision is not MergeDecision.MERGED:
        raise ValueError(f"cannot record a merge for a {evaluation.decision.value} evaluation")
    decision, status, reason, message = _outcome(evaluation, target_branch, merged, merge_error)
    executed = evaluation.decision is MergeDecision.MERGED
    fields = _merge_fields(
        evaluation, decision, message, target_branch,
        merge_id=merge_id if executed else None,
        attempts=attempts if decision is MergeDecision.FAILED else None,
        next_evaluation=retry_at if decision is MergeDecision.FAILED else evaluation.next_evaluation,
        now=now,
    )
    patch: dict[str, Any] = {
        "merge": {
            **fields,
            "mergedAt": rfc3339(now) if merged else None,
            "announcedAt": None,
            "evaluatedAt": rfc3339(now),
        },
        "conditions": set_condition(
            conditions, ConditionType.MERGEABLE, status, reason, message, now, observed_generation
        ),
    }
    if merged:
        patch.update(merged_status(now, patch["conditions"], message=message,
                                   observed_generation=observed_generation))
    else:
        # Still READY: the evaluation is a look at the current generation, so readiness says so too.
        patch["conditions"] = branch_readiness(
            patch["conditions"], Phase.READY, message=f"Indexed; auto-merge {decision.value}: {message}",
            now=now, observed_generation=observed_generation)
        if observed_generation is not None:
            patch["observedGeneration"] = observed_generation
    return patch


def _same(shown: Any, wanted: Any) -> bool:
    # Absent and null are the same on the wire (the API server prunes nulls).
    if wanted is None or wanted == [] or wanted == {}:
        return shown in (None, [], {})
    return bool(shown == wanted)


def merge_changed(
    current_status: Mapping[str, Any],
    evaluation: MergeEvaluation,
    *,
    target_branch: str | None = None,
) -> bool:
    """Whether recording ``evaluation`` would change ``current_status`` (the wire ``status`` dict).

    Compares everything :func:`merge_status_patch` writes for an evaluation that needs no execution,
    ignoring ``evaluatedAt`` and ``lastTransitionTime``. A ``Merged`` evaluation is always a change:
    the merge itself is still to be done.
    """
    if evaluation.decision is MergeDecision.MERGED or evaluation.manual is not None:
        return True  # a merge to carry out, or a request to answer
    decision, status, reason, message = _outcome(evaluation, target_branch or "", False, None)
    wanted = _merge_fields(evaluation, decision, message, target_branch or "", merge_id=None, attempts=None,
                           next_evaluation=evaluation.next_evaluation, now=None)
    if target_branch is None:
        wanted.pop("targetBranch")
    wanted.update(mergedAt=None, announcedAt=None)
    merge = current_status.get("merge") or {}
    if any(not _same(merge.get(key), value) for key, value in wanted.items() if key not in _TIMESTAMPS):
        return True
    condition = find_condition(current_status.get("conditions") or [], ConditionType.MERGEABLE)
    if condition is None:
        return True
    shown = (condition.get("status"), condition.get("reason"), condition.get("message"))
    return shown != (status, reason, message)


# ------------------------------------------------------------------------------------- policy status


@dataclass(frozen=True, slots=True)
class PolicyStatusView:
    accepted: bool
    reason: str  # the Accepted condition's reason
    message: str
    matched: int  # branches of the namespace the policy's filters match
    governed: int  # of those, the ones it wins (always 0 when not accepted)


def policy_statuses(
    policies: Sequence[Mapping[str, Any]], branches: Sequence[Mapping[str, Any]]
) -> dict[str, PolicyStatusView]:
    """The status of every AutoMergePolicy object (wire dicts) of one namespace, by name."""
    parsed: list[PolicyRef] = []
    invalid: dict[str, str] = {}
    for obj in policies:
        meta = obj["metadata"]
        try:
            spec = AutoMergePolicySpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            invalid[meta["name"]] = schema_problems(exc)
            continue
        parsed.append(PolicyRef(meta["name"], meta.get("generation"), spec))
    review = review_policies(parsed)
    facts = [
        (str((b.get("spec") or {}).get("branchName", "")), str((b.get("spec") or {}).get("targetBranch", "main")),
         (b.get("metadata") or {}).get("labels") or {})
        for b in branches
    ]
    governed: dict[str, int] = {}
    for name, target, labels in facts:
        winner = select_policy(review.accepted, branch_name=name, target_branch=target, labels=labels).policy
        if winner is not None:
            governed[winner.name] = governed.get(winner.name, 0) + 1
    out: dict[str, PolicyStatusView] = {}
    for policy in parsed:
        matched = sum(
            policy_matches(policy.spec, branch_name=n, target_branch=t, labels=lb) for n, t, lb in facts)
        if policy.name in review.rejected:
            reason, message = review.rejected[policy.name]
            out[policy.name] = PolicyStatusView(False, reason, f"Ignored: {message}", matched, 0)
        else:
            out[policy.name] = PolicyStatusView(
                True, "Valid", "The policy is valid and in force.", matched, governed.get(policy.name, 0))
    for name, problem in invalid.items():
        out[name] = PolicyStatusView(False, INVALID_SPEC, truncate(f"Ignored: {problem}", _MAX_MESSAGE), 0, 0)
    return out


def policy_status_patch(
    view: PolicyStatusView, current_status: Mapping[str, Any], *, generation: int | None, now: datetime
) -> dict[str, Any] | None:
    """The status patch for one policy, or None when it would change nothing but timestamps."""
    status: ConditionStatus = "True" if view.accepted else "False"
    message = truncate(view.message, _MAX_MESSAGE)
    conditions = set_condition(
        current_status.get("conditions") or [], ConditionType.ACCEPTED, status, view.reason, message, now, generation)
    conditions = policy_readiness(conditions, accepted=view.accepted, reason=view.reason, message=message, now=now,
                                  observed_generation=generation)
    patch = {
        "observedGeneration": generation,
        "matchedBranches": view.matched,
        "governedBranches": view.governed,
        "conditions": conditions,
    }
    unchanged = all(current_status.get(k) == v for k, v in patch.items() if k != "conditions") and (
        _without_times(current_status.get("conditions") or []) == _without_times(conditions))
    if unchanged:
        return None
    # lastEvaluationTime is when these numbers were computed; written only with a real change.
    return {**patch, "lastEvaluationTime": rfc3339(now)}


def _without_times(conditions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions]
