"""Watch streams: initial state, resumption, 410 Gone, timeouts, bookmarks, selectors, fan-out, slow watchers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from branch_operator.embedded.apiserver.server import EmbeddedApiServer
from branch_operator.embedded.apiserver.store import ObjectStore, Stored, Watcher

from .conftest import Api

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


class Stream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        line = await asyncio.wait_for(self.response.content.readline(), within)
        assert line, "the stream ended"
        event: dict[str, Any] = json.loads(line)
        return event

    async def take(self, n: int) -> list[tuple[str, str]]:
        return [(e["type"], e["object"]["metadata"].get("name", "")) for e in [await self.next() for _ in range(n)]]

    async def ended(self, within: float = 5.0) -> bool:
        return await asyncio.wait_for(self.response.content.readline(), within) == b""


async def open_stream(session: aiohttp.ClientSession, url: str, **params: str) -> Stream:
    response = await session.get(url, params={"watch": "true", **params})
    assert response.status == 200
    return Stream(response)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # Over a hundred concurrent streams: lift aiohttp's default cap of 100 connections.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


def cm(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


async def test_watch_without_version_sends_state_then_follows(api: Api, session: aiohttp.ClientSession) -> None:
    await api.ok("POST", CONFIGMAPS, cm("a"))
    await api.ok("POST", CONFIGMAPS, cm("b"))
    stream = await open_stream(session, api.url + CONFIGMAPS)
    assert sorted(await stream.take(2)) == [("ADDED", "a"), ("ADDED", "b")]
    await api.ok("POST", CONFIGMAPS, cm("c"))
    await api.ok("PATCH", f"{CONFIGMAPS}/a", {"data": {"x": "1"}})
    deleted = await api.ok("DELETE", f"{CONFIGMAPS}/b")
    assert await stream.take(2) == [("ADDED", "c"), ("MODIFIED", "a")]
    event = await stream.next()
    assert event["type"] == "DELETED" and event["object"]["metadata"]["name"] == "b"
    # The deletion has its own resourceVersion, as on the real server.
    assert event["object"]["metadata"]["resourceVersion"] == deleted["metadata"]["resourceVersion"]


@pytest.mark.parametrize("params", [{"watch": "1"}, {"resourceVersion": "0"}, {"resourceVersion": ""}])
async def test_watch_spellings(api: Api, session: aiohttp.ClientSession, params: dict[str, str]) -> None:
    await api.ok("POST", CONFIGMAPS, cm("a"))
    stream = await open_stream(session, api.url + CONFIGMAPS, **params)
    assert await stream.take(1) == [("ADDED", "a")]


async def test_watch_resumes_after_resource_version(api: Api, session: aiohttp.ClientSession) -> None:
    first = await api.ok("POST", CONFIGMAPS, cm("a"))
    modified = await api.ok("PATCH", f"{CONFIGMAPS}/a", {"data": {"x": "1"}})
    await api.ok("POST", CONFIGMAPS, cm("b"))
    stream = await open_stream(session, api.url + CONFIGMAPS, resourceVersion=first["metadata"]["resourceVersion"])
    event = await stream.next()
    assert (
        event["type"] == "MODIFIED"
        and event["object"]["metadata"]["resourceVersion"] == modified["metadata"]["resourceVersion"]
    )
    assert await stream.take(1) == [("ADDED", "b")]


async def test_too_old_resource_version_is_410_gone(session: aiohttp.ClientSession) -> None:
    async with EmbeddedApiServer(history_size=3) as server:
        first = server.create_object("", "v1", "configmaps", cm("a"), namespace="default")
        for i in range(5):
            server.patch_object("", "v1", "configmaps", "default", "a", {"data": {"i": str(i)}})
        stream = await open_stream(
            session, server.url + CONFIGMAPS, resourceVersion=first["metadata"]["resourceVersion"]
        )
        event = await stream.next()
        assert event["type"] == "ERROR"
        assert event["object"]["kind"] == "Status" and event["object"]["code"] == 410
        assert event["object"]["reason"] == "Expired"
        assert await stream.ended()
        # Recent enough versions still resume.
        recent = str(server.resource_version - 1)
        stream = await open_stream(session, server.url + CONFIGMAPS, resourceVersion=recent)
        assert (await stream.next())["type"] == "MODIFIED"


async def test_timeout_seconds_ends_stream_with_a_bookmark(
    api: Api, session: aiohttp.ClientSession, server: EmbeddedApiServer
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = await open_stream(session, api.url + CONFIGMAPS, timeoutSeconds="1", allowWatchBookmarks="true")
    event = await stream.next(within=5)
    assert event["type"] == "BOOKMARK"
    assert event["object"]["metadata"]["resourceVersion"] == str(server.resource_version)
    assert await stream.ended()
    assert 0.9 <= loop.time() - started < 4


async def test_idle_streams_get_periodic_bookmarks_when_allowed(session: aiohttp.ClientSession) -> None:
    async with EmbeddedApiServer(bookmark_interval=0.1) as server:
        with_bookmarks = await open_stream(session, server.url + CONFIGMAPS, allowWatchBookmarks="true")
        without = await open_stream(session, server.url + CONFIGMAPS)
        for _ in range(3):
            event = await with_bookmarks.next()
            assert event["type"] == "BOOKMARK"
            assert event["object"]["metadata"]["resourceVersion"] == str(server.resource_version)
        server.create_object("", "v1", "configmaps", cm("a"), namespace="default")
        assert (await without.next())["type"] == "ADDED"  # Nothing before it: no bookmarks unless asked for.


async def test_send_initial_events_ends_with_a_bookmark(api: Api, session: aiohttp.ClientSession) -> None:
    await api.ok("POST", CONFIGMAPS, cm("a"))
    stream = await open_stream(
        session,
        api.url + CONFIGMAPS,
        sendInitialEvents="true",
        allowWatchBookmarks="true",
        resourceVersionMatch="NotOlderThan",
    )
    assert await stream.take(1) == [("ADDED", "a")]
    bookmark = await stream.next()
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_label_selector_watch_sees_objects_enter_and_leave(api: Api, session: aiohttp.ClientSession) -> None:
    stream = await open_stream(session, api.url + CONFIGMAPS, labelSelector="app in (x)")
    await api.ok("POST", CONFIGMAPS, cm("a", app="x"))
    await api.ok("POST", CONFIGMAPS, cm("b"))
    await api.ok("PATCH", f"{CONFIGMAPS}/b", {"metadata": {"labels": {"app": "x"}}})
    await api.ok("PATCH", f"{CONFIGMAPS}/a", {"metadata": {"labels": {"app": None}}})
    await api.ok("PATCH", f"{CONFIGMAPS}/a", {"data": {"unseen": "1"}})
    await api.ok("POST", CONFIGMAPS, cm("c", app="x"))
    assert await stream.take(4) == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a"), ("ADDED", "c")]


async def test_field_selector_and_namespace_scope(api: Api, session: aiohttp.ClientSession) -> None:
    await api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "other"}})
    by_name = await open_stream(session, api.url + "/api/v1/configmaps", fieldSelector="metadata.name=b")
    in_default = await open_stream(session, api.url + CONFIGMAPS)
    everywhere = await open_stream(session, api.url + "/api/v1/configmaps")
    await api.ok("POST", CONFIGMAPS, cm("a"))
    await api.ok("POST", "/api/v1/namespaces/other/configmaps", cm("b"))
    await api.ok("POST", CONFIGMAPS, cm("b"))
    event = await by_name.next()
    assert event["object"]["metadata"]["namespace"] == "other"
    assert (await by_name.next())["object"]["metadata"]["namespace"] == "default"
    assert await in_default.take(2) == [("ADDED", "a"), ("ADDED", "b")]
    assert await everywhere.take(3) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "b")]


async def test_hundred_watchers_get_every_event(
    api: Api, session: aiohttp.ClientSession, server: EmbeddedApiServer
) -> None:
    streams = [await open_stream(session, api.url + CONFIGMAPS) for _ in range(120)]
    assert server.watcher_count("", "v1", "configmaps") == 120
    await api.ok("POST", CONFIGMAPS, cm("a"))
    for i in range(50):
        await api.ok("PATCH", f"{CONFIGMAPS}/a", {"data": {"i": str(i)}})

    async def collect(stream: Stream) -> list[str]:
        events = [await stream.next() for _ in range(51)]
        return [e["object"].get("data", {}).get("i", "-") for e in events]

    results = await asyncio.gather(*(collect(s) for s in streams))
    assert all(r == ["-", *[str(i) for i in range(50)]] for r in results)


async def test_lagging_watcher_is_cut_off_and_resumes_without_gaps(session: aiohttp.ClientSession) -> None:
    async with EmbeddedApiServer(watch_queue_size=2) as server:
        server.create_object("", "v1", "configmaps", cm("a"), namespace="default")
        stream = await open_stream(session, server.url + CONFIGMAPS, resourceVersion=str(server.resource_version))
        # Ten writes in one go: the stream cannot drain in between, so its queue overflows. The writes
        # themselves never wait for the watcher.
        for i in range(10):
            server.patch_object("", "v1", "configmaps", "default", "a", {"data": {"i": str(i)}})
        received = []
        while line := await asyncio.wait_for(stream.response.content.readline(), 5):
            received.append(json.loads(line))
        assert [e["object"]["data"]["i"] for e in received] == ["0", "1"]
        last = received[-1]["object"]["metadata"]["resourceVersion"]
        resumed = await open_stream(session, server.url + CONFIGMAPS, resourceVersion=last)
        assert [(await resumed.next())["object"]["data"]["i"] for _ in range(8)] == [str(i) for i in range(2, 10)]


def test_writer_never_blocks_on_a_full_watcher_queue() -> None:
    store = ObjectStore(history_size=10)
    watcher = Watcher(None, None, queue_size=3)
    store.watchers.add(watcher)
    for i in range(10):
        store.commit("ADDED", ("ns", f"o{i}"), Stored({"metadata": {"name": f"o{i}"}}, i + 1), None)
    assert watcher.overflowed and watcher.closed
    assert watcher.queue.qsize() == 3 and None not in watcher.queue._queue  # type: ignore[attr-defined]
    assert len(store.history) == 10 and store.compacted_rv == 0
    store.commit("ADDED", ("ns", "o10"), Stored({"metadata": {"name": "o10"}}, 11), None)
    assert len(store.history) == 10 and store.compacted_rv == 1


async def test_stop_ends_open_streams(session: aiohttp.ClientSession) -> None:
    server = EmbeddedApiServer()
    await server.start()
    stream = await open_stream(session, server.url + CONFIGMAPS, resourceVersion=str(server.resource_version))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.stop()
    assert loop.time() - started < 2
    with pytest.raises((aiohttp.ClientError, AssertionError)):
        await stream.next()


async def test_deleting_a_crd_ends_its_watches(api: Api, session: aiohttp.ClientSession) -> None:
    from .conftest import BRANCHES, CRDS, crd

    await api.ok("POST", CRDS, crd())
    stream = await open_stream(session, api.url + BRANCHES)
    await api.ok("DELETE", f"{CRDS}/branches.oms.dev")
    assert await stream.ended()
