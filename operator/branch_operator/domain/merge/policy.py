"""AutoMergePolicy: which policy governs a Branch, and whether a READY Branch may be merged now.

Pure logic, no I/O. The I/O layer lists the policies of the Branch's namespace, drops the ones
:func:`review_policies` rejects, calls :func:`select_policy`, then :func:`evaluate_merge`, and records
the result with :mod:`branch_operator.domain.merge.trace` only when it differs from what status shows.

Matching (:func:`policy_matches`) is the AND of three filters, each of which is "any" when empty:

* ``branchSelector`` on the Branch's labels, with Kubernetes LabelSelector semantics: every
  ``matchLabels`` pair must be present; ``In`` needs the key with one of the values, ``NotIn`` matches
  when the key is absent or its value is not listed, ``Exists``/``DoesNotExist`` test the key only.
  An absent or empty selector constrains nothing.
* ``branchNamePatterns`` on ``spec.branchName``: the branch matches if any glob does (:func:`glob_match`).
* ``targetBranches`` on ``spec.targetBranch``: same globs; a plain name matches only itself.

So a policy with neither selector nor patterns governs every Branch of its namespace. A matching policy
with ``enabled: false`` is still selected: a high-priority disabled policy is how auto-merge is switched
off for part of a namespace. The highest ``priority`` wins; a tie goes to the first name in byte
order and is reported in the ``policy`` check's evidence.

Glob syntax, path-aware because OMS branch names are ``/``-separated (``feature/user-schema``):

* ``*`` any run of characters within one segment (never ``/``); ``?`` one such character;
* ``[abc]``, ``[a-z]``, ``[!abc]`` one character of (not of) a set, never ``/``;
* ``**`` any run of characters across segments; as a whole segment, ``**/`` also matches zero
  segments, so ``**/hotfix`` matches ``hotfix`` and ``team/a/hotfix``;
* matching is case-sensitive and anchored at both ends; a pattern with an invalid set (``[z-a]``)
  is matched literally rather than failing the evaluation.

A policy is *accepted* (:func:`review_policies`) unless its spec is invalid beyond what the CRD schema
can say (a cron expression, time zone or duration that does not parse) or it *conflicts*: it has the
same priority and exactly the same selector, patterns and target branches as another accepted policy
with an earlier name, so it could never govern anything and its author's intent is ambiguous.
A rejected policy is ignored as a whole, never half-applied.

Every check of :func:`evaluate_merge` is always evaluated and reported, so a blocked Branch shows every
obstacle at once rather than one per fix. Check evidence and messages contain only times that stay the
same from one evaluation to the next (when indexing completed, when a window opens), never an age: the
trace is written to status, and text that changed on every evaluation would make every re-evaluation
write.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from branch_operator.api.models import (
    AutoMergePolicySpec,
    BlockReason,
    Conflict,
    IndexingStatus,
    LabelSelector,
    LabelSelectorRequirement,
    LockType,
    MergeDecision,
    Phase,
)
from branch_operator.domain.conditions import truncate
from branch_operator.domain.lifecycle import rfc3339, to_utc
from branch_operator.domain.windows import Window, WindowVerdict, compile_window, evaluate_windows

__all__ = [
    "REASON_ORDER",
    "TIME_REASONS",
    "Check",
    "ManualRequest",
    "MergeEvaluation",
    "PolicyRef",
    "PolicyReview",
    "Selection",
    "blocking_locks",
    "evaluate_merge",
    "glob_match",
    "policy_matches",
    "policy_problems",
    "policy_windows",
    "review_policies",
    "select_policy",
    "selector_matches",
    "target_branch_object",
]

# The order checks and reasons are reported in: from "nothing to evaluate against" to the most transient.
REASON_ORDER: tuple[BlockReason, ...] = (
    BlockReason.NO_MATCHING_POLICY,
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

# Names quoted in a message before "and N more"; status.merge.message is capped at 4096 characters.
_QUOTED_NAMES = 5
_MAX_MESSAGE = 4096
_MAX_EVIDENCE = 1024
# An expiry is re-evaluated just after the limit: exactly at the limit the branch is still in time.
_PAST_LIMIT = timedelta(seconds=1)


class PolicyRef(NamedTuple):
    name: str
    generation: int | None
    spec: AutoMergePolicySpec


@dataclass(frozen=True, slots=True)
class ManualRequest:
    """A break-glass ``oms.dev/merge-request`` annotation: why, and who asked."""

    reason: str
    requested_by: str | None = None


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


# -------------------------------------------------------------------------------------------- review


def policy_windows(spec: AutoMergePolicySpec) -> list[Window]:
    """The spec's merge windows, compiled; ``ValueError`` for the first one that does not parse."""
    windows = []
    for i, w in enumerate(spec.merge_windows):
        try:
            windows.append(compile_window(w.kind, w.schedule, w.duration, w.time_zone))
        except ValueError as exc:
            raise ValueError(f"mergeWindows[{i}]: {exc}") from exc
    return windows


