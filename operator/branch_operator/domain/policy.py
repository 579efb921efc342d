"""AutoMergePolicy: which policy governs a Branch, and whether a READY Branch may be merged.

Pure logic, no I/O. The I/O layer lists the policies of the Branch's namespace, calls
:func:`select_policy`, then :func:`evaluate_merge`, and writes :func:`merge_status_patch` only when
:func:`merge_changed` says the outcome differs from what status already shows.

Matching (:func:`policy_matches`) is the AND of three filters, each of which is "any" when empty:

* ``branchSelector`` on the Branch's labels, with Kubernetes LabelSelector semantics: every
  ``matchLabels`` pair must be present; ``In`` needs the key with one of the values, ``NotIn`` matches
  when the key is absent or its value is not listed, ``Exists``/``DoesNotExist`` test the key only.
  An absent or empty selector constrains nothing.
* ``branchNamePatterns`` on ``spec.branchName``: the branch matches if any glob does (:func:`glob_match`).
* ``targetBranches`` on ``spec.targetBranch``: same globs; a plain name matches only itself.

So a policy with neither selector nor patterns governs every Branch of its namespace. A matching policy
with ``enabled: false`` is still selected: a high-priority disabled policy is how auto-merge is switched
off for part of a namespace.

Glob syntax, path-aware because OMS branch names are ``/``-separated (``feature/user-schema``):

* ``*`` any run of characters within one segment (never ``/``); ``?`` one such character;
* ``[abc]``, ``[a-z]``, ``[!abc]`` one character of (not of) a set, never ``/``;
* ``**`` any run of characters across segments; as a whole segment, ``**/`` also matches zero
  segments, so ``**/hotfix`` matches ``hotfix`` and ``team/a/hotfix``;
* matching is case-sensitive and anchored at both ends; a pattern with an invalid set (``[z-a]``)
  is matched literally rather than failing the evaluation.

Every check of :func:`evaluate_merge` is always evaluated and reported, so a blocked Branch shows every
obstacle at once rather than one per fix. The human ``message`` deliberately contains no clock-dependent
numbers (those live in the per-check ``evidence``): it is written to status, and a message that changes
on every evaluation would make every periodic reconcile write.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from branch_operator.api.models import (
    AutoMergePolicySpec,
    BlockReason,
    ConditionType,
    Conflict,
    IndexingStatus,
    LabelSelector,
    LabelSelectorRequirement,
    MergeDecision,
    Phase,
)
from branch_operator.domain.states import (
    ConditionStatus,
    find_condition,
    rfc3339,
    set_condition,
    to_utc,
    truncate,
)

__all__ = [
    "REASON_ORDER",
    "Check",
    "MergeEvaluation",
    "PolicyRef",
    "Selection",
    "evaluate_merge",
    "glob_match",
    "merge_changed",
    "merge_status_patch",
    "policy_matches",
    "select_policy",
    "selector_matches",
]

# The order reasons are reported in: from "nothing to evaluate against" to the most transient.
REASON_ORDER: tuple[BlockReason, ...] = (
    BlockReason.NO_MATCHING_POLICY,
    BlockReason.AUTO_MERGE_DISABLED,
    BlockReason.VALIDATION_FAILED,
    BlockReason.CONFLICTS_DETECTED,
    BlockReason.EXPIRED,
    BlockReason.LOCK_HELD,
)

# Names quoted in a message before "and N more"; status.merge.message is capped at 4096 characters.
_QUOTED_NAMES = 5
_MAX_MESSAGE = 4096


class PolicyRef(NamedTuple):
    name: str
    generation: int | None
    spec: AutoMergePolicySpec


# -------------------------------------------------------------------------------------------- matching


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    return all(_requirement_matches(r, labels) for r in selector.match_expressions)


def _requirement_matches(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    return not present  # DoesNotExist


@functools.lru_cache(maxsize=1024)
def _compile_glob(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                whole_segment = (i == 0 or pattern[i - 1] == "/") and pattern.startswith("/", i + 2)
                if whole_segment:
                    out.append("(?:.*/)?")
                    i += 3
                else:
                    out.append(".*")
                    i += 2
                while i < n and pattern[i] == "*":  # "***" means nothing more than "**"
                    i += 1
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                body = re.sub(r"([\\\[\]^&~|])", r"\\\1", body)
                # A set never matches the segment separator, in line with "*" and "?".
                out.append(f"(?!/)[{'^' if negate else ''}{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error:
        # A set the regex engine rejects (e.g. the reversed range "[z-a]") must not make every branch of
        # the namespace fail to evaluate; the pattern is then matched literally.
        return re.compile(re.escape(pattern), re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    """Whether ``name`` matches the path-aware glob ``pattern`` (see the module docstring)."""
    return _compile_glob(pattern).fullmatch(name) is not None


def policy_matches(
    policy_spec: AutoMergePolicySpec,
    *,
    branch_name: str,
    target_branch: str,
    labels: Mapping[str, str],
) -> bool:
    if not selector_matches(policy_spec.branch_selector, labels):
        return False
    if policy_spec.branch_name_patterns and not any(
        glob_match(p, branch_name) for p in policy_spec.branch_name_patterns
    ):
        return False
    return not policy_spec.target_branches or any(glob_match(t, target_branch) for t in policy_spec.target_branches)


@dataclass(frozen=True, slots=True)
class Selection:
    policy: PolicyRef | None  # the governing policy, None when nothing matches
    matched: list[str]  # every matching policy name, winner first, then by (priority desc, name)
    tied: list[str]  # names sharing the winner's priority, winner first; empty when the win is clear

    @property
    def ambiguous(self) -> bool:
        return bool(self.tied)


def select_policy(
    policies: Sequence[PolicyRef],
    *,
    branch_name: str,
    target_branch: str,
    labels: Mapping[str, str],
) -> Selection:
    """The matching policy with the highest ``priority``; ties go to the lexicographically first name."""
    matching = [
        p
        for p in policies
        if policy_matches(p.spec, branch_name=branch_name, target_branch=target_branch, labels=labels)
    ]
    # Name order breaks ties so that every replica, and every reconcile, picks the same policy.
    matching.sort(key=lambda p: (-p.spec.priority, p.name))
    if not matching:
        return Selection(policy=None, matched=[], tied=[])
    winner = matching[0]
    tied = [p.name for p in matching if p.spec.priority == winner.spec.priority]
    return Selection(policy=winner, matched=[p.name for p in matching], tied=tied if len(tied) > 1 else [])


# ------------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    evidence: str
    reason: BlockReason  # what a failure of this check is reported as


@dataclass(frozen=True, slots=True)
class MergeEvaluation:
    decision: MergeDecision  # Merged = "should merge now"; WouldMerge = dry run; Blocked
    reasons: list[BlockReason]  # every failing check, in REASON_ORDER; empty iff not Blocked
    checks: list[Check]  # every check, in REASON_ORDER
    message: str
    policy: str | None
    policy_generation: int | None
    dry_run: bool

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
) -> MergeEvaluation:
    """Decide whether a READY Branch may be merged, reporting every check.

    Only READY Branches have a result to merge: any other phase raises ``ValueError`` (a caller bug,
    not a block reason). Without a policy the remaining checks run against the CRD defaults, so the
    person reading the status sees what would still block once a policy matches.
    """
    if phase is not Phase.READY:
        raise ValueError(f"merge is only evaluated for READY branches, not {phase}")
    spec = policy.spec if policy is not None else AutoMergePolicySpec()
    checks = [
        _check_policy(policy),
        _check_enabled(policy, auto_merge),
        _check_validation(spec, indexing),
        _check_conflicts(spec, conflicts),
        _check_expiry(spec, indexing, now),
        _check_locks(other_locks),
    ]
    reasons = [c.reason for c in checks if not c.passed]
    if reasons:
        decision = MergeDecision.BLOCKED
    elif spec.dry_run:
        decision = MergeDecision.WOULD_MERGE
    else:
        decision = MergeDecision.MERGED
    return MergeEvaluation(
        decision=decision,
        reasons=reasons,
        checks=checks,
        message=_message(decision, policy, spec, checks, auto_merge, indexing, conflicts, other_locks),
        policy=policy.name if policy is not None else None,
        policy_generation=policy.generation if policy is not None else None,
        dry_run=spec.dry_run,
    )


def _policy_label(policy: PolicyRef) -> str:
    generation = f", generation {policy.generation}" if policy.generation is not None else ""
    return f"policy {policy.name} (priority {policy.spec.priority}{generation})"


def _check_policy(policy: PolicyRef | None) -> Check:
    reason = BlockReason.NO_MATCHING_POLICY
    if policy is None:
        return Check("policy", False, "no AutoMergePolicy matches this branch", reason)
    return Check("policy", True, f"governed by {_policy_label(policy)}", reason)


def _check_enabled(policy: PolicyRef | None, auto_merge: bool) -> Check:
    parts = []
    if policy is not None:
        parts.append(f"policy {policy.name} {'enables' if policy.spec.enabled else 'disables'} auto-merge")
    parts.append(f"branch spec.autoMerge is {str(auto_merge).lower()}")
    passed = auto_merge and (policy is None or policy.spec.enabled)
    return Check("autoMerge", passed, "; ".join(parts), BlockReason.AUTO_MERGE_DISABLED)


def _check_validation(spec: AutoMergePolicySpec, indexing: IndexingStatus | None) -> Check:
    validation = indexing.validation if indexing is not None else None
    if validation is None:
        evidence = "no validation results recorded"
    elif validation.passed:
        evidence = "validation passed"
    else:
        evidence = f"validation failed with {len(validation.errors)} error(s)"
        if validation.errors:
            evidence += f", first: {validation.errors[0]}"
    if not spec.require_validation:
        return Check("validation", True, f"not required by policy; {evidence}", BlockReason.VALIDATION_FAILED)
    passed = validation is not None and validation.passed
    return Check("validation", passed, evidence, BlockReason.VALIDATION_FAILED)


def _check_conflicts(spec: AutoMergePolicySpec, conflicts: Sequence[Conflict]) -> Check:
    evidence = f"{len(conflicts)} conflict(s)"
    if conflicts:
        evidence += ": " + _names([c.path for c in conflicts])
    if not spec.block_on_conflicts:
        return Check("conflicts", True, f"not blocking by policy; {evidence}", BlockReason.CONFLICTS_DETECTED)
    return Check("conflicts", not conflicts, evidence, BlockReason.CONFLICTS_DETECTED)


def _check_expiry(spec: AutoMergePolicySpec, indexing: IndexingStatus | None, now: datetime) -> Check:
    completed = indexing.completed_at if indexing is not None else None
    if spec.timeout_hours is None:
        return Check("expiry", True, "no timeout configured", BlockReason.EXPIRED)
    limit = f"limit {spec.timeout_hours:g}h"
    if completed is None:
        # Without a completion time the age cannot be bounded; refusing is the safe side of a timeout.
        return Check("expiry", False, f"no completion time recorded ({limit})", BlockReason.EXPIRED)
    age = (to_utc(now) - to_utc(completed)).total_seconds()
    evidence = f"indexing completed {age / 3600:.2f}h ago ({limit})"
    return Check("expiry", age <= spec.timeout_hours * 3600, evidence, BlockReason.EXPIRED)


def _check_locks(other_locks: Sequence[str]) -> Check:
    if not other_locks:
        return Check("locks", True, "no other locks held", BlockReason.LOCK_HELD)
    return Check("locks", False, f"held: {_names(other_locks)}", BlockReason.LOCK_HELD)


def _names(names: Sequence[str]) -> str:
    # Sorted so the same set of names always yields the same text, whatever order the API listed them in.
    ordered = sorted(set(names))
    shown = ", ".join(ordered[:_QUOTED_NAMES])
    rest = len(ordered) - _QUOTED_NAMES
    return shown + (f" and {rest} more" if rest > 0 else "")


def _message(
    decision: MergeDecision,
    policy: PolicyRef | None,
    spec: AutoMergePolicySpec,
    checks: Sequence[Check],
    auto_merge: bool,
    indexing: IndexingStatus | None,
    conflicts: Sequence[Conflict],
    other_locks: Sequence[str],
) -> str:
    name = policy.name if policy is not None else ""
    if decision is MergeDecision.WOULD_MERGE:
        return f"All auto-merge checks passed; policy {name} is in dry-run mode, so nothing was merged."
    if decision is MergeDecision.MERGED:
        return f"All auto-merge checks passed under policy {name}."
    phrases: list[str] = []
    for check in checks:
        if check.passed:
            continue
        reason = check.reason
        if reason is BlockReason.NO_MATCHING_POLICY:
            phrases.append("no AutoMergePolicy matches the branch")
        elif reason is BlockReason.AUTO_MERGE_DISABLED:
            if policy is not None and not policy.spec.enabled:
                phrases.append(f"policy {name} disables auto-merge")
            if not auto_merge:
                phrases.append("the branch sets autoMerge to false")
        elif reason is BlockReason.VALIDATION_FAILED:
            validation = indexing.validation if indexing is not None else None
            if validation is None:
                phrases.append("no validation results are recorded")
            else:
                phrases.append(f"validation failed with {len(validation.errors)} error(s)")
        elif reason is BlockReason.CONFLICTS_DETECTED:
            phrases.append(f"{len(conflicts)} merge conflict(s) ({_names([c.path for c in conflicts])})")
        elif reason is BlockReason.EXPIRED:
            completed = indexing.completed_at if indexing is not None else None
            if completed is None:
                phrases.append("no indexing completion time is recorded")
            else:
                phrases.append(f"indexing completed more than {spec.timeout_hours:g}h ago")
        elif reason is BlockReason.LOCK_HELD:
            phrases.append(f"lock(s) held: {_names(other_locks)}")
    return truncate("Auto-merge blocked: " + "; ".join(phrases) + ".", _MAX_MESSAGE)


# ------------------------------------------------------------------------------------------ status patch


def merge_status_patch(
    evaluation: MergeEvaluation,
    *,
    now: datetime,
    target_branch: str,
    merged: bool,
    conditions: Sequence[Mapping[str, Any]] = (),
    observed_generation: int | None = None,
    merge_error: str | None = None,
) -> dict[str, Any]:
    """The ``status`` merge patch recording ``evaluation``.

    ``merged`` says whether the I/O layer actually performed the merge; it requires a ``Merged``
    evaluation. A ``Merged`` evaluation not (yet) carried out is recorded as ``Failed`` when
    ``merge_error`` is given, else ``Deferred``. A performed merge also moves the phase READY -> ACTIVE.
    ``conditions`` is the current condition list; the patch carries the full updated list.
    """
    if merged and evaluation.decision is not MergeDecision.MERGED:
        raise ValueError(f"cannot record a merge for a {evaluation.decision.value} evaluation")
    decision, status, reason, message = _outcome(evaluation, target_branch, merged, merge_error)
    patch: dict[str, Any] = {
        "merge": {
            "decision": decision.value,
            "reasons": [r.value for r in evaluation.reasons],
            "message": message,
            "policy": evaluation.policy,
            "mergedAt": rfc3339(now) if merged else None,
            "targetBranch": target_branch,
            "evaluatedAt": rfc3339(now),
        },
        "conditions": set_condition(
            conditions, ConditionType.MERGEABLE, status, reason, message, now, observed_generation
        ),
    }
    if merged:
        patch["phase"] = Phase.ACTIVE.value
        patch["phaseTransitionTime"] = rfc3339(now)
    return patch


def _outcome(
    evaluation: MergeEvaluation, target_branch: str, merged: bool, merge_error: str | None
) -> tuple[MergeDecision, ConditionStatus, str, str]:
    """(decision to record, Mergeable status, Mergeable reason, message)."""
    if evaluation.decision is MergeDecision.BLOCKED:
        # The condition carries one reason (the first in REASON_ORDER); the message names them all.
        return MergeDecision.BLOCKED, "False", evaluation.reasons[0].value, evaluation.message
    if evaluation.decision is MergeDecision.WOULD_MERGE:
        return MergeDecision.WOULD_MERGE, "True", "DryRun", evaluation.message
    if merged:
        # Merged: nothing is left to merge until a new indexing run completes.
        text = f"Merged into {target_branch} under policy {evaluation.policy}."
        return MergeDecision.MERGED, "False", "Merged", text
    if merge_error is not None:
        checked = evaluation.message.removesuffix(".")
        text = f"{checked}, but merging into {target_branch} failed: {merge_error}"
        return MergeDecision.FAILED, "True", "MergeFailed", truncate(text, _MAX_MESSAGE)
    text = f"{evaluation.message.removesuffix('.')}; merge into {target_branch} pending."
    return MergeDecision.DEFERRED, "True", "MergePending", text


def merge_changed(
    current_status: Mapping[str, Any],
    evaluation: MergeEvaluation,
    *,
    target_branch: str | None = None,
) -> bool:
    """Whether recording ``evaluation`` would change ``current_status`` (the wire ``status`` dict).

    Compares what :func:`merge_status_patch` writes for an unexecuted evaluation, ignoring the
    ``evaluatedAt`` and ``lastTransitionTime`` timestamps. A ``Merged`` evaluation is always a change:
    the merge itself is still to be done.
    """
    if evaluation.decision is MergeDecision.MERGED:
        return True
    decision, status, reason, message = _outcome(evaluation, target_branch or "", False, None)
    merge = current_status.get("merge") or {}
    if (
        merge.get("decision") != decision.value
        or list(merge.get("reasons") or []) != [r.value for r in evaluation.reasons]
        or merge.get("message") != message
        or merge.get("policy") != evaluation.policy
        or (target_branch is not None and merge.get("targetBranch") != target_branch)
    ):
        return True
    condition = find_condition(current_status.get("conditions") or [], ConditionType.MERGEABLE)
    if condition is None:
        return True
    shown = (condition.get("status"), condition.get("reason"), condition.get("message"))
    return shown != (status, reason, message)
