"""The phase changes outside the indexing table: a new Branch, a manual transition, a carried-out merge."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from branch_operator.api.models import Phase
from branch_operator.domain.conditions import find_condition, set_condition
from branch_operator.domain.lifecycle import (
    ALLOWED_MANUAL_TRANSITIONS,
    initial_status,
    manual_transition_status,
    merged_status,
)

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
EARLIER = datetime(2024, 1, 1, 10, 0, 0, tzinfo=UTC)
NOTE = "Set to X by alice: because"


def _conditions(patch: dict[str, Any]) -> dict[str, tuple[Any, Any, Any]]:
    return {c["type"]: (c["status"], c["reason"], c.get("observedGeneration")) for c in patch["conditions"]}


def test_a_new_branch_starts_active_with_every_condition_known() -> None:
    patch = initial_status(4, NOW)
    assert patch["phase"] == Phase.ACTIVE.value
    assert patch["phaseTransitionTime"] == "2024-01-01T12:00:00Z"
    assert patch["observedGeneration"] == 4
    assert _conditions(patch) == {
        "Indexed": ("False", "NotIndexed", 4),
        "Validated": ("Unknown", "NotIndexed", 4),
        "Locked": ("False", "NoLock", 4),
        "Mergeable": ("False", "NotReady", 4),
        "Ready": ("True", "Active", 4),
        "Reconciling": ("False", "NotReconciling", 4),
        "Stalled": ("False", "NotStalled", 4),
    }
    assert [c["type"] for c in patch["conditions"]] == [
        "Indexed", "Validated", "Locked", "Mergeable", "Ready", "Reconciling", "Stalled"]


def test_a_new_branch_without_a_generation_records_none() -> None:
    patch = initial_status(None, NOW)
    assert patch["observedGeneration"] is None
    assert all("observedGeneration" not in c for c in patch["conditions"])


def test_a_merge_moves_the_branch_back_to_active() -> None:
    patch = merged_status(NOW, [], message="Merged into main.", observed_generation=3)
    assert {k: v for k, v in patch.items() if k != "conditions"} == {
        "phase": "ACTIVE", "phaseTransitionTime": "2024-01-01T12:00:00Z", "observedGeneration": 3}
    assert _conditions(patch) == {
        "Ready": ("True", "Active", 3), "Reconciling": ("False", "NotReconciling", 3),
        "Stalled": ("False", "NotStalled", 3)}


@pytest.mark.parametrize(("from_phase", "to_phase"), sorted(ALLOWED_MANUAL_TRANSITIONS, key=str))
def test_every_allowed_manual_transition_sets_the_phase(from_phase: Phase, to_phase: Phase) -> None:
    patch = manual_transition_status([], from_phase, to_phase, note=NOTE, now=NOW, observed_generation=2)
    assert patch["phase"] == to_phase.value
    assert patch["phaseTransitionTime"] == "2024-01-01T12:00:00Z"
    locked = find_condition(patch["conditions"], "Locked")
    if ALLOWED_MANUAL_TRANSITIONS[(from_phase, to_phase)].release_locks == "none":
        assert locked is None
    else:
        assert locked is not None
        assert (locked["status"], locked["reason"], locked["message"]) == (
            "False", "LocksReleased", f"{NOTE}; locks released.")


def test_a_manual_transition_to_ready_leaves_mergeable_to_the_policy() -> None:
    patch = manual_transition_status([], Phase.ERROR, Phase.READY, note=NOTE, now=NOW)
    mergeable = find_condition(patch["conditions"], "Mergeable")
    assert mergeable is not None
    assert (mergeable["status"], mergeable["reason"]) == ("Unknown", "EvaluationPending")


def test_a_manual_transition_elsewhere_blocks_merging_and_says_who() -> None:
    patch = manual_transition_status([], Phase.ACTIVE, Phase.ERROR, note=NOTE, now=NOW)
    mergeable = find_condition(patch["conditions"], "Mergeable")
    assert mergeable is not None
    assert (mergeable["status"], mergeable["reason"], mergeable["message"]) == ("False", "SetByAdmin", f"{NOTE}.")


def test_a_manual_transition_keeps_the_other_conditions() -> None:
    before = set_condition([], "Indexed", "True", "IndexingSucceeded", "done", EARLIER, observed_generation=1)
    patch = manual_transition_status(before, Phase.READY, Phase.ACTIVE, note=NOTE, now=NOW, observed_generation=2)
    assert patch["conditions"][0] == before[0]


@pytest.mark.parametrize(("from_phase", "to_phase"), [
    (Phase.ACTIVE, Phase.READY), (Phase.READY, Phase.READY), (Phase.ERROR, Phase.LOCKED_FOR_WRITE)])
def test_a_refused_manual_transition_builds_no_patch(from_phase: Phase, to_phase: Phase) -> None:
    with pytest.raises(ValueError, match=r"not allowed|already"):
        manual_transition_status([], from_phase, to_phase, note=NOTE, now=NOW)
