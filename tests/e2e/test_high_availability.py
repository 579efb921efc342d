"""High availability by Lease, with replicas configured as the Helm chart configures them (``tests/e2e/ha.py``).

Real ``branch-operator run`` processes with the rendered Deployment's arguments and environment and the
chart's default timings (lease 10 s, renew deadline 7 s, retry period 0.5 s, ack wait 30 s) against the
embedded API server and a real nats-server:

- two replicas: one in charge, both Ready; a policy created after both started governs every merge;
- SIGKILL of the replica in charge while events flow: the standby takes over, every event takes effect
  once, a lock deleted while nobody was in charge and one deleted after the takeover both unblock merges;
- a rolling update (a new pod, then SIGTERM of the old ones): each handover comes within seconds, nothing
  waits for an acknowledgement timeout, and the new pod, in charge at the end, acts on a policy change and
  on an admin annotation.

The deadlines are generous for a loaded CI machine except where a deadline is what tells a working path
from a fallback (the resync every 60 s, the 30 s acknowledgement timeout, the 10 s Lease expiry); the
failover times themselves are measured by ``bench/bench_failover.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from branch_operator.api.models import AutoMergePolicy, BranchLock, LockType
from branch_operator.clients.kube import KubeClient
from branch_operator.config import Settings
from branch_operator.domain.locks import lock_body
from branch_operator.embedded.env import EmbeddedEnv

from ..chart import conftest as chart
from ..waiting import wait_for
from .ha import (
    RELEASE_NAMESPACE,
    PodTemplate,
    Publisher,
    Replica,
    create_branch,
    create_namespace,
    create_policy,
    exactly_once_problems,
    lease_holder,
    phases,
    stream_records,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

Obj = dict[str, Any]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> PodTemplate:
    """The operator container as ``helm template --namespace oms-system`` renders it with replicaCount 2."""
    assert chart.NAMESPACE == RELEASE_NAMESPACE
    template = PodTemplate.rendered({"replicaCount": 2}, tmp_path_factory.mktemp("chart"))
    assert template.replicas == 2 and template.value("OMS_LEADER_ELECTION") == "true"
    assert template.strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    return template


class Cluster:
    """The replicas of one test, on the module's environment; all stopped at the end of the test."""

    def __init__(self, env: EmbeddedEnv, pod: PodTemplate, kube: KubeClient) -> None:
        self.env = env
        self.pod = pod
        self.kube = kube
        self.settings = pod.settings(env.nats_url)
        self.replicas: list[Replica] = []
        self.tasks: list[asyncio.Task[None]] = []  # background load, cancelled at the end

    async def start(self, *names: str) -> list[Replica]:
        """Start pods and wait until each is Ready (a standby is Ready too)."""
        started = [Replica(self.env, self.pod, f"oms-branch-operator-{name}") for name in names]
        self.replicas += started
        for replica in started:
            await replica.start()
        for replica in started:
            await wait_for(replica.ready, 60, f"{replica.name} Ready")
        return started

    async def in_charge(self, timeout: float = 60.0, among: tuple[Replica, ...] | None = None) -> Replica:
        """The one running replica in charge, once exactly one is, the Lease names it, and it is one of
        ``among`` (if given)."""
        async def one() -> Replica | None:
            running = [r for r in self.replicas if r.running]
            charged = [r for r in running if await r.in_charge()]
            if len(charged) != 1 or (among is not None and charged[0] not in among):
                return None
            holder = await lease_holder(self.kube, self.settings)
            return charged[0] if holder == charged[0].name else None
        names = "" if among is None else f" (one of {[r.name for r in among]})"
        replica: Replica = await wait_for(one, timeout, f"exactly one replica in charge{names}, holding the Lease")
        return replica

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in self.replicas))

    def logs(self) -> str:
        return "\n".join(f"--- {r.name}: hand-overs\n{r.timeline()}\n--- {r.name}: log tail\n{r.tail(30)}"
                         for r in self.replicas)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env() -> AsyncIterator[EmbeddedEnv]:
    env = EmbeddedEnv()
    await env.start()
    kube = await KubeClient.connect(str(env.kubeconfig))
    await create_namespace(kube, RELEASE_NAMESPACE)  # the pods' namespace: the Lease lives there
    await kube.close()
    yield env
    await env.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def cluster(env: EmbeddedEnv, pod: PodTemplate) -> AsyncIterator[Cluster]:
    kube = await KubeClient.connect(str(env.kubeconfig))
    c = Cluster(env, pod, kube)
    try:
        yield c
    finally:
        print(c.logs())  # pytest shows it for a failed test only
        await c.stop()
        await kube.close()


