"""Branch lifecycle: how a Funnel indexing event moves a Branch between phases.

Pure logic, no I/O. :func:`plan_indexing_event` turns (current status, event) into an
:class:`EventPlan` that says everything the I/O layer must do: the status merge patch, which locks to
release and acquire, the Kubernetes Event to record, whether to notify, and the audit action. The I/O
layer executes plans; it never decides. No other module writes ``status.phase``: a new Branch's status
(:func:`initial_status`), an admin's set-state (:func:`manual_transition_status`) and a merge's READY -> ACTIVE
(:func:`merged_status`) are built here too.

Runs are identified by ``indexing_id``. An event is compared with the run recorded in
``status.indexing.indexingId``: **same** run or **other** run (no recorded run counts as other).
Funnel is assumed to give every retry a fresh ``indexing_id``; an event for the recorded run that the
table does not apply is therefore a late or re-published copy of something already applied.

Transition table (:data:`TRANSITIONS`; LOCKED = LOCKED_FOR_WRITE, ``*`` = same or other)::

    from    event      run    outcome     to      why
    ACTIVE  started    other  Applied     LOCKED  new run
    ACTIVE  started    same   Stale       -       late started of a run already merged
    ACTIVE  completed  other  Unexpected  -       no run to complete (the original design's case) [Wait]
    ACTIVE  completed  same   Duplicate   -       run already completed and merged
    ACTIVE  failed     other  Unexpected  -       no run to fail [Wait]
    ACTIVE  failed     same   Unexpected  -       a merged run reported failed: needs a person
    LOCKED  started    other  Applied     LOCKED  newer run supersedes (the INDEXING lock moves)
    LOCKED  started    same   Duplicate   -       run already in progress
    LOCKED  completed  *      Applied     READY   run completed (other: its started was missed)
    LOCKED  failed     *      Applied     ERROR   run failed (other: its started was missed)
    READY   started    other  Applied     LOCKED  new run
    READY   started    same   Stale       -       late started of a run already completed
    READY   completed  other  Applied     READY   newer run completed; its started was missed
    READY   completed  same   Duplicate   -       completion already applied
    READY   failed     *      Applied     ERROR   a failure report always wins over success
    ERROR   started    other  Applied     LOCKED  new run (retry)
    ERROR   started    same   Stale       -       late started of a run already failed
    ERROR   completed  other  Applied     READY   newer run completed; its started was missed
    ERROR   completed  same   Unexpected  -       success reported for a failed run: contradictory
    ERROR   failed     other  Applied     ERROR   another run failed: record it
    ERROR   failed     same   Duplicate   -       failure already applied

Rules applied around the table, in this order:

1. Idempotency: an event whose key (source and id: :func:`~branch_operator.domain.indexing_event.event_key`)
   is in ``status.recentEventIds`` or equals ``status.indexing.eventId`` is a ``Duplicate`` whatever the
   table says.
2. The table.
3. Staleness: an ``Applied`` row for an *other* run is downgraded to ``Stale`` when the event's run
   is older than the recorded run, or (a ``started``) older than the run of a kept result. Funnel's
   three subjects are consumed independently, so an old run's events can arrive after a newer run's;
   without this an old result would overwrite a newer one, or an old run's ``started`` would throw away
   the kept result of a newer run and leave the branch locked for a run that already ended. Stale
   events change nothing but are recorded (``event.stale``).
4. Overtaking: rows marked ``[Wait]`` become ``Wait`` when the caller can still redeliver the event
   (``may_wait``): a result may simply have overtaken its run's started event. The consumer redelivers
   it with backoff a few times; once that budget is spent the row applies as written.

**Run order** (:func:`run_precedes`, the only comparison of runs): by ``startedAt``; two runs that
started in the same instant by indexing id (the smaller string is the older run), so every arrival order
and every replica agrees. A run whose ``startedAt`` is unknown is not ordered against any: the event is
taken as the newer one (arrival order), as nothing better is known.

**Kept results** (``status.pendingResult``): a result that reaches an ``ACTIVE`` branch with no run to
apply to is kept until its run's ``started`` arrives; that ``started`` applies, then the kept result.
A result of a run older than the kept one's is stale (the kept one stays). A newer run's result replaces
it, and any applied event of another run drops it, except a ``started`` of an older run, which is stale.
Every drop is reported in :attr:`EventPlan.discarded` (the I/O layer audits it as ``event.discarded``)
and its id remembered, so a late copy is a duplicate rather than kept again.

A Branch with no phase yet is treated as ACTIVE (what :func:`initial_status` gives it).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from branch_operator.api.models import (
    MAX_RECENT_EVENTS,
    BranchStatus,
    ConditionType,
    IndexingResult,
    IndexingStatus,
    LockType,
    PendingResult,
    Phase,
)
from branch_operator.domain.audit import AuditAction
from branch_operator.domain.conditions import ConditionStatus, bounded_errors, describe_errors, set_condition
from branch_operator.domain.indexing_event import IndexingEventLike, ValidationLike, event_key
from branch_operator.domain.readiness import branch_readiness
from branch_operator.domain.timefmt import format_duration, rfc3339, to_utc

__all__ = [
    "ALLOWED_MANUAL_TRANSITIONS",
    "TRANSITIONS",
    "Discard",
    "EventKind",
    "EventPlan",
    "ManualTransition",
    "Outcome",
    "ReleaseLocks",
    "Rule",
    "RunMatch",
    "abandoned_run_status",
    "check_manual_transition",
    "effective_kind",
    "indexing_duration",
    "initial_status",
    "manual_transition_status",
    "merged_status",
    "plan_indexing_event",
    "run_precedes",
]

ReleaseLocks = Literal["none", "indexing", "all"]


# --------------------------------------------------------------------------------- transition table


class EventKind(enum.StrEnum):
    """The effective kind: a ``completed`` event carrying ``status: failed`` plans as ``failed``."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"


