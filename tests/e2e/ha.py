"""Operator replicas as the Helm chart runs them, for the high-availability tests and the failover bench.

The chart is rendered with the real ``helm`` (``replicaCount=2``); every replica is a real
``branch-operator run`` process with the operator container's arguments and environment from the
rendered Deployment, downward-API values resolved as the kubelet would. What differs on this machine is
listed in :meth:`Replica.environ`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats

from branch_operator.api.models import API_VERSION, AutoMergePolicy, Branch
from branch_operator.cli.publish import build_event
from branch_operator.clients.kube import KubeClient, NotFound
from branch_operator.clients.lease import LeaseClient
from branch_operator.config import Settings
from branch_operator.contracts.funnel_encode import encode_structured
from branch_operator.embedded.env import EmbeddedEnv

from ..chart import conftest as chart

Obj = dict[str, Any]

RELEASE_NAMESPACE = "oms-system"  # what the chart is rendered for: the pods' namespace, and the Lease's
# Audit actions that record an event's first outcome (as test_exactly_once counts them).
FIRST_OUTCOME_ACTIONS = frozenset(
    {"indexing.started", "indexing.completed", "indexing.failed", "event.stale", "event.unexpected", "event.pending"})


@dataclass(frozen=True)
class PodTemplate:
    """The operator container of the rendered Deployment."""

    command: list[str]
    args: list[str]
    env: list[Obj]
    replicas: int
    strategy: Obj

    @classmethod
    def rendered(cls, values: Obj, workdir: Path) -> PodTemplate:
        """The operator container as ``helm template --namespace oms-system`` renders it with ``values``
        (the real helm, isolated in ``workdir``)."""
        for sub in ("helm-home", "values"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        tools = chart.isolated_tools(workdir / "helm-home")
        return cls.from_manifests(chart.Renderer(tools, workdir / "values").render(values))

    @classmethod
    def from_manifests(cls, docs: Iterable[Obj]) -> PodTemplate:
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "operator")
        return cls(command=list(container["command"]), args=list(container.get("args") or []),
                   env=list(container.get("env") or []), replicas=int(deployment["spec"]["replicas"]),
                   strategy=deployment["spec"].get("strategy") or {})

    def value(self, name: str) -> str:
        return str(next(e["value"] for e in self.env if e["name"] == name))

    def with_value(self, name: str, value: str) -> PodTemplate:
        """The same pod with one rendered value changed (as a values override would render it)."""
        assert any(e["name"] == name and "value" in e for e in self.env), name
        env = [{"name": name, "value": value} if e["name"] == name else e for e in self.env]
        return dataclasses.replace(self, env=env)

    def settings(self, nats_url: str) -> Settings:
        """What every replica runs with, as far as the test needs it (streams, consumers, the Lease)."""
        values: dict[str, Any] = {e["name"].removeprefix("OMS_").lower(): str(e["value"])
                                  for e in self.env if "value" in e and e["name"].startswith("OMS_")}
        return Settings(**values, nats_url=nats_url, default_namespace=RELEASE_NAMESPACE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One operator pod: ``branch-operator run`` as a subprocess, configured as the chart configures it."""

    def __init__(self, env: EmbeddedEnv, pod: PodTemplate, name: str, log_dir: Path | None = None) -> None:
        self.env = env
        self.pod = pod
        self.name = name  # the pod name: the replica's identity in the Lease (downward API metadata.name)
        self.health_port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.log = (log_dir or env.workdir) / f"{name}.log"

    def environ(self) -> dict[str, str]:
        # This process's environment (PATH, PYTHONPATH, ...) without any operator settings, then the chart's.
        out = {k: v for k, v in os.environ.items() if not k.startswith(("OMS_", "NATS_", "POD_"))}
        fields = {"metadata.name": self.name, "metadata.namespace": RELEASE_NAMESPACE}
        for item in self.pod.env:
            if "value" in item:
                out[item["name"]] = str(item["value"])
                continue
            path = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if path not in fields:
                raise AssertionError(f"env {item['name']}: {item.get('valueFrom')} cannot be resolved here")
            out[item["name"]] = fields[path]
        # Overridden, because this machine is not a cluster:
        # - NATS_URL: the chart's in-cluster Service address -> the test's nats-server.
        # - OMS_HEALTH_PORT: the chart's 8080 is one port per pod; here the replicas share a host, so each
        #   gets a free port of its own (/metrics is served there too, as the chart's metrics.port null does).
        # - HOME: the chart's /tmp is the pod's emptyDir; kept as is (nothing is written there).
        # The kubeconfig is the other difference: an argument (see argv), where a pod has in-cluster config.
        out["NATS_URL"] = self.env.nats_url
        out["OMS_HEALTH_PORT"] = str(self.health_port)
        return out

    def argv(self) -> list[str]:
        # The image's `branch-operator` console script is branch_operator.cli.main:main: run that module
        # with this interpreter, so the code under test (PYTHONPATH) runs, whatever is first on PATH.
        assert self.pod.command == ["branch-operator"], self.pod.command
        return [sys.executable, "-m", "branch_operator.cli.main", *self.pod.args,
                "--kubeconfig", str(self.env.kubeconfig)]

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(), env=self.environ(), stdout=out, stderr=asyncio.subprocess.STDOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        assert self.proc is not None and self.running, f"{self.name} died by itself:\n{self.tail()}"
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM, as the kubelet sends it (the caller waits for the exit, or not)."""
        assert self.proc is not None and self.running, f"{self.name} died by itself:\n{self.tail()}"
        self.proc.send_signal(signal.SIGTERM)

    async def exited(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def readyz(self) -> Obj | None:
        """The body of /readyz (whatever its status), or None while nothing answers."""
        if not self.running:
            return None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                async with session.get(f"http://127.0.0.1:{self.health_port}/readyz") as resp:
                    body: Obj = json.loads(await resp.text())
                    return body
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def ready(self) -> bool:
        body = await self.readyz()
        return bool(body and body.get("ready"))

    async def in_charge(self) -> bool:
        body = await self.readyz()
        return bool(body and body.get("ready") and body.get("in_charge"))

    def audit_lines(self) -> list[str]:
        """The audit records this replica emitted, as it logs them (one line each)."""
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text(errors="replace").splitlines() if " oms.audit: " in line]

    def timeline(self) -> str:
        """The log lines that tell who was in charge when: leadership, charge, consumers, signals."""
        if not self.log.exists():
            return ""
        keys = ("leader", "in charge", "standing by", "released lease", "Signal", "consuming ")
        return "\n".join(line for line in self.log.read_text(errors="replace").splitlines()
                         if " oms.audit: " not in line and any(k in line for k in keys))

    def tail(self, lines: int = 60) -> str:
        """The end of the log, without the audit trail (the streams hold that)."""
        if not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join([line for line in text if " oms.audit: " not in line][-lines:])


async def lease_holder(kube: KubeClient, settings: Settings) -> str:
    try:
        lease = await LeaseClient.of(kube).get(settings.lease_namespace, settings.leader_election_lease_name)
    except NotFound:
        return ""
    return lease.record.holder


async def create_namespace(kube: KubeClient, name: str) -> None:
    await kube.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def create_policy(kube: KubeClient, namespace: str, name: str = "merge-validated", **spec: Any) -> Obj:
    body = {"enabled": True, "requireValidation": True, "blockOnConflicts": True, "timeoutHours": 24, **spec}
    return await kube.create(AutoMergePolicy.PLURAL, namespace, {
        "apiVersion": API_VERSION, "kind": AutoMergePolicy.KIND, "metadata": {"name": name}, "spec": body})


async def create_branch(kube: KubeClient, namespace: str, name: str, **spec: Any) -> Obj:
    return await kube.create(Branch.PLURAL, namespace, {
        "apiVersion": API_VERSION, "kind": Branch.KIND, "metadata": {"name": name},
        "spec": {"branchName": f"feature/{name}", **spec}})


class Publisher:
    """Funnel events over one NATS connection: a started and a completed (validation passed) per run."""

    def __init__(self, nats_url: str, settings: Settings, namespace: str) -> None:
        self.nats_url = nats_url
        self.settings = settings
        self.namespace = namespace
        self.event_ids: list[str] = []
        self._nc: Any = None

    async def __aenter__(self) -> Publisher:
        self._nc = await nats.connect(self.nats_url)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._nc.drain()

    async def event(self, kind: str, branch: str, indexing_id: str = "idx-1") -> str:
        event_id = f"{self.namespace}-{branch}-{indexing_id}-{kind}"
        event = build_event(kind, f"feature/{branch}", indexing_id=indexing_id, namespace=self.namespace,
                            records=10, event_id=event_id)
        payload, headers = encode_structured(event)
        subject = {"started": self.settings.subject_started, "completed": self.settings.subject_completed}[kind]
        await self._nc.jetstream().publish(subject, payload, headers=headers, timeout=5.0)
        self.event_ids.append(event_id)
        return event_id

    async def run(self, branch: str, indexing_id: str = "idx-1") -> None:
        await self.event("started", branch, indexing_id)
        await self.event("completed", branch, indexing_id)


async def phases(kube: KubeClient, namespace: str) -> dict[str, str | None]:
    return {b["metadata"]["name"]: (b.get("status") or {}).get("phase") for b in await kube.list_branches(namespace)}


async def stream_records(nats_url: str, stream: str) -> list[Obj]:
    """Every message of a stream as JSON, with its Nats-Msg-Id under ``_msg_id``."""
    from .conftest import read_stream

    out = []
    for m in await read_stream(nats_url, stream):
        body = m.json()
        body["_msg_id"] = m.headers.get("Nats-Msg-Id")
        body["_subject"] = m.subject
        out.append(body)
    return out


def _fact(record: Obj) -> tuple[Any, ...]:
    details = record.get("details") or {}
    return (record["action"], record.get("namespace"), record.get("branch_name"), record.get("correlation_id"),
            record.get("from_state"), record.get("to_state"), details.get("lock"), details.get("stream_seq"))


async def exactly_once_problems(nats_url: str, settings: Settings, namespace: str, event_ids: Iterable[str],
                                merges: Mapping[str, int]) -> list[str]:
    """What is off in the effects of one namespace's events (empty: each took effect exactly once).

    One first-outcome audit record per event id (an interim ``event.pending`` aside), no audit fact twice,
    ``merges[branch]`` ``com.oms.branch.merged`` announcements and ``branch.merged`` audits per Branch, no
    announcement id twice."""
    problems: list[str] = []
    audits = [r for r in await stream_records(nats_url, settings.audit_stream) if r.get("namespace") == namespace]
    doubled = [f for f, n in Counter(_fact(r) for r in audits).items() if n > 1]
    if doubled:
        problems.append(f"audit facts recorded twice: {doubled[:3]}")
    first: dict[str, list[str]] = defaultdict(list)
    for r in audits:
        if r["action"] in FIRST_OUTCOME_ACTIONS and r.get("correlation_id"):
            first[r["correlation_id"]].append(r["action"])
    for eid, actions in list(first.items()):
        if len(actions) > 1:
            first[eid] = [a for a in actions if a != "event.pending"]
    expected = set(event_ids)
    missing = sorted(expected - set(first))
    if missing:
        problems.append(f"{len(missing)} events without an outcome record, e.g. {missing[:3]}")
    twice = {eid: a for eid, a in first.items() if len(a) != 1}
    if twice:
        problems.append(f"events with more than one outcome: {list(twice.items())[:3]}")
    applied = {eid for eid, a in first.items() if a and a[0].startswith("indexing.")}
    if applied != expected:
        problems.append(f"events not applied: {sorted(expected - applied)[:3]}")
    announcements = [m for m in await stream_records(nats_url, settings.branch_events_stream)
                     if m["_subject"] == settings.merged_subject and m["data"].get("namespace") == namespace]
    ids = Counter(m["_msg_id"] for m in announcements)
    if any(n > 1 for n in ids.values()):
        problems.append(f"merge announcements stored twice: {ids.most_common(3)}")
    want = {b: n for b, n in merges.items() if n}
    per_branch = Counter(m["data"]["branch"] for m in announcements)
    if dict(per_branch) != want:
        off = {b: (per_branch.get(b, 0), want.get(b, 0)) for b in set(want) | set(per_branch)
               if per_branch.get(b, 0) != want.get(b, 0)}
        problems.append(f"merge announcements per branch (seen, expected) off: {dict(list(off.items())[:5])}")
    merge_audits = Counter(r["branch"] for r in audits if r["action"] == "branch.merged")
    if dict(merge_audits) != want:
        problems.append(f"branch.merged audits per branch: {dict(merge_audits.most_common(5))}, expected {want}")
    return problems


def monotonic_ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)
