"""Two LeaderElectors on one embedded API server: one leads; a crash, a graceful release and failing renewals
hand the Lease over (or not) as client-go's leader election does. Short durations: 2 s / 1.5 s / 0.2 s."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from branch_operator.clients.kube import KubeClient
from branch_operator.clients.lease import LeaseClient
from branch_operator.controllers.leadership import LeaderElector
from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .waiting import wait_for

NS, NAME = "default", "oms-branch-operator"
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 2.0, 1.5, 0.2


@dataclass
class Replica:
    elector: LeaderElector
    kube: KubeClient
    # (what, wall time) for every callback that finished: "started" / "stopped".
    calls: list[tuple[str, float]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    def count(self, what: str) -> int:
        return sum(1 for w, _ in self.calls if w == what)

    def last(self, what: str) -> float:
        return max(t for w, t in self.calls if w == what)


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedApiServer]:
    srv = EmbeddedApiServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def make_replica(
    server: EmbeddedApiServer, tmp_path: pathlib.Path
) -> AsyncIterator[Callable[[str], asyncio.Future[Replica]]]:
    kubeconfig = str(server.write_kubeconfig(tmp_path / "kubeconfig"))
    replicas: list[Replica] = []

    async def make(identity: str) -> Replica:
        kube = await KubeClient.connect(kubeconfig)
        calls: list[tuple[str, float]] = []

        async def started() -> None:
            calls.append(("started", time.time()))

        async def stopped() -> None:
            calls.append(("stopped", time.time()))

        elector = LeaderElector(
            LeaseClient.of(kube), NS, NAME, identity,
            lease_duration=LEASE_DURATION, renew_deadline=RENEW_DEADLINE, retry_period=RETRY_PERIOD,
            on_started_leading=started, on_stopped_leading=stopped,
        )  # fmt: skip
        replica = Replica(elector, kube, calls)
        replicas.append(replica)
        return replica

    yield lambda identity: asyncio.ensure_future(make(identity))
    for replica in replicas:
        if replica.task is not None:
            replica.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica.task
        await replica.kube.close()


def lease_spec(server: EmbeddedApiServer) -> dict[str, object]:
    lease = server.get_object("coordination.k8s.io", "v1", "leases", NS, NAME)
    return dict(lease["spec"]) if lease else {}


async def two_replicas(make_replica: Callable[[str], asyncio.Future[Replica]]) -> tuple[Replica, Replica]:
    """``a`` leads (it started alone), ``b`` stands by."""
    a, b = await make_replica("a"), await make_replica("b")
    a.start()
    await wait_for(lambda: a.elector.is_leader, 5, "a to lead")
    b.start()
    await wait_for(lambda: b.elector.leader == "a", 5, "b to see a's lease")
    return a, b


async def test_exactly_one_leads(
    server: EmbeddedApiServer, make_replica: Callable[[str], asyncio.Future[Replica]]
) -> None:
    a, b = await make_replica("a"), await make_replica("b")
    a.start()
    b.start()
    leaders = await wait_for(lambda: [r for r in (a, b) if r.elector.is_leader], 5, "a leader")
    [leader] = leaders
    standby = b if leader is a else a
    assert lease_spec(server)["holderIdentity"] == leader.elector.identity
    # Over several renewals, never two leaders, and the standby never took over.
    renewals = server.count_requests("PUT", "/leases/")

    def renewed_while_one_leads() -> bool:
        assert [r.elector.is_leader for r in (leader, standby)] == [True, False]
        return server.count_requests("PUT", "/leases/") >= renewals + 5

    await wait_for(renewed_while_one_leads, 5, "five renewals")
    assert (leader.count("started"), leader.count("stopped"), standby.calls) == (1, 0, [])
    assert standby.elector.leader == leader.elector.identity
    assert lease_spec(server)["leaseTransitions"] == 0


async def test_crashed_leader_is_replaced_after_the_lease_expires(
    server: EmbeddedApiServer, make_replica: Callable[[str], asyncio.Future[Replica]]
) -> None:
    a, b = await two_replicas(make_replica)
    assert a.task is not None
    a.task.cancel()  # no release: to the Lease, a crash
    with contextlib.suppress(asyncio.CancelledError):
        await a.task
    crashed = time.time()
    assert lease_spec(server)["holderIdentity"] == "a"
    # A generous deadline (a loaded machine is slow); the lower bound below is what this test is about.
    await wait_for(lambda: b.elector.is_leader, LEASE_DURATION + 10, "b to take over")
    # b waited for the lease to run out: a renewed at most one retry period before the crash.
    assert b.last("started") - crashed >= LEASE_DURATION - RETRY_PERIOD - 0.05
    spec = lease_spec(server)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    assert b.count("started") == 1


async def test_graceful_release_hands_over_before_the_lease_could_expire(
    server: EmbeddedApiServer, make_replica: Callable[[str], asyncio.Future[Replica]]
) -> None:
    a, b = await two_replicas(make_replica)
    assert await a.elector.release()
    released = time.time()
    spec = lease_spec(server)
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"]) == ("", 1)  # as client-go releases
    assert a.calls[-1][0] == "stopped" and not a.elector.is_leader  # it stopped acting before releasing
    await wait_for(lambda: b.elector.is_leader, 10, "b to take over")
    # Sooner than the Lease could have run out without the release (how soon: bench/bench_failover.py).
    assert b.last("started") - released < LEASE_DURATION - RETRY_PERIOD
    assert a.last("stopped") <= released
    assert lease_spec(server)["holderIdentity"] == "b"
    assert a.task is not None
    await asyncio.wait_for(a.task, 1)  # run() returns after a release


async def test_leader_whose_renewals_fail_stops_before_the_lease_could_be_taken(
    server: EmbeddedApiServer, make_replica: Callable[[str], asyncio.Future[Replica]]
) -> None:
    a, b = await two_replicas(make_replica)
    server.inject_fault(method="PUT", path_regex=r"/leases/", status=500, times=-1)
    failing = time.time()
    await wait_for(lambda: a.count("stopped"), RENEW_DEADLINE + 1, "a to stop leading")
    assert not a.elector.is_leader
    last_renewal = max(
        r.time for r in server.requests if r.method in ("POST", "PUT") and "/leases" in r.path and r.status < 300
    )
    assert last_renewal <= failing
    # No standby may take the lease before last_renewal + LEASE_DURATION; a had stopped acting by then.
    assert a.last("stopped") < last_renewal + LEASE_DURATION
    assert a.last("stopped") >= failing + RENEW_DEADLINE - 2 * RETRY_PERIOD  # and not at the first failure
    assert not b.elector.is_leader and b.calls == []
    server.clear_faults()
    leaders = await wait_for(lambda: [r for r in (a, b) if r.elector.is_leader], LEASE_DURATION + 2, "a new leader")
    assert len(leaders) == 1
