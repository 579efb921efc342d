"""AutoMergePolicy matching, selection, review and the merge decision, as pure logic."""

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
    MergeFreeze,
    MergeWindow,
    Phase,
    ValidationStatus,
)
from branch_operator.domain.conditions import find_condition
from branch_operator.domain.merge import (
    REASON_ORDER,
    ManualRequest,
    MergeEvaluation,
    PolicyRef,
    blocking_locks,
    evaluate_merge,
    glob_match,
    policy_matches,
    review_policies,
    select_policy,
    selector_matches,
    target_branch_object,
)
from branch_operator.domain.merge.trace import (
    merge_changed,
    merge_key,
    merge_status_patch,
    policy_status_patch,
    policy_statuses,
)
from branch_operator.embedded.apiserver.patch import merge_patch  # what the API server applies

# A Monday, 10:00 UTC.
NOW = datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)
COMPLETED = NOW - timedelta(hours=1)
LONG_AGO = NOW - timedelta(hours=25)
REQUEST = ManualRequest("hotfix for incident 42", "alice")

CHECK_NAMES = [
    "policy", "target", "freeze", "autoMerge", "validation", "minRecords", "conflicts", "expiry", "locks",
    "targetLocks", "window",
]


def policy(name: str = "default", generation: int | None = 1, **spec: Any) -> PolicyRef:
    return PolicyRef(name, generation, AutoMergePolicySpec(**spec))


def window(kind: str, schedule: str, duration: str, tz: str = "UTC") -> MergeWindow:
    return MergeWindow(kind=kind, schedule=schedule, duration=duration, time_zone=tz)  # type: ignore[arg-type]


OPEN_NOW = window("allow", "0 9 * * *", "2h")  # 09:00-11:00 UTC daily: open at NOW
CLOSED_NOW = window("allow", "0 12 * * *", "1h")  # 12:00-13:00 UTC daily: opens two hours after NOW
DENY_NOW = window("deny", "30 9 * * *", "1h")  # 09:30-10:30 UTC daily: active at NOW


def indexing(
    *, passed: bool | None = True, completed_at: datetime | None = COMPLETED, records: int | None = 1250,
    event_id: str | None = "evt-1",
) -> IndexingStatus:
    validation = None if passed is None else ValidationStatus(passed=passed, errors=[] if passed else ["bad"])
    return IndexingStatus(indexing_id="idx-1", event_id=event_id, completed_at=completed_at, validation=validation,
                          records_indexed=records)


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
        "branch_name": "feature/x",
        "target_branch": "main",
        "target_object": "main",
        "target_locks": [],
    }
    args.update(overrides)
    return evaluate_merge(**args)




def check(evaluation: MergeEvaluation, name: str) -> Any:
    return next(c for c in evaluation.checks if c.name == name)


# --------------------------------------------------------------------------- the original design's cases


def test_auto_merge_when_all_conditions_pass() -> None:
    evaluation = evaluate()

    assert evaluation.decision is MergeDecision.MERGED
    assert evaluation.should_merge
    assert evaluation.reasons == []
    assert all(c.passed for c in evaluation.checks)
    assert [c.name for c in evaluation.checks] == CHECK_NAMES
    assert evaluation.policy == "default"
    assert evaluation.policy_generation == 1
    assert evaluation.event_id == "evt-1"
    assert evaluation.next_evaluation is None  # merging now: nothing to wait for
    assert "default" in evaluation.message


def test_merge_blocked_by_failed_validation() -> None:
    evaluation = evaluate(indexing=indexing(passed=False))

    assert evaluation.decision is MergeDecision.BLOCKED
    assert evaluation.reasons == [BlockReason.VALIDATION_FAILED]
    assert "validation failed" in evaluation.message
    failing = [c for c in evaluation.checks if not c.passed]
    assert [c.name for c in failing] == ["validation"]
    assert "bad" in failing[0].evidence and "evt-1" in failing[0].evidence


def test_validation_evidence_counts_errors_beyond_those_recorded() -> None:
    recorded = IndexingStatus(indexing_id="idx-1", event_id="evt-1", completed_at=COMPLETED, records_indexed=1250,
                              validation=ValidationStatus(passed=False, errors=["bad"] * 50, errors_total=102))
    evaluation = evaluate(indexing=recorded)

    assert "50 of 102 error(s)" in next(c for c in evaluation.checks if c.name == "validation").evidence
    assert "50 of 102 error(s)" in evaluation.message


# ------------------------------------------------------------------------------------- one check at a time

