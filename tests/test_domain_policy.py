"""AutoMergePolicy matching, selection and the merge decision, as pure logic."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branch_operator.api.models import (
    AutoMergePolicySpec,
    BlockReason,
    BranchStatus,
    Conflict,
    IndexingStatus,
    LabelSelector,
    LabelSelectorRequirement,
    MergeDecision,
    Phase,
    ValidationStatus,
)
from branch_operator.domain.policy import (
    REASON_ORDER,
    MergeEvaluation,
    PolicyRef,
    evaluate_merge,
    glob_match,
    merge_changed,
    merge_status_patch,
    policy_matches,
    select_policy,
    selector_matches,
)
from branch_operator.domain.states import find_condition

NOW = datetime(2024, 1, 2, 10, 0, 0, tzinfo=UTC)
COMPLETED = NOW - timedelta(hours=1)


def policy(name: str = "default", generation: int | None = 1, **spec: Any) -> PolicyRef:
    return PolicyRef(name, generation, AutoMergePolicySpec(**spec))


def indexing(*, passed: bool | None = True, completed_at: datetime | None = COMPLETED) -> IndexingStatus:
    validation = None if passed is None else ValidationStatus(passed=passed, errors=[] if passed else ["bad"])
    return IndexingStatus(indexing_id="idx-1", completed_at=completed_at, validation=validation)


def evaluate(**overrides: Any) -> MergeEvaluation:
    """A READY branch that passes every check, except for what the test overrides."""
    args: dict[str, Any] = {
        "phase": Phase.READY,
        "auto_merge": True,
        "indexing": indexing(),
        "conflicts": [],
        "other_locks": [],
        "policy": policy(),
        "now": NOW,
    }
    args.update(overrides)
    return evaluate_merge(**args)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --------------------------------------------------------------------------- the original design's cases


def test_auto_merge_when_all_conditions_pass() -> None:
    evaluation = evaluate()

    assert evaluation.decision is MergeDecision.MERGED
    assert evaluation.should_merge
    assert evaluation.reasons == []
    assert all(c.passed for c in evaluation.checks)
    assert [c.name for c in evaluation.checks] == [
        "policy",
        "autoMerge",
        "validation",
        "conflicts",
        "expiry",
        "locks",
    ]
    assert evaluation.policy == "default"
    assert evaluation.policy_generation == 1
    assert "default" in evaluation.message


def test_merge_blocked_by_failed_validation() -> None:
    evaluation = evaluate(indexing=indexing(passed=False))

    assert evaluation.decision is MergeDecision.BLOCKED
    assert evaluation.reasons == [BlockReason.VALIDATION_FAILED]
    assert "validation failed" in evaluation.message
    failing = [c for c in evaluation.checks if not c.passed]
    assert [c.name for c in failing] == ["validation"]
    assert "bad" in failing[0].evidence


# ------------------------------------------------------------------------------------------ block reasons

LONG_AGO = NOW - timedelta(hours=25)

SINGLE_REASON_CASES: list[tuple[str, dict[str, Any], BlockReason]] = [
    ("no policy", {"policy": None}, BlockReason.NO_MATCHING_POLICY),
    ("policy disabled", {"policy": policy(enabled=False)}, BlockReason.AUTO_MERGE_DISABLED),
    ("branch opted out", {"auto_merge": False}, BlockReason.AUTO_MERGE_DISABLED),
    ("validation failed", {"indexing": indexing(passed=False)}, BlockReason.VALIDATION_FAILED),
    ("validation missing", {"indexing": indexing(passed=None)}, BlockReason.VALIDATION_FAILED),
    ("conflicts", {"conflicts": [Conflict(path="schema/user.json")]}, BlockReason.CONFLICTS_DETECTED),
    ("expired", {"indexing": indexing(completed_at=LONG_AGO)}, BlockReason.EXPIRED),
    ("completion unknown", {"indexing": indexing(completed_at=None)}, BlockReason.EXPIRED),
    ("lock held", {"other_locks": ["feature-x-write"]}, BlockReason.LOCK_HELD),
]


@pytest.mark.parametrize(
    ("overrides", "reason"), [c[1:] for c in SINGLE_REASON_CASES], ids=[c[0] for c in SINGLE_REASON_CASES]
)
def test_each_block_reason_alone(overrides: dict[str, Any], reason: BlockReason) -> None:
    evaluation = evaluate(**overrides)

    assert evaluation.decision is MergeDecision.BLOCKED
    assert evaluation.reasons == [reason]
    assert [c.reason for c in evaluation.checks if not c.passed] == [reason]
    assert evaluation.message.startswith("Auto-merge blocked: ")


def test_every_reason_at_once_in_stable_order() -> None:
    evaluation = evaluate(
        policy=None,
        auto_merge=False,
        indexing=indexing(passed=False, completed_at=LONG_AGO),
        conflicts=[Conflict(path="a"), Conflict(path="b")],
        other_locks=["w-lock", "m-lock"],
    )

    assert evaluation.reasons == list(REASON_ORDER)
    assert evaluation.decision is MergeDecision.BLOCKED
    for phrase in (
        "no AutoMergePolicy",
        "autoMerge to false",
        "validation failed",
        "2 merge conflict(s) (a, b)",
    ):
        assert phrase in evaluation.message
    assert "more than 24h ago" in evaluation.message
    assert "m-lock, w-lock" in evaluation.message
    assert evaluation.message.count(".") == 1  # one sentence


def test_without_a_policy_the_other_checks_use_the_crd_defaults() -> None:
    evaluation = evaluate(policy=None, indexing=indexing(passed=False))
    assert evaluation.reasons == [BlockReason.NO_MATCHING_POLICY, BlockReason.VALIDATION_FAILED]
    assert evaluation.policy is None


def test_policy_and_branch_both_disabling_is_one_reason_with_both_explained() -> None:
    evaluation = evaluate(policy=policy("strict", enabled=False), auto_merge=False)
    assert evaluation.reasons == [BlockReason.AUTO_MERGE_DISABLED]
    assert "policy strict disables auto-merge" in evaluation.message
    assert "autoMerge to false" in evaluation.message


@pytest.mark.parametrize(
    ("overrides", "spec"),
    [
        ({"indexing": indexing(passed=False)}, {"require_validation": False}),
        ({"indexing": indexing(passed=None)}, {"require_validation": False}),
        ({"conflicts": [Conflict(path="x")]}, {"block_on_conflicts": False}),
        ({"indexing": indexing(completed_at=NOW - timedelta(days=400))}, {"timeout_hours": None}),
        ({"indexing": indexing(completed_at=None)}, {"timeout_hours": None}),
    ],
)
def test_policy_can_waive_checks(overrides: dict[str, Any], spec: dict[str, Any]) -> None:
    evaluation = evaluate(policy=policy(**spec), **overrides)
    assert evaluation.decision is MergeDecision.MERGED
    assert evaluation.reasons == []


@pytest.mark.parametrize(
    ("age", "expired"),
    [
        (timedelta(hours=24), False),  # exactly at the limit is still within it
        (timedelta(hours=24, microseconds=1), True),
        (timedelta(hours=23, minutes=59, seconds=59), False),
        (timedelta(hours=-1), False),  # completion stamped slightly in the future (clock skew)
    ],
)
def test_timeout_boundary(age: timedelta, expired: bool) -> None:
    evaluation = evaluate(indexing=indexing(completed_at=NOW - age), policy=policy(timeout_hours=24))
    assert (BlockReason.EXPIRED in evaluation.reasons) is expired


def test_fractional_timeout() -> None:
    evaluation = evaluate(indexing=indexing(completed_at=NOW - timedelta(minutes=31)), policy=policy(timeout_hours=0.5))
    assert evaluation.reasons == [BlockReason.EXPIRED]
    expiry = next(c for c in evaluation.checks if c.name == "expiry")
    assert "0.52h ago" in expiry.evidence and "limit 0.5h" in expiry.evidence


def test_dry_run_records_would_merge() -> None:
    evaluation = evaluate(policy=policy("canary", dry_run=True))

    assert evaluation.decision is MergeDecision.WOULD_MERGE
    assert not evaluation.should_merge
    assert evaluation.reasons == []
    assert evaluation.dry_run
    assert "dry-run" in evaluation.message


def test_dry_run_still_blocks() -> None:
    evaluation = evaluate(policy=policy(dry_run=True), other_locks=["x"])
    assert evaluation.decision is MergeDecision.BLOCKED


@pytest.mark.parametrize("phase", [Phase.ACTIVE, Phase.LOCKED_FOR_WRITE, Phase.ERROR, None])
def test_only_ready_branches_are_evaluated(phase: Phase | None) -> None:
    with pytest.raises(ValueError, match="READY"):
        evaluate(phase=phase)


def test_evidence_names_the_policy_and_the_locks() -> None:
    evaluation = evaluate(policy=policy("p1", generation=7, priority=5), other_locks=["b", "a"])
    evidence = {c.name: c.evidence for c in evaluation.checks}
    assert evidence["policy"] == "governed by policy p1 (priority 5, generation 7)"
    assert evidence["locks"] == "held: a, b"
    assert "1.00h ago" in evidence["expiry"]


def test_long_lists_are_abbreviated() -> None:
    evaluation = evaluate(other_locks=[f"lock-{i}" for i in range(12)])
    assert "and 7 more" in evaluation.message


# ------------------------------------------------------------------------------------------------- matching

LABELS = {"team": "search", "tier": "gold"}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (None, {}, True),
        (LabelSelector(), {}, True),
        (LabelSelector(match_labels={"team": "search"}), LABELS, True),
        (LabelSelector(match_labels={"team": "search", "tier": "silver"}), LABELS, False),
        (LabelSelector(match_labels={"team": "search"}), {}, False),
    ]
    + [
        (
            LabelSelector(match_expressions=[LabelSelectorRequirement(key=k, operator=op, values=v)]),
            LABELS,
            exp,
        )
        for k, op, v, exp in [
            ("team", "In", ["search", "ads"], True),
            ("team", "In", ["ads"], False),
            ("missing", "In", ["x"], False),
            ("team", "In", [], False),
            ("team", "NotIn", ["ads"], True),
            ("team", "NotIn", ["search"], False),
            ("missing", "NotIn", ["x"], True),  # absent key satisfies NotIn, as in Kubernetes
            ("team", "Exists", [], True),
            ("missing", "Exists", [], False),
            ("team", "DoesNotExist", [], False),
            ("missing", "DoesNotExist", [], True),
        ]
    ]
    + [
        (
            LabelSelector(
                match_labels={"tier": "gold"},
                match_expressions=[
                    LabelSelectorRequirement(key="team", operator="In", values=["search"]),
                    LabelSelectorRequirement(key="frozen", operator="DoesNotExist"),
                ],
            ),
            LABELS,
            True,
        ),
        (
            LabelSelector(
                match_labels={"tier": "gold"},
                match_expressions=[LabelSelectorRequirement(key="frozen", operator="DoesNotExist")],
            ),
            {**LABELS, "frozen": "true"},
            False,
        ),
    ],
)
def test_selector_semantics(selector: LabelSelector | None, labels: Mapping[str, str], expected: bool) -> None:
    assert selector_matches(selector, labels) is expected


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("feature/user-schema", "feature/user-schema", True),
        ("feature/user-schema", "feature/user-schem", False),
        ("feature/*", "feature/user-schema", True),
        ("feature/*", "feature/team/user-schema", False),  # * stays within a segment
        ("feature/*", "feature/", True),
        ("feature/*", "feature", False),
        ("feature/**", "feature/team/user-schema", True),
        ("feature/**", "feature/x", True),
        ("**", "any/depth/at/all", True),
        ("**/hotfix", "hotfix", True),  # **/ also matches zero segments
        ("**/hotfix", "team/a/hotfix", True),
        ("**/hotfix", "team/a/hotfix2", False),
        ("feature/**/schema", "feature/schema", True),
        ("feature/**/schema", "feature/a/b/schema", True),
        ("feature/**/schema", "feature/aschema", False),
        ("release-*", "release-1.2", True),
        ("release-?", "release-1", True),
        ("release-?", "release-12", False),
        ("a?b", "a/b", False),  # ? never matches the separator
        ("v[0-9].x", "v3.x", True),
        ("v[0-9].x", "va.x", False),
        ("v[!0-9].x", "va.x", True),
        ("v[!0-9].x", "v3.x", False),
        ("a[!x]b", "a/b", False),  # nor does a negated set
        ("a[b", "a[b", True),  # an unterminated set is literal
        ("a[]]b", "a]b", True),  # "]" first in a set is a member
        ("v[z-a]", "v[z-a]", True),  # an invalid set is literal rather than an error
        ("v[z-a]", "vb", False),
        ("a[!]]b", "axb", True),
        ("feature/***", "feature/a/b", True),
        ("a.b", "axb", False),  # regex metacharacters are literal
        ("a+b", "a+b", True),
        ("Feature/*", "feature/x", False),  # case-sensitive
        ("*", "main", True),
        ("*", "feature/x", False),
    ],
)
def test_glob_semantics(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected


@pytest.mark.parametrize(
    ("spec", "branch", "target", "labels", "expected"),
    [
        ({}, "anything/at/all", "develop", {}, True),  # neither selector nor patterns: whole namespace
        ({"branch_name_patterns": ["feature/*", "fix/*"]}, "fix/x", "main", {}, True),
        ({"branch_name_patterns": ["feature/*", "fix/*"]}, "chore/x", "main", {}, False),
        ({"target_branches": ["main"]}, "feature/x", "main", {}, True),
        ({"target_branches": ["main"]}, "feature/x", "develop", {}, False),
        ({"target_branches": ["release/*"]}, "feature/x", "release/2.0", {}, True),
        (
            {"branch_selector": {"matchLabels": {"team": "search"}}, "branch_name_patterns": ["feature/*"]},
            "feature/x",
            "main",
            LABELS,
            True,
        ),
        (  # all filters must hold
            {"branch_selector": {"matchLabels": {"team": "ads"}}, "branch_name_patterns": ["feature/*"]},
            "feature/x",
            "main",
            LABELS,
            False,
        ),
    ],
)
def test_policy_matches(
    spec: dict[str, Any], branch: str, target: str, labels: Mapping[str, str], expected: bool
) -> None:
    matched = policy_matches(
        AutoMergePolicySpec.model_validate(spec), branch_name=branch, target_branch=target, labels=labels
    )
    assert matched is expected


# ----------------------------------------------------------------------------------------------- selection


def select(*policies: PolicyRef, branch: str = "feature/x") -> Any:
    return select_policy(list(policies), branch_name=branch, target_branch="main", labels={})


def test_highest_priority_wins() -> None:
    selection = select(policy("low", priority=1), policy("high", priority=10), policy("mid", priority=5))
    assert selection.policy is not None and selection.policy.name == "high"
    assert selection.matched == ["high", "mid", "low"]
    assert selection.tied == [] and not selection.ambiguous


def test_ties_go_to_the_first_name_and_are_reported() -> None:
    policies = [
        policy("zeta", priority=3),
        policy("alpha", priority=3),
        policy("beta", priority=3),
        policy("x"),
    ]
    for ordering in (policies, list(reversed(policies)), policies[1:] + policies[:1]):
        selection = select(*ordering)
        assert selection.policy is not None and selection.policy.name == "alpha"
        assert selection.tied == ["alpha", "beta", "zeta"]
        assert selection.ambiguous


def test_non_matching_policies_are_ignored() -> None:
    selection = select(policy("other", priority=100, branch_name_patterns=["hotfix/*"]), policy("general"))
    assert selection.policy is not None and selection.policy.name == "general"
    assert selection.matched == ["general"]


def test_no_policy_matches() -> None:
    selection = select(policy("other", branch_name_patterns=["hotfix/*"]))
    assert selection.policy is None
    assert selection.matched == [] and selection.tied == []


def test_a_disabled_policy_is_selected_and_blocks() -> None:
    selection = select(policy("freeze", priority=100, enabled=False), policy("general"))
    assert selection.policy is not None and selection.policy.name == "freeze"
    assert evaluate(policy=selection.policy).reasons == [BlockReason.AUTO_MERGE_DISABLED]


# -------------------------------------------------------------------------------------------- status patch


def apply(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = merge_patch(status, patch)
    BranchStatus.model_validate(result)  # the patch must fit the CRD
    return result


def test_blocked_patch() -> None:
    evaluation = evaluate(other_locks=["w"], conflicts=[Conflict(path="p")])

    patch = merge_status_patch(evaluation, now=NOW, target_branch="main", merged=False)

    assert patch["merge"] == {
        "decision": "Blocked",
        "reasons": ["ConflictsDetected", "LockHeld"],
        "message": evaluation.message,
        "policy": "default",
        "mergedAt": None,
        "targetBranch": "main",
        "evaluatedAt": "2024-01-02T10:00:00Z",
    }
    assert "phase" not in patch
    mergeable = find_condition(patch["conditions"], "Mergeable")
    assert mergeable is not None
    assert (mergeable["status"], mergeable["reason"], mergeable["message"]) == (
        "False",
        "ConflictsDetected",
        evaluation.message,
    )
    apply({"phase": "READY"}, patch)


def test_would_merge_patch() -> None:
    patch = merge_status_patch(evaluate(policy=policy(dry_run=True)), now=NOW, target_branch="main", merged=False)
    mergeable = find_condition(patch["conditions"], "Mergeable")
    assert patch["merge"]["decision"] == "WouldMerge"
    assert mergeable is not None and (mergeable["status"], mergeable["reason"]) == ("True", "DryRun")


def test_merged_patch_moves_the_branch_to_active() -> None:
    existing = [{"type": "Indexed", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z", "reason": "X"}]

    patch = merge_status_patch(evaluate(), now=NOW, target_branch="main", merged=True, conditions=existing)

    assert patch["phase"] == "ACTIVE"
    assert patch["phaseTransitionTime"] == "2024-01-02T10:00:00Z"
    assert patch["merge"]["decision"] == "Merged"
    assert patch["merge"]["mergedAt"] == "2024-01-02T10:00:00Z"
    assert [c["type"] for c in patch["conditions"]] == ["Indexed", "Mergeable"]
    mergeable = find_condition(patch["conditions"], "Mergeable")
    assert mergeable is not None and (mergeable["status"], mergeable["reason"]) == ("False", "Merged")
    after = apply({"phase": "READY", "conditions": existing}, patch)
    assert after["phase"] == "ACTIVE"


def test_recording_a_merge_requires_a_merged_evaluation() -> None:
    with pytest.raises(ValueError):
        merge_status_patch(evaluate(other_locks=["x"]), now=NOW, target_branch="main", merged=True)


def test_merge_not_carried_out() -> None:
    failed = merge_status_patch(evaluate(), now=NOW, target_branch="main", merged=False, merge_error="409 conflict")
    assert failed["merge"]["decision"] == "Failed"
    assert "409 conflict" in failed["merge"]["message"]
    assert "phase" not in failed

    pending = merge_status_patch(evaluate(), now=NOW, target_branch="main", merged=False)
    assert pending["merge"]["decision"] == "Deferred"
    mergeable = find_condition(pending["conditions"], "Mergeable")
    assert mergeable is not None and (mergeable["status"], mergeable["reason"]) == ("True", "MergePending")


def test_merge_changed_ignores_time_and_sees_real_changes() -> None:
    first = evaluate(other_locks=["w"])
    status = apply({"phase": "READY"}, merge_status_patch(first, now=NOW, target_branch="main", merged=False))

    # Re-evaluating an hour later: the age moved, the outcome did not; nothing to write.
    later = evaluate(other_locks=["w"], now=NOW + timedelta(hours=1))
    assert later.checks != first.checks  # the evidence reflects the new age
    assert not merge_changed(status, later)
    assert not merge_changed(status, later, target_branch="main")
    assert merge_changed(status, later, target_branch="develop")

    assert merge_changed(status, evaluate(other_locks=["w", "v"]))
    assert merge_changed(status, evaluate(other_locks=["w"], policy=policy("other")))
    assert merge_changed(status, evaluate(policy=policy(dry_run=True)))
    assert merge_changed({"phase": "READY"}, first)

    without_condition = {k: v for k, v in status.items() if k != "conditions"}
    assert merge_changed(without_condition, later)


def test_a_merged_evaluation_always_needs_action() -> None:
    assert merge_changed({}, evaluate())


# --------------------------------------------------------------------------------------------- properties

_specs = st.builds(
    AutoMergePolicySpec,
    enabled=st.booleans(),
    require_validation=st.booleans(),
    block_on_conflicts=st.booleans(),
    timeout_hours=st.none() | st.floats(min_value=0.01, max_value=1000),
    priority=st.integers(-1000, 1000),
    dry_run=st.booleans(),
)
_policies = st.none() | st.builds(PolicyRef, st.sampled_from(["a", "b", "c"]), st.none() | st.integers(1, 100), _specs)
_validation = st.none() | st.builds(
    ValidationStatus, passed=st.booleans(), errors=st.lists(st.text(max_size=20), max_size=3)
)
_indexing = st.none() | st.builds(
    IndexingStatus,
    indexing_id=st.just("idx"),
    completed_at=st.none()
    | st.datetimes(min_value=datetime(2023, 1, 1), max_value=datetime(2024, 1, 3), timezones=st.just(UTC)),
    validation=_validation,
)
_conflicts = st.lists(st.builds(Conflict, path=st.text(min_size=1, max_size=20)), max_size=4)
_locks = st.lists(st.text(min_size=1, max_size=20), max_size=4)


def _inputs() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "phase": st.just(Phase.READY),
            "auto_merge": st.booleans(),
            "indexing": _indexing,
            "conflicts": _conflicts,
            "other_locks": _locks,
            "policy": _policies,
            "now": st.just(NOW),
        }
    )


@settings(max_examples=300, deadline=None)
@given(inputs=_inputs(), spec=_specs)
def test_failed_validation_with_require_validation_never_merges(
    inputs: dict[str, Any], spec: AutoMergePolicySpec
) -> None:
    inputs["policy"] = PolicyRef("p", 1, spec.model_copy(update={"require_validation": True}))
    base = inputs["indexing"] or IndexingStatus()
    inputs["indexing"] = base.model_copy(update={"validation": ValidationStatus(passed=False)})

    evaluation = evaluate_merge(**inputs)

    assert evaluation.decision not in (MergeDecision.MERGED, MergeDecision.WOULD_MERGE)
    assert BlockReason.VALIDATION_FAILED in evaluation.reasons


@settings(max_examples=300, deadline=None)
@given(inputs=_inputs())
def test_evaluation_is_deterministic(inputs: dict[str, Any]) -> None:
    first = evaluate_merge(**inputs)
    assert evaluate_merge(**inputs) == first

    shuffled = dict(
        inputs,
        other_locks=list(reversed(inputs["other_locks"])),
        conflicts=list(reversed(inputs["conflicts"])),
    )
    again = evaluate_merge(**shuffled)
    assert (again.decision, again.reasons, again.message) == (first.decision, first.reasons, first.message)


@settings(max_examples=300, deadline=None)
@given(inputs=_inputs())
def test_reasons_are_empty_iff_the_branch_may_merge(inputs: dict[str, Any]) -> None:
    evaluation = evaluate_merge(**inputs)

    assert (evaluation.reasons == []) == (evaluation.decision in (MergeDecision.MERGED, MergeDecision.WOULD_MERGE))
    assert evaluation.reasons == [r for r in REASON_ORDER if r in evaluation.reasons]  # ordered, no repeats
    assert evaluation.reasons == [c.reason for c in evaluation.checks if not c.passed]
    assert (inputs["policy"] is None) == (BlockReason.NO_MATCHING_POLICY in evaluation.reasons)


@settings(max_examples=200, deadline=None)
@given(inputs=_inputs())
def test_recorded_evaluation_is_unchanged_and_fits_the_crd(inputs: dict[str, Any]) -> None:
    evaluation = evaluate_merge(**inputs)
    patch = merge_status_patch(evaluation, now=NOW, target_branch="main", merged=False)
    status = apply({"phase": "READY"}, patch)
    assert merge_changed(status, evaluation) is (evaluation.decision is MergeDecision.MERGED)


@given(name=st.text(alphabet="ab/-.", max_size=12))
def test_star_never_crosses_a_segment(name: str) -> None:
    assert glob_match("*", name) is ("/" not in name)
    assert glob_match("**", name)
    assert glob_match(name, name)  # a name without metacharacters matches itself, exactly
    assert not glob_match(name, name + "x")