class RunMatch(enum.StrEnum):
    SAME = "same"
    OTHER = "other"


class Outcome(enum.StrEnum):
    APPLIED = "Applied"
    DUPLICATE = "Duplicate"  # the same event (or run result) again: nothing to do, nothing to record
    STALE = "Stale"  # a late event of an older or finished run: nothing changes, but it is recorded
    UNEXPECTED = "Unexpected"
    WAIT = "Wait"  # may have overtaken its started event: redeliver later before calling it unexpected


@dataclass(frozen=True, slots=True)
class Rule:
    outcome: Outcome
    to_phase: Phase | None  # None unless Applied: the phase is left alone
    why: str


def _rule(outcome: Outcome, why: str, to_phase: Phase | None = None) -> Rule:
    return Rule(outcome, to_phase, why)


_A, _D, _S, _U = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE, Outcome.UNEXPECTED
_ACTIVE, _LOCKED, _READY, _ERROR = Phase.ACTIVE, Phase.LOCKED_FOR_WRITE, Phase.READY, Phase.ERROR
_STARTED, _COMPLETED, _FAILED = EventKind.STARTED, EventKind.COMPLETED, EventKind.FAILED
_SAME, _OTHER = RunMatch.SAME, RunMatch.OTHER
_COND_INDEXED, _COND_VALIDATED = ConditionType.INDEXED, ConditionType.VALIDATED
_COND_LOCKED, _COND_MERGEABLE = ConditionType.LOCKED, ConditionType.MERGEABLE

TRANSITIONS: Mapping[tuple[Phase, EventKind, RunMatch], Rule] = MappingProxyType(
    {
        (_ACTIVE, _STARTED, _OTHER): _rule(_A, "a new indexing run started", _LOCKED),
        (_ACTIVE, _STARTED, _SAME): _rule(_S, "late started event of a run that already finished"),
        (_ACTIVE, _COMPLETED, _OTHER): _rule(_U, "the branch is ACTIVE: no indexing run to complete"),
        (_ACTIVE, _COMPLETED, _SAME): _rule(_D, "the run already completed and the branch was merged"),
        (_ACTIVE, _FAILED, _OTHER): _rule(_U, "the branch is ACTIVE: no indexing run to fail"),
        (_ACTIVE, _FAILED, _SAME): _rule(_U, "a run already merged was reported failed"),
        (_LOCKED, _STARTED, _OTHER): _rule(_A, "a newer run supersedes the one in progress", _LOCKED),
        (_LOCKED, _STARTED, _SAME): _rule(_D, "the run is already in progress"),
        (_LOCKED, _COMPLETED, _SAME): _rule(_A, "the indexing run completed", _READY),
        (_LOCKED, _COMPLETED, _OTHER): _rule(_A, "a run whose start was missed completed", _READY),
        (_LOCKED, _FAILED, _SAME): _rule(_A, "the indexing run failed", _ERROR),
        (_LOCKED, _FAILED, _OTHER): _rule(_A, "a run whose start was missed failed", _ERROR),
        (_READY, _STARTED, _OTHER): _rule(_A, "a new indexing run started", _LOCKED),
        (_READY, _STARTED, _SAME): _rule(_S, "late started event of a run that already completed"),
        (_READY, _COMPLETED, _OTHER): _rule(_A, "a newer run completed; its start was missed", _READY),
        (_READY, _COMPLETED, _SAME): _rule(_D, "the completion was already applied"),
        # A producer disowning a result it reported as good must never leave the branch mergeable.
        (_READY, _FAILED, _SAME): _rule(_A, "the completed run was reported failed", _ERROR),
        (_READY, _FAILED, _OTHER): _rule(_A, "a newer run failed; its start was missed", _ERROR),
        (_ERROR, _STARTED, _OTHER): _rule(_A, "a new indexing run started after a failure", _LOCKED),
        (_ERROR, _STARTED, _SAME): _rule(_S, "late started event of a run that already failed"),
        (_ERROR, _COMPLETED, _OTHER): _rule(_A, "a newer run completed; its start was missed", _READY),
        (_ERROR, _COMPLETED, _SAME): _rule(_U, "success reported for a run recorded as failed"),
        (_ERROR, _FAILED, _OTHER): _rule(_A, "another indexing run failed", _ERROR),
        (_ERROR, _FAILED, _SAME): _rule(_D, "the failure was already applied"),
    }
)