def policy_problems(spec: AutoMergePolicySpec) -> list[str]:
    """What is wrong with a schema-valid spec; empty when it can be applied."""
    problems = []
    for i, w in enumerate(spec.merge_windows):
        try:
            compile_window(w.kind, w.schedule, w.duration, w.time_zone)
        except ValueError as exc:
            problems.append(f"mergeWindows[{i}]: {exc}")
    if spec.freeze is not None and spec.freeze.until is not None and spec.freeze.until.tzinfo is None:
        problems.append("freeze.until: needs a time zone (e.g. 2025-07-01T00:00:00Z)")
    return problems


def _criteria(spec: AutoMergePolicySpec) -> tuple[Any, ...]:
    selector = spec.branch_selector
    selector_key = (
        None
        if selector is None or (not selector.match_labels and not selector.match_expressions)
        else (
            tuple(sorted(selector.match_labels.items())),
            tuple(sorted((r.key, r.operator, tuple(sorted(r.values))) for r in selector.match_expressions)),
        )
    )
    return spec.priority, selector_key, frozenset(spec.branch_name_patterns), frozenset(spec.target_branches)


@dataclass(frozen=True, slots=True)
class PolicyReview:
    accepted: list[PolicyRef]  # by name
    rejected: dict[str, tuple[str, str]]  # name -> (condition reason, message)


def review_policies(policies: Sequence[PolicyRef]) -> PolicyReview:
    """Split policies into the ones in force and the ones ignored as a whole (invalid or conflicting)."""
    accepted: list[PolicyRef] = []
    rejected: dict[str, tuple[str, str]] = {}
    owner: dict[tuple[Any, ...], str] = {}
    for policy in sorted(policies, key=lambda p: p.name):
        problems = policy_problems(policy.spec)
        if problems:
            rejected[policy.name] = ("InvalidSpec", truncate("; ".join(problems), _MAX_MESSAGE))
            continue
        criteria = _criteria(policy.spec)
        first = owner.setdefault(criteria, policy.name)
        if first != policy.name:
            rejected[policy.name] = (
                "ConflictingPolicy",
                f"same priority ({policy.spec.priority}) and the same selector, branch name patterns and "
                f"target branches as policy {first}, which wins by name order; this policy could never apply",
            )
            continue
        accepted.append(policy)
    return PolicyReview(accepted=accepted, rejected=rejected)


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


# ------------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    evidence: str
    reason: BlockReason  # what a failure of this check is reported as


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


@dataclass(frozen=True, slots=True)
class _Facts:
    """Everything the checks read, gathered once."""

    policy: PolicyRef | None
    spec: AutoMergePolicySpec
    tied: Sequence[str]
    auto_merge: bool
    indexing: IndexingStatus | None
    conflicts: Sequence[Conflict]
    other_locks: Sequence[str]
    target_branch: str
    target_object: str | None
    target_locks: Sequence[str]
    manual: ManualRequest | None
    now: datetime
    windows: WindowVerdict | None


