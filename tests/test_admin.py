"""Admin requests: parsing the annotations, finding the requester, and the decisions (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from branch_operator.api.models import BranchStatus, Phase
from branch_operator.contracts.funnel import parse_message
from branch_operator.contracts.funnel_encode import make_event
from branch_operator.domain import admin
from branch_operator.domain.lifecycle import (
    ALLOWED_MANUAL_TRANSITIONS,
    Outcome,
    check_manual_transition,
    plan_indexing_event,
)
from branch_operator.domain.text import escape_controls, has_control, safe_text
from branch_operator.embedded.apiserver.patch import merge_patch  # what the API server applies

NOW = datetime(2025, 6, 26, 12, 0, tzinfo=UTC)


def branch(phase: str | None = "ACTIVE", **annotations: str) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [
        {"type": "Locked", "status": "True", "reason": "IndexingInProgress",
         "lastTransitionTime": "2025-06-26T10:00:00Z"},
        {"type": "Mergeable", "status": "False", "reason": "NotReady",
         "lastTransitionTime": "2025-06-26T10:00:00Z"},
    ]}
    if phase:
        status["phase"] = phase
    return {"metadata": {"name": "b", "namespace": "oms", "generation": 3, "annotations": annotations},
            "spec": {"branchName": "feature/b"}, "status": status}


def lock(name: str, lock_type: str, branch_name: str = "b") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"branch": branch_name, "lockType": lock_type, "holder": "x"}}


def request(action: admin.AdminAction, value: str, reason: str = "because") -> admin.AdminRequest:
    return admin.AdminRequest(action, value, reason, "alice", "r1")


# ------------------------------------------------------------------------------------------- parsing


def test_no_request() -> None:
    assert admin.parse_request({"annotations": {"oms.dev/reason": "orphan reason"}}) is None
    assert not admin.has_request({"oms.dev/merge-request": "ship"})  # the reconciler's, not ours


def test_parse_set_state_with_requester_and_id() -> None:
    meta = branch(**{"oms.dev/set-state": " error ", "oms.dev/reason": " stuck run ",
                     "oms.dev/requested-by": "alice", "oms.dev/request-id": "abc"})["metadata"]
    assert admin.parse_request(meta) == admin.AdminRequest(admin.AdminAction.SET_STATE, "error", "stuck run",
                                                           "alice", "abc")


@pytest.mark.parametrize(("annotations", "why"), [
    ({"oms.dev/set-state": "ERROR"}, "needs a reason"),
    ({"oms.dev/force-unlock": "all", "oms.dev/reason": "   "}, "needs a reason"),
    ({"oms.dev/force-unlock": "all", "oms.dev/set-state": "ERROR", "oms.dev/reason": "x"}, "one admin action"),
])
def test_invalid_requests_say_why(annotations: dict[str, str], why: str) -> None:
    result = admin.parse_request({"annotations": annotations})
    assert isinstance(result, str) and why in result


def test_an_invalid_request_still_says_what_was_attempted() -> None:
    """Refusals are audited per attempted action, so even a request that cannot be parsed names its parts."""
    meta = {"annotations": {"oms.dev/set-state": "ERROR", "oms.dev/force-unlock": "all", "oms.dev/reason": "x",
                            "oms.dev/requested-by": "bob", "oms.dev/request-id": "r9"}}
    assert admin.attempted(meta) == [
        admin.AdminRequest(admin.AdminAction.FORCE_UNLOCK, "all", "x", "bob", "r9"),
        admin.AdminRequest(admin.AdminAction.SET_STATE, "ERROR", "x", "bob", "r9"),
    ]
    no_reason = admin.attempted({"annotations": {"oms.dev/set-state": "ERROR"}})
    assert no_reason == [admin.AdminRequest(admin.AdminAction.SET_STATE, "ERROR", "", "unknown", None)]
    assert admin.attempted({"annotations": {"oms.dev/reason": "orphan"}}) == []


def test_requester_from_managed_fields() -> None:
    managed = [
        {"manager": "kube-controller", "operation": "Update", "time": "2025-06-26T11:00:00Z",
         "fieldsV1": {"f:metadata": {"f:labels": {}}}},
        {"manager": "kubectl-annotate", "operation": "Update", "time": "2025-06-26T10:00:00Z",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:oms.dev/set-state": {}, "f:oms.dev/reason": {}}}}},
        {"manager": "oms-branch-operator", "operation": "Update", "subresource": "status",
         "time": "2025-06-26T11:30:00Z", "fieldsV1": {"f:status": {}}},
    ]
    meta = {"annotations": {"oms.dev/set-state": "ERROR", "oms.dev/reason": "x"}, "managedFields": managed}
    req = admin.parse_request(meta)
    assert isinstance(req, admin.AdminRequest) and req.requested_by == "kubectl-annotate"
    # Nobody touched that annotation per managedFields: the latest writer; nothing at all: unknown.
    assert admin.last_manager(managed, "oms.dev/force-unlock") == "oms-branch-operator"
    assert admin.parse_request({"annotations": {"oms.dev/force-unlock": "all", "oms.dev/reason": "x"}}).requested_by \
        == "unknown"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------- force-unlock


def test_force_unlock_all_releases_every_lock() -> None:
    d = admin.decide(request(admin.AdminAction.FORCE_UNLOCK, "all"), branch("READY"),
                     [lock("w", "WRITE"), lock("m", "MERGE"), lock("other", "WRITE", "another-branch")], NOW)
    assert d.applied and d.release == ["m", "w"] and d.from_phase == d.to_phase == "READY"
    assert d.status_patch == {"lastAdminAction": {
        "action": "force-unlock", "requestedBy": "alice", "reason": "because", "at": "2025-06-26T12:00:00Z",
        "result": "released 2 locks: m, w", "requestId": "r1"}}


def test_force_unlock_by_name_or_type() -> None:
    locks = [lock("w", "WRITE"), lock("m", "MERGE")]
    assert admin.decide(request(admin.AdminAction.FORCE_UNLOCK, "merge"), branch(), locks, NOW).release == ["m"]
    assert admin.decide(request(admin.AdminAction.FORCE_UNLOCK, "w"), branch(), locks, NOW).release == ["w"]
    refused = admin.decide(request(admin.AdminAction.FORCE_UNLOCK, "w,zzz"), branch(), locks, NOW)
    assert refused.refused == "no lock zzz on this branch (held: m, w)" and refused.status_patch == {}


def running(run: str = "idx-5") -> dict[str, Any]:
    b = branch("LOCKED_FOR_WRITE")
    b["status"]["indexing"] = {"indexingId": run, "eventId": "ev-start", "startedAt": "2025-06-26T11:00:00Z"}
    return b


def test_force_unlock_of_a_running_runs_indexing_lock_abandons_the_run() -> None:
    """Force forces: the run's INDEXING lock goes, and with it the run (ERROR), as lifecycle decides."""
    locks = [lock("idx", "INDEXING"), lock("w", "WRITE")]
    req = admin.AdminRequest(admin.AdminAction.FORCE_UNLOCK, "INDEXING", "Funnel is gone", "alice", "r1")
    d = admin.decide(req, running(), locks, NOW)
    assert d.applied and d.release == ["idx"]
    assert (d.from_phase, d.to_phase) == ("LOCKED_FOR_WRITE", "ERROR")
    said = "indexing run idx-5 abandoned by alice: Funnel is gone"
    assert said in d.result and d.status_patch["phase"] == "ERROR"
    conditions = {c["type"]: c for c in d.status_patch["conditions"]}
    assert conditions["Locked"]["status"] == "False" and conditions["Mergeable"]["status"] == "False"
    assert conditions["Indexed"]["reason"] == "IndexingAbandoned" and said in conditions["Indexed"]["message"]
    assert d.status_patch["indexing"] == {"result": "abandoned"}
    BranchStatus.model_validate(d.status_patch)  # what the CRD accepts
    every = admin.decide(request(admin.AdminAction.FORCE_UNLOCK, "all"), running(), locks, NOW)
    assert every.release == ["idx", "w"] and every.to_phase == "ERROR"
    # An INDEXING lock left behind on a branch that is no longer indexing just goes.
    stale = admin.decide(request(admin.AdminAction.FORCE_UNLOCK, "INDEXING"), branch("READY"), locks, NOW)
    assert stale.release == ["idx"] and stale.to_phase == "READY" and "abandoned" not in stale.result
    # Releasing only another lock while the run goes on leaves the run alone.
    write = admin.decide(request(admin.AdminAction.FORCE_UNLOCK, "WRITE"), running(), locks, NOW)
    assert write.release == ["w"] and write.to_phase == "LOCKED_FOR_WRITE" and "phase" not in write.status_patch


