"""The Argo CD health checks (manifests/gitops/argocd/health/*.lua) over AutoMergePolicies whose status
the operator's own functions computed, and the argocd-cm snippet that ships them."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import yaml

from branch_operator.domain.merge.trace import policy_status_patch, policy_statuses
from branch_operator.domain.readiness import policy_transition
from branch_operator.embedded.apiserver.patch import merge_patch

from .argocd_health import HEALTH_DIR, health

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def _policy(name: str, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy",
            "metadata": {"name": name, "namespace": "oms", "uid": f"uid-{name}", "generation": generation},
            "spec": {"branchNamePatterns": [f"{name}/*"], **spec}}


def _observed(*policies: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The policies as they are once the operator wrote their status (the status keeper's decision)."""
    branches = [{"metadata": {"name": "b", "labels": {}}, "spec": {"branchName": "feature/x"}}]
    views = policy_statuses(policies, branches)
    out = {}
    for obj in policies:
        patch = policy_status_patch(views[obj["metadata"]["name"]], obj.get("status") or {},
                                    generation=obj["metadata"]["generation"], now=NOW)
        assert patch is not None
        out[obj["metadata"]["name"]] = {**obj, "status": merge_patch(obj.get("status") or {}, patch)}
    return out


def test_policy_health_follows_the_operator_status() -> None:
    seen = _observed(
        _policy("feature"), _policy("feature-copy", branchNamePatterns=["feature/*"]), _policy("dry", dryRun=True),
        _policy("off", enabled=False),
        _policy("frozen", freeze={"reason": "release week", "until": "2024-01-08T00:00:00Z"}))

    status, message = health("AutoMergePolicy", seen["feature"])
    assert status == "Healthy" and message == "The policy is valid and in force. (governs 1 of 1 matching branches)"
    status, message = health("AutoMergePolicy", seen["feature-copy"])
    assert status == "Degraded" and message.startswith("Ignored:") and "as policy feature," in message
    assert health("AutoMergePolicy", seen["dry"])[0] == "Suspended"
    assert health("AutoMergePolicy", seen["off"]) == (
        "Suspended", "Auto-merge disabled (governs 0 of 0 matching branches)")
    assert health("AutoMergePolicy", seen["frozen"]) == (
        "Suspended", "Frozen: release week (until 2024-01-08T00:00:00Z) (governs 0 of 0 matching branches)")


def test_a_policy_the_operator_has_not_observed_is_progressing() -> None:
    assert health("AutoMergePolicy", _policy("new"))[0] == "Progressing"
    edited = copy.deepcopy(_observed(_policy("feature"))["feature"])
    edited["metadata"]["generation"] = 2  # Git changed it; the operator has not written status for it yet
    assert health("AutoMergePolicy", edited) == ("Progressing", "Waiting for the operator to observe generation 2")
    assert health("AutoMergePolicy", _observed(edited)["feature"])[0] == "Healthy"


def test_policy_events_only_on_transitions() -> None:
    first = _policy("feature")
    accepted = _observed(first)["feature"]
    verdict = {"accepted": True, "reason": "Valid", "message": "The policy is valid and in force."}
    posted = policy_transition({}, uid="u", generation=1, **verdict)
    assert posted is not None and (posted.type_, posted.reason) == ("Normal", "PolicyAccepted")
    assert policy_transition(accepted["status"], uid="u", generation=1, **verdict) is None  # a resync
    changed = policy_transition(accepted["status"], uid="u", generation=2, **verdict)
    assert changed is not None and changed.reason == "PolicyChanged" and changed.key != posted.key
    rejected = policy_transition(accepted["status"], uid="u", generation=2, accepted=False,
                                 reason="ConflictingPolicy", message="Ignored: same as policy x")
    assert rejected is not None and (rejected.type_, rejected.reason) == ("Warning", "PolicyRejected")


def test_the_argocd_cm_snippet_embeds_exactly_the_lua_files() -> None:
    snippet = yaml.safe_load((HEALTH_DIR.parent / "argocd-cm-health.yaml").read_text())
    assert (snippet["kind"], snippet["metadata"]) == ("ConfigMap", {"name": "argocd-cm", "namespace": "argocd"})
    scripts = {f"resource.customizations.health.{p.stem}": p.read_text() for p in HEALTH_DIR.glob("*.lua")}
    assert set(scripts) == {f"resource.customizations.health.oms.dev_{k}"
                            for k in ("AutoMergePolicy", "Branch", "BranchLock")}
    assert snippet["data"] == scripts
