"""Create/read/update/patch/delete semantics, metadata, errors."""

from __future__ import annotations

import re
import uuid
from typing import Any

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .conftest import BRANCHES, JSON_PATCH, MERGE, STRATEGIC, Api, branch

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def _cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


async def test_builtin_namespaces_exist(api: Api) -> None:
    items = (await api.get("/api/v1/namespaces"))[1]["items"]
    names = {ns["metadata"]["name"] for ns in items}
    assert {"default", "kube-system"} <= names
    default = (await api.get("/api/v1/namespaces/default"))[1]
    assert default["status"]["phase"] == "Active"


async def test_create_sets_server_metadata(branches: Api) -> None:
    status, obj = await branches.post(BRANCHES, branch("a"))
    assert status == 201
    meta = obj["metadata"]
    assert uuid.UUID(meta["uid"]).version == 4
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["generation"] == 1
    assert meta["namespace"] == "default"
    assert int(meta["resourceVersion"]) > 0
    assert obj["apiVersion"] == "oms.dev/v1alpha1" and obj["kind"] == "Branch"


async def test_create_existing_is_already_exists_status(branches: Api) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    status, body = await branches.post(BRANCHES, branch("a"))
    assert status == 409
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["reason"] == "AlreadyExists" and body["code"] == 409
    assert body["details"] == {"name": "a", "kind": "branches", "group": "oms.dev"}
    assert body["message"] == 'branches.oms.dev "a" already exists'


async def test_get_missing_is_not_found_status(branches: Api) -> None:
    status, body = await branches.get(f"{BRANCHES}/nope")
    assert status == 404
    assert body["reason"] == "NotFound" and body["details"]["name"] == "nope"
    status, body = await branches.get("/api/v1/namespaces/default/configmaps/nope")
    assert body["message"] == 'configmaps "nope" not found' and "group" not in body["details"]


async def test_generate_name(api: Api) -> None:
    obj = await api.ok("POST", CONFIGMAPS, {"metadata": {"generateName": "kopf-event-"}})
    name = obj["metadata"]["name"]
    assert re.fullmatch(r"kopf-event-[a-z0-9]{5}", name)
    other = await api.ok("POST", CONFIGMAPS, {"metadata": {"generateName": "kopf-event-"}})
    assert other["metadata"]["name"] != name
    status, body = await api.post(CONFIGMAPS, {"metadata": {}})
    assert status == 422 and body["reason"] == "Invalid"


async def test_invalid_names_and_mismatched_namespace(api: Api) -> None:
    status, body = await api.post(CONFIGMAPS, _cm("Not_Valid"))
    assert status == 422 and body["details"]["causes"][0]["field"] == "metadata.name"
    status, body = await api.post(CONFIGMAPS, {"metadata": {"name": "x", "namespace": "other"}})
    assert status == 400 and body["reason"] == "BadRequest"
    status, body = await api.post(CONFIGMAPS, {"kind": "Secret", "metadata": {"name": "x"}})
    assert status == 400


async def test_resource_version_is_global_and_lists_carry_it(branches: Api, server: EmbeddedApiServer) -> None:
    a = await branches.ok("POST", BRANCHES, branch("a"))
    cm = await branches.ok("POST", CONFIGMAPS, _cm("c"))
    b = await branches.ok("POST", BRANCHES, branch("b"))
    versions = [int(o["metadata"]["resourceVersion"]) for o in (a, cm, b)]
    assert versions == sorted(versions) and len(set(versions)) == 3
    listing = (await branches.get(BRANCHES))[1]
    assert listing["kind"] == "BranchList" and listing["apiVersion"] == "oms.dev/v1alpha1"
    assert int(listing["metadata"]["resourceVersion"]) == versions[-1] == server.resource_version
    assert [i["metadata"]["name"] for i in listing["items"]] == ["a", "b"]


async def test_list_across_namespaces_and_in_one(api: Api) -> None:
    await api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})
    await api.ok("POST", CONFIGMAPS, _cm("one"))
    await api.ok("POST", "/api/v1/namespaces/team/configmaps", _cm("two"))
    everywhere = (await api.get("/api/v1/configmaps"))[1]["items"]
    assert {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere} == {
        ("default", "one"),
        ("team", "two"),
    }
    in_team = (await api.get("/api/v1/namespaces/team/configmaps"))[1]["items"]
    assert [i["metadata"]["name"] for i in in_team] == ["two"]


