"""Discovery documents and CRD registration."""

from __future__ import annotations

from typing import Any

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .conftest import BRANCHES, CRDS, Api, crd


def _resources(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in doc["resources"]}


async def test_core_api_versions(api: Api) -> None:
    status, doc = await api.get("/api")
    assert status == 200
    assert doc["kind"] == "APIVersions" and doc["versions"] == ["v1"]


async def test_core_v1_resources_declared_for_kopf(api: Api) -> None:
    status, doc = await api.get("/api/v1")
    assert status == 200 and doc["kind"] == "APIResourceList" and doc["groupVersion"] == "v1"
    resources = _resources(doc)
    assert resources["namespaces"]["namespaced"] is False
    assert resources["namespaces"]["kind"] == "Namespace"
    assert "namespaces/status" in resources
    for name in ("events", "configmaps", "secrets"):
        assert resources[name]["namespaced"] is True
        assert {"get", "list", "watch", "create", "patch"} <= set(resources[name]["verbs"])
    assert resources["configmaps"]["shortNames"] == ["cm"]


async def test_api_groups_and_builtin_groups(api: Api) -> None:
    status, doc = await api.get("/apis")
    assert status == 200 and doc["kind"] == "APIGroupList"
    groups = {g["name"]: g for g in doc["groups"]}
    assert set(groups) >= {"apiextensions.k8s.io", "events.k8s.io", "coordination.k8s.io"}
    assert groups["apiextensions.k8s.io"]["preferredVersion"]["groupVersion"] == "apiextensions.k8s.io/v1"

    status, doc = await api.get("/apis/apiextensions.k8s.io/v1")
    crds = _resources(doc)["customresourcedefinitions"]
    assert crds["namespaced"] is False and crds["shortNames"] == ["crd", "crds"]
    status, doc = await api.get("/apis/coordination.k8s.io/v1")
    assert _resources(doc)["leases"]["namespaced"] is True
    status, doc = await api.get("/apis/events.k8s.io/v1")
    assert _resources(doc)["events"]["kind"] == "Event"


async def test_version(api: Api) -> None:
    status, doc = await api.get("/version")
    assert status == 200 and doc["major"] == "1" and doc["gitVersion"].startswith("v1.")


async def test_unknown_paths_are_not_found_statuses(api: Api) -> None:
    for path in ("/apis/nope.dev", "/apis/nope.dev/v1", "/api/v1/widgets", "/openapi/v3/apis/nope.dev/v1", "/foo"):
        status, body = await api.get(path)
        assert status == 404, path
        assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["code"] == 404


async def test_crd_creation_registers_resource_at_once(api: Api) -> None:
    assert (await api.get(BRANCHES))[0] == 404
    created = await api.ok("POST", CRDS, crd())

    conditions = {c["type"]: c["status"] for c in created["status"]["conditions"]}
    assert conditions == {"Established": "True", "NamesAccepted": "True"}
    assert created["status"]["acceptedNames"]["kind"] == "Branch"
    assert created["status"]["acceptedNames"]["listKind"] == "BranchList"

    status, group = await api.get("/apis/oms.dev")
    assert status == 200 and group["preferredVersion"]["version"] == "v1alpha1"
    status, doc = await api.get("/apis/oms.dev/v1alpha1")
    resources = _resources(doc)
    entry = resources["branches"]
    assert entry["singularName"] == "branch" and entry["kind"] == "Branch" and entry["namespaced"] is True
    assert entry["shortNames"] == ["br"] and entry["categories"] == ["oms"]
    assert resources["branches/status"]["verbs"] == ["get", "patch", "update"]
    status, _ = await api.get(BRANCHES)
    assert status == 200
    groups = [g["name"] for g in (await api.get("/apis"))[1]["groups"]]
    assert "oms.dev" in groups


async def test_crd_serves_all_served_versions_and_scope(api: Api) -> None:
    doc = crd(plural="peerings", kind="Peering", group="kopf.dev", version="v1", scope="Cluster", status=False)
    second = {**doc["spec"]["versions"][0], "name": "v1beta1", "storage": False}
    unserved = {**doc["spec"]["versions"][0], "name": "v1alpha1", "storage": False, "served": False}
    doc["spec"]["versions"] += [second, unserved]
    await api.ok("POST", CRDS, doc)

    group = (await api.get("/apis/kopf.dev"))[1]
    assert [v["version"] for v in group["versions"]] == ["v1", "v1beta1"]
    for version in ("v1", "v1beta1"):
        entry = _resources((await api.get(f"/apis/kopf.dev/{version}"))[1])
        assert entry["peerings"]["namespaced"] is False
        assert "peerings/status" not in entry
    assert (await api.get("/apis/kopf.dev/v1alpha1"))[0] == 404
    # Cluster-scoped: created without a namespace in the path.
    created = await api.ok("POST", "/apis/kopf.dev/v1/peerings", {"metadata": {"name": "p1"}})
    assert "namespace" not in created["metadata"]


async def test_crd_validation_rejects_bad_definitions(api: Api) -> None:
    bad_name = crd()
    bad_name["metadata"]["name"] = "wrong"
    status, body = await api.post(CRDS, bad_name)
    assert status == 422 and body["reason"] == "Invalid"
    assert any(c["field"] == "metadata.name" for c in body["details"]["causes"])

    bad_pattern = crd(schema={"type": "object", "properties": {"spec": {"type": "string", "pattern": "(["}}})
    status, body = await api.post(CRDS, bad_pattern)
    assert status == 422
    assert (await api.get("/apis/oms.dev/v1alpha1"))[0] == 404


async def test_crd_deletion_unregisters_resource(api: Api, server: EmbeddedApiServer) -> None:
    await api.ok("POST", CRDS, crd())
    await api.ok("POST", BRANCHES, {"metadata": {"name": "a"}, "spec": {"branchName": "a"}})
    await api.ok("DELETE", f"{CRDS}/branches.oms.dev")
    assert (await api.get(BRANCHES))[0] == 404
    assert (await api.get("/apis/oms.dev/v1alpha1"))[0] == 404
    assert "oms.dev" not in [g["name"] for g in (await api.get("/apis"))[1]["groups"]]
    assert server.get_object("oms.dev", "v1alpha1", "branches", "default", "a") is None


async def test_crd_update_changes_schema(api: Api) -> None:
    await api.ok("POST", CRDS, crd())
    current = (await api.get(f"{CRDS}/branches.oms.dev"))[1]
    assert current["metadata"]["generation"] == 1
    current["spec"]["names"]["shortNames"] = ["brr"]
    updated = await api.ok("PUT", f"{CRDS}/branches.oms.dev", current)
    assert updated["metadata"]["generation"] == 2
    entry = _resources((await api.get("/apis/oms.dev/v1alpha1"))[1])["branches"]
    assert entry["shortNames"] == ["brr"]
    assert updated["status"]["acceptedNames"]["shortNames"] == ["brr"]