# ------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Discard:
    """A kept result (``status.pendingResult``) that this plan drops without applying it."""

    event_key: str  # as remembered in status (domain.indexing_event.event_key)
    event_id: str  # its CloudEvent id
    indexing_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class EventPlan:
    """Everything the I/O layer does for one event.

    Locks: acquire ``acquire_lock`` first, then release ``release_locks`` except the lock just taken,
    so a superseded run's INDEXING lock is replaced without the branch ever being unlocked in between.
    ``status_patch`` is empty for ``Duplicate``; for ``Unexpected`` it only records the event id, so a
    redelivery is recognised as a duplicate rather than warned about again.
    """

    outcome: Outcome
    kind: EventKind
    event_id: str
    indexing_id: str
    from_phase: Phase
    to_phase: Phase  # == from_phase unless Applied
    status_patch: dict[str, Any]  # JSON merge patch for `status`; {} = write nothing
    release_locks: ReleaseLocks  # "indexing": the branch's INDEXING locks; "all": every lock it has
    event_type: Literal["Normal", "Warning"]
    event_reason: str
    event_message: str
    audit_action: AuditAction
    reason: str
    acquire_lock: LockType | None = None
    lock_indexing_id: str | None = None  # spec.indexingId of the lock to acquire
    notify: bool = False
    park: bool = False  # keep the event in status.pendingResult until its run's started event arrives
    discarded: Discard | None = None  # the kept result this plan drops unapplied (to be audited)

    @property
    def applied(self) -> bool:
        return self.outcome is Outcome.APPLIED

    @property
    def phase_changed(self) -> bool:
        return self.from_phase is not self.to_phase


