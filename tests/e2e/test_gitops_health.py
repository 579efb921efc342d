"""What GitOps tools and `kubectl wait` see: the kstatus conditions and the policy Events, read with the
real kubectl 1.33 from a running operator."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
from typing import Any

import pytest

from branch_operator.api.models import AutoMergePolicy

from .. import k8s_tools
from ..argocd_health import health
from ..waiting import wait_for
from .conftest import Oms

KUBECTL = k8s_tools.kubectl_path()

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Kubectl:
    def __init__(self, oms: Oms, home: pathlib.Path) -> None:
        self.kubeconfig = str(oms.env.kubeconfig)
        self.namespace = oms.namespace
        # An isolated HOME: no cache or config of the machine's own kubectl leaks in.
        self.env = {**os.environ, "HOME": str(home), "KUBECONFIG": self.kubeconfig}

    async def run(self, *args: str, timeout: float = 40) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL), "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def ok(self, *args: str) -> str:
        code, out, err = await self.run(*args)
        assert code == 0, (args, out, err)
        return out

    async def wait(self, target: str, condition: str, timeout: str = "20s") -> str:
        return await self.ok("wait", f"--for=condition={condition}", target, f"--timeout={timeout}")

    async def policy_events(self) -> list[dict[str, Any]]:
        out = await self.ok("get", "events", "--field-selector", "involvedObject.kind=AutoMergePolicy", "-o", "json")
        return list(json.loads(out)["items"])


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


async def _policy(oms: Oms, name: str) -> dict[str, Any]:
    return await oms.kube.get(AutoMergePolicy.PLURAL, oms.namespace, name)


def _reasons(events: list[dict[str, Any]], name: str) -> list[str]:
    return [e["reason"] for e in events if e["involvedObject"]["name"] == name]


async def test_policies_are_ready_or_stalled_and_their_transitions_are_events(oms: Oms, tmp_path: pathlib.Path) -> None:
    kubectl = Kubectl(oms, tmp_path)
    await oms.create_policy("good", priority=1)
    await oms.create_policy("good-copy", priority=1)  # the same filters and priority: rejected

    await kubectl.wait("automergepolicy/good", "Ready")
    await kubectl.wait("automergepolicy/good-copy", "Stalled")
    rejected = await _policy(oms, "good-copy")
    assert health("AutoMergePolicy", rejected) == ("Degraded", rejected["status"]["conditions"][0]["message"])
    assert health("AutoMergePolicy", await _policy(oms, "good"))[0] == "Healthy"
    stalled = _conditions(rejected)
    assert stalled["Ready"]["status"] == "False" and stalled["Ready"]["reason"] == "ConflictingPolicy"
    assert stalled["Stalled"]["message"] == stalled["Accepted"]["message"]
    code, _, err = await kubectl.run("wait", "--for=condition=Ready", "automergepolicy/good-copy", "--timeout=1s")
    assert code != 0 and "timed out" in err

    # A spec change: `kubectl wait` honours the conditions' observedGeneration, so this waits for the
    # operator to have seen generation 2, not for the Ready=True it already shows for generation 1.
    await oms.kube.patch(AutoMergePolicy.PLURAL, oms.namespace, "good", {"spec": {"timeoutHours": 12}})
    await kubectl.wait("automergepolicy/good", "Ready")
    good = await _policy(oms, "good")
    assert good["metadata"]["generation"] == 2 and good["status"]["observedGeneration"] == 2
    assert {c["observedGeneration"] for c in _conditions(good).values()} == {2}

    # Fixing the rejected policy in Git accepts it.
    await oms.kube.patch(AutoMergePolicy.PLURAL, oms.namespace, "good-copy", {"spec": {"priority": 2}})
    await kubectl.wait("automergepolicy/good-copy", "Ready")
    await kubectl.wait("automergepolicy/good-copy", "Stalled=false")

    async def all_posted() -> list[dict[str, Any]] | None:
        events = await kubectl.policy_events()
        good, copy = sorted(_reasons(events, "good")), sorted(_reasons(events, "good-copy"))
        done = good == ["PolicyAccepted", "PolicyChanged"] and copy == ["PolicyAccepted", "PolicyRejected"]
        return events if done else None

    events = await wait_for(all_posted, what="accepted, changed and rejected Events")
    by = {(e["involvedObject"]["name"], e["reason"]): e for e in events}
    assert by[("good-copy", "PolicyRejected")]["type"] == "Warning"
    assert "as policy good," in by[("good-copy", "PolicyRejected")]["message"]
    assert by[("good", "PolicyChanged")]["message"] == "Generation 2 of the policy is valid and in force."

    # A resync recomputes the same verdicts: no further Event.
    keeper = oms.operator.runtime.policy_status
    await oms.operator.call(keeper._refresh_once(oms.namespace))
    assert sorted(_reasons(await kubectl.policy_events(), "good")) == ["PolicyAccepted", "PolicyChanged"]


async def test_a_branch_is_reconciling_while_indexed_and_ready_once_merged(oms: Oms, tmp_path: pathlib.Path) -> None:
    kubectl = Kubectl(oms, tmp_path)
    await oms.create_branch("gitops", "feature/gitops")
    await kubectl.wait("branch/gitops", "Ready")
    await oms.create_policy("default")

    await oms.publish("started", oms.event("started", "feature/gitops", "idx-1"))
    await kubectl.wait("branch/gitops", "Reconciling")
    locked = await oms.branch("gitops")
    assert (_conditions(locked)["Ready"]["status"], _conditions(locked)["Stalled"]["status"]) == ("False", "False")
    assert health("Branch", locked) == ("Progressing", "Indexing run idx-1 started; branch locked for write.")
    [lock] = await oms.kube.list_objects("branchlocks", oms.namespace)
    status, message = health("BranchLock", lock)
    assert status == "Healthy" and message.startswith("INDEXING lock on gitops held by ")

    await oms.publish("completed", oms.event("completed", "feature/gitops", "idx-1"))
    merged = await oms.wait_branch("gitops", lambda o: (o.get("status") or {}).get("merge", {}).get(
        "decision") == "Merged", what="gitops merged")
    assert merged["status"]["phase"] == "ACTIVE"
    await kubectl.wait("branch/gitops", "Ready")
    await kubectl.wait("branch/gitops", "Reconciling=false")
    active = await oms.branch("gitops")
    ready = _conditions(active)["Ready"]
    assert ready["reason"] == "Active" and ready["message"].startswith("Merged into main")
    assert health("Branch", active) == ("Healthy", ready["message"])


async def test_a_ready_branch_waiting_on_its_policy_is_ready_and_healthy(oms: Oms, tmp_path: pathlib.Path) -> None:
    kubectl = Kubectl(oms, tmp_path)
    await oms.create_policy("default", minRecordsIndexed=10)
    await oms.create_branch("waiting", "feature/waiting")
    await oms.run_indexing("feature/waiting", "idx-1", records=1)
    blocked = await oms.wait_branch("waiting", lambda o: (o.get("status") or {}).get("merge", {}).get(
        "decision") == "Blocked", what="waiting blocked")
    assert blocked["status"]["phase"] == "READY"
    await kubectl.wait("branch/waiting", "Ready")
    status, message = health("Branch", await oms.branch("waiting"))
    assert status == "Healthy" and message.startswith("Indexed; auto-merge Blocked: ")


async def test_a_failed_branch_is_stalled(oms: Oms, tmp_path: pathlib.Path) -> None:
    kubectl = Kubectl(oms, tmp_path)
    await oms.create_branch("broken", "feature/broken")
    await oms.publish("started", oms.event("started", "feature/broken", "idx-1"))
    await kubectl.wait("branch/broken", "Reconciling")
    await oms.publish("failed", oms.event("failed", "feature/broken", "idx-1"))
    await kubectl.wait("branch/broken", "Stalled")
    conditions = _conditions(await oms.branch("broken"))
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "Error"
    assert "failed" in conditions["Stalled"]["message"]
    assert health("Branch", await oms.branch("broken")) == ("Degraded", conditions["Stalled"]["message"])


async def test_a_spec_edit_is_observed_without_a_phase_change(oms: Oms, tmp_path: pathlib.Path) -> None:
    kubectl = Kubectl(oms, tmp_path)
    await oms.create_branch("edited", "feature/edited")
    await kubectl.wait("branch/edited", "Ready")
    await oms.kube.patch("branches", oms.namespace, "edited", {"spec": {"autoMerge": False}})
    # Waits for generation 2: Ready=True of generation 1 does not count.
    await kubectl.wait("branch/edited", "Ready")
    edited = await oms.branch("edited")
    assert edited["metadata"]["generation"] == 2 and edited["status"]["observedGeneration"] == 2
    assert edited["status"]["phase"] == "ACTIVE"
    ready = _conditions(edited)["Ready"]
    assert (ready["status"], ready["observedGeneration"], ready["message"]) == ("True", 2, "The branch is active.")