SINGLE_REASON_CASES: list[tuple[str, dict[str, Any], BlockReason]] = [
    ("no policy", {"policy": None}, BlockReason.NO_MATCHING_POLICY),
    ("frozen", {"policy": policy(freeze=MergeFreeze(reason="release 2.0"))}, BlockReason.FROZEN),
    ("frozen until later", {"policy": policy(freeze=MergeFreeze(reason="r", until=NOW + timedelta(minutes=1)))},
     BlockReason.FROZEN),
    ("policy disabled", {"policy": policy(enabled=False)}, BlockReason.AUTO_MERGE_DISABLED),
    ("branch opted out", {"auto_merge": False}, BlockReason.AUTO_MERGE_DISABLED),
    ("validation failed", {"indexing": indexing(passed=False)}, BlockReason.VALIDATION_FAILED),
    ("validation missing", {"indexing": indexing(passed=None)}, BlockReason.VALIDATION_FAILED),
    ("too few records", {"policy": policy(min_records_indexed=2000)}, BlockReason.INSUFFICIENT_RECORDS),
    ("record count unknown", {"policy": policy(min_records_indexed=1), "indexing": indexing(records=None)},
     BlockReason.INSUFFICIENT_RECORDS),
    ("conflicts", {"conflicts": [Conflict(path="schema/user.json")]}, BlockReason.CONFLICTS_DETECTED),
    ("expired", {"indexing": indexing(completed_at=LONG_AGO)}, BlockReason.EXPIRED),
    ("completion unknown", {"indexing": indexing(completed_at=None)}, BlockReason.EXPIRED),
    ("lock held", {"other_locks": ["feature-x-write"]}, BlockReason.LOCK_HELD),
    ("target lock held", {"target_locks": ["main-indexing-1"]}, BlockReason.TARGET_LOCK_HELD),
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


WAIVERS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("validation failed", {"indexing": indexing(passed=False)}, {"require_validation": False}),
    ("validation missing", {"indexing": indexing(passed=None)}, {"require_validation": False}),
    ("conflicts", {"conflicts": [Conflict(path="x")]}, {"block_on_conflicts": False}),
    ("very old", {"indexing": indexing(completed_at=NOW - timedelta(days=400))}, {"timeout_hours": None}),
    ("completion unknown", {"indexing": indexing(completed_at=None)}, {"timeout_hours": None}),
    ("lock", {"other_locks": ["w"]}, {"block_on_locks": False}),
    ("target lock", {"target_locks": ["t"]}, {"block_on_target_locks": False}),
    ("no record count", {"indexing": indexing(records=None)}, {"min_records_indexed": None}),
    ("records at the minimum", {}, {"min_records_indexed": 1250}),
    ("freeze ended", {}, {"freeze": MergeFreeze(reason="r", until=NOW)}),
    ("no windows", {}, {"merge_windows": []}),
]


@pytest.mark.parametrize(("overrides", "spec"), [w[1:] for w in WAIVERS], ids=[w[0] for w in WAIVERS])
def test_every_check_can_be_switched_off(overrides: dict[str, Any], spec: dict[str, Any]) -> None:
    evaluation = evaluate(policy=policy(**spec), **overrides)
    assert evaluation.decision is MergeDecision.MERGED
    assert evaluation.reasons == []


def test_switched_off_checks_still_show_their_evidence() -> None:
    evaluation = evaluate(policy=policy(block_on_locks=False, block_on_conflicts=False),
                          other_locks=["w"], conflicts=[Conflict(path="p")])
    assert check(evaluation, "locks").evidence == "not checked by policy; held: w"
    assert check(evaluation, "conflicts").evidence == "not blocking by policy; 1 conflict(s): p"


def test_every_reason_at_once_in_stable_order() -> None:
    evaluation = evaluate(
        policy=None,
        auto_merge=False,
        indexing=indexing(passed=False, completed_at=LONG_AGO, records=None),
        conflicts=[Conflict(path="a"), Conflict(path="b")],
        other_locks=["w-lock", "m-lock"],
        target_locks=["t-lock"],
        branch_name="main",
    )
    # Without a policy, freeze, minimum and windows are not configured: the other checks all fail.
    assert evaluation.reasons == [r for r in REASON_ORDER if r not in (
        BlockReason.FROZEN, BlockReason.INSUFFICIENT_RECORDS, BlockReason.OUTSIDE_MERGE_WINDOW)]
    everything = evaluate(
        policy=policy(enabled=False, freeze=MergeFreeze(reason="code freeze"), min_records_indexed=5,
                      merge_windows=[CLOSED_NOW]),
        auto_merge=False,
        indexing=indexing(passed=False, completed_at=LONG_AGO, records=None),
        conflicts=[Conflict(path="a"), Conflict(path="b")],
        other_locks=["w-lock", "m-lock"],
        target_locks=["t-lock"],
        branch_name="main",
    )
    assert everything.reasons == list(REASON_ORDER)[1:]
    assert everything.decision is MergeDecision.BLOCKED  # a closed window alongside real blocks is no deferral
    for phrase in ("frozen (code freeze)", "disables auto-merge", "autoMerge to false", "validation failed",
                   "unknown number of records", "2 merge conflict(s) (a, b)", "more than 24h ago",
                   "m-lock, w-lock", "held on target main: t-lock", "targets itself", "outside the merge windows"):
        assert phrase in everything.message, phrase
    assert everything.message.count(". ") == 0 and everything.message.endswith(".")  # one sentence


@pytest.mark.parametrize("manual", [None, REQUEST])
def test_a_branch_that_targets_itself_is_never_merged(manual: ManualRequest | None) -> None:
    evaluation = evaluate(branch_name="main", target_branch="main", manual=manual)
    assert (evaluation.decision, evaluation.reasons) == (MergeDecision.BLOCKED, [BlockReason.SELF_MERGE])
    assert check(evaluation, "target").evidence == (
        "spec.targetBranch main is spec.branchName: the branch targets itself")
    assert "the branch targets itself" in evaluation.message
    assert check(evaluate(), "target").evidence == "merges into main"


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
    assert check(evaluation, "expiry").evidence == (
        "expired at 2024-01-01T09:59:00Z: indexing completed 2024-01-01T09:29:00Z (timeoutHours 0.5)")