def evaluate_merge(
    *,
    phase: Phase | None,
    auto_merge: bool,
    indexing: IndexingStatus | None,
    conflicts: Sequence[Conflict],
    other_locks: Sequence[str],
    policy: PolicyRef | None,
    now: datetime,
    target_branch: str = "main",
    target_object: str | None = None,
    target_locks: Sequence[str] = (),
    manual: ManualRequest | None = None,
    tied: Sequence[str] = (),
) -> MergeEvaluation:
    """Decide whether a READY Branch may be merged now, reporting every check.

    ``other_locks`` are the branch's blocking locks (:func:`blocking_locks`), ``target_object`` the
    Kubernetes name of the target's Branch (None: there is none) and ``target_locks`` its locks.
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
    facts = _Facts(
        policy=policy, spec=spec, tied=tied, auto_merge=auto_merge, indexing=indexing, conflicts=conflicts,
        other_locks=other_locks, target_branch=target_branch, target_object=target_object,
        target_locks=target_locks, manual=manual, now=to_utc(now),
        windows=evaluate_windows(windows, to_utc(now)) if windows else None,
    )
    checks = [
        _check_policy(facts),
        _check_freeze(facts),
        _check_enabled(facts),
        _check_validation(facts),
        _check_records(facts),
        _check_conflicts(facts),
        _check_expiry(facts),
        _check_locks(facts),
        _check_target_locks(facts),
        _check_window(facts),
    ]
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


def _policy_label(policy: PolicyRef) -> str:
    generation = f", generation {policy.generation}" if policy.generation is not None else ""
    return f"policy {policy.name} (priority {policy.spec.priority}{generation})"


def _bypassed(f: _Facts, evidence: str) -> str:
    who = f" from {f.manual.requested_by}" if f.manual is not None and f.manual.requested_by else ""
    return f"{evidence}; bypassed by merge request{who}"


def _check_policy(f: _Facts) -> Check:
    reason = BlockReason.NO_MATCHING_POLICY
    if f.policy is None:
        return Check("policy", False, "no AutoMergePolicy matches this branch", reason)
    evidence = f"governed by {_policy_label(f.policy)}"
    others = [n for n in f.tied if n != f.policy.name]
    if others:
        evidence += f"; tied at priority {f.policy.spec.priority} with {_names(others)}, chosen by name order"
    return Check("policy", True, evidence, reason)


def _freeze_active(f: _Facts) -> bool:
    freeze = f.spec.freeze
    return freeze is not None and (freeze.until is None or f.now < to_utc(freeze.until))


def _check_freeze(f: _Facts) -> Check:
    reason = BlockReason.FROZEN
    freeze = f.spec.freeze
    if freeze is None:
        return Check("freeze", True, "no freeze", reason)
    if not _freeze_active(f):
        return Check("freeze", True, f"freeze ended at {rfc3339(freeze.until)}" if freeze.until else "", reason)
    until = f" until {rfc3339(freeze.until)}" if freeze.until is not None else " until lifted"
    return Check("freeze", False, _clip(f"frozen{until}: {freeze.reason}"), reason)


def _check_enabled(f: _Facts) -> Check:
    parts = []
    if f.policy is not None:
        parts.append(f"policy {f.policy.name} {'enables' if f.spec.enabled else 'disables'} auto-merge")
    parts.append(f"branch spec.autoMerge is {str(f.auto_merge).lower()}")
    evidence = "; ".join(parts)
    passed = f.auto_merge and (f.policy is None or f.spec.enabled)
    if not passed and f.manual is not None:
        return Check("autoMerge", True, _bypassed(f, evidence), BlockReason.AUTO_MERGE_DISABLED)
    return Check("autoMerge", passed, evidence, BlockReason.AUTO_MERGE_DISABLED)


def _check_validation(f: _Facts) -> Check:
    reason = BlockReason.VALIDATION_FAILED
    validation = f.indexing.validation if f.indexing is not None else None
    if validation is None:
        evidence = "no validation results recorded"
    elif validation.passed:
        evidence = "validation passed"
    else:
        evidence = f"validation failed with {len(validation.errors)} error(s)"
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


def _check_records(f: _Facts) -> Check:
    reason = BlockReason.INSUFFICIENT_RECORDS
    minimum = f.spec.min_records_indexed
    records = f.indexing.records_indexed if f.indexing is not None else None
    if minimum is None:
        return Check("minRecords", True, "no minimum configured", reason)
    if records is None:
        return Check("minRecords", False, f"no record count recorded (minimum {minimum})", reason)
    return Check("minRecords", records >= minimum, f"{records} records indexed (minimum {minimum})", reason)


def _check_conflicts(f: _Facts) -> Check:
    evidence = f"{len(f.conflicts)} conflict(s)"
    if f.conflicts:
        evidence += ": " + _names([c.path for c in f.conflicts])
    if not f.spec.block_on_conflicts:
        return Check("conflicts", True, _clip(f"not blocking by policy; {evidence}"), BlockReason.CONFLICTS_DETECTED)
    return Check("conflicts", not f.conflicts, _clip(evidence), BlockReason.CONFLICTS_DETECTED)


def _expires_at(f: _Facts) -> datetime | None:
    completed = f.indexing.completed_at if f.indexing is not None else None
    if f.spec.timeout_hours is None or completed is None:
        return None
    return to_utc(completed) + timedelta(hours=f.spec.timeout_hours)


def _check_expiry(f: _Facts) -> Check:
    reason = BlockReason.EXPIRED
    completed = f.indexing.completed_at if f.indexing is not None else None
    if f.spec.timeout_hours is None:
        return Check("expiry", True, "no timeout configured", reason)
    limit = f"timeoutHours {f.spec.timeout_hours:g}"
    expires = _expires_at(f)
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


def _check_locks(f: _Facts) -> Check:
    reason = BlockReason.LOCK_HELD
    held = f"held: {_names(f.other_locks)}" if f.other_locks else "no other locks held"
    if not f.spec.block_on_locks:
        return Check("locks", True, _clip(f"not checked by policy; {held}"), reason)
    return Check("locks", not f.other_locks, _clip(held), reason)


def _check_target_locks(f: _Facts) -> Check:
    reason = BlockReason.TARGET_LOCK_HELD
    if f.target_object is None:
        held = f"target {f.target_branch} has no Branch in this namespace"
        locks: Sequence[str] = ()
    else:
        locks = f.target_locks
        what = f"target {f.target_branch} (Branch {f.target_object})"
        held = f"{what}: held: {_names(locks)}" if locks else f"{what}: no locks held"
    if not f.spec.block_on_target_locks:
        return Check("targetLocks", True, _clip(f"not checked by policy; {held}"), reason)
    return Check("targetLocks", not locks, _clip(held), reason)


def _check_window(f: _Facts) -> Check:
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


def _next_evaluation(f: _Facts) -> datetime | None:
    """The first time after ``now`` at which the clock alone can change some check's outcome."""
    candidates: list[datetime] = []
    freeze = f.spec.freeze
    if freeze is not None and freeze.until is not None and _freeze_active(f):
        candidates.append(to_utc(freeze.until))
    expires = _expires_at(f)
    if expires is not None and f.now <= expires:
        candidates.append(expires + _PAST_LIMIT)
    if f.windows is not None:
        change = f.windows.next_change if f.windows.open else f.windows.next_opening
        if change is not None:
            candidates.append(change)
    later = [c for c in candidates if c > f.now]
    return min(later) if later else None