# ------------------------------------------------------------------------------------------- helpers


class Scene:
    """One test's namespace: Branches, a policy, locks, events, and what they should end as."""

    def __init__(self, c: Cluster, namespace: str) -> None:
        self.c = c
        self.kube = c.kube
        self.ns = namespace
        self.settings: Settings = c.settings
        self.events: list[str] = []  # every event id published
        self.merges: Counter[str] = Counter()  # how often each Branch is expected to have merged

    async def setup(self, branches: list[str], *, policy: bool = True) -> None:
        await create_namespace(self.kube, self.ns)
        if policy:
            await self.policy()
        for name in branches:
            await create_branch(self.kube, self.ns, name)
        await self.wait_phases(dict.fromkeys(branches, "ACTIVE"), 60, "every Branch initialised")

    async def policy(self, **spec: Any) -> None:
        created = await create_policy(self.kube, self.ns, **spec)
        await self.policy_seen(int(created["metadata"].get("generation") or 1))

    async def policy_seen(self, generation: int) -> None:
        """Until the replica in charge has the policy in its index: it writes the policy's status then
        (kopf updates indices before running the handlers of the same watch event)."""
        async def seen() -> bool:
            obj = await self.kube.get(AutoMergePolicy.PLURAL, self.ns, "merge-validated")
            return int((obj.get("status") or {}).get("observedGeneration") or 0) >= generation
        await wait_for(seen, 60, f"policy generation {generation} seen by the replica in charge")

    async def wait_phases(self, want: dict[str, str], timeout: float, what: str) -> None:
        async def check() -> bool:
            now = await phases(self.kube, self.ns)
            return all(now.get(n) == p for n, p in want.items())
        await wait_for(check, timeout, what)

    async def wait_merged(self, names: list[str], timeout: float, what: str) -> None:
        """Until each of ``names`` is ACTIVE again with one more merge announced than before."""
        self.merges.update(names)

        async def check() -> bool:
            now = await phases(self.kube, self.ns)
            if any(now.get(n) != "ACTIVE" for n in names):
                return False
            announced = Counter(m["data"]["branch"] for m in await stream_records(
                self.c.env.nats_url, self.settings.branch_events_stream)
                if m["_subject"] == self.settings.merged_subject and m["data"].get("namespace") == self.ns)
            return all(announced[n] >= self.merges[n] for n in names)
        await wait_for(check, timeout, what)

    async def blocked_by_lock(self, name: str) -> Obj:
        """A READY Branch whose merge a WRITE lock blocks: locked, indexed, the decision recorded."""
        branch = await self.kube.get_branch(self.ns, name)
        lock, _ = await self.kube.create_lock(self.ns, lock_body(
            branch, LockType.WRITE, key="editor", holder="oms-editor", reason="editing"))
        async with Publisher(self.c.env.nats_url, self.settings, self.ns) as pub:
            await pub.run(name)
            self.events += pub.event_ids

        async def blocked() -> bool:
            st = (await self.kube.get_branch(self.ns, name)).get("status") or {}
            return st.get("phase") == "READY" and (st.get("merge") or {}).get("decision") == "Blocked"
        await wait_for(blocked, 60, f"{name} READY, its merge blocked by the WRITE lock")
        return lock

    async def delete_lock(self, lock: Obj) -> None:
        await self.kube.delete(BranchLock.PLURAL, self.ns, lock["metadata"]["name"])

    async def no_matching_policy_recorded(self) -> list[str]:
        """Audit records and Kubernetes Events of this namespace that name NoMatchingPolicy."""
        audits = [r for r in await stream_records(self.c.env.nats_url, self.settings.audit_stream)
                  if r.get("namespace") == self.ns and "NoMatchingPolicy" in json.dumps(r)]
        events = await self.kube.core.list_namespaced_event(self.ns)
        items = [self.kube.api.sanitize_for_serialization(i) for i in events.items]
        return [f"audit {r['action']} {r.get('branch_name')}" for r in audits] + [
            f"event {e.get('reason')} {e.get('involvedObject', {}).get('name')}" for e in items
            if "NoMatchingPolicy" in json.dumps(e) or "no AutoMergePolicy matches" in (e.get("message") or "")]

    async def exactly_once(self) -> None:
        problems = await exactly_once_problems(self.c.env.nats_url, self.settings, self.ns, self.events,
                                               self.merges)
        assert not problems, problems