def test_expiry_is_re_evaluated_just_after_the_limit() -> None:
    evaluation = evaluate(other_locks=["w"])  # blocked for another reason, still in time
    assert check(evaluation, "expiry").evidence == (
        "indexing completed 2024-01-01T09:00:00Z; in time until 2024-01-02T09:00:00Z (timeoutHours 24)")
    assert evaluation.next_evaluation == COMPLETED + timedelta(hours=24, seconds=1)
    later = evaluate(other_locks=["w"], now=evaluation.next_evaluation)
    assert BlockReason.EXPIRED in later.reasons and later.next_evaluation is None


# ------------------------------------------------------------------------------------ dry run, freeze, evidence


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


def test_freeze_evidence_and_wake_up() -> None:
    until = NOW + timedelta(hours=3)
    frozen = evaluate(policy=policy(freeze=MergeFreeze(reason="quarter close", until=until)))
    assert check(frozen, "freeze").evidence == "frozen until 2024-01-01T13:00:00Z: quarter close"
    assert frozen.next_evaluation == until  # the freeze ending wakes the branch
    indefinite = evaluate(policy=policy(freeze=MergeFreeze(reason="incident")))
    assert check(indefinite, "freeze").evidence == "frozen until lifted: incident"
    thawed = evaluate(policy=policy(freeze=MergeFreeze(reason="quarter close", until=until)), now=until)
    assert thawed.decision is MergeDecision.MERGED
    assert check(thawed, "freeze").evidence == "freeze ended at 2024-01-01T13:00:00Z"


@pytest.mark.parametrize("phase", [Phase.ACTIVE, Phase.LOCKED_FOR_WRITE, Phase.ERROR, None])
def test_only_ready_branches_are_evaluated(phase: Phase | None) -> None:
    with pytest.raises(ValueError, match="READY"):
        evaluate(phase=phase)


def test_evidence_names_the_policy_event_locks_and_target() -> None:
    evaluation = evaluate(policy=policy("p1", generation=7, priority=5), other_locks=["b", "a"],
                          target_locks=["main-write-1"], target_object="main-branch")
    evidence = {c.name: c.evidence for c in evaluation.checks}
    assert evidence["policy"] == "governed by policy p1 (priority 5, generation 7)"
    assert evidence["locks"] == "held: a, b"
    assert evidence["targetLocks"] == "target main (Branch main-branch): held: main-write-1"
    assert evidence["validation"] == "validation passed (event evt-1)"
    assert evidence["minRecords"] == "no minimum configured"
    assert evidence["window"] == "no merge windows configured"
    assert evidence["freeze"] == "no freeze"


def test_target_without_a_branch_object_has_no_locks() -> None:
    evaluation = evaluate(target_object=None, target_locks=[])
    assert check(evaluation, "targetLocks").evidence == "target main has no Branch in this namespace"
    assert evaluation.should_merge


def test_ties_are_reported_in_the_evidence() -> None:
    evaluation = evaluate(policy=policy("alpha", priority=3), tied=["alpha", "zeta", "beta"])
    assert check(evaluation, "policy").evidence.endswith("tied at priority 3 with beta, zeta, chosen by name order")


def test_long_lists_are_abbreviated() -> None:
    evaluation = evaluate(other_locks=[f"lock-{i}" for i in range(12)])
    assert "and 7 more" in evaluation.message


# ------------------------------------------------------------------------------------------- merge windows


def test_outside_the_allow_windows_is_deferred_to_the_next_opening() -> None:
    evaluation = evaluate(policy=policy(merge_windows=[CLOSED_NOW]))

    assert evaluation.decision is MergeDecision.DEFERRED
    assert evaluation.reasons == [BlockReason.OUTSIDE_MERGE_WINDOW]
    assert evaluation.next_evaluation == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert check(evaluation, "window").evidence == "outside every allow window; next opening 2024-01-01T12:00:00Z"
    assert evaluation.message == (
        "Auto-merge deferred: outside the merge windows (next opening 2024-01-01T12:00:00Z).")
    opened = evaluate(policy=policy(merge_windows=[CLOSED_NOW]), now=evaluation.next_evaluation)
    assert opened.decision is MergeDecision.MERGED


def test_inside_an_allow_window_merges() -> None:
    evaluation = evaluate(policy=policy(merge_windows=[CLOSED_NOW, OPEN_NOW]))
    assert evaluation.should_merge
    assert check(evaluation, "window").evidence == (
        "inside allow '0 9 * * *' for 2h (UTC) from 2024-01-01T09:00:00Z until 2024-01-01T11:00:00Z")


def test_deny_beats_allow_and_defers_to_its_end() -> None:
    evaluation = evaluate(policy=policy(merge_windows=[OPEN_NOW, DENY_NOW]))
    assert evaluation.decision is MergeDecision.DEFERRED
    assert evaluation.next_evaluation == datetime(2024, 1, 1, 10, 30, tzinfo=UTC)
    assert "denied by deny '30 9 * * *' for 1h (UTC)" in check(evaluation, "window").evidence
    assert "a deny merge window is active" in evaluation.message


