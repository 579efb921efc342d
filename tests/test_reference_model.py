"""The reference model of the fault tests (tests/reference_model.py), and its agreement with the
operator's own transition table (domain.states) — in causal order and in shuffled order."""

from __future__ import annotations

import json
import random
from collections import Counter, deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branch_operator.api.models import BranchStatus
from branch_operator.contracts.funnel import parse_message
from branch_operator.contracts.funnel_encode import encode_structured
from branch_operator.domain.lifecycle import Outcome as PlanOutcome
from branch_operator.domain.lifecycle import plan_indexing_event

from .reference_model import Event, Model, Run, Workload, funnel_event, generate

T0 = datetime(2025, 6, 26, 10, 0, tzinfo=UTC)


def run(branch: str, n: int, ending: str = "passed") -> Run:
    started = T0 + timedelta(minutes=10 * n)
    return Run(branch, f"{branch}-run{n}", started, started + timedelta(minutes=5), ending)  # type: ignore[arg-type]


def ev(r: Run, kind: str, eid: str | None = None) -> Event:
    return Event(eid or f"{r.indexing_id}-{kind}", r.branch, kind, r)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- the model


def test_run_lifecycle_and_single_merge() -> None:
    m = Model(["a"])
    r = run("a", 0)
    assert m.apply(ev(r, "started")) == "applied"
    assert m.phases() == {"a": "LOCKED_FOR_WRITE"}
    assert m.apply(ev(r, "completed")) == "applied"
    assert m.phases() == {"a": "READY"}
    assert m.settle() == [("a", r.indexing_id)]
    assert m.settle() == []  # merged once
    assert m.phases() == {"a": "ACTIVE"} and m.merges() == {"a": [r.indexing_id]}


@pytest.mark.parametrize(("ending", "kind", "phase"), [
    ("validation_failed", "completed", "READY"),
    ("completed_failed", "completed", "ERROR"),
    ("failed", "failed", "ERROR"),
])
def test_endings_that_do_not_merge(ending: str, kind: str, phase: str) -> None:
    m = Model(["a"])
    r = run("a", 0, ending)
    m.apply(ev(r, "started"))
    assert m.apply(ev(r, kind)) == "applied"
    assert m.settle() == []
    assert m.phases() == {"a": phase} and m.merges() == {"a": []}


def test_duplicates_are_no_ops() -> None:
    m = Model(["a"])
    r = run("a", 0)
    start = ev(r, "started")
    assert m.apply(start) == "applied"
    assert m.apply(start) == "duplicate"
    m.apply(ev(r, "completed"))
    m.settle()
    assert m.apply(start) == "duplicate" and m.apply(ev(r, "completed")) == "duplicate"
    assert m.phases() == {"a": "ACTIVE"}
    assert m.outcomes == Counter({"applied": 2, "duplicate": 3})
    assert m.by_event == {start.event_id: "applied", f"{r.indexing_id}-completed": "applied"}


def test_older_runs_are_stale_even_when_active() -> None:
    m = Model(["a"])
    old, new = run("a", 0), run("a", 1)
    m.apply(ev(old, "started"))
    assert m.apply(ev(new, "started")) == "applied"  # supersedes the abandoned run
    assert m.apply(ev(old, "completed")) == "stale"
    assert m.phases() == {"a": "LOCKED_FOR_WRITE"}
    m.apply(ev(new, "completed"))
    m.settle()
    late_failure = ev(old, "failed", "late-failure")
    assert m.apply(late_failure) == "stale"  # a run older than the recorded one: late, even when ACTIVE
    assert m.phases() == {"a": "ACTIVE"} and m.merges() == {"a": [new.indexing_id]}


def test_older_result_on_ready_or_error_branch_is_stale() -> None:
    m = Model(["a", "b"])
    for name, ending in (("a", "validation_failed"), ("b", "failed")):
        old, new = run(name, 0), run(name, 1, ending)
        m.apply(ev(old, "started"))
        m.apply(ev(new, "started"))
        m.apply(ev(new, "failed" if ending == "failed" else "completed"))
        assert m.apply(ev(old, "completed")) == "stale"
    assert m.phases() == {"a": "READY", "b": "ERROR"}