async def test_list_selectors(api: Api) -> None:
    await api.ok("POST", CONFIGMAPS, {"metadata": {"name": "a", "labels": {"app": "x", "tier": "web"}}})
    await api.ok("POST", CONFIGMAPS, {"metadata": {"name": "b", "labels": {"app": "y"}}})
    await api.ok("POST", CONFIGMAPS, {"metadata": {"name": "c"}})

    async def names(**params: str) -> list[str]:
        return [i["metadata"]["name"] for i in (await api.get(CONFIGMAPS, **params))[1]["items"]]

    assert await names(labelSelector="app=x") == ["a"]
    assert await names(labelSelector="app==y") == ["b"]
    assert await names(labelSelector="app!=x") == ["b", "c"]
    assert await names(labelSelector="app in (x, y)") == ["a", "b"]
    assert await names(labelSelector="app notin (x)") == ["b", "c"]
    assert await names(labelSelector="tier") == ["a"]
    assert await names(labelSelector="!app") == ["c"]
    assert await names(labelSelector="app,!tier") == ["b"]
    assert await names(fieldSelector="metadata.name=b") == ["b"]
    assert await names(fieldSelector="metadata.name!=b,metadata.namespace=default") == ["a", "c"]
    status, body = await api.get(CONFIGMAPS, labelSelector="app=(")
    assert status == 400 and body["reason"] == "BadRequest"


async def test_list_pagination(api: Api) -> None:
    for i in range(5):
        await api.ok("POST", CONFIGMAPS, _cm(f"cm{i}"))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"limit": "2", **({"continue": token} if token else {})}
        page = (await api.get(CONFIGMAPS, **params))[1]
        seen += [i["metadata"]["name"] for i in page["items"]]
        pages += 1
        token = page["metadata"].get("continue", "")
        if not token:
            break
    assert seen == [f"cm{i}" for i in range(5)] and pages == 3