@pytest.mark.parametrize("kind", ["completed", "failed", "started"])
def test_later_events_of_an_abandoned_run_are_stale(kind: str) -> None:
    before = running()
    d = admin.decide(request(admin.AdminAction.FORCE_UNLOCK, "INDEXING"), before, [lock("idx", "INDEXING")], NOW)
    after = BranchStatus.model_validate(merge_patch(before["status"], d.status_patch))
    subject = f"funnel.indexing.{kind}"
    event = parse_message(subject, json.dumps(make_event(kind, "feature/b", "idx-5", event_id=f"late-{kind}",
                                                         started_at="2025-06-26T11:00:00Z")).encode(), None)
    plan = plan_indexing_event(after, event, now=NOW, may_wait=True)
    assert plan.outcome is Outcome.STALE and plan.to_phase is Phase.ERROR, plan.reason
    # A new run is welcome.
    newer = parse_message("funnel.indexing.started", json.dumps(make_event(
        "started", "feature/b", "idx-6", event_id="new", started_at="2025-06-26T12:30:00Z")).encode(), None)
    assert plan_indexing_event(after, newer, now=NOW).outcome is Outcome.APPLIED




def test_force_unlock_without_locks_is_refused() -> None:
    d = admin.decide(request(admin.AdminAction.FORCE_UNLOCK, ""), branch(), [], NOW)
    assert d.refused == "the branch holds no locks"