class Stream:
    """Indexing runs published in the background at a steady pace, one Branch after another."""

    def __init__(self, scene: Scene, branches: list[str], per_second: float = 5.0) -> None:
        self.scene = scene
        self.branches = branches
        self.interval = 1.0 / per_second
        self.published = 0
        self.progress = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with Publisher(self.scene.c.env.nats_url, self.scene.settings, self.scene.ns) as pub:
            for name in self.branches:
                await pub.run(name)
                self.scene.events += pub.event_ids[-2:]
                async with self.progress:
                    self.published += 1
                    self.progress.notify_all()
                await asyncio.sleep(self.interval)  # pacing the load (a steady flow), not waiting for anything

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())
        self.scene.c.tasks.append(self.task)

    async def reached(self, count: int) -> None:
        async with self.progress:
            await asyncio.wait_for(self.progress.wait_for(lambda: self.published >= count), 60)

    async def done(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, 120)


# --------------------------------------------------------------------------------------------- tests


async def test_one_replica_in_charge_and_a_policy_made_later_governs_every_merge(cluster: Cluster) -> None:
    a, b = await cluster.start("6b7c9d-a", "6b7c9d-b")
    leader = await cluster.in_charge()
    standby = b if leader is a else a
    body = await standby.readyz()
    assert body is not None and body["ready"] and not body["in_charge"], body
    assert body["leader"] == leader.name, body

    scene = Scene(cluster, "ha-policy")
    names = [f"p{i:02d}" for i in range(20)]
    await scene.setup(names, policy=False)
    await scene.policy()  # after both replicas started
    async with Publisher(cluster.env.nats_url, scene.settings, scene.ns) as pub:
        for name in names:
            await pub.run(name)
        scene.events += pub.event_ids
    await scene.wait_merged(names, 60, "all 20 Branches merged")
    assert await scene.no_matching_policy_recorded() == []
    await scene.exactly_once()
    # Nobody took over in between, and the standby acted on nothing: it recorded no audit fact.
    assert await cluster.in_charge(timeout=5) is leader
    assert not (await standby.readyz() or {}).get("in_charge")
    assert standby.audit_lines() == [], standby.audit_lines()[:3]
    assert len(leader.audit_lines()) >= 20 * 3


async def test_sigkill_of_the_replica_in_charge_loses_and_doubles_nothing(cluster: Cluster) -> None:
    a, b = await cluster.start("6b7c9d-a", "6b7c9d-b")
    leader = await cluster.in_charge()
    survivor = b if leader is a else a
    scene = Scene(cluster, "ha-kill")
    names = [f"k{i:02d}" for i in range(40)]
    await scene.setup([*names, "held-early", "held-late"])
    early = await scene.blocked_by_lock("held-early")
    late = await scene.blocked_by_lock("held-late")

    flow = Stream(scene, names)
    flow.start()
    await flow.reached(10)
    await leader.kill()
    killed = time.monotonic()
    # Deleted while nobody is in charge: the survivor sees the watch event as a standby, and acts on it
    # only by catching up when it takes charge.
    await scene.delete_lock(early)
    await cluster.in_charge(among=(survivor,))
    took_over = time.monotonic() - killed
    # Within 15 s of the takeover, well before the first resync (60 s after it): the catch-up merged it.
    await scene.wait_merged(["held-early"], 15, "held-early merged by the catch-up")
    # Deleted with the survivor in charge: its watch handler acts.
    await scene.delete_lock(late)
    await scene.wait_merged(["held-late"], 15, "held-late merged by the lock's watch event")

    await flow.done()
    # Messages the killed process held come back after the acknowledgement timeout (30 s).
    await scene.wait_merged(names, 90, "every Branch of the stream merged")
    await scene.exactly_once()
    print(f"\ntakeover {took_over:.1f}s after the SIGKILL")


