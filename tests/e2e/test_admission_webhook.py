"""The operator's validating admission webhook, called the way kube-apiserver calls it: AdmissionReview v1
POSTed over HTTPS to the URL the webhook's client config names, the server verified with its caBundle.

Two replicas with leader election run against one embedded environment: the standby answers as the one
in charge does (validation needs no leadership). The messages are the reasons the operator gives in its
Accepted=False condition, checked against the operator's own status of the same objects.
"""

from __future__ import annotations

import base64
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from branch_operator.api.models import API_VERSION, GROUP, VERSION, AutoMergePolicy, Branch
from branch_operator.clients.kube import Invalid, KubeClient
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle
from branch_operator.handlers.admission import BRANCH_WEBHOOK, POLICY_WEBHOOK

from ..waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

NS = "admission"


def _window(**overrides: str) -> dict[str, str]:
    return {"kind": "allow", "schedule": "0 9 * * 1-5", "duration": "8h", "timeZone": "Europe/Berlin", **overrides}


# name -> (spec, a fragment the refusal must carry); None: admitted.
POLICIES: dict[str, tuple[dict[str, Any], str | None]] = {
    "cron-minute": ({"mergeWindows": [_window(schedule="99 * * * *")]}, "minute: '99' is outside 0-59"),
    "cron-range": ({"mergeWindows": [_window(schedule="0 18-9 * * *")]}, "hour: range '18-9' runs backwards"),
    "zone": ({"mergeWindows": [_window(timeZone="Mars/Olympus")]}, "unknown time zone 'Mars/Olympus'"),
    "duration": ({"mergeWindows": [_window(duration="800h")]}, "duration '800h' is longer than 31 days"),
    "glob-open": ({"branchNamePatterns": ["feature/["]}, "never closed with ']'"),
    "glob-negated-open": ({"branchNamePatterns": ["[!"]}, "never closed with ']'"),
    "glob-reversed": ({"targetBranches": ["[z-a]"]}, "invalid set [z-a]"),
    "selector-contradiction": (
        {"branchSelector": {"matchLabels": {"team": "a"},
                            "matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}},
        "label 'team' has no value every requirement allows"),
    "selector-exists-absent": (
        {"branchSelector": {"matchExpressions": [{"key": "t", "operator": "Exists"},
                                                 {"key": "t", "operator": "DoesNotExist"}]}},
        "label 't' is required and also required to be absent"),
    "valid": ({"mergeWindows": [_window()], "branchNamePatterns": ["feature/**"],
               "branchSelector": {"matchLabels": {"team": "a"}}}, None),
}


def _policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": AutoMergePolicy.KIND,
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def _branch(name: str, branch_name: str, target: str = "main") -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": Branch.KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {"branchName": branch_name, "targetBranch": target}}


def _review(plural: str, obj: dict[str, Any], operation: str = "CREATE",
            old: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": GROUP, "version": VERSION, "kind": obj["kind"]},
            "resource": {"group": GROUP, "version": VERSION, "resource": plural},
            "requestKind": {"group": GROUP, "version": VERSION, "kind": obj["kind"]},
            "name": obj["metadata"]["name"], "namespace": NS, "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
            "object": obj, "oldObject": old, "dryRun": False,
        },
    }


class Replica:
    def __init__(self, operator: OperatorHandle) -> None:
        self.operator = operator

    @property
    def client_config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.operator.runtime.webhook.client_config
        return config

    async def review(self, webhook: str, plural: str, obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        config = self.client_config
        # Verified as the API server verifies it: with the caBundle only, and the host name checked.
        context = ssl.create_default_context(cadata=base64.b64decode(config["caBundle"]).decode("ascii"))
        async with aiohttp.ClientSession() as session, session.post(
                f"{config['url'].rstrip('/')}/{webhook}", json=_review(plural, obj, **kwargs), ssl=context) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
        return body["response"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replicas() -> AsyncIterator[tuple[EmbeddedEnv, list[Replica], KubeClient]]:
    env = EmbeddedEnv()
    await env.start()
    operators = [
        OperatorHandle(env.settings(webhook_enabled=True, webhook_port=0, leader_election=True,
                                    leader_election_identity=f"replica-{i}", default_namespace=NS), env.kubeconfig)
        for i in range(2)
    ]
    kube = await KubeClient.connect(str(env.kubeconfig))
    try:
        for operator in operators:
            await operator.start()
        await wait_for(lambda: sum(o.runtime.in_charge for o in operators) == 1, what="one replica in charge")
        await wait_for(lambda: all(o.runtime.webhook.client_config for o in operators), what="webhooks serving")
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
        await kube.core.create_namespace(ns)
        # The standby first: it is the one whose answers need showing.
        yield env, sorted((Replica(o) for o in operators), key=lambda r: r.operator.runtime.in_charge), kube
    finally:
        for operator in operators:
            await operator.stop()
        await kube.close()
        await env.stop()


@pytest.mark.parametrize("name", sorted(POLICIES))
async def test_every_replica_judges_policies(
    replicas: tuple[EmbeddedEnv, list[Replica], KubeClient], name: str,
) -> None:
    _, serving, _ = replicas
    spec, fragment = POLICIES[name]
    for replica in serving:
        answer = await replica.review(POLICY_WEBHOOK, AutoMergePolicy.PLURAL, _policy(name, spec))
        assert answer["allowed"] is (fragment is None), answer
        if fragment is not None:
            message = answer["status"]["message"]
            assert message.startswith("the policy would be ignored (Accepted=False) (InvalidSpec): "), message
            assert fragment in message
            assert answer["status"]["code"] == 422


async def test_refusal_is_the_reason_the_operator_gives(
    replicas: tuple[EmbeddedEnv, list[Replica], KubeClient],
) -> None:
    """With the webhook not in the API server's path (as before it is installed), the same policies are
    stored, and the operator's Accepted condition says what the webhook said."""
    _, serving, kube = replicas
    stored: dict[str, tuple[dict[str, Any], str | None]] = {}
    for name, (spec, fragment) in POLICIES.items():
        try:
            await kube.create(AutoMergePolicy.PLURAL, NS, _policy(name, spec))
        except Invalid:
            continue  # the CRD's own rules refuse it whatever the webhook (e.g. a window over 744h)
        stored[name] = (spec, fragment)
    assert len(stored) >= len(POLICIES) - 1, sorted(set(POLICIES) - set(stored))

    async def accepted() -> dict[str, dict[str, Any]] | None:
        out = {}
        for obj in await kube.list_policies(NS):
            conditions = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
            if "Accepted" not in conditions:
                return None
            out[obj["metadata"]["name"]] = conditions["Accepted"]
        return out if len(out) == len(stored) else None

    conditions = await wait_for(accepted, timeout=20, what="every policy's Accepted condition")
    for name, (spec, fragment) in stored.items():
        condition = conditions[name]
        answer = await serving[0].review(POLICY_WEBHOOK, AutoMergePolicy.PLURAL, _policy(name, spec))
        if fragment is None:
            assert (condition["status"], answer["allowed"]) == ("True", True)
            continue
        assert condition["status"] == "False" and condition["reason"] == "InvalidSpec"
        assert condition["message"] == "Ignored: " + answer["status"]["message"].split("(InvalidSpec): ", 1)[1]


async def test_branches_targeting_themselves_or_shadowing_are_refused(
    replicas: tuple[EmbeddedEnv, list[Replica], KubeClient],
) -> None:
    _, serving, kube = replicas
    await kube.create(Branch.PLURAL, NS, _branch("first", "feature/x"))
    # The catalog of every replica learns the Branch from its watch.
    await wait_for(lambda: all(r.operator.runtime.catalog.find(NS, "feature/x") == "first" for r in serving),
                   what="the Branch in every catalog")
    for replica in serving:
        self_merge = await replica.review(BRANCH_WEBHOOK, Branch.PLURAL, _branch("loop", "feature/y", "feature/y"))
        assert not self_merge["allowed"]
        assert self_merge["status"]["message"] == (
            "the Branch would never be merged (SelfMerge): spec.targetBranch feature/y is spec.branchName: "
            "the branch targets itself")
        second = await replica.review(BRANCH_WEBHOOK, Branch.PLURAL, _branch("second", "feature/x"))
        assert not second["allowed"]
        assert "(BranchNameShadowed): Branch first already has spec.branchName 'feature/x'" in (
            second["status"]["message"])
        ok = await replica.review(BRANCH_WEBHOOK, Branch.PLURAL, _branch("other", "feature/z"))
        assert ok["allowed"], ok
        # An update that leaves spec alone is admitted (finalizers, annotations), the spec being unchanged.
        first = _branch("first", "feature/x")
        again = await replica.review(BRANCH_WEBHOOK, Branch.PLURAL, first, operation="UPDATE", old=first)
        assert again["allowed"], again


async def test_an_update_keeping_an_invalid_spec_is_admitted(
    replicas: tuple[EmbeddedEnv, list[Replica], KubeClient],
) -> None:
    """An object stored before the webhook existed stays editable (labels, finalizers) and deletable;
    changing its spec to another invalid one is refused."""
    _, serving, _ = replicas
    stored = _policy("stored-before", {"mergeWindows": [_window(timeZone="Mars/Olympus")]})
    relabelled = {**stored, "metadata": {**stored["metadata"], "labels": {"team": "a"}}}
    answer = await serving[0].review(POLICY_WEBHOOK, AutoMergePolicy.PLURAL, relabelled, operation="UPDATE",
                                     old=stored)
    assert answer["allowed"], answer
    changed = _policy("stored-before", {"mergeWindows": [_window(timeZone="Mars/Phobos")]})
    answer = await serving[0].review(POLICY_WEBHOOK, AutoMergePolicy.PLURAL, changed, operation="UPDATE",
                                     old=stored)
    assert not answer["allowed"] and "Mars/Phobos" in answer["status"]["message"]
