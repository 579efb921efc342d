"""Server-side printing: the Tables kube-apiserver sends kubectl, checked with the real kubectl 1.33 and the
real CRDs (``install_crds``), and over HTTP for what kubectl does not show (negotiation, includeObject)."""

from __future__ import annotations

import asyncio
import json
import pathlib
from typing import Any

import aiohttp

from branch_operator.embedded.apiserver.server import EmbeddedApiServer
from branch_operator.embedded.env import install_crds

from ..waiting import wait_for
from .conftest import CRDS, Api, crd
from .kubectl_run import Kubectl, parse_table

GROUP, VERSION = "oms.dev", "v1alpha1"
TABLE_V1 = "application/json;as=Table;v=v1;g=meta.k8s.io"
KUBECTL_ACCEPT = f"{TABLE_V1},application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"


def _branch(server: EmbeddedApiServer, name: str, branch_name: str, status: dict[str, Any] | None = None,
            labels: dict[str, str] | None = None) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Branch",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"branchName": branch_name, "targetBranch": "main"}}
    server.create_object(GROUP, VERSION, "branches", body, namespace="default")
    if status is not None:
        server.patch_object(GROUP, VERSION, "branches", "default", name, {"status": status}, subresource="status")


ACTIVE = {"phase": "ACTIVE", "indexing": {"recordsIndexed": 1250, "validation": {"passed": True, "errors": []}},
          "conditions": [{"type": "Indexed", "status": "True", "reason": "IndexingSucceeded", "message": "",
                          "lastTransitionTime": "2025-06-26T10:30:00Z"},
                         {"type": "Mergeable", "status": "False", "reason": "Merged", "message": "",
                          "lastTransitionTime": "2025-06-26T10:30:00Z"}],
          "merge": {"decision": "Merged", "reasons": []}}  # fmt: skip


