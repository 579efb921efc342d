"""The status subresource: writes to the object and to /status each change only their own part."""

from __future__ import annotations

from .conftest import BRANCHES, CRDS, JSON_PATCH, Api, branch, crd


async def test_create_drops_status(branches: Api) -> None:
    body = {**branch("a"), "status": {"phase": "READY"}}
    created = await branches.ok("POST", BRANCHES, body)
    assert "status" not in created


async def test_main_resource_writes_ignore_status(branches: Api) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    await branches.ok("PATCH", f"{BRANCHES}/a/status", {"status": {"phase": "READY"}})
    patched = await branches.ok("PATCH", f"{BRANCHES}/a", {"spec": {"autoMerge": False}, "status": {"phase": "ERROR"}})
    assert patched["status"] == {"phase": "READY"} and patched["spec"]["autoMerge"] is False
    current = (await branches.get(f"{BRANCHES}/a"))[1]
    replaced = await branches.ok("PUT", f"{BRANCHES}/a", {**current, "status": {"phase": "ERROR"}})
    assert replaced["status"] == {"phase": "READY"}


async def test_status_writes_change_only_status(branches: Api) -> None:
    created = await branches.ok("POST", BRANCHES, branch("a"))
    patch = {
        "metadata": {"labels": {"x": "1"}, "annotations": {"y": "2"}},
        "spec": {"autoMerge": False},
        "status": {"phase": "READY"},
    }
    patched = await branches.ok("PATCH", f"{BRANCHES}/a/status", patch)
    assert patched["status"] == {"phase": "READY"}
    assert patched["spec"] == created["spec"]
    assert "labels" not in patched["metadata"] and "annotations" not in patched["metadata"]
    assert patched["metadata"]["generation"] == 1

    replaced = await branches.ok(
        "PUT",
        f"{BRANCHES}/a/status",
        {**patched, "spec": {"branchName": "a", "autoMerge": False}, "status": {"phase": "ERROR"}},
    )
    assert replaced["status"] == {"phase": "ERROR"} and replaced["spec"]["autoMerge"] is True

    ops = [{"op": "replace", "path": "/status/phase", "value": "ACTIVE"}]
    assert (await branches.ok("PATCH", f"{BRANCHES}/a/status", ops, JSON_PATCH))["status"]["phase"] == "ACTIVE"


async def test_status_is_validated_against_schema(branches: Api) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    status, body = await branches.patch(f"{BRANCHES}/a/status", {"status": {"phase": "WEIRD", "records": -1}})
    assert status == 422
    # "<nil>": the unsupported phase keeps the CRD's CEL rules from running, and the real server says so.
    assert {c["field"] for c in body["details"]["causes"]} == {"status.phase", "status.records", "<nil>"}
    pruned = await branches.ok("PATCH", f"{BRANCHES}/a/status", {"status": {"phase": "READY", "unknown": 1}})
    assert pruned["status"] == {"phase": "READY"}


async def test_without_status_subresource_status_is_ordinary(api: Api) -> None:
    await api.ok("POST", CRDS, crd(status=False))
    created = await api.ok("POST", BRANCHES, {**branch("a"), "status": {"phase": "READY"}})
    assert created["status"] == {"phase": "READY"}
    assert (await api.patch(f"{BRANCHES}/a/status", {"status": {}}))[0] == 404
    patched = await api.ok("PATCH", f"{BRANCHES}/a", {"status": {"phase": "ERROR"}})
    # Without the subresource, status is part of the object proper: its changes move the generation.
    assert patched["status"] == {"phase": "ERROR"} and patched["metadata"]["generation"] == 2


async def test_status_subresource_on_namespaces(api: Api) -> None:
    assert (await api.get("/api/v1/namespaces/default/status"))[1]["status"]["phase"] == "Active"