def plan_indexing_event(
    status: BranchStatus,
    event: IndexingEventLike,
    *,
    now: datetime,
    observed_generation: int | None = None,
    may_wait: bool = False,
) -> EventPlan:
    """Plan the effect of ``event`` on a Branch whose current status is ``status``.

    ``may_wait``: the caller can redeliver the event later, so a result that has no run to apply to
    yet is answered with ``Wait`` instead of ``Unexpected``.
    """
    kind = effective_kind(event)
    from_phase = status.phase or Phase.ACTIVE
    recorded = status.indexing or IndexingStatus()
    indexing_id = event.data.indexing_id
    same_run = recorded.indexing_id is not None and recorded.indexing_id == indexing_id
    match = RunMatch.SAME if same_run else RunMatch.OTHER

    parked = status.pending_result
    key = event_key(event.source, event.id)  # what status remembers: CloudEvent ids are unique per source only
    if key in status.recent_event_ids or key == recorded.event_id:
        rule = _rule(Outcome.DUPLICATE, f"event {event.id} was already applied")
    elif parked is not None and parked.event_id == key and recorded.indexing_id != parked.indexing_id:
        # Its run has not started yet: a redelivered copy of a result already kept.
        rule = _rule(Outcome.DUPLICATE, f"event {event.id} is already kept until its run starts")
    elif same_run and recorded.result is IndexingResult.ABANDONED:
        # An admin ended this run (abandoned_run_status): whatever it reports later comes too late.
        rule = _rule(Outcome.STALE, f"run {indexing_id} was abandoned by an admin")
    else:
        rule = TRANSITIONS[(from_phase, kind, match)]
        if rule.outcome is Outcome.APPLIED and match is RunMatch.OTHER and _is_older(event, recorded):
            rule = _rule(
                Outcome.STALE,
                f"run {indexing_id} started before the recorded run {recorded.indexing_id}",
            )
        elif rule.outcome is Outcome.APPLIED and kind is EventKind.STARTED and _older_than_kept(event, parked):
            assert parked is not None
            # Applying it would drop the kept result of a run Funnel already reported ended.
            rule = _rule(
                Outcome.STALE,
                f"run {indexing_id} started before run {parked.indexing_id}, whose result is kept",
            )
        elif (
            may_wait
            and rule.outcome is Outcome.UNEXPECTED
            and match is RunMatch.OTHER
            and kind is not EventKind.STARTED
        ):
            # Funnel's subjects are consumed independently: the started event of this run may still be
            # on its way. Waiting a little turns an overtaking result into an ordinary one.
            rule = _rule(Outcome.WAIT, f"{rule.why}; waiting for the started event of run {indexing_id}")

    if rule.outcome is Outcome.DUPLICATE or rule.outcome is Outcome.WAIT:
        return _ignored_plan(rule, kind, event, from_phase, patch={})
    if rule.outcome is Outcome.STALE:
        remember = {"recentEventIds": _remember(status.recent_event_ids, key)}
        return _ignored_plan(rule, kind, event, from_phase, patch=remember)
    if rule.outcome is Outcome.UNEXPECTED:
        if from_phase is Phase.ACTIVE and match is RunMatch.OTHER and kind is not EventKind.STARTED:
            if _is_older(event, recorded):
                # A result of a run older than the one recorded can never apply: late, not early.
                rule = _rule(Outcome.STALE, f"run {indexing_id} started before the recorded run "
                                            f"{recorded.indexing_id}")
                remember = {"recentEventIds": _remember(status.recent_event_ids, key)}
                return _ignored_plan(rule, kind, event, from_phase, patch=remember)
            if _older_than_kept(event, parked):
                assert parked is not None
                rule = _rule(Outcome.STALE, f"run {indexing_id} started before run {parked.indexing_id}, "
                                            "whose result is kept")
                remember = {"recentEventIds": _remember(status.recent_event_ids, key)}
                return _ignored_plan(rule, kind, event, from_phase, patch=remember)
            # A result with no run to apply to: no transition (the original design's unexpected state), but
            # it is kept (the I/O layer adds ``pendingResult``) in case its started event is only late.
            rule = _rule(Outcome.UNEXPECTED, f"{rule.why}; kept until run {indexing_id} starts")
            keep: dict[str, Any] = {}
            discarded = None
            if parked is not None and parked.event_id != key:
                # It replaces another kept result: remember that one, so a later copy of it is a duplicate.
                keep["recentEventIds"] = _remember(status.recent_event_ids, parked.event_id)
                discarded = Discard(parked.event_id, _kept_id(parked), parked.indexing_id,
                                    f"replaced by the result of run {indexing_id}, kept in its place")
            plan = _ignored_plan(rule, kind, event, from_phase, patch=keep)
            return replace(plan, park=True, audit_action=AuditAction.EVENT_PENDING, discarded=discarded)
        # Recording the id makes a redelivery a quiet Duplicate instead of a second Warning.
        remember = {"recentEventIds": _remember(status.recent_event_ids, key)}
        return _ignored_plan(rule, kind, event, from_phase, patch=remember)

    to_phase = rule.to_phase
    if to_phase is None:  # pragma: no cover - TRANSITIONS invariant, checked by the tests
        raise AssertionError(f"applied rule without a target phase: {rule}")
    patch: dict[str, Any] = {"phase": to_phase.value}
    if to_phase is not from_phase:
        patch["phaseTransitionTime"] = rfc3339(now)
    # Every applied event starts or ends a run, which makes any earlier merge evaluation meaningless.
    patch["merge"] = None
    patch["recentEventIds"] = _remember(status.recent_event_ids, key)
    discarded = None
    if parked is not None and (kind is not EventKind.STARTED or parked.indexing_id != indexing_id):
        # Applied now, or belongs to a run that this (not older) run supersedes.
        patch["pendingResult"] = None
        if parked.event_id != key:
            # Dropped unapplied: remember its id so a later copy is a duplicate, not kept again.
            patch["recentEventIds"] = _remember(_remember(status.recent_event_ids, parked.event_id), key)
            discarded = Discard(parked.event_id, _kept_id(parked), parked.indexing_id,
                                f"superseded by run {indexing_id} ({kind.value} {event.id})")
    conditions = [c.wire() for c in status.conditions]

    def applied(release: ReleaseLocks, type_: Literal["Normal", "Warning"], reason: str, message: str,
                action: AuditAction, *, acquire: bool = False, notify: bool = False) -> EventPlan:
        patch["conditions"] = branch_readiness(conditions, to_phase, message=message, now=now,
                                               observed_generation=observed_generation)
        if observed_generation is not None:
            patch["observedGeneration"] = observed_generation
        return EventPlan(outcome=Outcome.APPLIED, kind=kind, event_id=event.id, indexing_id=indexing_id,
                         from_phase=from_phase, to_phase=to_phase, status_patch=patch, release_locks=release,
                         event_type=type_, event_reason=reason, event_message=message, audit_action=action,
                         reason=rule.why, acquire_lock=LockType.INDEXING if acquire else None,
                         lock_indexing_id=indexing_id if acquire else None, notify=notify,
                         discarded=discarded)

    def cond(type_: ConditionType, st: ConditionStatus, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, st, reason, message, now, observed_generation)

    validation = event.data.validation_results
    errors = bounded_errors(validation.errors) if validation is not None else []
    # What Funnel reported, not what the status can hold: "50 of 102 errors", never "50 errors".
    errors_total = len(validation.errors) + validation.errors_dropped if validation is not None else 0
    records = event.data.records_indexed
    run = f"Indexing run {indexing_id}"
    described = describe_errors(errors, errors_total)

    if kind is EventKind.STARTED:
        patch["indexing"] = {
            "indexingId": indexing_id, "eventId": key,
            "startedAt": rfc3339(event.data.started_at or event.occurred_at or now),
            **dict.fromkeys(("completedAt", "durationSeconds", "recordsIndexed", "result", "validation")),
        }
        cond(_COND_LOCKED, "True", "IndexingInProgress", f"{run} in progress holds the INDEXING lock.")
        cond(_COND_INDEXED, "False", "IndexingInProgress", f"{run} in progress.")
        cond(_COND_VALIDATED, "Unknown", "IndexingInProgress", f"{run} in progress.")
        cond(_COND_MERGEABLE, "False", "IndexingInProgress", f"{run} in progress.")
        superseded = recorded.indexing_id if from_phase is Phase.LOCKED_FOR_WRITE else None
        message = f"{run} started"
        message += f", superseding run {superseded}" if superseded else ""
        message += "; branch locked for write."
        # Every other INDEXING lock goes: normally only a superseded run's exists, but one left by an
        # interrupted release must not outlive its run either.
        return applied("indexing", "Normal", "IndexingStarted", message, AuditAction.INDEXING_STARTED,
                       acquire=True)

    # completed or failed: the run is over.
    started_at = event.data.started_at
    if started_at is None and match is RunMatch.SAME:
        started_at = recorded.started_at
    completed_at = event.data.completed_at or event.occurred_at or now
    duration = event.duration_seconds
    if duration is None or duration < 0:
        duration = indexing_duration(started_at, completed_at)
    indexing: dict[str, Any] = {"indexingId": indexing_id, "eventId": key, "completedAt": rfc3339(completed_at),
                                "durationSeconds": duration, "recordsIndexed": records}
    if event.data.started_at is not None or match is RunMatch.OTHER:
        # For another run the recorded start belongs to someone else: replace it, even with null.
        indexing["startedAt"] = rfc3339(started_at) if started_at is not None else None
    facts = _run_facts(records, duration)
    result = IndexingResult.SUCCESS if kind is EventKind.COMPLETED else IndexingResult.FAILED
    indexing["result"] = result.value
    indexing["validation"] = {"passed": validation.passed, "errors": errors} if validation is not None else None
    if validation is not None and errors_total > len(errors):
        # Only then: a run's validation is replaced whole (its started event cleared the last one).
        indexing["validation"]["errorsTotal"] = errors_total
    patch["indexing"] = indexing

    if kind is EventKind.COMPLETED:
        cond(_COND_INDEXED, "True", "IndexingSucceeded", f"{run} completed{facts}.")
        if validation is None:
            cond(_COND_VALIDATED, "Unknown", "NoValidationResults", f"{run} reported no validation results.")
        elif validation.passed:
            cond(_COND_VALIDATED, "True", "ValidationPassed", f"{run} passed validation.")
        else:
            cond(_COND_VALIDATED, "False", "ValidationFailed", f"{run} failed validation: {described}.")
        cond(_COND_LOCKED, "False", "LockReleased", f"{run} released its INDEXING lock.")
        cond(_COND_MERGEABLE, "Unknown", "EvaluationPending", "Waiting for the auto-merge policy evaluation.")
        validation_failed = validation is not None and not validation.passed
        return applied("indexing", "Warning" if validation_failed else "Normal", "IndexingCompleted",
                       f"{run} completed{facts}, {_validation_phrase(validation, errors, errors_total)}.",
                       AuditAction.INDEXING_COMPLETED)

    cond(_COND_INDEXED, "False", "IndexingFailed", f"{run} failed{facts}.")
    if validation is None:
        cond(_COND_VALIDATED, "Unknown", "IndexingFailed", f"{run} failed without validation results.")
    elif validation.passed:
        cond(_COND_VALIDATED, "True", "ValidationPassed", f"{run} passed validation.")
    else:
        cond(_COND_VALIDATED, "False", "ValidationFailed", f"{run} failed validation: {described}.")
    cond(_COND_LOCKED, "False", "LocksReleased", f"{run} failed; all locks released.")
    cond(_COND_MERGEABLE, "False", "IndexingFailed", f"{run} failed.")
    detail = f" ({_validation_phrase(validation, errors, errors_total)})" if validation is not None else ""
    return applied("all", "Warning", "IndexingFailed", f"{run} failed{facts}{detail}; all locks released.",
                   AuditAction.INDEXING_FAILED, notify=True)


