"""Fault injection and the bounded request log."""

from __future__ import annotations

import asyncio

import pytest

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .conftest import BRANCHES, Api, branch

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


async def test_injected_status_fails_the_next_matching_requests(api: Api, server: EmbeddedApiServer) -> None:
    server.inject_fault(method="POST", path_regex=r"/configmaps$", status=500, times=2)
    for _ in range(2):
        status, body = await api.post(CONFIGMAPS, {"metadata": {"name": "c"}})
        assert status == 500 and body["kind"] == "Status" and body["reason"] == "InternalError"
    assert (await api.get(CONFIGMAPS))[0] == 200  # Other methods are unaffected.
    assert (await api.post(CONFIGMAPS, {"metadata": {"name": "c"}}))[0] == 201


@pytest.mark.parametrize(("code", "reason"), [(409, "Conflict"), (429, "TooManyRequests"), (503, "ServiceUnavailable")])
async def test_injected_status_reasons(api: Api, server: EmbeddedApiServer, code: int, reason: str) -> None:
    server.inject_fault(method=None, path_regex="configmaps", status=code)
    async with api.session.get(api.url + CONFIGMAPS) as response:
        body = await response.json()
        assert response.status == code and body["reason"] == reason and body["code"] == code
        if code == 429:
            assert response.headers["Retry-After"] == "1"


async def test_injected_delay_then_normal_processing(api: Api, server: EmbeddedApiServer) -> None:
    server.inject_fault(method="GET", path_regex="/namespaces/default$", delay=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await api.get("/api/v1/namespaces/default")
    assert status == 200 and body["metadata"]["name"] == "default"
    assert loop.time() - started >= 0.3
    started = loop.time()
    await api.get("/api/v1/namespaces/default")
    assert loop.time() - started < 0.3


async def test_permanent_faults_until_cleared(api: Api, server: EmbeddedApiServer) -> None:
    server.inject_fault(method="get", path_regex="namespaces", status=503, times=-1)
    for _ in range(3):
        assert (await api.get("/api/v1/namespaces"))[0] == 503
    server.clear_faults()
    assert (await api.get("/api/v1/namespaces"))[0] == 200
    with pytest.raises(ValueError):
        server.inject_fault(method=None, path_regex="x", status=500, times=0)


async def test_request_log_records_and_counts(branches: Api, server: EmbeddedApiServer) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    await branches.ok("PATCH", f"{BRANCHES}/a/status", {"status": {"phase": "READY"}})
    await branches.get(BRANCHES, labelSelector="x=y")
    await branches.get(f"{BRANCHES}/missing")

    last_patch = [r for r in server.requests if r.method == "PATCH"][-1]
    assert last_patch.path.endswith("/branches/a/status")
    assert last_patch.content_type == "application/merge-patch+json"
    assert last_patch.status == 200 and last_patch.body == {"status": {"phase": "READY"}}
    listing = [r for r in server.requests if r.query][-1]
    assert listing.query == {"labelSelector": "x=y"} and listing.body is None
    assert server.requests[-1].status == 404
    assert server.count_requests("PATCH") == 1
    assert server.count_requests(path_contains="/branches") == 4
    assert server.count_requests("get", "/branches/missing") == 1


async def test_request_log_is_bounded(api: Api) -> None:
    async with EmbeddedApiServer(request_log_size=10) as small:
        for i in range(30):
            async with api.session.get(f"{small.url}/api/v1/namespaces/default", params={"i": str(i)}) as r:
                assert r.status == 200
        assert len(small.requests) == 10
        assert [r.query["i"] for r in small.requests] == [str(i) for i in range(20, 30)]
        assert small.count_requests("GET") == 10


async def test_event_retention_bounds_event_objects(api: Api) -> None:
    async with EmbeddedApiServer(event_retention=5) as small:
        for _ in range(12):
            async with api.session.post(
                f"{small.url}/api/v1/namespaces/default/events", json={"metadata": {"generateName": "e-"}}
            ) as r:
                assert r.status == 201
        assert len(small.list_objects("", "v1", "events")) == 5