def test_only_deny_windows_leave_the_rest_of_the_time_open() -> None:
    quiet = window("deny", "0 22 * * *", "10h")  # nights
    assert evaluate(policy=policy(merge_windows=[quiet])).should_merge
    night = evaluate(policy=policy(merge_windows=[quiet]), now=NOW.replace(hour=23))
    assert night.decision is MergeDecision.DEFERRED
    assert night.next_evaluation == datetime(2024, 1, 2, 8, 0, tzinfo=UTC)


def test_a_blocked_branch_inside_a_window_wakes_when_it_closes() -> None:
    evaluation = evaluate(policy=policy(merge_windows=[OPEN_NOW]), other_locks=["w"])
    assert evaluation.decision is MergeDecision.BLOCKED
    assert evaluation.next_evaluation == datetime(2024, 1, 1, 11, 0, tzinfo=UTC)


def test_weekday_window_in_a_time_zone() -> None:
    # The example: weekdays from 09:00 for 9h in Asia/Seoul (UTC+9): 00:00-09:00 UTC, Mon-Fri.
    seoul = policy(merge_windows=[window("allow", "0 9 * * 1-5", "9h", "Asia/Seoul")], timeout_hours=72)
    saturday = datetime(2024, 1, 6, 3, 0, tzinfo=UTC)
    deferred = evaluate(policy=seoul, now=saturday, indexing=indexing(completed_at=saturday))
    assert deferred.next_evaluation == datetime(2024, 1, 8, 0, 0, tzinfo=UTC)  # Monday 09:00 KST
    assert evaluate(policy=seoul, now=datetime(2024, 1, 8, 8, 59, tzinfo=UTC),
                    indexing=indexing(completed_at=saturday + timedelta(days=2))).should_merge


def test_invalid_windows_raise_for_the_caller_to_reject_the_policy() -> None:
    with pytest.raises(ValueError, match="mergeWindows\\[0\\]"):
        evaluate(policy=policy(merge_windows=[window("allow", "61 * * * *", "1h")]))


# ----------------------------------------------------------------------------------------------- break-glass


def test_merge_request_bypasses_enabled_windows_and_expiry() -> None:
    evaluation = evaluate(
        policy=policy(enabled=False, merge_windows=[CLOSED_NOW]), auto_merge=False,
        indexing=indexing(completed_at=LONG_AGO), manual=REQUEST,
    )
    assert evaluation.decision is MergeDecision.MERGED
    assert evaluation.manual == REQUEST
    for name in ("autoMerge", "expiry", "window"):
        assert check(evaluation, name).evidence.endswith("bypassed by merge request from alice"), name
    assert "merge request of alice" in evaluation.message


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"indexing": indexing(passed=False)}, BlockReason.VALIDATION_FAILED),
        ({"policy": None}, BlockReason.NO_MATCHING_POLICY),
        ({"policy": policy(freeze=MergeFreeze(reason="r"))}, BlockReason.FROZEN),
        ({"conflicts": [Conflict(path="x")]}, BlockReason.CONFLICTS_DETECTED),
        ({"other_locks": ["w"]}, BlockReason.LOCK_HELD),
        ({"target_locks": ["t"]}, BlockReason.TARGET_LOCK_HELD),
        ({"policy": policy(min_records_indexed=10**6)}, BlockReason.INSUFFICIENT_RECORDS),
    ],
)
def test_merge_request_does_not_bypass_the_other_checks(overrides: dict[str, Any], reason: BlockReason) -> None:
    evaluation = evaluate(manual=REQUEST, **overrides)
    assert evaluation.decision is MergeDecision.BLOCKED
    assert evaluation.reasons == [reason]
    assert evaluation.message.startswith("Merge request blocked: ")


def test_policy_may_let_a_merge_request_through_failed_validation() -> None:
    lenient = policy(allow_manual_merge_with_failed_validation=True)
    assert evaluate(policy=lenient, indexing=indexing(passed=False)).reasons == [BlockReason.VALIDATION_FAILED]
    forced = evaluate(policy=lenient, indexing=indexing(passed=False), manual=REQUEST)
    assert forced.should_merge
    assert "accepted for a merge request" in check(forced, "validation").evidence


def test_merge_request_under_dry_run_only_would_merge() -> None:
    assert evaluate(policy=policy(dry_run=True, enabled=False), manual=REQUEST).decision is MergeDecision.WOULD_MERGE


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


# ------------------------------------------------------------------------------------------------- review


def test_review_rejects_invalid_windows_as_a_whole() -> None:
    bad = policy("bad", merge_windows=[OPEN_NOW, window("allow", "0 9 * * *", "2h", "Mars/Olympus")])
    good = policy("good")
    review = review_policies([bad, good])
    assert [p.name for p in review.accepted] == ["good"]
    reason, message = review.rejected["bad"]
    assert reason == "InvalidSpec" and "mergeWindows[1]" in message and "Mars/Olympus" in message