def test_unknown_branch_and_malformed() -> None:
    m = Model(["a"])
    assert m.apply(ev(run("ghost", 0), "started")) == "unknown_branch"
    assert m.apply(Event("junk", "", "completed", run("", 0), malformed=b"{")) == "dead_lettered"


# ------------------------------------------------------------------------------------------- workload


def test_generate_shape() -> None:
    at = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)  # fixed: two calls must not straddle a clock second
    w = generate(7, start=at)
    events = w.events
    assert len(events) == 1000 and len(w.branches) == 100
    originals = [e for e in events if e.copy == 0 and e.malformed is None and e.branch in w.branches]
    copies = [e for e in events if e.copy]
    assert 0.08 <= len(copies) / len(events) <= 0.12
    assert {e.event_id for e in copies} <= {e.event_id for e in originals}
    assert len({e.event_id for e in originals}) == len(originals)
    assert sum(e.malformed is not None for e in events) == 5
    assert sum(e.branch in w.unknown_branches for e in events) == 5
    runs = Counter((e.branch, e.run.indexing_id) for e in originals)
    assert set(runs.values()) == {2}  # started + one result per run
    per_branch = Counter(b for b, _ in runs)
    assert set(per_branch) == set(w.branches) and max(per_branch.values()) - min(per_branch.values()) <= 4
    for wave in w.waves[:-1]:  # at most one run per branch per wave
        wave_runs = {(e.branch, e.run.indexing_id) for e in wave if e.copy == 0 and e.branch in w.branches}
        assert len(wave_runs) == len({b for b, _ in wave_runs})
    assert generate(7, start=at).events == events and generate(8, start=at).events != events


def test_generated_workload_exercises_every_outcome() -> None:
    model, _ = generate(7).expected()
    # No "unexpected": late results of older runs on ACTIVE branches are stale, and results that overtake
    # their started are kept for it.
    assert set(model.outcomes) == {"applied", "duplicate", "stale", "unknown_branch", "dead_lettered"}
    assert sum(model.outcomes.values()) == 1000
    assert sum(len(r) for r in model.merges().values()) > 50
    assert set(model.phases().values()) == {"ACTIVE", "READY", "ERROR"}


def test_last_run_of_a_branch_is_never_late() -> None:
    w = generate(11)
    late = {(e.branch, e.run.indexing_id) for e in w.waves[-1] if e.copy == 0 and e.branch in w.branches}
    last_run = {}
    for e in w.events:
        if e.branch in w.branches:
            current = last_run.get(e.branch)
            if current is None or e.run.started_at > current.started_at:
                last_run[e.branch] = e.run
    assert not late & {(b, r.indexing_id) for b, r in last_run.items()}


# ------------------------------------------------- agreement with the operator's table (domain.states)


def _merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_patch(out[key], value)
        else:
            out[key] = value
    return out


