"""A reference model of what Funnel event streams should do to Branches, for the fault tests.

Pure and deliberately small; it does not use ``branch_operator.domain.lifecycle`` (whose transition
table it is checked against in ``tests/test_reference_model.py``). Its rules:

- Events are applied in causal order: a run's started before its result, a branch's runs one after
  the other (a run may be abandoned: the next one starts before its result arrives).
- An event whose CloudEvent id was seen before is a **duplicate**: no effect at all.
- ``started`` of a run newer than the branch's current run locks the branch (``LOCKED_FOR_WRITE``);
  a ``completed`` of the current run makes it ``READY`` (validation passed or not), a ``failed`` (the
  failed subject, or ``completed`` with ``status: failed``) makes it ``ERROR``.
- Anything about a run older than the current one changes nothing: **stale** — except a result that
  reaches an ``ACTIVE`` branch (there is no run to complete): **unexpected**. Runs are ordered by
  ``started_at``, runs that started in the same instant by indexing id (the operator's one order of runs,
  ``domain.lifecycle.run_precedes``).
- Events for a Branch that does not exist are **unknown_branch**; malformed messages are **dead_lettered**.
- Auto-merge (the policy merges validated branches): once a wave of events has been delivered, every
  ``READY`` branch whose run passed validation is merged exactly once and becomes ``ACTIVE``.

:func:`generate` builds a workload in *waves*: each wave carries at most one run per branch (its
started, its result, re-published copies), shuffled across subjects and branches; the test waits for a
wave to settle before publishing the next, so a run's merge happens before the next run of its branch
starts. The last wave carries late events: results of abandoned runs and late copies of old events.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

Phase = Literal["ACTIVE", "LOCKED_FOR_WRITE", "READY", "ERROR"]
Kind = Literal["started", "completed", "failed"]
# How a run ends: completed with validation passed / failed, completed with status failed, failed subject.
Ending = Literal["passed", "validation_failed", "completed_failed", "failed"]
Outcome = Literal["applied", "duplicate", "stale", "unexpected", "unknown_branch", "dead_lettered"]

OUTCOMES: tuple[Outcome, ...] = ("applied", "duplicate", "stale", "unexpected", "unknown_branch", "dead_lettered")


@dataclass(frozen=True)
class Run:
    branch: str  # OMS branch name
    indexing_id: str
    started_at: datetime
    completed_at: datetime
    ending: Ending


@dataclass(frozen=True)
class Event:
    """One message to publish. ``malformed`` messages carry ``raw`` instead of an event."""

    event_id: str
    branch: str
    kind: Kind  # the subject it goes to
    run: Run
    copy: int = 0  # 0: the original; n: its n-th re-publication (same CloudEvent id)
    malformed: bytes | None = None

    @property
    def effective_kind(self) -> Kind:
        """completed with status failed counts as failed."""
        if self.kind == "completed" and self.run.ending == "completed_failed":
            return "failed"
        return self.kind

    @property
    def passed(self) -> bool:
        return self.run.ending == "passed"


@dataclass
class BranchState:
    phase: Phase = "ACTIVE"
    run: Run | None = None
    passed: bool = False  # the current run's validation (for READY)
    merged_runs: list[str] = field(default_factory=list)


def _older(a: Run, b: Run) -> bool:
    return a.indexing_id != b.indexing_id and (a.started_at, a.indexing_id) < (b.started_at, b.indexing_id)


class Model:
    """The expected fate of every event and the expected state of every branch."""

    def __init__(self, branches: Iterable[str]) -> None:
        self.branches: dict[str, BranchState] = {b: BranchState() for b in branches}
        self.seen: set[str] = set()
        self.outcomes: Counter[Outcome] = Counter()
        self.by_event: dict[str, Outcome] = {}  # first (non-duplicate) outcome per event id

    def apply(self, event: Event) -> Outcome:
        outcome = self._apply(event)
        self.outcomes[outcome] += 1
        if outcome != "duplicate":
            self.by_event.setdefault(event.event_id, outcome)
        return outcome

    def _apply(self, event: Event) -> Outcome:
        if event.malformed is not None:
            return "dead_lettered"
        state = self.branches.get(event.branch)
        if state is None:
            return "unknown_branch"
        if event.event_id in self.seen:
            return "duplicate"
        self.seen.add(event.event_id)
        current = state.run
        kind = event.effective_kind
        if current is not None and _older(event.run, current):
            return "stale"  # a run older than the recorded one: late, whatever the phase
        if kind == "started":
            if current is not None and event.run.indexing_id == current.indexing_id:
                return "stale"  # not produced by generate(): one started per run
            state.phase, state.run, state.passed = "LOCKED_FOR_WRITE", event.run, False
            return "applied"
        # A result: of the current run in causal order (a newer run's only if its started was missed).
        if state.phase == "ACTIVE":
            return "unexpected"
        if current is not None and event.run.indexing_id == current.indexing_id and state.phase != "LOCKED_FOR_WRITE":
            return "stale"  # not produced by generate(): one result per run
        state.run = event.run
        state.phase = "ERROR" if kind == "failed" else "READY"
        state.passed = kind == "completed" and event.passed
        return "applied"

    def settle(self) -> list[tuple[str, str]]:
        """Auto-merge: every READY branch whose run passed validation. Returns (branch, indexing id)."""
        merged = []
        for name, state in self.branches.items():
            if state.phase == "READY" and state.passed and state.run is not None:
                state.phase = "ACTIVE"
                state.merged_runs.append(state.run.indexing_id)
                merged.append((name, state.run.indexing_id))
        return merged

    def phases(self) -> dict[str, Phase]:
        return {name: s.phase for name, s in self.branches.items()}

    def merges(self) -> dict[str, list[str]]:
        return {name: list(s.merged_runs) for name, s in self.branches.items()}


# --------------------------------------------------------------------------------------------- workload


@dataclass
class Workload:
    branches: list[str]  # OMS names of the Branches that exist
    waves: list[list[Event]]  # publication batches, each already shuffled
    unknown_branches: list[str]
    _originals: dict[str, Event] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def events(self) -> list[Event]:
        return [e for wave in self.waves for e in wave]

    def originals(self) -> dict[str, Event]:
        """CloudEvent id -> the event (malformed messages have none)."""
        if self._originals is None:
            self._originals = {e.event_id: e for e in self.events if e.copy == 0 and e.malformed is None}
        return self._originals

    def causal(self, wave: Sequence[Event]) -> list[Event]:
        """The wave in causal order: originals before copies, a run's started before its result."""
        rank = {"started": 0, "completed": 1, "failed": 1}
        return sorted(wave, key=lambda e: (e.copy, e.run.started_at, rank[e.kind]))

    def expected(self) -> tuple[Model, list[dict[str, Phase]]]:
        """The model after the whole workload, and the phases it predicts after each wave."""
        model = Model(self.branches)
        after_wave = []
        for wave in self.waves:
            for event in self.causal(wave):
                model.apply(event)
            model.settle()
            after_wave.append(model.phases())
        return model, after_wave