def effective_kind(event: IndexingEventLike) -> EventKind:
    """``failed`` for a failed subject or a completed event reporting failure."""
    if event.failed:
        return EventKind.FAILED
    raw = getattr(event.kind, "value", event.kind)
    try:
        kind = EventKind(raw)
    except ValueError:
        raise ValueError(f"unknown indexing event kind {raw!r}") from None
    if kind is EventKind.FAILED:
        return kind
    if kind is EventKind.COMPLETED and not event.succeeded:
        # Neither succeeded nor failed: the parser could not tell; refusing beats guessing READY.
        raise ValueError(f"completed event {event.id} reports neither success nor failure")
    return kind


def _ignored_plan(
    rule: Rule, kind: EventKind, event: IndexingEventLike, phase: Phase, *, patch: dict[str, Any]
) -> EventPlan:
    indexing_id = event.data.indexing_id
    quiet = rule.outcome is not Outcome.UNEXPECTED
    what = f"indexing {kind.value} event {event.id} for run {indexing_id}"
    label = {Outcome.DUPLICATE: "duplicate ", Outcome.STALE: "stale "}.get(rule.outcome, "")
    return EventPlan(
        outcome=rule.outcome,
        kind=kind,
        event_id=event.id,
        indexing_id=indexing_id,
        from_phase=phase,
        to_phase=phase,
        status_patch=patch,
        release_locks="none",
        event_type="Normal" if quiet else "Warning",
        event_reason={Outcome.DUPLICATE: "DuplicateEvent", Outcome.STALE: "StaleEvent",
                      Outcome.WAIT: "EventDeferred"}.get(rule.outcome, "UnexpectedEvent"),
        event_message=f"Ignored {label}{what} in phase {phase.value}: {rule.why}.",
        audit_action={Outcome.DUPLICATE: AuditAction.EVENT_DUPLICATE, Outcome.STALE: AuditAction.EVENT_STALE,
                      Outcome.WAIT: AuditAction.EVENT_DEFERRED}.get(rule.outcome, AuditAction.EVENT_UNEXPECTED),
        reason=rule.why,
    )


