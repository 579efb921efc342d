"""The branch lifecycle as pure logic: indexing events planned against a Branch status."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branch_operator.api.models import (
    MAX_ERROR_LENGTH,
    MAX_ERRORS,
    MAX_RECENT_EVENTS,
    BranchStatus,
    IndexingStatus,
    LockType,
    PendingResult,
    Phase,
)
from branch_operator.domain.conditions import find_condition, set_condition
from branch_operator.domain.indexing_event import event_key
from branch_operator.domain.lifecycle import (
    ALLOWED_MANUAL_TRANSITIONS,
    TRANSITIONS,
    EventKind,
    EventPlan,
    Outcome,
    RunMatch,
    check_manual_transition,
    indexing_duration,
    plan_indexing_event,
)
from branch_operator.domain.timefmt import format_duration, rfc3339
from branch_operator.embedded.apiserver.patch import merge_patch  # what the API server applies

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
T10 = datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)
T1030 = datetime(2024, 1, 1, 10, 30, 0, tzinfo=UTC)
SOURCE = "funnel"


def K(event_id: str) -> str:
    """What status remembers of the event ``event_id`` from ``SOURCE``."""
    return event_key(SOURCE, event_id)


# ------------------------------------------------------------------------------------ fakes / helpers


@dataclass(frozen=True)
class FakeValidation:
    passed: bool
    errors: list[str] = field(default_factory=list)
    errors_dropped: int = 0


@dataclass(frozen=True)
class FakeData:
    branch_name: str = "feature/user-schema"
    indexing_id: str = "idx-1"
    started_at: datetime | None = None
    completed_at: datetime | None = None
    records_indexed: int | None = None
    validation_results: FakeValidation | None = None


@dataclass(frozen=True)
class FakeEvent:
    id: str
    kind: str
    data: FakeData
    succeeded: bool = False
    failed: bool = False
    duration_seconds: float | None = None
    occurred_at: datetime | None = None
    source: str = SOURCE


def started(indexing_id: str = "idx-1", *, event_id: str = "evt-s", at: datetime = T10) -> FakeEvent:
    return FakeEvent(event_id, "started", FakeData(indexing_id=indexing_id, started_at=at), occurred_at=at)


def completed(
    indexing_id: str = "idx-1",
    *,
    event_id: str = "evt-c",
    started_at: datetime | None = T10,
    completed_at: datetime = T1030,
    records: int | None = 1500,
    validation: FakeValidation | None = FakeValidation(True),
    duration: float | None = None,
) -> FakeEvent:
    data = FakeData(
        indexing_id=indexing_id,
        started_at=started_at,
        completed_at=completed_at,
        records_indexed=records,
        validation_results=validation,
    )
    return FakeEvent(event_id, "completed", data, succeeded=True, duration_seconds=duration, occurred_at=completed_at)


def failed(
    indexing_id: str = "idx-1",
    *,
    event_id: str = "evt-f",
    started_at: datetime | None = T10,
    validation: FakeValidation | None = None,
    kind: str = "failed",
) -> FakeEvent:
    data = FakeData(indexing_id=indexing_id, started_at=started_at, completed_at=T1030, validation_results=validation)
    return FakeEvent(event_id, kind, data, failed=True, occurred_at=T1030)


def status(
    phase: Phase | None,
    *,
    indexing_id: str | None = "idx-1",
    event_id: str | None = "evt-0",
    started_at: datetime | None = T10,
    recent: list[str] | None = None,
    conditions: list[dict[str, Any]] | None = None,
) -> BranchStatus:
    indexing = (
        IndexingStatus(indexing_id=indexing_id, event_id=K(event_id) if event_id else None, started_at=started_at)
        if indexing_id is not None
        else None
    )
    return BranchStatus.model_validate(
        {
            "phase": phase.value if phase else None,
            "indexing": indexing.wire() if indexing else None,
            "recentEventIds": [K(i) for i in recent or []],
            "conditions": conditions or [],
        }
    )




def apply(current: BranchStatus, plan: EventPlan) -> BranchStatus:
    """The status after the I/O layer writes the plan; validating it proves the patch fits the CRD."""
    return BranchStatus.model_validate(merge_patch(current.wire(), plan.status_patch))


def cond(plan: EventPlan, type_: str) -> dict[str, Any]:
    found = find_condition(plan.status_patch["conditions"], type_)
    assert found is not None, f"condition {type_} not set"
    return found


def make_event(kind: EventKind, indexing_id: str, event_id: str = "evt-new") -> FakeEvent:
    if kind is EventKind.STARTED:
        return started(indexing_id, event_id=event_id)
    if kind is EventKind.COMPLETED:
        return completed(indexing_id, event_id=event_id)
    return failed(indexing_id, event_id=event_id)


# --------------------------------------------------------------------------- the original design's cases


def test_successful_indexing_moves_locked_branch_to_ready() -> None:
    current = status(Phase.LOCKED_FOR_WRITE)

    plan = plan_indexing_event(current, completed(), now=NOW)

    assert plan.outcome is Outcome.APPLIED
    assert (plan.from_phase, plan.to_phase) == (Phase.LOCKED_FOR_WRITE, Phase.READY)
    assert plan.release_locks == "indexing"
    assert plan.acquire_lock is None
    assert not plan.notify
    assert plan.audit_action == "indexing.completed"
    assert (plan.event_type, plan.event_reason) == ("Normal", "IndexingCompleted")
    for fact in ("idx-1", "1,500 records", "30m", "validation passed"):
        assert fact in plan.event_message
    patch = plan.status_patch
    assert patch["phase"] == "READY"
    assert patch["phaseTransitionTime"] == "2024-01-01T12:00:00Z"
    assert patch["indexing"] == {
        "indexingId": "idx-1",
        "eventId": K("evt-c"),
        "startedAt": "2024-01-01T10:00:00Z",
        "completedAt": "2024-01-01T10:30:00Z",
        "durationSeconds": 1800.0,
        "recordsIndexed": 1500,
        "result": "success",
        "validation": {"passed": True, "errors": []},
    }
    assert patch["recentEventIds"] == [K("evt-c")]
    assert cond(plan, "Indexed")["status"] == "True"
    assert cond(plan, "Indexed")["reason"] == "IndexingSucceeded"
    assert (cond(plan, "Validated")["status"], cond(plan, "Validated")["reason"]) == (
        "True",
        "ValidationPassed",
    )
    assert (cond(plan, "Locked")["status"], cond(plan, "Locked")["reason"]) == ("False", "LockReleased")

    after = apply(current, plan)
    assert after.phase is Phase.READY
    assert after.indexing is not None and after.indexing.duration_seconds == 1800.0


def test_failed_indexing_moves_branch_to_error_releasing_everything() -> None:
    errors = ["field x missing", "type mismatch on y", "bad ref z", "fourth"]
    plan = plan_indexing_event(
        status(Phase.LOCKED_FOR_WRITE), failed(validation=FakeValidation(False, errors)), now=NOW
    )

    assert plan.outcome is Outcome.APPLIED
    assert plan.to_phase is Phase.ERROR
    assert plan.release_locks == "all"
    assert plan.notify
    assert (plan.event_type, plan.event_reason, plan.audit_action) == (
        "Warning",
        "IndexingFailed",
        "indexing.failed",
    )
    assert "idx-1" in plan.event_message and "4 errors" in plan.event_message
    indexing = plan.status_patch["indexing"]
    assert indexing["result"] == "failed"
    assert indexing["validation"] == {"passed": False, "errors": errors}
    assert indexing["durationSeconds"] == 1800.0
    assert (cond(plan, "Indexed")["status"], cond(plan, "Indexed")["reason"]) == ("False", "IndexingFailed")
    assert (cond(plan, "Locked")["status"], cond(plan, "Locked")["reason"]) == ("False", "LocksReleased")
    assert (cond(plan, "Mergeable")["status"], cond(plan, "Mergeable")["reason"]) == (
        "False",
        "IndexingFailed",
    )
    validated = cond(plan, "Validated")
    assert validated["reason"] == "ValidationFailed"
    assert "field x missing" in validated["message"] and "and 1 more" in validated["message"]


def test_failed_kind_plans_as_failed_even_without_the_flag() -> None:
    plan = plan_indexing_event(status(Phase.LOCKED_FOR_WRITE), replace(failed(), failed=False), now=NOW)
    assert plan.kind is EventKind.FAILED and plan.phase_changed


def test_completed_event_reporting_failure_plans_as_failed() -> None:
    plan = plan_indexing_event(status(Phase.LOCKED_FOR_WRITE), failed(kind="completed"), now=NOW)

    assert plan.kind is EventKind.FAILED
    assert plan.to_phase is Phase.ERROR
    assert plan.release_locks == "all"
    assert plan.notify


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (T10, T1030, 1800.0),
        (T10.replace(tzinfo=None), T1030, 1800.0),  # naive means UTC
        (T10, T10, 0.0),
        (T1030, T10, None),  # clock skew is not a duration
        (None, T1030, None),
        (T10, None, None),
    ],
)
def test_indexing_duration(start: datetime | None, end: datetime | None, expected: float | None) -> None:
    assert indexing_duration(start, end) == expected


def test_indexing_duration_across_timezones() -> None:
    cet = datetime(2024, 1, 1, 11, 30, tzinfo=timezone(timedelta(hours=1)))
    assert indexing_duration(T10, cet) == 1800.0


def test_duration_prefers_the_event_then_falls_back_to_the_recorded_start() -> None:
    reported = plan_indexing_event(status(Phase.LOCKED_FOR_WRITE), completed(duration=1799.5), now=NOW)
    assert reported.status_patch["indexing"]["durationSeconds"] == 1799.5

    # The completed event lacks started_at: the start recorded by the started event is used, and kept.
    no_start = plan_indexing_event(status(Phase.LOCKED_FOR_WRITE), completed(started_at=None), now=NOW)
    assert no_start.status_patch["indexing"]["durationSeconds"] == 1800.0
    assert "startedAt" not in no_start.status_patch["indexing"]


def test_unexpected_branch_state_completed_for_active_branch() -> None:
    current = status(Phase.ACTIVE, indexing_id=None)

    plan = plan_indexing_event(current, completed(), now=NOW)

    assert plan.outcome is Outcome.UNEXPECTED
    assert plan.from_phase is plan.to_phase is Phase.ACTIVE
    assert "phase" not in plan.status_patch
    assert "indexing" not in plan.status_patch
    # No transition; the result is kept (the I/O layer stores it as status.pendingResult) in case its
    # started event is only late.
    assert plan.status_patch == {} and plan.park
    assert plan.release_locks == "none" and plan.acquire_lock is None
    assert (plan.event_type, plan.event_reason, plan.audit_action) == (
        "Warning",
        "UnexpectedEvent",
        "event.pending",
    )
    assert "ACTIVE" in plan.event_message

    # A redelivery of the same event is then a quiet duplicate, not a second warning.
    kept = current.model_copy(update={"pending_result": _kept(completed())})
    again = plan_indexing_event(kept, completed(), now=NOW)
    assert again.outcome is Outcome.DUPLICATE


def _kept(event: FakeEvent) -> PendingResult:
    return PendingResult(event_id=K(event.id), indexing_id=event.data.indexing_id,
                         subject="funnel.indexing.completed", event="{}")


def test_a_kept_result_applies_after_its_started_and_is_then_cleared() -> None:
    result = completed("idx-late")
    # The merged run started earlier: with equal starts the indexing id would order them (idx-late first).
    current = status(Phase.ACTIVE, indexing_id="idx-old", started_at=T10 - timedelta(hours=1)).model_copy(
        update={"pending_result": _kept(result)})

    start = plan_indexing_event(current, started("idx-late"), now=NOW)
    assert start.outcome is Outcome.APPLIED and start.to_phase is Phase.LOCKED_FOR_WRITE
    assert "pendingResult" not in start.status_patch  # still needed: the I/O layer replays it next
    locked = apply(current, start)

    end = plan_indexing_event(locked, result, now=NOW)
    assert end.outcome is Outcome.APPLIED and end.to_phase is Phase.READY
    assert end.status_patch["pendingResult"] is None


def test_a_kept_result_is_dropped_when_another_run_starts() -> None:
    kept = completed("idx-a")
    current = status(Phase.ACTIVE).model_copy(update={"pending_result": _kept(kept)})
    plan = plan_indexing_event(current, started("idx-b"), now=NOW)
    assert plan.outcome is Outcome.APPLIED and plan.status_patch["pendingResult"] is None
    # A later copy of the dropped result is a duplicate, not kept a second time.
    again = plan_indexing_event(apply(current, plan), kept, now=NOW)
    assert again.outcome is Outcome.DUPLICATE


def test_branch_without_phase_is_treated_as_active() -> None:
    plan = plan_indexing_event(BranchStatus(), started(), now=NOW)
    assert plan.from_phase is Phase.ACTIVE
    assert plan.to_phase is Phase.LOCKED_FOR_WRITE


# ------------------------------------------------------------------------------------ transition table

_A, _D, _S, _U = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE, Outcome.UNEXPECTED
ACTIVE, LOCKED, READY, ERROR = Phase.ACTIVE, Phase.LOCKED_FOR_WRITE, Phase.READY, Phase.ERROR

# Written out independently of the module's table: (from, kind, run) -> (outcome, phase afterwards).
EXPECTED: dict[tuple[Phase, EventKind, RunMatch], tuple[Outcome, Phase]] = {
    (ACTIVE, EventKind.STARTED, RunMatch.OTHER): (_A, LOCKED),
    (ACTIVE, EventKind.STARTED, RunMatch.SAME): (_S, ACTIVE),
    (ACTIVE, EventKind.COMPLETED, RunMatch.OTHER): (_U, ACTIVE),
    (ACTIVE, EventKind.COMPLETED, RunMatch.SAME): (_D, ACTIVE),
    (ACTIVE, EventKind.FAILED, RunMatch.OTHER): (_U, ACTIVE),
    (ACTIVE, EventKind.FAILED, RunMatch.SAME): (_U, ACTIVE),
    (LOCKED, EventKind.STARTED, RunMatch.OTHER): (_A, LOCKED),
    (LOCKED, EventKind.STARTED, RunMatch.SAME): (_D, LOCKED),
    (LOCKED, EventKind.COMPLETED, RunMatch.OTHER): (_A, READY),
    (LOCKED, EventKind.COMPLETED, RunMatch.SAME): (_A, READY),
    (LOCKED, EventKind.FAILED, RunMatch.OTHER): (_A, ERROR),
    (LOCKED, EventKind.FAILED, RunMatch.SAME): (_A, ERROR),
    (READY, EventKind.STARTED, RunMatch.OTHER): (_A, LOCKED),
    (READY, EventKind.STARTED, RunMatch.SAME): (_S, READY),
    (READY, EventKind.COMPLETED, RunMatch.OTHER): (_A, READY),
    (READY, EventKind.COMPLETED, RunMatch.SAME): (_D, READY),
    (READY, EventKind.FAILED, RunMatch.OTHER): (_A, ERROR),
    (READY, EventKind.FAILED, RunMatch.SAME): (_A, ERROR),
    (ERROR, EventKind.STARTED, RunMatch.OTHER): (_A, LOCKED),
    (ERROR, EventKind.STARTED, RunMatch.SAME): (_S, ERROR),
    (ERROR, EventKind.COMPLETED, RunMatch.OTHER): (_A, READY),
    (ERROR, EventKind.COMPLETED, RunMatch.SAME): (_U, ERROR),
    (ERROR, EventKind.FAILED, RunMatch.OTHER): (_A, ERROR),
    (ERROR, EventKind.FAILED, RunMatch.SAME): (_D, ERROR),
}

ALL_CASES = list(itertools.product(Phase, EventKind, RunMatch))


def test_table_is_total_and_consistent() -> None:
    assert set(TRANSITIONS) == set(ALL_CASES) == set(EXPECTED)
    for rule in TRANSITIONS.values():
        assert (rule.to_phase is not None) == (rule.outcome is Outcome.APPLIED)
        assert rule.why


@pytest.mark.parametrize(("phase", "kind", "match"), ALL_CASES, ids=lambda v: getattr(v, "value", str(v)))
def test_transition(phase: Phase, kind: EventKind, match: RunMatch) -> None:
    current = status(phase, indexing_id="idx-1", started_at=T10 - timedelta(hours=1))
    event = make_event(kind, "idx-1" if match is RunMatch.SAME else "idx-2")

    plan = plan_indexing_event(current, event, now=NOW)

    outcome, to_phase = EXPECTED[(phase, kind, match)]
    assert (plan.outcome, plan.from_phase, plan.to_phase) == (outcome, phase, to_phase)
    assert plan.kind is kind
    patch = plan.status_patch
    if outcome is Outcome.DUPLICATE:
        assert patch == {}
        assert (plan.event_type, plan.event_reason, plan.audit_action) == (
            "Normal",
            "DuplicateEvent",
            "event.duplicate",
        )
    if outcome is Outcome.UNEXPECTED:
        # A result with no run on an ACTIVE branch is kept for its started event instead of remembered.
        kept = phase is Phase.ACTIVE and match is RunMatch.OTHER and kind is not EventKind.STARTED
        assert patch == ({} if kept else {"recentEventIds": [K("evt-new")]}) and plan.park is kept
        assert (plan.event_type, plan.event_reason) == ("Warning", "UnexpectedEvent")
    if outcome is Outcome.STALE:
        # Recorded (audit + Normal Event), and remembered so a redelivery is a quiet duplicate.
        assert patch == {"recentEventIds": [K("evt-new")]}
        assert (plan.event_type, plan.event_reason, plan.audit_action) == ("Normal", "StaleEvent", "event.stale")
    if outcome is not Outcome.APPLIED:
        assert plan.release_locks == "none" and plan.acquire_lock is None and not plan.notify
        return

    assert patch["phase"] == to_phase.value
    assert ("phaseTransitionTime" in patch) == (phase is not to_phase)
    assert patch["merge"] is None
    assert patch["recentEventIds"][-1] == K("evt-new")
    assert patch["indexing"]["indexingId"] == event.data.indexing_id
    expected_locks = {
        EventKind.STARTED: (LockType.INDEXING, "indexing", False, "IndexingStarted"),
        EventKind.COMPLETED: (None, "indexing", False, "IndexingCompleted"),
        EventKind.FAILED: (None, "all", True, "IndexingFailed"),
    }[kind]
    assert (plan.acquire_lock, plan.release_locks, plan.notify, plan.event_reason) == expected_locks
    assert plan.audit_action == f"indexing.{kind.value}"
    after = apply(current, plan)
    assert after.phase is to_phase
    assert after.indexing is not None and after.indexing.indexing_id == event.data.indexing_id


def test_started_opens_a_new_run_and_clears_the_previous_result() -> None:
    current = BranchStatus.model_validate(
        {
            "phase": "READY",
            "indexing": {
                "indexingId": "idx-1",
                "eventId": "evt-0",
                "startedAt": "2024-01-01T08:00:00Z",
                "completedAt": "2024-01-01T09:00:00Z",
                "durationSeconds": 3600,
                "recordsIndexed": 10,
                "result": "success",
                "validation": {"passed": True, "errors": []},
            },
            "merge": {"decision": "Blocked", "reasons": ["LockHeld"]},
        }
    )

    plan = plan_indexing_event(current, started("idx-2"), now=NOW)

    assert plan.acquire_lock is LockType.INDEXING and plan.lock_indexing_id == "idx-2"
    assert plan.status_patch["indexing"] == {
        "indexingId": "idx-2",
        "eventId": K("evt-s"),
        "startedAt": "2024-01-01T10:00:00Z",
        "completedAt": None,
        "durationSeconds": None,
        "recordsIndexed": None,
        "result": None,
        "validation": None,
    }
    assert plan.status_patch["merge"] is None
    after = apply(current, plan)
    assert after.merge is None
    assert after.indexing == IndexingStatus(indexing_id="idx-2", event_id=K("evt-s"), started_at=T10)
    for type_, st_, reason in [
        ("Locked", "True", "IndexingInProgress"),
        ("Indexed", "False", "IndexingInProgress"),
        ("Mergeable", "False", "IndexingInProgress"),
    ]:
        assert (cond(plan, type_)["status"], cond(plan, type_)["reason"]) == (st_, reason)


def test_newer_run_supersedes_the_one_in_progress() -> None:
    plan = plan_indexing_event(status(Phase.LOCKED_FOR_WRITE), started("idx-2", at=T1030), now=NOW)

    assert plan.applied and not plan.phase_changed
    assert plan.to_phase is Phase.LOCKED_FOR_WRITE
    assert "phaseTransitionTime" not in plan.status_patch
    assert plan.release_locks == "indexing"
    assert (plan.acquire_lock, plan.lock_indexing_id) == (LockType.INDEXING, "idx-2")
    assert "superseding run idx-1" in plan.event_message


def test_completed_for_another_run_replaces_the_recorded_start() -> None:
    current = status(Phase.READY, indexing_id="idx-1", started_at=T10 - timedelta(hours=2))
    with_start = plan_indexing_event(current, completed("idx-2"), now=NOW)
    assert with_start.status_patch["indexing"]["startedAt"] == "2024-01-01T10:00:00Z"

    without_start = plan_indexing_event(current, completed("idx-2", started_at=None), now=NOW)
    assert without_start.status_patch["indexing"]["startedAt"] is None
    assert without_start.status_patch["indexing"]["durationSeconds"] is None


# ---------------------------------------------------------------------------------- idempotency, staleness


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("kind", list(EventKind))
def test_event_id_already_applied_is_a_duplicate_whatever_the_table_says(phase: Phase, kind: EventKind) -> None:
    current = status(phase, recent=["evt-a", "evt-new", "evt-b"])

    plan = plan_indexing_event(current, make_event(kind, "idx-2"), now=NOW)

    assert plan.outcome is Outcome.DUPLICATE
    assert plan.status_patch == {}
    assert plan.release_locks == "none"
    assert plan.acquire_lock is None


def test_event_id_recorded_as_last_applied_is_a_duplicate() -> None:
    current = status(Phase.LOCKED_FOR_WRITE, event_id="evt-new")
    plan = plan_indexing_event(current, make_event(EventKind.COMPLETED, "idx-1"), now=NOW)
    assert plan.outcome is Outcome.DUPLICATE


def test_replaying_a_whole_run_applies_each_event_once() -> None:
    current = status(Phase.ACTIVE, indexing_id=None)
    events = [started(), completed()]
    for event in events:
        current = apply(current, plan_indexing_event(current, event, now=NOW))
    assert current.phase is Phase.READY
    for event in events:
        assert plan_indexing_event(current, event, now=NOW).outcome is Outcome.DUPLICATE


@pytest.mark.parametrize(
    ("phase", "event"),
    [
        (Phase.LOCKED_FOR_WRITE, started("idx-old", at=T10 - timedelta(minutes=1))),
        (Phase.LOCKED_FOR_WRITE, completed("idx-old", started_at=T10 - timedelta(minutes=1))),
        (Phase.READY, completed("idx-old", started_at=T10 - timedelta(minutes=1))),
        (Phase.READY, failed("idx-old", started_at=T10 - timedelta(minutes=1))),
        (Phase.ERROR, failed("idx-old", started_at=T10 - timedelta(minutes=1))),
    ],
)
def test_events_of_an_older_run_are_stale(phase: Phase, event: FakeEvent) -> None:
    plan = plan_indexing_event(status(phase, started_at=T10), event, now=NOW)

    assert plan.outcome is Outcome.STALE
    assert "started before the recorded run" in plan.reason
    assert plan.audit_action == "event.stale"
    assert set(plan.status_patch) == {"recentEventIds"}


def test_unknown_start_times_do_not_make_events_stale() -> None:
    plan = plan_indexing_event(status(Phase.READY, started_at=None), completed("idx-2"), now=NOW)
    assert plan.outcome is Outcome.APPLIED


def test_recent_event_ids_are_bounded_newest_last() -> None:
    recent = [f"evt-{i}" for i in range(MAX_RECENT_EVENTS)]
    current = status(Phase.ACTIVE, recent=recent)

    plan = plan_indexing_event(current, started("idx-2", event_id="evt-latest"), now=NOW)

    ids = plan.status_patch["recentEventIds"]
    assert len(ids) == MAX_RECENT_EVENTS
    assert ids == [K(i) for i in [*recent[1:], "evt-latest"]]
    apply(current, plan)  # fits the CRD's maxItems


def test_unknown_event_kind_is_rejected() -> None:
    event = FakeEvent("e", "paused", FakeData())
    with pytest.raises(ValueError, match="paused"):
        plan_indexing_event(status(Phase.ACTIVE), event, now=NOW)


def test_completed_that_reports_neither_success_nor_failure_is_rejected() -> None:
    event = replace(completed(), succeeded=False)
    with pytest.raises(ValueError, match="neither"):
        plan_indexing_event(status(Phase.LOCKED_FOR_WRITE), event, now=NOW)


def test_planning_is_deterministic() -> None:
    current = status(Phase.LOCKED_FOR_WRITE)
    assert plan_indexing_event(current, completed(), now=NOW) == plan_indexing_event(current, completed(), now=NOW)


# ----------------------------------------------------------------------------------------- validation


def test_completed_with_failed_validation() -> None:
    errors = [f"error {i}" for i in range(5)]
    plan = plan_indexing_event(
        status(Phase.LOCKED_FOR_WRITE), completed(validation=FakeValidation(False, errors)), now=NOW
    )

    assert plan.to_phase is Phase.READY  # the merge policy decides what a failed validation means
    assert plan.event_type == "Warning"
    assert "validation failed with 5 errors" in plan.event_message
    validated = cond(plan, "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "ValidationFailed")
    assert "error 0; error 1; error 2" in validated["message"]
    assert "error 3" not in validated["message"]
    assert plan.status_patch["indexing"]["validation"] == {"passed": False, "errors": errors}


def test_completed_without_validation_results() -> None:
    plan = plan_indexing_event(status(Phase.LOCKED_FOR_WRITE), completed(validation=None), now=NOW)

    assert plan.status_patch["indexing"]["validation"] is None
    assert (cond(plan, "Validated")["status"], cond(plan, "Validated")["reason"]) == (
        "Unknown",
        "NoValidationResults",
    )
    assert "no validation results" in plan.event_message


def test_validation_errors_are_bounded_to_fit_the_crd() -> None:
    errors = ["x" * (MAX_ERROR_LENGTH * 2)] + [f"e{i}" for i in range(MAX_ERRORS * 2)]
    current = status(Phase.LOCKED_FOR_WRITE)
    plan = plan_indexing_event(current, completed(validation=FakeValidation(False, errors)), now=NOW)

    stored = plan.status_patch["indexing"]["validation"]["errors"]
    assert len(stored) == MAX_ERRORS
    assert all(len(e) <= MAX_ERROR_LENGTH for e in stored)
    apply(current, plan)


@pytest.mark.parametrize("validation", [
    FakeValidation(False, [f"e{i}" for i in range(102)]),  # more than the status holds
    FakeValidation(False, [f"e{i}" for i in range(MAX_ERRORS)], errors_dropped=102 - MAX_ERRORS),  # as parsed
], ids=["unbounded", "bounded-by-the-contract"])
def test_validation_errors_beyond_the_bound_are_counted(validation: FakeValidation) -> None:
    plan = plan_indexing_event(status(Phase.LOCKED_FOR_WRITE), completed(validation=validation), now=NOW)

    assert f"{MAX_ERRORS} of 102 errors" in plan.event_message, plan.event_message
    assert f"{MAX_ERRORS} of 102 errors" in cond(plan, "Validated")["message"]
    stored = plan.status_patch["indexing"]["validation"]
    assert len(stored["errors"]) == MAX_ERRORS and stored["errorsTotal"] == 102


# ----------------------------------------------------------------------------------------- conditions


def test_set_condition_adds_a_new_condition() -> None:
    out = set_condition([], "Indexed", "True", "IndexingSucceeded", "done", NOW, observed_generation=3)
    assert out == [
        {
            "type": "Indexed",
            "status": "True",
            "lastTransitionTime": "2024-01-01T12:00:00Z",
            "reason": "IndexingSucceeded",
            "message": "done",
            "observedGeneration": 3,
        }
    ]


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    before = set_condition([], "Mergeable", "False", "LockHeld", "held", T10)
    later = NOW

    same_status = set_condition(before, "Mergeable", "False", "Expired", "too old", later)
    assert same_status[0]["lastTransitionTime"] == rfc3339(T10)
    assert (same_status[0]["reason"], same_status[0]["message"]) == ("Expired", "too old")

    flipped = set_condition(same_status, "Mergeable", "True", "ChecksPassed", "ok", later)
    assert flipped[0]["lastTransitionTime"] == rfc3339(later)


def test_set_condition_updates_observed_generation() -> None:
    before = set_condition([], "Indexed", "True", "R", "m", T10, observed_generation=1)
    assert set_condition(before, "Indexed", "True", "R", "m", NOW, observed_generation=2)[0]["observedGeneration"] == 2
    assert set_condition(before, "Indexed", "True", "R", "m", NOW)[0]["observedGeneration"] == 1


def test_set_condition_returns_a_new_list_and_keeps_order() -> None:
    original = [
        {
            "type": "A",
            "status": "True",
            "lastTransitionTime": "2024-01-01T00:00:00Z",
            "reason": "R",
            "message": "",
        },
        {
            "type": "B",
            "status": "True",
            "lastTransitionTime": "2024-01-01T00:00:00Z",
            "reason": "R",
            "message": "",
        },
    ]
    snapshot = [dict(c) for c in original]

    out = set_condition(original, "A", "False", "Changed", "m", NOW)

    assert original == snapshot
    assert [c["type"] for c in out] == ["A", "B"]
    assert out[1] == original[1]


def test_plan_preserves_unrelated_conditions_and_their_times() -> None:
    other = {"type": "Custom", "status": "True", "lastTransitionTime": "2023-01-01T00:00:00Z", "reason": "X"}
    locked = {"type": "Locked", "status": "True", "lastTransitionTime": "2023-06-01T00:00:00Z", "reason": "Y"}
    current = status(Phase.LOCKED_FOR_WRITE, conditions=[other, locked])

    plan = plan_indexing_event(current, started("idx-2", at=T1030), now=NOW)

    assert cond(plan, "Custom")["lastTransitionTime"] == "2023-01-01T00:00:00Z"
    # Locked stays True across the supersede, so its transition time must not move.
    assert cond(plan, "Locked")["lastTransitionTime"] == "2023-06-01T00:00:00Z"
    assert cond(plan, "Locked")["reason"] == "IndexingInProgress"


# ---------------------------------------------------------------------------------- manual transitions


@pytest.mark.parametrize(("source", "target"), list(itertools.product(Phase, Phase)))
def test_manual_transitions(source: Phase, target: Phase) -> None:
    verdict = check_manual_transition(source, target)
    if (source, target) in ALLOWED_MANUAL_TRANSITIONS:
        assert verdict is None
    else:
        assert verdict  # a reason a person can act on
    if target is Phase.LOCKED_FOR_WRITE or source is target:
        assert verdict is not None


def test_manual_transitions_documented() -> None:
    assert (Phase.ERROR, Phase.ACTIVE) in ALLOWED_MANUAL_TRANSITIONS
    assert (Phase.LOCKED_FOR_WRITE, Phase.ERROR) in ALLOWED_MANUAL_TRANSITIONS
    assert check_manual_transition(Phase.ACTIVE, Phase.READY) is not None
    assert all(t.why for t in ALLOWED_MANUAL_TRANSITIONS.values())
    # Leaving LOCKED_FOR_WRITE by hand must free the lock a dead run would otherwise hold forever.
    assert ALLOWED_MANUAL_TRANSITIONS[(Phase.LOCKED_FOR_WRITE, Phase.ACTIVE)].release_locks == "all"


# ----------------------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "0.25s"), (42, "42s"), (1800, "30m"), (3725, "1h 2m 5s"), (7200, "2h")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_rfc3339() -> None:
    assert rfc3339(T10) == "2024-01-01T10:00:00Z"
    assert rfc3339(T10.replace(tzinfo=None, microsecond=5)) == "2024-01-01T10:00:00.000005Z"


# --------------------------------------------------------------------------------------------- properties

_ids = st.sampled_from(["idx-1", "idx-2", "idx-3"])
_times = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2024, 1, 2), timezones=st.just(UTC))


@st.composite
def _events(draw: st.DrawFn) -> FakeEvent:
    kind = draw(st.sampled_from(["started", "completed", "failed"]))
    ok = kind == "completed" and draw(st.booleans())
    validation = draw(st.none() | st.builds(FakeValidation, st.booleans(), st.lists(st.text(max_size=30), max_size=5)))
    data = FakeData(
        indexing_id=draw(_ids),
        started_at=draw(st.none() | _times),
        completed_at=draw(st.none() | _times),
        records_indexed=draw(st.none() | st.integers(0, 10**9)),
        validation_results=validation,
    )
    return FakeEvent(
        id=draw(st.sampled_from(["e1", "e2", "e3", "e4"])),
        kind=kind,
        data=data,
        succeeded=ok,
        failed=kind != "started" and not ok,
        duration_seconds=draw(st.none() | st.floats(0, 10**6)),
        occurred_at=draw(st.none() | _times),
    )


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_events(), min_size=1, max_size=8), phase=st.sampled_from(list(Phase)))
def test_any_event_sequence_keeps_status_valid(events: list[FakeEvent], phase: Phase) -> None:
    current = status(phase)
    for event in events:
        plan = plan_indexing_event(current, event, now=NOW)
        after = apply(current, plan)
        if plan.outcome is Outcome.APPLIED:
            assert after.phase is plan.to_phase
            assert after.recent_event_ids[-1] == K(event.id)
        else:
            assert after.phase == current.phase
            assert plan.release_locks == "none"
        assert len(after.recent_event_ids) <= MAX_RECENT_EVENTS
        # Re-planning the same event against the result is always a no-op.
        if plan.status_patch:
            assert plan_indexing_event(after, event, now=NOW).outcome is Outcome.DUPLICATE
        current = after


@pytest.mark.parametrize("kind", [EventKind.COMPLETED, EventKind.FAILED])
def test_a_result_that_may_have_overtaken_its_start_waits(kind: EventKind) -> None:
    current = status(Phase.ACTIVE, indexing_id="idx-1", started_at=T10 - timedelta(hours=1))
    event = make_event(kind, "idx-2")

    waiting = plan_indexing_event(current, event, now=NOW, may_wait=True)
    assert waiting.outcome is Outcome.WAIT
    assert waiting.status_patch == {} and waiting.release_locks == "none" and not waiting.notify
    # Once the caller can no longer redeliver, it is the original design's unexpected state.
    assert plan_indexing_event(current, event, now=NOW, may_wait=False).outcome is Outcome.UNEXPECTED


def test_waiting_never_applies_to_a_started_event_or_a_known_run() -> None:
    current = status(Phase.ACTIVE, indexing_id="idx-1", started_at=T10 - timedelta(hours=1))
    assert plan_indexing_event(current, make_event(EventKind.STARTED, "idx-1"), now=NOW,
                               may_wait=True).outcome is Outcome.STALE
    assert plan_indexing_event(current, make_event(EventKind.FAILED, "idx-1"), now=NOW,
                               may_wait=True).outcome is Outcome.UNEXPECTED
