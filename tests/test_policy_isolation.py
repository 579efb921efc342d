"""One invalid AutoMergePolicy never stops the decisions or the status of the others.

The decisions are made as the operator makes them: every policy object of the namespace is read as the
policy index reads it (a spec the schema refuses is left out), the rest reviewed, one selected per Branch
and the merge decided; the status of every policy as the status keeper computes it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from branch_operator.api.models import AutoMergePolicySpec, IndexingStatus, Phase, ValidationStatus
from branch_operator.cli.simulate import render, simulate
from branch_operator.domain.merge import PolicyRef, evaluate_merge, review_policies, select_policy
from branch_operator.domain.merge.trace import policy_statuses
from branch_operator.domain.windows import parse_duration

NOW = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)  # a Monday
INDEXING = IndexingStatus(indexing_id="idx-1", event_id="evt-1", completed_at=NOW - timedelta(hours=1),
                          validation=ValidationStatus(passed=True), records_indexed=10)
BRANCHES = [
    ("a", "feature/a", "main", {}),
    ("b", "feature/b", "main", {"team": "x"}),
    ("c", "hotfix/c", "release/1", {}),
    ("d", "team/x/d", "main", {"team": "y"}),
]


def _policy_obj(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": 1}, "spec": spec}


def _branch_obj(name: str, branch_name: str, target: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"branchName": branch_name, "targetBranch": target},
            "status": {"phase": "READY", "indexing": INDEXING.model_dump(mode="json", by_alias=True)}}


def decide_all(objs: list[dict[str, Any]]) -> dict[str, tuple[str, list[str], str | None]]:
    refs = []
    for obj in objs:
        try:
            spec = AutoMergePolicySpec.model_validate(obj["spec"])
        except ValueError:
            continue  # what the policy index does with a spec the schema refuses
        refs.append(PolicyRef(obj["metadata"]["name"], 1, spec))
    accepted = review_policies(refs).accepted
    out = {}
    for name, branch_name, target, labels in BRANCHES:
        selection = select_policy(accepted, branch_name=branch_name, target_branch=target, labels=labels)
        evaluation = evaluate_merge(
            phase=Phase.READY, auto_merge=True, indexing=INDEXING, conflicts=[], other_locks=[],
            policy=selection.policy, now=NOW, branch_name=branch_name, target_branch=target, target_object=None,
            tied=selection.tied)
        out[name] = (evaluation.decision.value, [r.value for r in evaluation.reasons], evaluation.policy)
    return out


_GOOD_WINDOWS = st.fixed_dictionaries({
    "kind": st.sampled_from(["allow", "deny"]),
    "schedule": st.sampled_from(["0 9 * * 1-5", "*/30 * * * *", "@daily", "0 0 24 12 *"]),
    "duration": st.sampled_from(["1h", "9h", "90m", "744h"]),
    "timeZone": st.sampled_from(["UTC", "Asia/Seoul", "America/New_York"]),
})


@st.composite
def _valid_spec(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"priority": draw(st.integers(-2, 2))}
    if draw(st.booleans()):
        spec["branchNamePatterns"] = draw(st.lists(st.sampled_from(["feature/*", "**", "hotfix/*", "team/**"]),
                                                   min_size=1, max_size=2, unique=True))
    if draw(st.booleans()):
        spec["targetBranches"] = [draw(st.sampled_from(["main", "release/*"]))]
    if draw(st.booleans()):
        spec["branchSelector"] = {"matchLabels": {"team": draw(st.sampled_from(["x", "y"]))}}
    if draw(st.booleans()):
        spec["mergeWindows"] = draw(st.lists(_GOOD_WINDOWS, min_size=1, max_size=2))
    if draw(st.booleans()):
        spec["timeoutHours"] = draw(st.sampled_from([None, 0.5, 24, 72]))
    spec["dryRun"] = draw(st.booleans())
    return spec


# Each is wrong in one way the schema pattern may or may not catch; every one must only cost its own policy.
_DEFECTS: list[dict[str, Any]] = [
    {"mergeWindows": [{"kind": "allow", "schedule": "0 9 * * *", "duration": "99999999999h"}]},
    {"mergeWindows": [{"kind": "deny", "schedule": "0 9 * * *", "duration": "9" * 31 + "s"}]},
    {"mergeWindows": [{"kind": "allow", "schedule": "0 9 * * *", "duration": "745h"}]},
    {"mergeWindows": [{"kind": "allow", "schedule": "0 9 * * *", "duration": "0h"}]},
    {"mergeWindows": [{"kind": "allow", "schedule": "at nine", "duration": "1h"}]},
    {"mergeWindows": [{"kind": "allow", "schedule": "61 * * * *", "duration": "1h"}]},
    {"mergeWindows": [{"kind": "deny", "schedule": "0 9 * * *", "duration": "1h", "timeZone": "Mars/Olympus"}]},
    {"timeoutHours": 1e300},
    {"timeoutHours": 1e12},
    {"freeze": {"reason": "naive", "until": "2024-06-01T00:00:00"}},
    {"priority": "high"},
]


@st.composite
def _invalid_spec(draw: st.DrawFn) -> dict[str, Any]:
    return {**draw(_valid_spec()), **draw(st.sampled_from(_DEFECTS))}


@settings(max_examples=150, deadline=None)
@given(valid=st.lists(_valid_spec(), max_size=4), invalid=st.lists(_invalid_spec(), min_size=1, max_size=3),
       order=st.randoms(use_true_random=False))
def test_an_invalid_policy_changes_nothing_but_its_own_status(
    valid: list[dict[str, Any]], invalid: list[dict[str, Any]], order: Any,
) -> None:
    good = [_policy_obj(f"good-{i}", s) for i, s in enumerate(valid)]
    bad = [_policy_obj(f"bad-{i}", s) for i, s in enumerate(invalid)]
    everything = [*good, *bad]
    order.shuffle(everything)

    assert decide_all(everything) == decide_all(good)

    branches = [{"metadata": {"name": n, "labels": lb}, "spec": {"branchName": b, "targetBranch": t}}
                for n, b, t, lb in BRANCHES]
    views, alone = policy_statuses(everything, branches), policy_statuses(good, branches)
    assert set(views) == {o["metadata"]["name"] for o in everything}
    for obj in bad:
        view = views[obj["metadata"]["name"]]
        assert (view.accepted, view.reason, view.governed) == (False, "InvalidSpec", 0)
    for obj in good:
        assert views[obj["metadata"]["name"]] == alone[obj["metadata"]["name"]]


def test_an_absurd_duration_is_refused_by_the_schema_and_a_long_one_with_the_limit() -> None:
    long_one = {"mergeWindows": [{"kind": "allow", "schedule": "0 9 * * *", "duration": "9999999h"}]}
    views = policy_statuses([_policy_obj("huge", _DEFECTS[0]), _policy_obj("long", long_one)], [])
    assert views["huge"].accepted is False
    assert "mergeWindows.0.duration" in views["huge"].message  # the digits are bounded by the CRD pattern
    assert views["long"].accepted is False
    assert "mergeWindows[0]: duration '9999999h' is longer than 31 days" in views["long"].message


def test_durations_are_checked_before_they_are_computed() -> None:
    for text in ("99999999999h", "9" * 400 + "s"):
        try:
            parse_duration(text)
        except ValueError as exc:
            assert "longer than 31 days" in str(exc)
        else:
            raise AssertionError(f"{text[:20]} accepted")


def test_simulate_prints_the_rejection_of_an_absurd_duration() -> None:
    proposed = [{"apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy",
                 "metadata": {"name": "huge", "namespace": "ns"}, "spec": _DEFECTS[0]}]
    live = [_policy_obj("general", {})]
    sim = simulate(proposed, namespace="ns", policies=live, branches=[_branch_obj(*b) for b in BRANCHES],
                   locks=[], now=NOW)
    text = render(sim)
    assert "Proposed policy huge would NOT be accepted: Ignored: mergeWindows.0.duration" in text
    assert all(row.policy == "general" and row.decision == "Merged" for row in sim.rows)