def run_precedes(a_started: datetime | None, a_id: str, b_started: datetime | None, b_id: str) -> bool:
    """Whether run ``a`` is older than run ``b``: the one order of runs (see the module docstring)."""
    if a_started is None or b_started is None or a_id == b_id:
        return False
    a_at, b_at = to_utc(a_started), to_utc(b_started)
    return a_at < b_at or (a_at == b_at and a_id < b_id)


def _is_older(event: IndexingEventLike, recorded: IndexingStatus) -> bool:
    if recorded.indexing_id is None:
        return False
    return run_precedes(event.data.started_at, event.data.indexing_id, recorded.started_at, recorded.indexing_id)


def _older_than_kept(event: IndexingEventLike, parked: PendingResult | None) -> bool:
    if parked is None:
        return False
    return run_precedes(event.data.started_at, event.data.indexing_id, _kept_started_at(parked), parked.indexing_id)


def _kept_started_at(parked: PendingResult) -> datetime | None:
    """``data.started_at`` of the kept CloudEvent; None when it has none (or it cannot be read)."""
    try:
        value = json.loads(parked.event)["data"]["started_at"]
        return to_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except (ValueError, KeyError, TypeError):
        return None


def _kept_id(parked: PendingResult) -> str:
    """The CloudEvent id of the kept event (its key when the stored event cannot be read)."""
    try:
        return str(json.loads(parked.event)["id"])
    except (ValueError, KeyError, TypeError):
        return parked.event_id