@pytest.mark.parametrize(
    ("field", "pattern", "says"),
    [
        ("branch_name_patterns", "[", "never closed"),
        ("branch_name_patterns", "[!", "never closed"),
        ("branch_name_patterns", "feature/[ab", "never closed"),
        ("target_branches", "release/[z-a]", "invalid set"),
    ],
)
def test_review_rejects_a_glob_that_can_match_nothing_meant(field: str, pattern: str, says: str) -> None:
    bad = policy("bad", **{field: ["feature/*", pattern]})
    review = review_policies([bad, policy("good", priority=1)])
    assert [p.name for p in review.accepted] == ["good"]
    reason, message = review.rejected["bad"]
    camel = "branchNamePatterns" if field == "branch_name_patterns" else "targetBranches"
    assert reason == "InvalidSpec" and f"{camel}[1]" in message and says in message and pattern in message


@pytest.mark.parametrize("pattern", ["feature/[ab]", "a[]]b", "a[!]]b", "v[!0-9].x", "**/hotfix", "[a-z]*"])
def test_review_accepts_well_formed_sets(pattern: str) -> None:
    assert [p.name for p in review_policies([policy("ok", branch_name_patterns=[pattern])]).accepted] == ["ok"]


def test_review_rejects_an_exact_duplicate_of_an_earlier_name() -> None:
    a = policy("a-first", priority=5, branch_name_patterns=["feature/*", "fix/*"], target_branches=["main"])
    b = policy("b-second", priority=5, branch_name_patterns=["fix/*", "feature/*"], target_branches=["main"],
               dry_run=True)
    c = policy("c-other-priority", priority=6, branch_name_patterns=["feature/*", "fix/*"], target_branches=["main"])
    for ordering in ([a, b, c], [c, b, a]):
        review = review_policies(ordering)
        assert [p.name for p in review.accepted] == ["a-first", "c-other-priority"]
        assert review.rejected["b-second"][0] == "ConflictingPolicy"
        assert "policy a-first" in review.rejected["b-second"][1]


def test_review_treats_an_empty_selector_like_none() -> None:
    review = review_policies([policy("x"), policy("y", branch_selector=LabelSelector())])
    assert list(review.rejected) == ["y"]


def test_partial_overlap_is_a_reported_tie_not_a_conflict() -> None:
    review = review_policies([policy("a", priority=1, branch_name_patterns=["feature/*"]), policy("b", priority=1)])
    assert review.rejected == {}


def test_blocking_locks_and_target_lookup() -> None:
    locks = [
        {"metadata": {"name": "x-indexing"}, "spec": {"branch": "x", "lockType": "INDEXING"}},
        {"metadata": {"name": "x-write"}, "spec": {"branch": "x", "lockType": "WRITE"}},
        {"metadata": {"name": "y-merge"}, "spec": {"branch": "y", "lockType": "MERGE"}},
    ]
    assert blocking_locks(locks, "x", include_indexing=False) == ["x-write"]
    assert blocking_locks(locks, "x", include_indexing=True) == ["x-indexing", "x-write"]
    branches = [{"metadata": {"name": n}, "spec": {"branchName": b}} for n, b in
                (("z-main", "main"), ("a-main", "main"), ("dev", "develop"))]
    found = target_branch_object(branches, "main")
    assert found is not None and found["metadata"]["name"] == "a-main"
    assert target_branch_object(branches, "release") is None


# -------------------------------------------------------------------------------------------- status patch


