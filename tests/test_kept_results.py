"""Results kept in status.pendingResult and the order of runs: a kept result of a newer run is never
thrown away by an older run's events, runs are ordered one way (startedAt, then indexing id), and a
kept result that is dropped is said so."""

from __future__ import annotations

import itertools
import random
from collections import deque
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branch_operator.domain.lifecycle import Outcome as PlanOutcome

from .reference_model import Event, Model, Run
from .test_reference_model import T0, PlannerBranches

B = "kept/x"


def _runs(same_start: bool = False) -> tuple[Run, Run]:
    r1 = Run(B, "idx-1", T0, T0 + timedelta(minutes=20), "passed")
    second = T0 if same_start else T0 + timedelta(minutes=5)
    r2 = Run(B, "idx-2", second, second + timedelta(minutes=20), "passed")
    return r1, r2


def _burst(same_start: bool = False) -> list[Event]:
    r1, r2 = _runs(same_start)
    return [Event(f"{r.indexing_id}-{k}", B, k, r) for r in (r1, r2) for k in ("started", "completed")]  # type: ignore[arg-type]


def _deliver(events: list[Event], wait_budget: int) -> PlannerBranches:
    """What the consumer does: a ``wait`` is redelivered later until ``wait_budget`` deliveries are spent."""
    planner = PlannerBranches([B])
    queue = deque((e, 1) for e in events)
    while queue:
        event, delivered = queue.popleft()
        if planner.handle(event, may_wait=delivered < wait_budget) == "wait":
            queue.append((event, delivered + 1))
    return planner


def _run_of(planner: PlannerBranches) -> str | None:
    return (planner.status[B].get("indexing") or {}).get("indexingId")


def test_an_older_runs_started_keeps_the_newer_runs_result() -> None:
    """The reported case: completed idx-2 kept; started idx-1, started idx-2, completed idx-1."""
    r1, r2 = _runs()
    planner = PlannerBranches([B])
    assert planner.handle(Event("c2", B, "completed", r2), may_wait=False) == "unexpected"  # kept
    assert planner.status[B]["pendingResult"]["indexingId"] == "idx-2"
    assert planner.handle(Event("s1", B, "started", r1), may_wait=False) == "stale"
    assert planner.status[B]["pendingResult"]["indexingId"] == "idx-2"  # still kept
    planner.handle(Event("s2", B, "started", r2), may_wait=False)  # ...and the kept result applies after it
    assert planner.handle(Event("c1", B, "completed", r1), may_wait=False) == "stale"
    assert planner.phases() == {B: "READY"} and _run_of(planner) == "idx-2"
    assert "pendingResult" not in planner.status[B]


def test_an_older_runs_result_does_not_replace_a_kept_newer_one() -> None:
    r1, r2 = _runs()
    planner = PlannerBranches([B])
    planner.handle(Event("c2", B, "completed", r2), may_wait=False)
    assert planner.handle(Event("c1", B, "completed", r1), may_wait=False) == "stale"
    assert planner.status[B]["pendingResult"]["indexingId"] == "idx-2"


@pytest.mark.parametrize("wait_budget", [1, 4], ids=["no-wait", "wait"])
@pytest.mark.parametrize("same_start", [False, True], ids=["ordered-by-start", "tie-by-id"])
def test_every_order_of_two_runs_ends_with_the_newer_run(wait_budget: int, same_start: bool) -> None:
    """(started r1, started r2, completed r1, completed r2) in all 24 orders: READY with idx-2, nothing kept."""
    for order in itertools.permutations(_burst(same_start)):
        planner = _deliver(list(order), wait_budget)
        ended = (planner.phases()[B], _run_of(planner), planner.status[B].get("pendingResult"))
        assert ended == ("READY", "idx-2", None), [f"{e.kind} {e.run.indexing_id}" for e in order]


@settings(max_examples=60, deadline=None)
@given(order=st.randoms(use_true_random=False), copies=st.lists(st.integers(0, 3), max_size=3),
       wait_budget=st.sampled_from([1, 2, 4]))
def test_redelivered_copies_in_any_order_end_with_the_newer_run(
    order: random.Random, copies: list[int], wait_budget: int
) -> None:
    """SIGKILLs redeliver messages after ack_wait: copies anywhere in the burst change nothing."""
    events = _burst()
    events += [events[i] for i in copies]
    planner = _deliver(order.sample(events, len(events)), wait_budget)
    assert (planner.phases()[B], _run_of(planner), planner.status[B].get("pendingResult")) == (
        "READY", "idx-2", None)


def test_runs_with_the_same_start_are_ordered_by_indexing_id_whatever_arrives_first() -> None:
    r1, r2 = _runs(same_start=True)
    for first, second in ((r1, r2), (r2, r1)):
        planner = PlannerBranches([B])
        planner.handle(Event(f"s-{first.indexing_id}", B, "started", first), may_wait=False)
        planner.handle(Event(f"s-{second.indexing_id}", B, "started", second), may_wait=False)
        assert _run_of(planner) == "idx-2"


def test_the_model_orders_runs_the_same_way() -> None:
    r1, r2 = _runs(same_start=True)
    model = Model([B])
    assert model.apply(Event("s2", B, "started", r2)) == "applied"
    assert model.apply(Event("s1", B, "started", r1)) == "stale"


def test_a_dropped_kept_result_is_reported_in_the_plan() -> None:
    """Every discard is audited: the plan that drops a kept result names it and says why."""
    from branch_operator.api.models import BranchStatus
    from branch_operator.contracts.funnel import parse_message
    from branch_operator.contracts.funnel_encode import encode_structured
    from branch_operator.domain.lifecycle import plan_indexing_event

    from .reference_model import funnel_event

    r1, r2 = _runs()
    planner = PlannerBranches([B])
    planner.handle(Event("c1", B, "completed", r1), may_wait=False)  # kept
    payload, headers = encode_structured(funnel_event(Event("s2", B, "started", r2)))
    newer = parse_message("funnel.indexing.started", payload, headers)
    plan = plan_indexing_event(BranchStatus.model_validate(planner.status[B]), newer, now=T0)
    assert plan.outcome is PlanOutcome.APPLIED and plan.status_patch["pendingResult"] is None
    assert plan.discarded is not None and plan.discarded.indexing_id == "idx-1"
    assert "idx-2" in plan.discarded.reason

    # A newer result replacing a kept older one is a discard too.
    payload, headers = encode_structured(funnel_event(Event("c2", B, "completed", r2)))
    result = parse_message("funnel.indexing.completed", payload, headers)
    plan = plan_indexing_event(BranchStatus.model_validate(planner.status[B]), result, now=T0)
    assert plan.park and plan.discarded is not None and plan.discarded.indexing_id == "idx-1"