def _remember(recent: Sequence[str], event_id: str) -> list[str]:
    kept = [i for i in recent if i != event_id]
    kept.append(event_id)
    return kept[-MAX_RECENT_EVENTS:]


# ---------------------------------------------------------------------------------- manual transitions


@dataclass(frozen=True, slots=True)
class ManualTransition:
    why: str
    release_locks: ReleaseLocks


ALLOWED_MANUAL_TRANSITIONS: Mapping[tuple[Phase, Phase], ManualTransition] = MappingProxyType(
    {
        # Recovery from a failed run: reopen for writes (abandon it) or accept its data after a person
        # checked it. ERROR -> READY still goes through the merge policy, so validation still gates.
        (Phase.ERROR, Phase.ACTIVE): ManualTransition("abandon the failed run and reopen the branch", "all"),
        (Phase.ERROR, Phase.READY): ManualTransition("accept the run's index after manual review", "all"),
        # Decline to merge an indexed result, or reject it after the fact.
        (Phase.READY, Phase.ACTIVE): ManualTransition("discard the indexed result without merging", "all"),
        (Phase.READY, Phase.ERROR): ManualTransition("reject the indexed result", "all"),
        # A run whose completed/failed event will never come (Funnel crashed) would lock the branch forever.
        (Phase.LOCKED_FOR_WRITE, Phase.ERROR): ManualTransition("mark a stuck indexing run failed", "all"),
        (Phase.LOCKED_FOR_WRITE, Phase.ACTIVE): ManualTransition("cancel a stuck indexing run", "all"),
        # Quarantine: stop a branch from being merged until someone looks at it.
        (Phase.ACTIVE, Phase.ERROR): ManualTransition("quarantine the branch", "none"),
    }
)

# Why the remaining pairs are refused: each would claim a fact only an indexing run can establish.
_REFUSED_MANUAL: Mapping[tuple[Phase, Phase], str] = MappingProxyType(
    {
        (Phase.ACTIVE, Phase.READY): "READY means an indexing run completed; ACTIVE has none to vouch for",
        (Phase.LOCKED_FOR_WRITE, Phase.READY): "the indexing run has not completed; mark it ERROR or wait",
        (Phase.ACTIVE, Phase.LOCKED_FOR_WRITE): "only an indexing run takes the INDEXING lock",
        (Phase.READY, Phase.LOCKED_FOR_WRITE): "only an indexing run takes the INDEXING lock",
        (Phase.ERROR, Phase.LOCKED_FOR_WRITE): "only an indexing run takes the INDEXING lock",
    }
)


def check_manual_transition(from_phase: Phase, to_phase: Phase) -> str | None:
    """None if an administrator may move a Branch from ``from_phase`` to ``to_phase``, else why not."""
    if from_phase is to_phase:
        return f"the branch is already {to_phase.value}"
    if (from_phase, to_phase) in ALLOWED_MANUAL_TRANSITIONS:
        return None
    why = _REFUSED_MANUAL.get((from_phase, to_phase), "not an allowed manual transition")
    return f"{from_phase.value} -> {to_phase.value} is not allowed: {why}"