async def test_put_replaces_and_keeps_system_metadata(api: Api) -> None:
    created = await api.ok("POST", CONFIGMAPS, {"metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "1"}})
    replacement = {"metadata": {"name": "c", "uid": "forged", "labels": {"b": "2"}}, "data": {"y": "2"}}
    replaced = await api.ok("PUT", f"{CONFIGMAPS}/c", replacement)
    assert replaced["data"] == {"y": "2"} and replaced["metadata"]["labels"] == {"b": "2"}
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert int(replaced["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    status, body = await api.put(f"{CONFIGMAPS}/c", {"metadata": {"name": "other"}})
    assert status == 400 and body["reason"] == "BadRequest"
    status, body = await api.put(f"{CONFIGMAPS}/missing", {"metadata": {"name": "missing"}})
    assert status == 404 and body["reason"] == "NotFound"


async def test_put_custom_resource_needs_current_resource_version(branches: Api) -> None:
    created = await branches.ok("POST", BRANCHES, branch("a"))
    body = {**created, "spec": {**created["spec"], "autoMerge": False}}
    status, err = await branches.put(f"{BRANCHES}/a", {**body, "metadata": {"name": "a"}})
    assert status == 422 and err["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    updated = await branches.ok("PUT", f"{BRANCHES}/a", body)
    assert updated["spec"]["autoMerge"] is False
    status, err = await branches.put(f"{BRANCHES}/a", body)  # The same, now stale, resourceVersion.
    assert status == 409 and err["reason"] == "Conflict"


async def test_merge_patch_rfc7386(api: Api) -> None:
    await api.ok("POST", CONFIGMAPS, {"metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}})
    patched = await api.ok(
        "PATCH", f"{CONFIGMAPS}/c", {"metadata": {"labels": {"a": None, "c": "3"}}, "data": {"y": "2"}}, MERGE
    )
    assert patched["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert patched["data"] == {"x": "1", "y": "2"}
    patched = await api.ok("PATCH", f"{CONFIGMAPS}/c", {"data": None}, MERGE)
    assert "data" not in patched


async def test_merge_patch_with_stale_resource_version_conflicts(branches: Api) -> None:
    created = await branches.ok("POST", BRANCHES, branch("a"))
    rv = created["metadata"]["resourceVersion"]
    ok = await branches.ok("PATCH", f"{BRANCHES}/a", {"metadata": {"resourceVersion": rv, "labels": {"x": "1"}}})
    assert ok["metadata"]["labels"] == {"x": "1"}
    status, body = await branches.patch(f"{BRANCHES}/a", {"metadata": {"resourceVersion": rv, "labels": {"x": "2"}}})
    assert status == 409 and body["reason"] == "Conflict" and body["details"]["name"] == "a"
    status, body = await branches.patch(f"{BRANCHES}/a/status", {"metadata": {"resourceVersion": rv}, "status": {}})
    assert status == 409


async def test_json_patch_rfc6902(api: Api) -> None:
    await api.ok("POST", CONFIGMAPS, {"metadata": {"name": "c", "annotations": {"a": "1"}}, "data": {"x": "1"}})
    ops = [
        {"op": "test", "path": "/data/x", "value": "1"},
        {"op": "add", "path": "/data/y", "value": "2"},
        {"op": "replace", "path": "/data/x", "value": "10"},
        {"op": "copy", "from": "/data/y", "path": "/data/z"},
        {"op": "move", "from": "/data/z", "path": "/metadata/annotations/moved~1here"},
        {"op": "remove", "path": "/metadata/annotations/a"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["f1"]},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "f3"},
        {"op": "add", "path": "/metadata/finalizers/1", "value": "f2"},
    ]
    patched = await api.ok("PATCH", f"{CONFIGMAPS}/c", ops, JSON_PATCH)
    assert patched["data"] == {"x": "10", "y": "2"}
    assert patched["metadata"]["annotations"] == {"moved/here": "2"}
    assert patched["metadata"]["finalizers"] == ["f1", "f2", "f3"]


async def test_json_patch_failing_test_is_422_and_changes_nothing(api: Api, server: EmbeddedApiServer) -> None:
    created = await api.ok("POST", CONFIGMAPS, _cm("c", x="1"))
    ops = [{"op": "replace", "path": "/data/x", "value": "2"}, {"op": "test", "path": "/data/x", "value": "1"}]
    status, body = await api.patch(f"{CONFIGMAPS}/c", ops, JSON_PATCH)
    assert status == 422 and body["kind"] == "Status"
    status, body = await api.patch(f"{CONFIGMAPS}/c", [{"op": "remove", "path": "/data/nope"}], JSON_PATCH)
    assert status == 422
    status, body = await api.patch(f"{CONFIGMAPS}/c", {"not": "a list"}, JSON_PATCH)
    assert status == 400
    current = server.get_object("", "v1", "configmaps", "default", "c")
    assert current == created


async def test_strategic_merge_patch_acts_as_merge_patch(api: Api) -> None:
    await api.ok("POST", CONFIGMAPS, _cm("c", x="1"))
    patched = await api.ok("PATCH", f"{CONFIGMAPS}/c", {"data": {"y": "2"}, "$patch": "merge"}, STRATEGIC)
    assert patched["data"] == {"x": "1", "y": "2"} and "$patch" not in patched


async def test_unsupported_patch_type(api: Api) -> None:
    await api.ok("POST", CONFIGMAPS, _cm("c"))
    status, body = await api.patch(f"{CONFIGMAPS}/c", {"data": {}}, "application/json")
    assert status == 415 and body["kind"] == "Status"


async def test_noop_patch_keeps_resource_version(api: Api, server: EmbeddedApiServer) -> None:
    created = await api.ok("POST", CONFIGMAPS, _cm("c", x="1"))
    before = server.resource_version
    same = await api.ok("PATCH", f"{CONFIGMAPS}/c", {"data": {"x": "1"}}, MERGE)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert server.resource_version == before


async def test_generation_moves_only_on_spec_changes(branches: Api) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    labelled = await branches.ok("PATCH", f"{BRANCHES}/a", {"metadata": {"labels": {"x": "1"}}})
    assert labelled["metadata"]["generation"] == 1
    with_status = await branches.ok("PATCH", f"{BRANCHES}/a/status", {"status": {"phase": "READY"}})
    assert with_status["metadata"]["generation"] == 1
    spec_changed = await branches.ok("PATCH", f"{BRANCHES}/a", {"spec": {"autoMerge": False}})
    assert spec_changed["metadata"]["generation"] == 2


async def test_delete_without_finalizers(api: Api, server: EmbeddedApiServer) -> None:
    await api.ok("POST", CONFIGMAPS, _cm("c"))
    status, body = await api.delete(f"{CONFIGMAPS}/c", {"kind": "DeleteOptions", "propagationPolicy": "Foreground"})
    assert status == 200 and body["metadata"]["name"] == "c"
    assert server.get_object("", "v1", "configmaps", "default", "c") is None
    status, body = await api.delete(f"{CONFIGMAPS}/c")
    assert status == 404 and body["reason"] == "NotFound"


async def test_delete_with_finalizers_waits_for_their_removal(branches: Api, server: EmbeddedApiServer) -> None:
    body = branch("a")
    body["metadata"]["finalizers"] = ["one", "two"]
    await branches.ok("POST", BRANCHES, body)
    marked = await branches.ok("DELETE", f"{BRANCHES}/a")
    assert marked["metadata"]["deletionTimestamp"].endswith("Z")
    assert marked["metadata"]["generation"] == 2
    again = await branches.ok("DELETE", f"{BRANCHES}/a")
    assert again["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]

    status, err = await branches.patch(f"{BRANCHES}/a", {"metadata": {"finalizers": ["one", "two", "three"]}})
    assert status == 422 and "no new finalizers" in err["message"]
    await branches.ok("PATCH", f"{BRANCHES}/a", {"metadata": {"finalizers": ["two"]}})
    assert server.get_object("oms.dev", "v1alpha1", "branches", "default", "a") is not None
    await branches.ok("PATCH", f"{BRANCHES}/a", {"metadata": {"finalizers": []}})
    assert server.get_object("oms.dev", "v1alpha1", "branches", "default", "a") is None


async def test_delete_preconditions(api: Api) -> None:
    await api.ok("POST", CONFIGMAPS, _cm("c"))
    status, body = await api.delete(f"{CONFIGMAPS}/c", {"preconditions": {"uid": "someone-else"}})
    assert status == 409 and body["reason"] == "Conflict"


async def test_dry_run_changes_nothing(api: Api, server: EmbeddedApiServer) -> None:
    status, body = await api.post(CONFIGMAPS, _cm("c"), dryRun="All")
    assert status == 201 and body["metadata"]["name"] == "c"
    assert server.get_object("", "v1", "configmaps", "default", "c") is None


async def test_secret_string_data_is_folded_into_data(api: Api) -> None:
    created = await api.ok(
        "POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}, "stringData": {"k": "v"}}
    )
    assert created["data"] == {"k": "dg=="} and "stringData" not in created


async def test_namespace_deletion_removes_its_objects(api: Api, server: EmbeddedApiServer) -> None:
    await api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "gone"}})
    await api.ok("POST", "/api/v1/namespaces/gone/configmaps", _cm("c"))
    await api.ok("DELETE", "/api/v1/namespaces/gone")
    assert server.list_objects("", "v1", "configmaps", "gone") == []


async def test_direct_accessors(server: EmbeddedApiServer) -> None:
    server.create_object("", "v1", "configmaps", _cm("c", x="1"), namespace="default")
    got = server.get_object("", "v1", "configmaps", "default", "c")
    assert got is not None and got["data"] == {"x": "1"}
    got["data"]["x"] = "mutated"  # A copy: the store is not affected.
    assert server.get_object("", "v1", "configmaps", "default", "c")["data"] == {"x": "1"}  # type: ignore[index]
    server.patch_object("", "v1", "configmaps", "default", "c", {"data": {"y": "2"}})
    assert [o["data"] for o in server.list_objects("", "v1", "configmaps")] == [{"x": "1", "y": "2"}]
    server.delete_object("", "v1", "configmaps", "default", "c")
    assert server.list_objects("", "v1", "configmaps", "default") == []