class PlannerBranches:
    """domain.states.plan_indexing_event applied to in-memory statuses, plus the merge the policy makes."""

    def __init__(self, branches: list[str]) -> None:
        self.status: dict[str, dict[str, Any]] = {b: {"phase": "ACTIVE"} for b in branches}
        self.merged: Counter[str] = Counter()
        self.parked: dict[str, Event] = {}

    def handle(self, event: Event, *, may_wait: bool) -> str:
        if event.malformed is not None:
            return "dead_lettered"
        if event.branch not in self.status:
            return "unknown_branch"
        payload, headers = encode_structured(funnel_event(event))
        parsed = parse_message(f"funnel.indexing.{event.kind}", payload, headers)
        status = self.status[event.branch]
        before = (status.get("pendingResult") or {}).get("indexingId")
        plan = plan_indexing_event(BranchStatus.model_validate(status), parsed, now=T0, may_wait=may_wait)
        if plan.status_patch:
            self.status[event.branch] = _merge_patch(status, json.loads(json.dumps(plan.status_patch)))
        if plan.park:  # what the processor does: keep the result until its run's started arrives
            self.status[event.branch] = {**self.status[event.branch], "pendingResult": {
                "eventId": parsed.id, "indexingId": parsed.data.indexing_id,
                "subject": f"funnel.indexing.{event.kind}", "event": payload.decode()}}
            self.parked[event.branch] = event
        kept = self.parked.get(event.branch)
        if (plan.outcome is PlanOutcome.APPLIED and event.kind == "started" and kept is not None
                and kept.run.indexing_id == event.run.indexing_id == before):  # as the processor: from the status
            del self.parked[event.branch]
            self.handle(kept, may_wait=False)  # ...and apply it right after that started
        return {PlanOutcome.APPLIED: "applied", PlanOutcome.DUPLICATE: "duplicate", PlanOutcome.STALE: "stale",
                PlanOutcome.UNEXPECTED: "unexpected", PlanOutcome.WAIT: "wait"}[plan.outcome]

    def settle(self) -> None:
        for name, status in self.status.items():
            indexing = status.get("indexing") or {}
            if (status["phase"] == "READY" and indexing.get("result") == "success"
                    and (indexing.get("validation") or {}).get("passed")):
                status["phase"] = "ACTIVE"
                self.merged[name] += 1

    def phases(self) -> dict[str, str]:
        return {name: s["phase"] for name, s in self.status.items()}


def _small(seed: int) -> Workload:
    return generate(seed, branches=12, events=120, unknown=2, malformed=2, prefix="m")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_model_agrees_with_the_transition_table_in_causal_order(seed: int) -> None:
    w = _small(seed)
    model = Model(w.branches)
    planner = PlannerBranches(w.branches)
    for wave in w.waves:
        for event in w.causal(wave):
            assert planner.handle(event, may_wait=False) == model.apply(event), event
        model.settle()
        planner.settle()
        assert planner.phases() == model.phases()
    assert dict(planner.merged) == {b: len(r) for b, r in model.merges().items() if r}


def deliver_shuffled(w: Workload, rng: random.Random, wait_budget: int = 4) -> tuple[PlannerBranches, Counter[str]]:
    """Each wave in its shuffled order; a ``wait`` goes to the back of the queue (a nak with delay),
    until ``wait_budget`` deliveries are spent: what the consumer does."""
    planner = PlannerBranches(w.branches)
    final: Counter[str] = Counter()
    for wave in w.waves:
        queue = deque((e, 1) for e in rng.sample(wave, len(wave)))
        while queue:
            event, delivered = queue.popleft()
            outcome = planner.handle(event, may_wait=delivered < wait_budget)
            if outcome == "wait":
                queue.append((event, delivered + 1))
            else:
                final[outcome] += 1
        planner.settle()
    return planner, final


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), order=st.randoms(use_true_random=False))
def test_shuffled_delivery_ends_where_the_model_says(seed: int, order: random.Random) -> None:
    """The property the e2e soak relies on: within a wave any delivery order (with the consumer's
    wait-and-redeliver for results that overtake their started) reaches the model's final state and merges;
    only applied/stale may trade places (a started overtaken by its own run's result is stale)."""
    w = _small(seed)
    model, _ = w.expected()
    planner, final = deliver_shuffled(w, order)
    assert planner.phases() == model.phases()
    assert dict(planner.merged) == {b: len(r) for b, r in model.merges().items() if r}
    expected = model.outcomes
    assert sum(final.values()) == sum(expected.values())
    for outcome in ("unknown_branch", "dead_lettered"):
        assert final[outcome] == expected[outcome], outcome
    # A result kept for its late started (pendingResult) is labelled when it arrives, not when it is applied,
    # so applied/stale/duplicate/unexpected may trade places; the states and merges above may not.
    moving = ("applied", "stale", "duplicate", "unexpected")
    assert sum(final[o] for o in moving) == sum(expected[o] for o in moving)