def manual_transition_status(
    conditions: Sequence[Mapping[str, Any]],
    from_phase: Phase,
    to_phase: Phase,
    *,
    note: str,
    now: datetime,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """The ``status`` merge patch for an allowed manual transition; ``note`` says who asked and why."""
    why_not = check_manual_transition(from_phase, to_phase)
    if why_not is not None:
        raise ValueError(why_not)
    rule = ALLOWED_MANUAL_TRANSITIONS[(from_phase, to_phase)]
    if rule.release_locks != "none":
        conditions = set_condition(conditions, _COND_LOCKED, "False", "LocksReleased", f"{note}; locks released.",
                                   now, observed_generation)
    mergeable: tuple[ConditionStatus, str, str] = (
        ("Unknown", "EvaluationPending", "Waiting for the auto-merge policy evaluation.")
        if to_phase is Phase.READY else ("False", "SetByAdmin", f"{note}.")
    )
    conditions = set_condition(conditions, _COND_MERGEABLE, *mergeable, now, observed_generation)
    return {
        "phase": to_phase.value,
        "phaseTransitionTime": rfc3339(now),
        "conditions": branch_readiness(conditions, to_phase, message=f"{note}.", now=now,
                                       observed_generation=observed_generation),
        **_observed(observed_generation),
    }


def abandoned_run_status(
    conditions: Sequence[Mapping[str, Any]],
    *,
    note: str,
    now: datetime,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """The ``status`` merge patch when an admin force-releases the running run's INDEXING lock.

    The lock *is* the run: without it LOCKED_FOR_WRITE would claim a lock that no longer exists, so the run
    ends, as a failure (ERROR: nobody vouches for its data). ``indexing.result: abandoned`` keeps the run id,
    so anything it reports later plans as Stale. ``note`` says which run, who and why.
    """
    for type_, reason, message in (
        (_COND_LOCKED, "LocksReleased", f"{note}; its INDEXING lock was released."),
        (_COND_INDEXED, "IndexingAbandoned", f"{note}."),
        (_COND_VALIDATED, "IndexingAbandoned", f"{note}."),
        (_COND_MERGEABLE, "IndexingAbandoned", f"{note}."),
    ):
        status: ConditionStatus = "Unknown" if type_ is _COND_VALIDATED else "False"
        conditions = set_condition(conditions, type_, status, reason, message, now, observed_generation)
    return {
        "phase": Phase.ERROR.value,
        "phaseTransitionTime": rfc3339(now),
        "indexing": {"result": IndexingResult.ABANDONED.value},
        "conditions": branch_readiness(conditions, Phase.ERROR, message=f"{note}.", now=now,
                                       observed_generation=observed_generation),
        **_observed(observed_generation),
    }


# ------------------------------------------------------------------------------ creation and merging


_INITIAL_CONDITIONS: tuple[tuple[ConditionType, ConditionStatus, str], ...] = (
    (_COND_INDEXED, "False", "NotIndexed"),
    (_COND_VALIDATED, "Unknown", "NotIndexed"),
    (_COND_LOCKED, "False", "NoLock"),
    (_COND_MERGEABLE, "False", "NotReady"),
)


def initial_status(generation: int | None, now: datetime) -> dict[str, Any]:
    """The ``status`` a new Branch is initialised with: ACTIVE, with every condition known."""
    conditions: list[dict[str, Any]] = []
    for type_, st, reason in _INITIAL_CONDITIONS:
        conditions = set_condition(conditions, type_, st, reason, "", now, observed_generation=generation)
    return {
        "phase": Phase.ACTIVE.value,
        "phaseTransitionTime": rfc3339(now),
        "observedGeneration": generation,
        "conditions": branch_readiness(conditions, Phase.ACTIVE, message="The branch is active.", now=now,
                                       observed_generation=generation),
    }


def merged_status(
    now: datetime, conditions: Sequence[Mapping[str, Any]], *, message: str, observed_generation: int | None,
) -> dict[str, Any]:
    """The phase part of the ``status`` patch that records a carried-out merge: READY -> ACTIVE.

    ``conditions`` is the list the merge patch writes; it comes back with the ACTIVE phase's readiness.
    """
    return {
        "phase": Phase.ACTIVE.value,
        "phaseTransitionTime": rfc3339(now),
        "conditions": branch_readiness(conditions, Phase.ACTIVE, message=message, now=now,
                                       observed_generation=observed_generation),
        **_observed(observed_generation),
    }


def _observed(generation: int | None) -> dict[str, Any]:
    # Written with the status it describes: an observedGeneration ahead of its conditions would tell
    # kstatus and `kubectl wait` that they are current when they are not.
    return {} if generation is None else {"observedGeneration": generation}


# --------------------------------------------------------------------------------------- small helpers


def indexing_duration(started_at: datetime | None, completed_at: datetime | None) -> float | None:
    """Seconds from start to completion; None when unknown or negative (clock skew, not a duration)."""
    if started_at is None or completed_at is None:
        return None
    seconds = (to_utc(completed_at) - to_utc(started_at)).total_seconds()
    return seconds if seconds >= 0 else None


def _run_facts(records: int | None, duration: float | None) -> str:
    out = ""
    if records is not None:
        out += f": {records:,} record{'s' if records != 1 else ''} indexed"
    if duration is not None:
        out += f" in {format_duration(duration)}" if out else f" after {format_duration(duration)}"
    return out


def _validation_phrase(validation: ValidationLike | None, errors: Sequence[str], total: int) -> str:
    if validation is None:
        return "no validation results reported"
    if validation.passed:
        return "validation passed"
    return f"validation failed with {describe_errors(errors, total)}"