def apply(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = merge_patch(status, patch)
    BranchStatus.model_validate(result)  # the patch must fit the CRD
    return result


def test_blocked_patch_carries_the_whole_trace() -> None:
    evaluation = evaluate(other_locks=["w"], conflicts=[Conflict(path="p")])

    patch = merge_status_patch(evaluation, now=NOW, target_branch="main", merged=False)

    merge = patch["merge"]
    assert {k: merge[k] for k in ("decision", "reasons", "message", "policy", "policyGeneration", "eventId",
                                  "targetBranch", "evaluatedAt", "mergedAt", "mergeId")} == {
        "decision": "Blocked",
        "reasons": ["ConflictsDetected", "LockHeld"],
        "message": evaluation.message,
        "policy": "default",
        "policyGeneration": 1,
        "eventId": "evt-1",
        "targetBranch": "main",
        "evaluatedAt": "2024-01-01T10:00:00Z",
        "mergedAt": None,
        "mergeId": None,
    }
    assert [c["name"] for c in merge["checks"]] == CHECK_NAMES
    locks = next(c for c in merge["checks"] if c["name"] == "locks")
    assert locks == {"name": "locks", "passed": False, "reason": "LockHeld", "evidence": "held: w"}
    assert "reason" not in next(c for c in merge["checks"] if c["name"] == "validation")
    assert merge["nextEvaluationTime"] == "2024-01-02T09:00:01Z"  # the expiry
    assert "phase" not in patch
    mergeable = find_condition(patch["conditions"], "Mergeable")
    assert mergeable is not None
    assert (mergeable["status"], mergeable["reason"], mergeable["message"]) == (
        "False",
        "ConflictsDetected",
        evaluation.message,
    )
    apply({"phase": "READY"}, patch)


def test_deferred_and_would_merge_patches() -> None:
    deferred = merge_status_patch(evaluate(policy=policy(merge_windows=[CLOSED_NOW])), now=NOW,
                                  target_branch="main", merged=False)
    assert deferred["merge"]["decision"] == "Deferred"
    assert deferred["merge"]["nextEvaluationTime"] == "2024-01-01T12:00:00Z"
    mergeable = find_condition(deferred["conditions"], "Mergeable")
    assert mergeable is not None and (mergeable["status"], mergeable["reason"]) == ("False", "OutsideMergeWindow")

    patch = merge_status_patch(evaluate(policy=policy(dry_run=True)), now=NOW, target_branch="main", merged=False)
    mergeable = find_condition(patch["conditions"], "Mergeable")
    assert patch["merge"]["decision"] == "WouldMerge"
    assert mergeable is not None and (mergeable["status"], mergeable["reason"]) == ("True", "DryRun")


def test_merged_patch_moves_the_branch_to_active() -> None:
    existing = [{"type": "Indexed", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z", "reason": "X"}]

    patch = merge_status_patch(evaluate(), now=NOW, target_branch="main", merged=True, conditions=existing,
                               merge_id="merge-abc")

    assert patch["phase"] == "ACTIVE"
    assert patch["phaseTransitionTime"] == "2024-01-01T10:00:00Z"
    assert patch["merge"]["decision"] == "Merged"
    assert patch["merge"]["mergedAt"] == "2024-01-01T10:00:00Z"
    assert patch["merge"]["mergeId"] == "merge-abc"
    assert patch["merge"]["announcedAt"] is None
    assert [c["type"] for c in patch["conditions"]] == ["Indexed", "Mergeable", "Ready", "Reconciling", "Stalled"]
    mergeable = find_condition(patch["conditions"], "Mergeable")
    assert mergeable is not None and (mergeable["status"], mergeable["reason"]) == ("False", "Merged")
    after = apply({"phase": "READY", "conditions": existing}, patch)
    assert after["phase"] == "ACTIVE"


def test_manual_merge_is_recorded_with_reason_and_requester() -> None:
    patch = merge_status_patch(evaluate(manual=REQUEST), now=NOW, target_branch="main", merged=True, merge_id="m")
    assert patch["merge"]["manualRequest"] == {
        "reason": "hotfix for incident 42", "requestedBy": "alice", "outcome": "Merged",
        "message": patch["merge"]["message"], "at": "2024-01-01T10:00:00Z"}
    assert "merge request of alice" in patch["merge"]["message"]


def test_a_refused_request_stays_visible_through_later_evaluations() -> None:
    refused = evaluate(manual=REQUEST, other_locks=["w"])
    status = apply({"phase": "READY"}, merge_status_patch(refused, now=NOW, target_branch="main", merged=False))
    assert status["merge"]["manualRequest"]["outcome"] == "Blocked"
    assert merge_changed(status, refused)  # a request is always answered
    later = evaluate(other_locks=["w"])
    status = apply(status, merge_status_patch(later, now=NOW, target_branch="main", merged=False))
    assert status["merge"]["manualRequest"]["reason"] == "hotfix for incident 42"
    assert not merge_changed(status, later)


def test_recording_a_merge_requires_a_merged_evaluation() -> None:
    with pytest.raises(ValueError):
        merge_status_patch(evaluate(other_locks=["x"]), now=NOW, target_branch="main", merged=True)
    with pytest.raises(ValueError):  # a Merged evaluation is either carried out or failed
        merge_status_patch(evaluate(), now=NOW, target_branch="main", merged=False)


def test_failed_merge_keeps_the_branch_ready_with_a_retry_time() -> None:
    retry = NOW + timedelta(minutes=5)
    failed = merge_status_patch(evaluate(), now=NOW, target_branch="main", merged=False,
                                merge_error="merge endpoint answered 503", merge_id="merge-k", attempts=2,
                                retry_at=retry)
    assert failed["merge"]["decision"] == "Failed"
    assert "503" in failed["merge"]["message"]
    assert (failed["merge"]["mergeId"], failed["merge"]["attempts"]) == ("merge-k", 2)
    assert failed["merge"]["nextEvaluationTime"] == "2024-01-01T10:05:00Z"
    assert "phase" not in failed
    mergeable = find_condition(failed["conditions"], "Mergeable")
    assert mergeable is not None and (mergeable["status"], mergeable["reason"]) == ("True", "MergeFailed")
    apply({"phase": "READY"}, failed)


def test_merge_changed_ignores_time_and_sees_real_changes() -> None:
    first = evaluate(other_locks=["w"])
    status = apply({"phase": "READY"}, merge_status_patch(first, now=NOW, target_branch="main", merged=False))

    # Re-evaluating an hour later: the evidence is written in absolute times, so nothing changed.
    later = evaluate(other_locks=["w"], now=NOW + timedelta(hours=1))
    assert later.checks == first.checks
    assert not merge_changed(status, later)
    assert not merge_changed(status, later, target_branch="main")
    assert merge_changed(status, later, target_branch="develop")

    assert merge_changed(status, evaluate(other_locks=["w", "v"]))
    assert merge_changed(status, evaluate(other_locks=["w"], policy=policy("other")))
    assert merge_changed(status, evaluate(other_locks=["w"], policy=policy(generation=2)))
    assert merge_changed(status, evaluate(other_locks=["w"], indexing=indexing(event_id="evt-2")))
    assert merge_changed(status, evaluate(policy=policy(dry_run=True)))
    assert merge_changed(status, evaluate(other_locks=["w"], manual=REQUEST))
    assert merge_changed({"phase": "READY"}, first)

    without_condition = {k: v for k, v in status.items() if k != "conditions"}
    assert merge_changed(without_condition, later)


def test_a_merged_evaluation_always_needs_action() -> None:
    assert merge_changed({}, evaluate())


def test_merge_key_is_stable_and_distinct() -> None:
    key = merge_key("uid-1", "evt-1")
    assert key == merge_key("uid-1", "evt-1") and key.startswith("merge-") and len(key) == 38
    assert len({key, merge_key("uid-2", "evt-1"), merge_key("uid-1", "evt-2"), merge_key("uid-1", None, "idx-1")}) == 4
    assert merge_key("uid-1", "evt-1", "idx-1") == key  # the indexing id only stands in for a missing event id


# ------------------------------------------------------------------------------------------- policy status


def policy_obj(name: str, generation: int = 1, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": generation}, "spec": spec, "status": status or {}}


def branch_obj(name: str, branch_name: str, target: str = "main", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"branchName": branch_name, "targetBranch": target}}


BRANCHES = [branch_obj("a", "feature/a"), branch_obj("b", "feature/b", team="x"), branch_obj("c", "hotfix/c")]


def test_policy_statuses_count_matches_and_wins() -> None:
    views = policy_statuses(
        [policy_obj("general"), policy_obj("features", priority=5, branchNamePatterns=["feature/*"]),
         policy_obj("later-dup", priority=5, branchNamePatterns=["feature/*"]),
         policy_obj("bad-cron", mergeWindows=[{"kind": "allow", "schedule": "0 25 * * *", "duration": "1h"}]),
         policy_obj("bad-schema", priority="high")],
        BRANCHES,
    )
    assert (views["general"].accepted, views["general"].matched, views["general"].governed) == (True, 3, 1)
    assert (views["features"].matched, views["features"].governed) == (2, 2)
    dup = views["later-dup"]
    assert (dup.accepted, dup.reason, dup.matched, dup.governed) == (False, "ConflictingPolicy", 2, 0)
    assert "policy features" in dup.message
    assert (views["bad-cron"].accepted, views["bad-cron"].reason) == (False, "InvalidSpec")
    assert "hour: '25' is outside 0-23" in views["bad-cron"].message
    assert (views["bad-schema"].accepted, views["bad-schema"].reason) == (False, "InvalidSpec")
    assert "priority" in views["bad-schema"].message


def test_policy_status_patch_writes_only_changes() -> None:
    view = policy_statuses([policy_obj("p")], BRANCHES)["p"]
    first = policy_status_patch(view, {}, generation=1, now=NOW)
    assert first is not None
    assert (first["observedGeneration"], first["matchedBranches"], first["governedBranches"]) == (1, 3, 3)
    assert first["lastEvaluationTime"] == "2024-01-01T10:00:00Z"
    accepted = find_condition(first["conditions"], "Accepted")
    assert accepted is not None and (accepted["status"], accepted["reason"]) == ("True", "Valid")
    assert policy_status_patch(view, first, generation=1, now=NOW + timedelta(hours=1)) is None
    assert policy_status_patch(view, first, generation=2, now=NOW) is not None
    fewer = policy_statuses([policy_obj("p")], BRANCHES[:1])["p"]
    assert policy_status_patch(fewer, first, generation=1, now=NOW) is not None


# --------------------------------------------------------------------------------------------- properties

_windows = st.lists(
    st.sampled_from([OPEN_NOW, CLOSED_NOW, DENY_NOW, window("deny", "0 0 * * 6,0", "48h"),
                     window("allow", "0 9 * * 1-5", "9h", "Asia/Seoul")]),
    max_size=3,
)
_freeze = st.none() | st.builds(
    MergeFreeze, reason=st.just("freeze"), until=st.none() | st.sampled_from([NOW - timedelta(hours=1),
                                                                              NOW + timedelta(hours=1)]))
_specs = st.builds(
    AutoMergePolicySpec,
    enabled=st.booleans(),
    require_validation=st.booleans(),
    block_on_conflicts=st.booleans(),
    block_on_locks=st.booleans(),
    block_on_target_locks=st.booleans(),
    timeout_hours=st.none() | st.floats(min_value=0.01, max_value=1000),
    min_records_indexed=st.none() | st.integers(0, 3000),
    merge_windows=_windows,
    freeze=_freeze,
    allow_manual_merge_with_failed_validation=st.booleans(),
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
    event_id=st.none() | st.just("evt"),
    records_indexed=st.none() | st.integers(0, 3000),
    completed_at=st.none()
    | st.datetimes(min_value=datetime(2023, 1, 1), max_value=datetime(2024, 1, 2), timezones=st.just(UTC)),
    validation=_validation,
)
_conflicts = st.lists(st.builds(Conflict, path=st.text(min_size=1, max_size=20)), max_size=4)
_locks = st.lists(st.text(min_size=1, max_size=20), max_size=4)
_manual = st.none() | st.builds(ManualRequest, reason=st.text(min_size=1, max_size=30),
                                requested_by=st.none() | st.just("bob"))


def _inputs() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "phase": st.just(Phase.READY),
            "auto_merge": st.booleans(),
            "indexing": _indexing,
            "conflicts": _conflicts,
            "other_locks": _locks,
            "policy": _policies,
            "now": st.datetimes(min_value=datetime(2023, 12, 30), max_value=datetime(2024, 1, 3),
                                timezones=st.just(UTC)),
            "branch_name": st.sampled_from(["feature/x", "main"]),
            "target_branch": st.just("main"),
            "target_object": st.none() | st.just("main"),
            "target_locks": _locks,
            "manual": _manual,
        }
    )


@settings(max_examples=300, deadline=None)
@given(inputs=_inputs(), spec=_specs)
def test_failed_validation_with_require_validation_never_merges(
    inputs: dict[str, Any], spec: AutoMergePolicySpec
) -> None:
    # ...unless a merge request is made under a policy that explicitly allows it (the only exception).
    inputs["policy"] = PolicyRef("p", 1, spec.model_copy(update={"require_validation": True}))
    base = inputs["indexing"] or IndexingStatus()
    inputs["indexing"] = base.model_copy(update={"validation": ValidationStatus(passed=False)})
    excepted = inputs["manual"] is not None and spec.allow_manual_merge_with_failed_validation

    evaluation = evaluate_merge(**inputs)

    if not excepted:
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
        target_locks=list(reversed(inputs["target_locks"])),
        conflicts=list(reversed(inputs["conflicts"])),
    )
    assert evaluate_merge(**shuffled) == first