async def test_kubectl_get_branches_prints_the_crd_columns(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> None:
    await install_crds(server.url)
    _branch(server, "b-active", "feature/a", ACTIVE, labels={"team": "core"})
    _branch(server, "a-new", "feature/z")
    kubectl = Kubectl(server, tmp_path)

    header, rows = parse_table(await kubectl("get", "branches"))
    assert header == ["NAME", "BRANCH", "PHASE", "RECORDS", "VALID", "MERGEABLE", "REASONS", "AGE"]
    assert [r[:-1] for r in rows] == [
        ["a-new", "feature/z", "", "", "", "", ""],  # not initialised: nil cells print empty
        ["b-active", "feature/a", "ACTIVE", "1250", "true", "False", "[]"],
    ]
    assert all(r[-1].endswith("s") for r in rows)  # ages from the server: seconds old
    # The short name and the category reach the same table.
    assert parse_table(await kubectl("get", "br"))[0] == header
    assert parse_table(await kubectl("get", "oms"))[0][:2] == ["NAME", "BRANCH"]

    assert (await kubectl("get", "branches", "--no-headers")).split()[0] == "a-new"
    header, rows = parse_table(await kubectl("get", "branches", "--show-labels"))
    assert header[-1] == "LABELS" and rows[1][-1] == "team=core" and rows[0][-1] == "<none>"
    header, rows = parse_table(await kubectl("get", "branches", "-L", "team"))
    assert header[-1] == "TEAM" and [r[-1] for r in rows] == ["", "core"]
    # --sort-by makes kubectl ask for whole objects (includeObject=Object) and sort the rows itself.
    header, rows = parse_table(await kubectl("get", "branches", "--sort-by=.spec.branchName"))
    assert [r[0] for r in rows] == ["b-active", "a-new"]
    header, rows = parse_table(await kubectl("get", "branch", "b-active"))
    assert [r[0] for r in rows] == ["b-active"] and rows[0][2] == "ACTIVE"


async def test_priority_columns_only_under_wide(server: EmbeddedApiServer, api: Api, tmp_path: pathlib.Path) -> None:
    definition = crd()
    definition["spec"]["versions"][0]["additionalPrinterColumns"] = [
        {"name": "Branch", "type": "string", "jsonPath": ".spec.branchName"},
        {"name": "Target", "type": "string", "jsonPath": ".spec.targetBranch", "priority": 1},
        {"name": "Created", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    await api.ok("POST", CRDS, definition)
    await api.ok("POST", f"/apis/{GROUP}/{VERSION}/namespaces/default/branches",
                 {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Branch", "metadata": {"name": "w"},
                  "spec": {"branchName": "feature/w"}})  # fmt: skip
    kubectl = Kubectl(server, tmp_path)
    assert parse_table(await kubectl("get", "branches"))[0] == ["NAME", "BRANCH", "CREATED"]
    header, rows = parse_table(await kubectl("get", "branches", "-o", "wide"))
    assert header == ["NAME", "BRANCH", "TARGET", "CREATED"]
    assert rows[0][:3] == ["w", "feature/w", "main"]  # the schema default, read by the column's path


async def test_kubectl_get_watch_prints_rows(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> None:
    await install_crds(server.url)
    _branch(server, "first", "feature/first")
    kubectl = Kubectl(server, tmp_path)
    proc = await kubectl.start("get", "branches", "-w")
    assert proc.stdout is not None
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in lines):
            line = await asyncio.wait_for(proc.stdout.readline(), 20)  # type: ignore[union-attr]
            assert line, f"kubectl -w ended before printing {text!r}: {lines}"
            lines.append(line.decode())

    try:
        await read_until("first")
        await wait_for(lambda: server.watcher_count(GROUP, VERSION, "branches") > 0, what="kubectl's watch")
        _branch(server, "second", "feature/second", ACTIVE)
        await read_until("ACTIVE")
    finally:
        proc.kill()
        await proc.wait()
    assert lines[0].split() == ["NAME", "BRANCH", "PHASE", "RECORDS", "VALID", "MERGEABLE", "REASONS", "AGE"]
    assert sum(1 for line in lines if line.startswith("NAME")) == 1  # headers once, not per event
    assert any(line.split()[:3] == ["second", "feature/second", "ACTIVE"] for line in lines)


async def test_builtin_columns(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> None:
    await install_crds(server.url)
    server.create_object("", "v1", "events", {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "b.1"},
        "involvedObject": {"kind": "Branch", "name": "feature-x", "namespace": "default"},
        "reason": "MergeBlocked", "message": " validation failed \n", "type": "Warning",
        "firstTimestamp": "2025-01-01T00:00:00Z", "lastTimestamp": "2025-01-01T00:00:00Z", "count": 3,
        "source": {"component": "oms-branch-operator"},
    }, namespace="default")  # fmt: skip
    server.create_object("coordination.k8s.io", "v1", "leases", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
        "spec": {"holderIdentity": "pod-a"},
    }, namespace="default")  # fmt: skip
    kubectl = Kubectl(server, tmp_path)

    header, rows = parse_table(await kubectl("get", "events"))
    assert header == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert rows[0][1:] == ["Warning", "MergeBlocked", "branch/feature-x", "validation failed"]
    assert rows[0][0].endswith("d")  # a 2025 timestamp: days or years ago
    header, rows = parse_table(await kubectl("get", "events", "-o", "wide"))
    assert header == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "MESSAGE", "FIRST SEEN",
                      "COUNT", "NAME"]  # fmt: skip
    assert rows[0][5] == "oms-branch-operator" and rows[0][8:] == ["3", "b.1"]

    header, rows = parse_table(await kubectl("get", "namespaces"))
    assert header == ["NAME", "STATUS", "AGE"] and ["default", "Active"] in [r[:2] for r in rows]
    header, rows = parse_table(await kubectl("get", "leases"))
    assert header == ["NAME", "HOLDER", "AGE"] and rows[0][:2] == ["leader", "pod-a"]
    header, rows = parse_table(await kubectl("get", "crds"))
    assert header == ["NAME", "CREATED AT"]
    assert "branches.oms.dev" in [r[0] for r in rows] and rows[0][1].endswith("Z")


async def _get(server: EmbeddedApiServer, path: str, accept: str, **params: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(
        server.url + path, headers={"Accept": accept}, params=params
    ) as resp:
        return resp.status, await resp.json()


async def test_table_negotiation_and_include_object(server: EmbeddedApiServer) -> None:
    await install_crds(server.url)
    _branch(server, "x", "feature/x", labels={"a": "b"})
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/branches"

    status, doc = await _get(server, path, KUBECTL_ACCEPT)
    assert status == 200 and doc["kind"] == "Table" and doc["apiVersion"] == "meta.k8s.io/v1"
    assert doc["columnDefinitions"][0] == {**doc["columnDefinitions"][0], "name": "Name", "format": "name"}
    assert doc["metadata"]["resourceVersion"] == str(server.resource_version)
    row = doc["rows"][0]
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["labels"] == {"a": "b"}
    assert "spec" not in row["object"]

    status, doc = await _get(server, path, "application/json;as=Table;v=v1beta1;g=meta.k8s.io")
    assert doc["apiVersion"] == "meta.k8s.io/v1beta1"
    assert doc["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"
    status, doc = await _get(server, f"{path}/x", TABLE_V1, includeObject="Object")
    assert [r["object"]["spec"]["branchName"] for r in doc["rows"]] == ["feature/x"]
    status, doc = await _get(server, path, TABLE_V1, includeObject="None")
    assert doc["rows"][0]["object"] is None
    status, doc = await _get(server, path, TABLE_V1, includeObject="All")
    assert status == 400
    # Plain JSON is unchanged, and a Table nobody can produce is refused rather than silently replaced.
    status, doc = await _get(server, path, "application/json")
    assert doc["kind"] == "BranchList"
    status, doc = await _get(server, path, "application/json;as=Table;v=v2;g=meta.k8s.io")
    assert status == 406 and doc["reason"] == "NotAcceptable"


async def test_watch_as_table_sends_columns_once(server: EmbeddedApiServer) -> None:
    await install_crds(server.url)
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/branches"
    async with aiohttp.ClientSession() as session, session.get(
        server.url + path, headers={"Accept": KUBECTL_ACCEPT}, params={"watch": "true"}
    ) as resp:
        await wait_for(lambda: server.watcher_count(GROUP, VERSION, "branches") > 0, what="the watch")
        _branch(server, "one", "feature/one")
        _branch(server, "two", "feature/two", ACTIVE)
        events = [json.loads(await asyncio.wait_for(resp.content.readline(), 10)) for _ in range(3)]
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "MODIFIED"]
    assert all(e["object"]["kind"] == "Table" for e in events)
    assert "columnDefinitions" in events[0]["object"]
    assert all("columnDefinitions" not in e["object"] for e in events[1:])
    assert events[2]["object"]["rows"][0]["cells"][:3] == ["two", "feature/two", "ACTIVE"]
    assert events[2]["object"]["metadata"]["resourceVersion"] == str(server.resource_version)


async def test_invalid_printer_column_path_is_refused(api: Api) -> None:
    definition = crd()
    definition["spec"]["versions"][0]["additionalPrinterColumns"] = [
        {"name": "Bad", "type": "string", "jsonPath": ".spec[?(@.x=="}
    ]
    status, body = await api.post(CRDS, definition)
    assert status == 422 and "additionalPrinterColumns" in json.dumps(body)