def _names(names: Sequence[str]) -> str:
    # Sorted so the same set of names always yields the same text, whatever order the API listed them in.
    ordered = sorted(set(names))
    shown = ", ".join(ordered[:_QUOTED_NAMES])
    rest = len(ordered) - _QUOTED_NAMES
    return shown + (f" and {rest} more" if rest > 0 else "")


def _clip(text: str) -> str:
    return truncate(text, _MAX_EVIDENCE)


def _message(decision: MergeDecision, f: _Facts, checks: Sequence[Check]) -> str:
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


def _phrases(check: Check, f: _Facts) -> list[str]:
    reason = check.reason
    if reason is BlockReason.NO_MATCHING_POLICY:
        return ["no AutoMergePolicy matches the branch"]
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
        return [f"validation failed with {len(validation.errors)} error(s)"]
    if reason is BlockReason.INSUFFICIENT_RECORDS:
        records = f.indexing.records_indexed if f.indexing is not None else None
        shown = "an unknown number of" if records is None else f"only {records}"
        return [f"{shown} records indexed (minimum {f.spec.min_records_indexed})"]
    if reason is BlockReason.CONFLICTS_DETECTED:
        return [f"{len(f.conflicts)} merge conflict(s) ({_names([c.path for c in f.conflicts])})"]
    if reason is BlockReason.EXPIRED:
        completed = f.indexing.completed_at if f.indexing is not None else None
        if completed is None:
            return ["no indexing completion time is recorded"]
        return [f"indexing completed more than {f.spec.timeout_hours:g}h ago"]
    if reason is BlockReason.LOCK_HELD:
        return [f"lock(s) held: {_names(f.other_locks)}"]
    if reason is BlockReason.TARGET_LOCK_HELD:
        return [f"lock(s) held on target {f.target_branch}: {_names(f.target_locks)}"]
    # OUTSIDE_MERGE_WINDOW
    opening = f.windows.next_opening if f.windows is not None else None
    when = f"next opening {rfc3339(opening)}" if opening else "no opening found"
    if f.windows is not None and f.windows.denies:
        return [f"a deny merge window is active ({when})"]
    return [f"outside the merge windows ({when})"]