@settings(max_examples=300, deadline=None)
@given(inputs=_inputs())
def test_reasons_and_decision_agree(inputs: dict[str, Any]) -> None:
    evaluation = evaluate_merge(**inputs)

    assert (evaluation.reasons == []) == (evaluation.decision in (MergeDecision.MERGED, MergeDecision.WOULD_MERGE))
    assert (evaluation.decision is MergeDecision.DEFERRED) == (
        evaluation.reasons == [BlockReason.OUTSIDE_MERGE_WINDOW])
    assert evaluation.reasons == [r for r in REASON_ORDER if r in evaluation.reasons]  # ordered, no repeats
    assert evaluation.reasons == [c.reason for c in evaluation.checks if not c.passed]
    assert [c.name for c in evaluation.checks] == CHECK_NAMES
    assert (inputs["policy"] is None) == (BlockReason.NO_MATCHING_POLICY in evaluation.reasons)
    assert (inputs["branch_name"] == inputs["target_branch"]) == (BlockReason.SELF_MERGE in evaluation.reasons)
    if evaluation.next_evaluation is not None:
        assert evaluation.next_evaluation > inputs["now"]
        assert evaluation.decision is not MergeDecision.MERGED


@settings(max_examples=300, deadline=None)
@given(inputs=_inputs())
def test_dry_run_never_merges_and_freeze_always_blocks(inputs: dict[str, Any]) -> None:
    evaluation = evaluate_merge(**inputs)
    policy_ref = inputs["policy"]
    if policy_ref is not None and policy_ref.spec.dry_run:
        assert evaluation.decision is not MergeDecision.MERGED
    freeze = policy_ref.spec.freeze if policy_ref is not None else None
    if freeze is not None and (freeze.until is None or inputs["now"] < freeze.until):
        assert evaluation.decision is MergeDecision.BLOCKED  # a merge request does not thaw a freeze


