"""Least privilege for leader election, proven from what the elector does: every request two LeaderElectors
make (acquire, renew, stand by, release, take over) maps to ``rbac.LEADER_ELECTION_RULES``, and every rule
granted there is used."""

from __future__ import annotations

import asyncio
import pathlib

from branch_operator import rbac
from branch_operator.clients.kube import KubeClient
from branch_operator.clients.lease import LeaseClient
from branch_operator.controllers.leadership import LeaderElector
from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from ..waiting import wait_for
from .test_rbac_from_code import grants, used_by_operator


async def test_leader_election_rules_are_exactly_what_the_elector_uses(tmp_path: pathlib.Path) -> None:
    server = EmbeddedApiServer()
    await server.start()
    kubeconfig = str(server.write_kubeconfig(tmp_path / "kubeconfig"))
    kubes = [await KubeClient.connect(kubeconfig) for _ in range(2)]
    a, b = (
        LeaderElector(LeaseClient.of(kube), "default", "oms-branch-operator", identity,
                      lease_duration=2, renew_deadline=1.5, retry_period=0.2)
        for kube, identity in zip(kubes, "ab", strict=True)
    )  # fmt: skip
    tasks = [asyncio.create_task(a.run())]
    try:
        await wait_for(lambda: a.is_leader, 5, "a to lead")
        tasks.append(asyncio.create_task(b.run()))
        await wait_for(lambda: server.count_requests("PUT", "/leases/") >= 2, 5, "a to renew")
        assert await a.release()
        await wait_for(lambda: b.is_leader, 5, "b to take over")
        assert await b.release()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for kube in kubes:
            await kube.close()
        await server.stop()

    used = used_by_operator(server.requests)
    assert set(used) == grants(rbac.LEADER_ELECTION_RULES), sorted(used)