# ---------------------------------------------------------------------------------------- set-state


def test_set_state_error_to_active_releases_locks_and_records() -> None:
    d = admin.decide(request(admin.AdminAction.SET_STATE, "active"), branch("ERROR"), [lock("w", "WRITE")], NOW)
    assert d.applied and (d.from_phase, d.to_phase) == ("ERROR", "ACTIVE") and d.release == ["w"]
    patch = d.status_patch
    assert patch["phase"] == "ACTIVE" and patch["phaseTransitionTime"] == "2025-06-26T12:00:00Z"
    conditions = {c["type"]: c for c in patch["conditions"]}
    assert conditions["Locked"]["status"] == "False" and conditions["Locked"]["reason"] == "LocksReleased"
    assert conditions["Mergeable"]["reason"] == "SetByAdmin" and "alice" in conditions["Mergeable"]["message"]
    assert patch["lastAdminAction"]["result"] == ("ERROR -> ACTIVE (abandon the failed run and reopen the branch); "
                                                  "released w")
    BranchStatus.model_validate(patch)  # what the CRD accepts


def test_set_state_to_ready_leaves_mergeable_to_the_policy() -> None:
    d = admin.decide(request(admin.AdminAction.SET_STATE, "READY"), branch("ERROR"), [], NOW)
    mergeable = next(c for c in d.status_patch["conditions"] if c["type"] == "Mergeable")
    assert (mergeable["status"], mergeable["reason"]) == ("Unknown", "EvaluationPending")


def test_quarantine_keeps_locks() -> None:
    d = admin.decide(request(admin.AdminAction.SET_STATE, "ERROR"), branch("ACTIVE"), [lock("w", "WRITE")], NOW)
    assert d.applied and d.release == []
    assert next(c for c in d.status_patch["conditions"] if c["type"] == "Locked")["status"] == "True"