async def test_rolling_update_hands_over_within_seconds_and_the_new_pod_acts(cluster: Cluster) -> None:
    a, b = await cluster.start("5c8d7f-a", "5c8d7f-b")
    old_leader = await cluster.in_charge()
    old_other = b if old_leader is a else a
    scene = Scene(cluster, "ha-roll")
    names = [f"r{i:02d}" for i in range(30)]
    await scene.setup([*names, "admin-held", "later"])
    (c,) = await cluster.start("7f9e6d-c")  # the surge pod: Ready as a standby before an old one stops
    assert not (await c.readyz() or {}).get("in_charge")

    flow = Stream(scene, names)
    flow.start()
    await flow.reached(8)
    old_leader.terminate()
    stopped = time.monotonic()
    # The Lease is released on SIGTERM: the next replica takes it within the retry period, not after the
    # 10 s the Lease would take to expire.
    await cluster.in_charge(timeout=6, among=(old_other, c))
    first_handover = time.monotonic() - stopped
    assert await old_leader.exited() == 0

    await flow.reached(20)
    old_other.terminate()
    stopped = time.monotonic()
    await cluster.in_charge(timeout=6, among=(c,))
    second_handover = time.monotonic() - stopped
    assert await old_other.exited() == 0

    await flow.done()
    # Messages in hand at each stop were finished or handed back, none left to the 30 s ack wait.
    await scene.wait_merged(names, 20, "every Branch of the stream merged")
    await scene.exactly_once()

    # The new pod acts on watch events: a policy change ...
    held = await scene.blocked_by_lock("later")
    await scene.delete_lock(held)  # unblocked, but the policy is switched off first
    await scene.wait_merged(["later"], 15, "later merged")
    policy = await cluster.kube.get(AutoMergePolicy.PLURAL, scene.ns, "merge-validated")
    await cluster.kube.patch(AutoMergePolicy.PLURAL, scene.ns, "merge-validated", {"spec": {"enabled": False}})
    await scene.policy_seen(int(policy["metadata"]["generation"]) + 1)
    async with Publisher(cluster.env.nats_url, scene.settings, scene.ns) as pub:
        await pub.run("later", "idx-2")
        scene.events += pub.event_ids

    async def decided() -> bool:
        st = (await scene.kube.get_branch(scene.ns, "later")).get("status") or {}
        return st.get("phase") == "READY" and bool((st.get("merge") or {}).get("decision"))
    await wait_for(decided, 15, "later READY with a decision while the policy is off")
    await cluster.kube.patch(AutoMergePolicy.PLURAL, scene.ns, "merge-validated", {"spec": {"enabled": True}})
    await scene.wait_merged(["later"], 15, "later merged again once the policy is on again")
    # ... and an admin annotation.
    lock = await scene.blocked_by_lock("admin-held")
    await cluster.kube.patch("branches", scene.ns, "admin-held", {"metadata": {"annotations": {
        "oms.dev/force-unlock": lock["metadata"]["name"], "oms.dev/reason": "editor gone",
        "oms.dev/requested-by": "alice"}}})
    await scene.wait_merged(["admin-held"], 15, "admin-held merged after the force-unlock")
    st = (await scene.kube.get_branch(scene.ns, "admin-held"))["status"]
    assert st["lastAdminAction"]["action"] == "force-unlock", st
    await scene.exactly_once()
    print(f"\nhandovers {first_handover:.1f}s and {second_handover:.1f}s after SIGTERM")
