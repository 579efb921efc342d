"""`kubectl apply` of an invalid AutoMergePolicy or Branch fails with the operator's reason, end to end:
real kubectl 1.33, the embedded API server calling the in-process operator's validating webhook (registered
by kopf in a ValidatingWebhookConfiguration with a url clientConfig and its caBundle), and CEL / pattern
rules of the CRDs. A valid object still applies; a standby replica's webhook answers too."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle

from .. import k8s_tools
from ..waiting import wait_for

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

KUBECTL = k8s_tools.kubectl_path()
NS = "default"


def _policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy", "metadata": {"name": name}, "spec": spec}


def _window(**overrides: str) -> dict[str, str]:
    return {"kind": "allow", "schedule": "0 9 * * 1-5", "duration": "8h", "timeZone": "UTC", **overrides}


def _branch(name: str, branch_name: str, target: str = "main") -> dict[str, Any]:
    return {"apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": name},
            "spec": {"branchName": branch_name, "targetBranch": target}}


# What kubectl must print for each refused object: the webhook's reason, or the CRD rule's message.
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "cron-range": (_policy("cron-range", mergeWindows=[_window(schedule="99 * * * *")]),
                   "(InvalidSpec): mergeWindows[0]: minute: '99' is outside 0-59"),
    "zone": (_policy("zone", mergeWindows=[_window(timeZone="Mars/Olympus")]),
             "(InvalidSpec): mergeWindows[0]: unknown time zone 'Mars/Olympus'"),
    "glob": (_policy("glob", branchNamePatterns=["feature/["]), "(InvalidSpec): branchNamePatterns[0]"),
    "selector": (_policy("selector", branchSelector={
        "matchLabels": {"team": "a"}, "matchExpressions": [{"key": "team", "operator": "In", "values": ["b"]}]}),
        "(InvalidSpec): branchSelector: label 'team' has no value every requirement allows"),
    # The CRD's pattern and CEL rules: refused before any webhook is called.
    "cron-fields": (_policy("cron-fields", mergeWindows=[_window(schedule="0 9 *")]), "schedule"),
    "duration": (_policy("duration", mergeWindows=[_window(duration="800h")]),
                 "spec.mergeWindows[0]: Invalid value: \"object\": duration must be more than 0s and at most 744h"),
    "no-values": (_policy("no-values", branchSelector={"matchExpressions": [{"key": "team", "operator": "In"}]}),
                  "values must be non-empty for In and NotIn"),
    "self-merge": (_branch("loop", "feature/loop", "feature/loop"),
                   "spec.targetBranch must differ from spec.branchName"),
    "shadowing": (_branch("second", "feature/taken"),
                  "(BranchNameShadowed): Branch first already has spec.branchName 'feature/taken'"),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[EmbeddedEnv, list[OperatorHandle]]]:
    env = EmbeddedEnv()
    await env.start()
    operators = [
        OperatorHandle(env.settings(**env.webhook_settings(), leader_election=True,
                                    leader_election_identity=f"replica-{i}"), env.kubeconfig)
        for i in range(2)
    ]
    try:
        # The first takes the Lease; the standby starts last, so kopf's managed configuration (each replica
        # writes its own URL at start) ends up pointing at the standby.
        await operators[0].start()
        await wait_for(lambda: operators[0].runtime.in_charge, what="the first replica in charge")
        await operators[1].start()
        yield env, operators
    finally:
        for operator in operators:
            await operator.stop()
        await env.stop()


async def _kubectl(env: EmbeddedEnv, home: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    assert KUBECTL is not None
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(env.kubeconfig), "-n", NS, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "")},
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 30)
    return proc.returncode or 0, out.decode()


async def _apply(env: EmbeddedEnv, home: Path, obj: dict[str, Any]) -> tuple[int, str]:
    # The embedded server serves no OpenAPI documents, so kubectl's client-side validation is off.
    return await _kubectl(env, home, "apply", "--validate=false", "-f", "-", stdin=json.dumps(obj))


async def _webhook_registered(env: EmbeddedEnv, home: Path) -> bool:
    code, out = await _kubectl(env, home, "get", "validatingwebhookconfiguration",
                               EmbeddedEnv.WEBHOOK_CONFIGURATION, "-o", "json")
    if code != 0:
        return False
    webhooks = json.loads(out).get("webhooks") or []
    return bool(webhooks) and all(w["clientConfig"].get("url") and w["clientConfig"].get("caBundle")
                                  for w in webhooks)


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_kubectl_apply_of_an_invalid_object_fails_with_its_reason(
    cluster: tuple[EmbeddedEnv, list[OperatorHandle]], tmp_path: Path, case: str,
) -> None:
    env, operators = cluster
    await wait_for(lambda: _webhook_registered(env, tmp_path), what="the managed webhook configuration")
    if case == "shadowing":
        code, out = await _apply(env, tmp_path, _branch("first", "feature/taken"))
        assert code == 0, out
        await wait_for(lambda: all(o.runtime.catalog.find(NS, "feature/taken") == "first" for o in operators),
                       what="the first Branch in every catalog")
    obj, reason = REFUSED[case]
    code, out = await _apply(env, tmp_path, obj)
    assert code != 0 and reason in out, out
    kind = "automergepolicy" if obj["kind"] == "AutoMergePolicy" else "branch"
    code, out = await _kubectl(env, tmp_path, "get", kind, obj["metadata"]["name"])
    assert code != 0 and "NotFound" in out, out


async def test_a_valid_object_still_applies(cluster: tuple[EmbeddedEnv, list[OperatorHandle]], tmp_path: Path) -> None:
    env, _ = cluster
    await wait_for(lambda: _webhook_registered(env, tmp_path), what="the managed webhook configuration")
    for obj in (_policy("weekdays", mergeWindows=[_window(timeZone="Asia/Seoul")], branchNamePatterns=["feature/*"]),
                _branch("valid", "feature/valid")):
        code, out = await _apply(env, tmp_path, obj)
        assert code == 0 and "created" in out, out


async def test_the_standby_serves_the_webhook(
    cluster: tuple[EmbeddedEnv, list[OperatorHandle]], tmp_path: Path,
) -> None:
    env, (leader, standby) = cluster
    assert leader.runtime.in_charge and not standby.runtime.in_charge
    standby_url = standby.runtime.webhook.client_config["url"]

    async def points_at_standby() -> bool:
        code, out = await _kubectl(env, tmp_path, "get", "validatingwebhookconfiguration",
                                   EmbeddedEnv.WEBHOOK_CONFIGURATION, "-o", "json")
        webhooks = (json.loads(out).get("webhooks") or []) if code == 0 else []
        return bool(webhooks) and all(w["clientConfig"]["url"].startswith(standby_url) for w in webhooks)

    await wait_for(points_at_standby, timeout=20, what="the configuration pointing at the standby")
    obj, reason = REFUSED["zone"]
    code, out = await _apply(env, tmp_path, obj)
    assert code != 0 and reason in out, out
