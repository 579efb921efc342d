"""``logFormat: json`` end to end: the real ``branch-operator run`` process, configured from the chart's
rendered Deployment (``tests/e2e/ha.py``), against the embedded API server and a real nats-server. One
indexing run goes through it; every line it writes to stdout and stderr must be one JSON object with the
common fields, and the audit lines name their record, namespace and branch.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from branch_operator.clients.kube import KubeClient
from branch_operator.embedded.env import EmbeddedEnv

from ..waiting import wait_for
from .ha import RELEASE_NAMESPACE, PodTemplate, Publisher, Replica, create_branch, create_namespace, create_policy

pytestmark = pytest.mark.asyncio(loop_scope="session")

NAMESPACE = "json-logs"


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> PodTemplate:
    template = PodTemplate.rendered({"logFormat": "json"}, tmp_path_factory.mktemp("chart"))
    assert template.value("OMS_LOG_FORMAT") == "json"
    return template


@pytest_asyncio.fixture(loop_scope="session")
async def env() -> AsyncIterator[EmbeddedEnv]:
    env = EmbeddedEnv()
    await env.start()
    yield env
    await env.stop()


def _parsed(text: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line!r}")
        assert isinstance(record, dict), f"line {number} is not a JSON object: {line!r}"
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), f"line {number}: {line!r}"
        records.append(record)
    return records


async def test_every_line_is_json_and_audit_lines_are_structured(env: EmbeddedEnv, pod: PodTemplate) -> None:
    kube = await KubeClient.connect(str(env.kubeconfig))
    replica = Replica(env, pod, "oms-branch-operator-0")
    try:
        await create_namespace(kube, RELEASE_NAMESPACE)
        await create_namespace(kube, NAMESPACE)
        await create_policy(kube, NAMESPACE)
        await create_branch(kube, NAMESPACE, "json-1")
        await replica.start()
        await wait_for(replica.in_charge, 60, "the replica in charge")
        settings = pod.settings(env.nats_url)
        async with Publisher(env.nats_url, settings, NAMESPACE) as publisher:
            await publisher.event("started", "json-1")
            completed = await publisher.event("completed", "json-1")

        def merged() -> bool:
            return '"branch.merged"' in replica.log.read_text(errors="replace")
        await wait_for(merged, 60, "the branch merged and audited")
        replica.terminate()
        assert await replica.exited() == 0
    finally:
        await replica.stop()
        await kube.close()

    records = _parsed(replica.log.read_text(errors="replace"))
    loggers = {r["logger"] for r in records}
    assert "kopf.objects" in loggers or any(name.startswith("kopf") for name in loggers), loggers
    assert any(name.startswith("branch_operator") for name in loggers), loggers
    audits = [r for r in records if r["logger"] == "oms.audit"]
    actions = {r.get("action") for r in audits}
    assert {"indexing.started", "indexing.completed", "branch.merged"} <= actions, actions
    for record in audits:
        body = json.loads(record["message"])  # the audit record itself, as the text format logs it
        assert record["audit_id"] == body["audit_id"] and record["audit_id"].startswith("audit-oms:")
        assert record["namespace"] == NAMESPACE and record["branch"] == "json-1"
        assert record["level"] == "INFO"
    [completion] = [r for r in audits if r.get("action") == "indexing.completed"]
    assert completion["event_id"] == completed
    # kopf's per-object lines carry the Branch they are about.
    assert any(r.get("branch") == "json-1" and r["logger"].startswith("kopf") for r in records)
