"""What a merge backend's result means (domain.merge.decision), without a backend or a Branch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from branch_operator.api.models import (
    AutoMergePolicySpec,
    Conflict,
    IndexingStatus,
    MergeDecision,
    MergeWindow,
    Phase,
)
from branch_operator.domain.audit import AuditAction
from branch_operator.domain.merge import ManualRequest, MergeEvaluation, PolicyRef, evaluate_merge
from branch_operator.domain.merge.decision import (
    Answer,
    Outcome,
    Step,
    classify_answer,
    conflict_step,
    decision_report,
    failed_attempts,
    merge_step,
    pending_retry,
)

NOW = datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)
INTERVAL = timedelta(minutes=5)
KEY = "merge-abc"


def failed(attempts: int = 2, retry_at: str = "2024-01-01T10:05:00Z", key: str = KEY) -> dict[str, Any]:
    return {"decision": "Failed", "mergeId": key, "attempts": attempts, "nextEvaluationTime": retry_at}


def evaluation(conflicts: list[Conflict] | None = None, manual: ManualRequest | None = None,
               **spec: Any) -> MergeEvaluation:
    return evaluate_merge(
        phase=Phase.READY, auto_merge=True, conflicts=conflicts or [], other_locks=[], now=NOW, manual=manual,
        indexing=IndexingStatus(indexing_id="idx-1", event_id="evt-1", completed_at=NOW - timedelta(hours=1)),
        policy=PolicyRef("default", 1, AutoMergePolicySpec(require_validation=False, **spec)),
        branch_name="feature/x", target_object="main")


@pytest.mark.parametrize(("status", "answer"), [
    (200, Answer.MERGED), (204, Answer.MERGED), (409, Answer.CONFLICT),
    (500, Answer.RETRY), (503, Answer.RETRY), (408, Answer.RETRY), (425, Answer.RETRY), (429, Answer.RETRY),
    (None, Answer.RETRY),  # no answer at all: a connection error or a timeout
    (400, Answer.FAILED), (403, Answer.FAILED), (404, Answer.FAILED), (422, Answer.FAILED), (302, Answer.FAILED),
])
def test_what_an_answer_of_the_merge_endpoint_means(status: int | None, answer: Answer) -> None:
    assert classify_answer(status) is answer


def test_failed_attempts_count_only_for_the_same_merge() -> None:
    assert failed_attempts(failed(2), KEY) == 2
    assert failed_attempts(failed(2, key="merge-other"), KEY) == 0  # a new indexing result starts afresh
    assert failed_attempts({"decision": "Blocked", "mergeId": KEY, "attempts": 2}, KEY) == 0
    assert failed_attempts({}, KEY) == 0


def test_a_failed_merge_waits_for_its_retry_time_unless_a_person_asks() -> None:
    retry_at = datetime(2024, 1, 1, 10, 5, tzinfo=UTC)
    assert pending_retry(failed(), KEY, now=NOW, manual=None) == retry_at
    assert pending_retry(failed(), KEY, now=retry_at, manual=None) is None  # due: executed again
    assert pending_retry(failed(), KEY, now=NOW, manual=ManualRequest("now please", "alice")) is None
    assert pending_retry(failed(key="merge-other"), KEY, now=NOW, manual=None) is None
    assert pending_retry({"decision": "Blocked"}, KEY, now=NOW, manual=None) is None


def test_merged_and_conflicts_are_answers_a_failure_is_tried_again() -> None:
    assert merge_step(Outcome.MERGED, failed_before=3, now=NOW, retry_interval=INTERVAL).step is Step.RECORD_MERGED
    conflict = merge_step(Outcome.CONFLICT, failed_before=0, now=NOW, retry_interval=INTERVAL)
    assert conflict.step is Step.DECIDE_WITH_CONFLICTS and conflict.retry_at is None

    first = merge_step(Outcome.FAILED, failed_before=0, now=NOW, retry_interval=INTERVAL)
    assert (first.step, first.attempts, first.retry_at) == (Step.RECORD_FAILED, 1, NOW + INTERVAL)
    again = merge_step(Outcome.FAILED, failed_before=2, now=NOW, retry_interval=INTERVAL)
    assert (again.attempts, again.retry_at) == (3, NOW + INTERVAL)


def test_conflicts_block_the_merge_or_make_it_a_failure_when_the_policy_ignores_them() -> None:
    conflicts = [Conflict(path="schema/User.json", message="both sides changed email")]
    blocked = evaluation(conflicts)
    assert blocked.decision is MergeDecision.BLOCKED
    step = conflict_step(blocked, now=NOW, retry_interval=INTERVAL)
    assert step.step is Step.RECORD_CONFLICTS and step.attempts is None
    assert step.retry_at == blocked.next_evaluation

    ignored = evaluation(conflicts, block_on_conflicts=False)
    assert ignored.decision is MergeDecision.MERGED  # the policy would merge; OMS refused
    step = conflict_step(ignored, now=NOW, retry_interval=INTERVAL)
    assert (step.step, step.attempts, step.retry_at) == (Step.RECORD_FAILED, 1, NOW + INTERVAL)


def test_each_decision_is_told_by_its_event_and_audit_record() -> None:
    closed = MergeWindow(kind="allow", schedule="0 12 * * *", duration="1h", time_zone="UTC")  # type: ignore[arg-type]
    conflicts = [Conflict(path="a", message="b")]
    request = ManualRequest("hotfix", "alice")
    cases = {
        "blocked": (evaluation(conflicts), ("Warning", "MergeBlocked", AuditAction.BRANCH_MERGE_BLOCKED,
                                            "ConflictsDetected", None)),
        "deferred": (evaluation(merge_windows=[closed]), (
            "Normal", "MergeDeferred", AuditAction.BRANCH_MERGE_DEFERRED, "OutsideMergeWindow", None)),
        "dry run": (evaluation(dry_run=True), ("Normal", "WouldMerge", None, "", None)),
        "request refused": (evaluation(conflicts, manual=request), (
            "Warning", "MergeRequestRefused", AuditAction.BRANCH_MERGE_REQUESTED, "ConflictsDetected", "refused")),
        "request in dry run": (evaluation(manual=request, dry_run=True), (
            "Normal", "WouldMerge", AuditAction.BRANCH_MERGE_REQUESTED, "WouldMerge", "dry-run")),
    }
    for name, (decided, expected) in cases.items():
        report = decision_report(decided)
        told = (report.event_type, report.event_reason, report.audit, report.audit_reason, report.request_outcome)
        assert told == expected, name
    with pytest.raises(ValueError):
        decision_report(evaluation())  # a merge is announced by its write