def k8s_name(branch: str) -> str:
    """The Kubernetes object name the tests give an OMS branch: ``soak/b-007`` -> ``soak-b-007``."""
    return branch.replace("/", "-")


def generate(
    seed: int,
    *,
    branches: int = 100,
    events: int = 1000,
    duplicate_rate: float = 0.10,
    abandon_rate: float = 0.10,
    unknown: int = 5,
    malformed: int = 5,
    prefix: str = "soak",
    start: datetime | None = None,
) -> Workload:
    """Exactly ``events`` messages over ``branches`` branches (see the module docstring).

    Runs per branch are spread so that originals + ~``duplicate_rate`` copies + ``unknown`` +
    ``malformed`` add up to ``events``; each run is two events (started, result).
    """
    rng = random.Random(seed)
    t0 = start or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    names = [f"{prefix}/b-{i:03d}" for i in range(branches)]

    budget = events - unknown - malformed
    originals = round(budget / (1 + duplicate_rate))
    originals -= originals % 2
    total_runs = originals // 2
    if total_runs < branches:
        raise ValueError("fewer runs than branches: raise events or lower branches")
    # Even-ish runs per branch (base +- 2): enough waves to interleave, few enough that a branch's
    # event ids stay within status.recentEventIds (20), so a late copy is still recognised by its id.
    base, extra = divmod(total_runs, branches)
    runs_per = [base + (1 if i < extra else 0) for i in range(branches)]
    rng.shuffle(runs_per)
    lo, hi = max(1, base - 2), base + 2
    for _ in range(branches * 2):
        a, b = rng.randrange(branches), rng.randrange(branches)
        if runs_per[a] > lo and runs_per[b] < hi and a != b:
            runs_per[a] -= 1
            runs_per[b] += 1
    n_waves = max(runs_per)

    waves: list[list[Event]] = [[] for _ in range(n_waves + 1)]  # + the late wave
    late = waves[-1]
    all_events: list[Event] = []
    for name, n in zip(names, runs_per, strict=True):
        offset = rng.randint(0, n_waves - n)
        for j in range(n):
            wave = offset + j
            started = t0 + timedelta(minutes=10 * wave, seconds=rng.randint(0, 59))
            ending: Ending = rng.choices(
                ["passed", "validation_failed", "completed_failed", "failed"], weights=[50, 20, 15, 15])[0]
            run = Run(name, f"{k8s_name(name)}-run{j}", started, started + timedelta(minutes=5), ending)
            begin = Event(str(uuid.UUID(int=rng.getrandbits(128))), name, "started", run)
            end = Event(str(uuid.UUID(int=rng.getrandbits(128))), name,
                        "failed" if ending == "failed" else "completed", run)
            waves[wave].append(begin)
            # An abandoned run's result comes late, after its successor started (so it is stale, or
            # unexpected if the branch is ACTIVE by then). The last run of a branch is never abandoned.
            (late if j < n - 1 and rng.random() < abandon_rate else waves[wave]).append(end)
            all_events += [begin, end]

    dup_count = budget - originals
    for original in rng.sample(all_events, dup_count):
        copy = Event(original.event_id, original.branch, original.kind, original.run, copy=1)
        # Most copies are redeliveries within the run's wave; some come late.
        target = late if rng.random() < 0.3 else next(w for w in waves if original in w)
        target.append(copy)

    for i in range(unknown):
        ghost = f"{prefix}/ghost-{i}"
        started = t0 + timedelta(minutes=rng.randint(0, 10 * n_waves))
        run = Run(ghost, f"ghost-run{i}", started, started + timedelta(minutes=5), "passed")
        kind: Kind = rng.choice(["started", "completed", "failed"])
        if kind == "failed":
            run = Run(ghost, run.indexing_id, started, run.completed_at, "failed")
        waves[rng.randrange(len(waves))].append(Event(str(uuid.UUID(int=rng.getrandbits(128))), ghost, kind, run))

    junk = [b'{"id": "broken", "type": ', b"\xff\xfe not json", b"[]", b'{"specversion": "1.0"}', b"null"]
    for i in range(malformed):
        run = Run("", f"junk-{i}", t0, t0, "failed")
        kind = rng.choice(["started", "completed", "failed"])
        raw = junk[i % len(junk)]
        waves[rng.randrange(len(waves))].append(Event(f"junk-{i}", "", kind, run, malformed=raw))

    for wave in waves:
        rng.shuffle(wave)
    workload = Workload(names, waves, [f"{prefix}/ghost-{i}" for i in range(unknown)])
    assert len(workload.events) == events, (len(workload.events), events)
    return workload


def funnel_event(event: Event, namespace: str | None = None) -> dict[str, object]:
    """The CloudEvent (structured JSON, as a dict) Funnel would publish for ``event``."""
    from branch_operator.cli.publish import build_event

    run = event.run
    if event.kind == "started":
        return build_event("started", event.branch, indexing_id=run.indexing_id, started_at=run.started_at,
                           namespace=namespace, event_id=event.event_id)
    passed = run.ending == "passed"
    return build_event(
        event.kind, event.branch, indexing_id=run.indexing_id, records=1000 + len(run.indexing_id),
        passed=passed, errors=() if passed else [f"{run.indexing_id}: ObjectType User has no key"],
        status="failed" if run.ending in ("completed_failed", "failed") else "success",
        namespace=namespace, event_id=event.event_id, started_at=run.started_at, completed_at=run.completed_at,
    )
