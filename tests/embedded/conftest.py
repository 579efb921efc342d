"""Fixtures for the embedded API server tests: a server on a free port and a small HTTP client for it."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest_asyncio

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

GROUP, VERSION = "oms.dev", "v1alpha1"
BRANCHES = f"/apis/{GROUP}/{VERSION}/namespaces/default/branches"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"

# A hand-written Branch CRD: the tests must not depend on the real CRD rendering (api/crdgen.py).
_BRANCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["branchName"],
            "properties": {
                "branchName": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[a-z][a-z0-9/-]*$"},
                "targetBranch": {"type": "string", "default": "main"},
                "autoMerge": {"type": "boolean", "default": True},
                "priority": {"type": "integer", "minimum": -10, "maximum": 10},
                "ratio": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                "mode": {"type": "string", "enum": ["fast", "safe"]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
                "deadline": {"type": "string", "format": "date-time"},
                "note": {"type": "string", "nullable": True},
                "port": {"x-kubernetes-int-or-string": True},
                "options": {
                    "type": "object",
                    "properties": {
                        "retries": {"type": "integer", "default": 3},
                        "backoff": {"type": "object", "properties": {"seconds": {"type": "integer", "default": 5}}},
                    },
                },
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "x-kubernetes-validations": [
                {"rule": "self.branchName == oldSelf.branchName", "message": "spec.branchName is immutable"}
            ],
        },
        "status": {
            "type": "object",
            "properties": {
                "phase": {"type": "string", "enum": ["ACTIVE", "READY", "ERROR"]},
                "observedGeneration": {"type": "integer"},
                "records": {"type": "integer", "minimum": 0},
                "kopf": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "handled": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    },
}


def crd(
    *,
    plural: str = "branches",
    kind: str = "Branch",
    group: str = GROUP,
    version: str = VERSION,
    scope: str = "Namespaced",
    status: bool = True,
    schema: dict[str, Any] | None = None,
    short_names: list[str] | None = None,
) -> dict[str, Any]:
    version_doc: dict[str, Any] = {
        "name": version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": copy.deepcopy(schema if schema is not None else _BRANCH_SCHEMA)},
    }
    if status:
        version_doc["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": scope,
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "shortNames": short_names if short_names is not None else ["br"],
                "categories": ["oms"],
            },
            "versions": [version_doc],
        },
    }


def branch(name: str, branch_name: str | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Branch",
        "metadata": {"name": name},
        "spec": {"branchName": branch_name or name, **spec},
    }


class Api:
    """Raw HTTP against the server: returns (status, decoded JSON body)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", **params: str
    ) -> tuple[int, Any]:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self.session.request(method, self.url + path, data=data, headers=headers, params=params) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text and r.content_type == "application/json" else text)

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        return await self.request("GET", path, **params)

    async def post(self, path: str, body: Any, **params: str) -> tuple[int, Any]:
        return await self.request("POST", path, body, **params)

    async def put(self, path: str, body: Any) -> tuple[int, Any]:
        return await self.request("PUT", path, body)

    async def patch(self, path: str, body: Any, content_type: str = MERGE) -> tuple[int, Any]:
        return await self.request("PATCH", path, body, content_type)

    async def delete(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.request("DELETE", path, body)

    async def ok(self, method: str, path: str, body: Any = None, content_type: str = MERGE) -> Any:
        status, data = await self.request(method, path, body, content_type)
        assert status in (200, 201), (status, data)
        return data


async def wait_for(predicate: Callable[[], Any | Awaitable[Any]], within: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[EmbeddedApiServer]:
    srv = EmbeddedApiServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest_asyncio.fixture
async def api(server: EmbeddedApiServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, server.url)


@pytest_asyncio.fixture
async def branches(api: Api) -> Api:
    """The server with the Branch CRD registered."""
    await api.ok("POST", CRDS, crd())
    return api