@pytest.mark.parametrize(("phase", "target", "why"), [
    ("ACTIVE", "READY", "ACTIVE -> READY is not allowed"),
    ("READY", "LOCKED_FOR_WRITE", "only an indexing run takes the INDEXING lock"),
    ("ERROR", "ERROR", "already ERROR"),
    ("ERROR", "DONE", "unknown state 'DONE'"),
    (None, "READY", "ACTIVE -> READY"),  # no phase yet = ACTIVE
])
def test_set_state_refusals(phase: str | None, target: str, why: str) -> None:
    d = admin.decide(request(admin.AdminAction.SET_STATE, target), branch(phase), [lock("w", "WRITE")], NOW)
    assert not d.applied and why in (d.refused or "") and d.release == [] and d.status_patch == {}


def test_the_manual_table_covers_every_pair() -> None:
    """Every (from, to) pair is either allowed with a reason or refused with one; none falls through."""
    for current in Phase:
        for target in Phase:
            why_not = check_manual_transition(current, target)
            assert (why_not is None) == ((current, target) in ALLOWED_MANUAL_TRANSITIONS)
            if why_not is not None:
                assert "not an allowed manual transition" not in why_not, (current, target)


# ------------------------------------------------------------------------------------ hostile text

FORGED_LINE = ("alice\n2025-06-26 12:00:00,000 INFO branch_operator.admin_exec: default/inj-1: "
               "admin set-state ACTIVE by alice: OK")
TERMINAL = "\x1b[2J\x1b[31mall good\x1b[0m \u202eevil"


def test_admin_text_is_escaped_and_bounded() -> None:
    """What an admin annotation says reaches logs, Events, audit records and status only escaped and cut."""
    meta = {"annotations": {"oms.dev/set-state": "X" * 100_000, "oms.dev/reason": TERMINAL + "r" * 5000,
                            "oms.dev/requested-by": FORGED_LINE + "w" * 1000, "oms.dev/request-id": "r1\nforged"}}
    req = admin.parse_request(meta)
    assert isinstance(req, admin.AdminRequest)
    for text in (req.value, req.reason, req.requested_by, req.request_id or ""):
        assert not has_control(text), text
    assert req.requested_by.startswith(escape_controls(FORGED_LINE)) and len(req.requested_by) == 253
    assert req.reason.startswith(escape_controls(TERMINAL)) and len(req.reason) == admin.MAX_REASON
    assert len(req.value) == admin.MAX_VALUE and req.request_id == "r1\\nforged"
    refused = admin.decide(req, branch(), [], NOW)
    assert not refused.applied and len(refused.refused or "") < 2 * admin.MAX_QUOTED
    assert len(admin.describe(req)) < 2 * admin.MAX_QUOTED


def test_the_requester_named_in_a_refusal_is_escaped_too() -> None:
    who = admin.requester_of({"annotations": {"oms.dev/requested-by": FORGED_LINE}})
    assert who == escape_controls(FORGED_LINE)
    managed = [{"manager": "kubectl\x1b[31m", "time": "2025-06-26T10:00:00Z"}]
    assert admin.requester_of({"annotations": {}, "managedFields": managed}) == "kubectl\\x1b[31m"
    req = admin.parse_request({"annotations": {"oms.dev/force-unlock": "all", "oms.dev/reason": "x"},
                               "managedFields": managed})
    assert isinstance(req, admin.AdminRequest) and req.requested_by == "kubectl\\x1b[31m"


def test_safe_text_escapes_before_it_cuts() -> None:
    assert safe_text("  a\nb  ", 10) == "a\\nb"
    assert safe_text("\x1b" * 10, 9) == "\\x1b\\x1b…"  # the limit holds for what is shown
    assert safe_text("fine", 4) == "fine"


def test_a_merge_request_is_escaped_and_bounded_too() -> None:
    from branch_operator.controllers.merge import manual_request

    req = manual_request({"annotations": {"oms.dev/merge-request": TERMINAL + "m" * 5000,
                                          "oms.dev/requested-by": FORGED_LINE}})
    assert req is not None and req.requested_by == escape_controls(FORGED_LINE)
    assert req.reason.startswith(escape_controls(TERMINAL)) and len(req.reason) == 1024