@settings(max_examples=300, deadline=None)
@given(inputs=_inputs())
def test_an_active_deny_window_beats_everything_but_a_merge_request(inputs: dict[str, Any]) -> None:
    inputs["policy"] = policy(merge_windows=[OPEN_NOW, DENY_NOW])
    inputs["now"] = NOW + timedelta(minutes=15)  # inside both
    evaluation = evaluate_merge(**inputs)
    if inputs["manual"] is None:
        assert evaluation.decision in (MergeDecision.DEFERRED, MergeDecision.BLOCKED)
        assert BlockReason.OUTSIDE_MERGE_WINDOW in evaluation.reasons
    else:
        assert BlockReason.OUTSIDE_MERGE_WINDOW not in evaluation.reasons


@settings(max_examples=200, deadline=None)
@given(inputs=_inputs())
def test_recorded_evaluation_is_unchanged_and_fits_the_crd(inputs: dict[str, Any]) -> None:
    evaluation = evaluate_merge(**inputs)
    if evaluation.decision is MergeDecision.MERGED:
        patch = merge_status_patch(evaluation, now=NOW, target_branch="main", merged=True, merge_id="merge-x")
        apply({"phase": "READY"}, patch)
        assert merge_changed({"phase": "READY"}, evaluation)
        return
    patch = merge_status_patch(evaluation, now=NOW, target_branch="main", merged=False)
    status = apply({"phase": "READY"}, patch)
    answered = evaluation.manual is not None  # a merge request is always answered, and recorded
    assert merge_changed(status, evaluation) is answered
    assert merge_changed(status, evaluation, target_branch="main") is answered


@given(name=st.text(alphabet="ab/-.", max_size=12))
def test_star_never_crosses_a_segment(name: str) -> None:
    assert glob_match("*", name) is ("/" not in name)
    assert glob_match("**", name)
    assert glob_match(name, name)  # a name without metacharacters matches itself, exactly
    assert not glob_match(name, name + "x")
