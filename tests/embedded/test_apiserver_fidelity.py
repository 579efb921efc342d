"""Where the server answers as kube-apiserver does, checked through what clients show: the real kubectl's
printed errors, the official client's exceptions, and the raw ``Status`` bodies."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .. import k8s_tools
from .conftest import BRANCHES, CRDS, GROUP, MERGE, STRATEGIC, VERSION, Api, branch, crd

APPLY = "application/apply-patch+yaml"
CUSTOM_415 = (
    "the body of the request was in an unknown format - accepted media types include: "
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
)
Kubectl = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
async def kubectl(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> Kubectl:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path / "home")}

    async def run(*args: str) -> tuple[int, str, str]:
        # Asynchronously: the server answers on this very event loop.
        proc = await asyncio.create_subprocess_exec(
            k8s_tools.kubectl_path(), "--kubeconfig", str(kubeconfig), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode().strip()

    return run


@pytest.fixture
async def official(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> AsyncIterator[client.CustomObjectsApi]:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(server.write_kubeconfig(tmp_path / "official")), client_configuration=configuration
    )
    async with client.ApiClient(configuration=configuration) as api_client:
        yield client.CustomObjectsApi(api_client)


# ----------------------------------------------------------------------------------------- patch types


async def test_strategic_merge_patch_of_a_custom_resource_is_415(branches: Api) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    status, body = await branches.patch(f"{BRANCHES}/a", {"spec": {"autoMerge": False}}, STRATEGIC)
    assert (status, body) == (
        415,
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": CUSTOM_415,
         "reason": "UnsupportedMediaType", "code": 415},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/namespaces/default", {"metadata": {"labels": {"x": "1"}}}),
        ("/api/v1/namespaces/default/configmaps/c", {"data": {"y": "2"}}),
        ("/api/v1/namespaces/default/events/e", {"message": "changed"}),
        ("/apis/coordination.k8s.io/v1/namespaces/default/leases/l", {"spec": {"holderIdentity": "me"}}),
        (f"{CRDS}/branches.oms.dev", {"metadata": {"labels": {"x": "1"}}}),
    ],
)
async def test_built_in_types_keep_strategic_merge_patch(branches: Api, path: str, body: dict[str, Any]) -> None:
    for collection, obj in [
        ("/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}, "data": {"x": "1"}}),
        ("/api/v1/namespaces/default/events", {"metadata": {"name": "e"}, "involvedObject": {"kind": "Branch"}}),
        ("/apis/coordination.k8s.io/v1/namespaces/default/leases", {"metadata": {"name": "l"}, "spec": {}}),
    ]:
        await branches.ok("POST", collection, obj)
    status, patched = await branches.patch(path, body, STRATEGIC)
    assert status == 200, patched


async def test_kubectl_patch_defaults_to_strategic_and_fails_on_a_custom_resource(
    branches: Api, kubectl: Kubectl
) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    rc, _, err = await kubectl("patch", "branch", "a", "-p", '{"spec":{"autoMerge":false}}')
    assert (rc, err) == (
        1,
        "error: application/strategic-merge-patch+json is not supported by oms.dev/v1alpha1, Kind=Branch: "
        + CUSTOM_415,
    )
    rc, out, err = await kubectl("patch", "branch", "a", "--type=merge", "-p", '{"spec":{"autoMerge":false}}')
    assert (rc, out.strip()) == (0, "branch.oms.dev/a patched"), err


async def test_apply_patch_needs_a_field_manager(branches: Api, kubectl: Kubectl, tmp_path: pathlib.Path) -> None:
    status, body = await branches.patch(f"{BRANCHES}/a", branch("a"), APPLY)
    assert status == 422
    assert body["message"] == (
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
    )
    assert body["details"] == {
        "name": "", "group": "meta.k8s.io", "kind": "PatchOptions",
        "causes": [{"reason": "FieldValueRequired", "message": "Required value: is required for apply patch",
                    "field": "fieldManager"}],
    }  # fmt: skip
    status, body = await branches.request("PATCH", f"{BRANCHES}/a", branch("a"), MERGE, force="true")
    assert status == 422 and body["message"].endswith("force: Forbidden: may not be specified for non-apply patch")
    manifest = tmp_path / "a.json"
    manifest.write_text(json.dumps(branch("a")))
    rc, out, err = await kubectl("apply", "--server-side", "-f", str(manifest))
    assert (rc, out.strip()) == (0, "branch.oms.dev/a serverside-applied"), err


# ------------------------------------------------------------------------------------- field selectors


async def test_custom_resources_select_only_on_name_and_namespace(branches: Api, kubectl: Kubectl) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    status, body = await branches.get(BRANCHES, fieldSelector="spec.branchName=a")
    assert (status, body["reason"]) == (400, "BadRequest")
    assert body["message"] == "field label not supported: spec.branchName"
    status, body = await branches.get(BRANCHES, fieldSelector="metadata.namespace==default,metadata.name!=b")
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["a"]
    status, _ = await branches.get(BRANCHES, watch="true", fieldSelector="spec.branchName=a")
    assert status == 400
    rc, _, err = await kubectl("get", "branches", "--field-selector", "spec.branchName=a")
    assert rc == 1 and err.endswith("field label not supported: spec.branchName"), err
    assert err.startswith("Error from server (BadRequest):"), err


async def test_crd_selectable_fields_are_selectable(api: Api) -> None:
    definition = crd()
    definition["spec"]["versions"][0]["selectableFields"] = [{"jsonPath": ".spec.targetBranch"}]
    await api.ok("POST", CRDS, definition)
    await api.ok("POST", BRANCHES, branch("a", targetBranch="release"))
    await api.ok("POST", BRANCHES, branch("b"))
    status, body = await api.get(BRANCHES, fieldSelector="spec.targetBranch=release")
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["a"]
    status, body = await api.get(BRANCHES, fieldSelector="spec.branchName=a")
    assert status == 400


@pytest.mark.parametrize(
    ("path", "selector", "supported"),
    [
        ("/api/v1/namespaces", "status.phase=Active", True),
        ("/api/v1/namespaces", "metadata.namespace=x", False),
        ("/api/v1/namespaces/default/events", "involvedObject.kind=Branch,reason=Created,type=Normal", True),
        ("/api/v1/namespaces/default/events", "source=oms,reportingComponent=oms", True),
        ("/api/v1/namespaces/default/events", "message=x", False),
        ("/apis/events.k8s.io/v1/namespaces/default/events", "regarding.name=a,reportingController=oms", True),
        ("/apis/events.k8s.io/v1/namespaces/default/events", "involvedObject.name=a", False),
        ("/api/v1/namespaces/default/secrets", "type=Opaque", True),
        ("/api/v1/namespaces/default/configmaps", "data.x=1", False),
        ("/apis/coordination.k8s.io/v1/namespaces/default/leases", "spec.holderIdentity=me", False),
    ],
)
async def test_built_in_field_labels(api: Api, path: str, selector: str, supported: bool) -> None:
    status, body = await api.get(path, fieldSelector=selector)
    assert status == (200 if supported else 400), body
    if not supported:
        assert body["message"] == f"field label not supported: {selector.split('=')[0]}"


async def test_event_source_selects_the_component(api: Api) -> None:
    events = "/api/v1/namespaces/default/events"
    await api.ok("POST", events, {"metadata": {"name": "e"}, "source": {"component": "oms"}, "involvedObject": {}})
    _, body = await api.get(events, fieldSelector="source=oms")
    assert [i["metadata"]["name"] for i in body["items"]] == ["e"]


# ----------------------------------------------------------------------------------- Status messages


async def test_immutable_field_message_as_kubectl_and_the_official_client_show_it(
    branches: Api, kubectl: Kubectl, official: client.CustomObjectsApi
) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    rc, _, err = await kubectl("patch", "branch", "a", "--type=merge", "-p", '{"spec":{"branchName":"b"}}')
    assert (rc, err) == (1, 'The Branch "a" is invalid: spec: Invalid value: "object": spec.branchName is immutable')
    with pytest.raises(ApiException) as caught:
        await official.patch_namespaced_custom_object(
            GROUP, VERSION, "default", "branches", "a", {"spec": {"branchName": "b"}}, _content_type=MERGE
        )
    assert caught.value.status == 422
    status = json.loads(caught.value.body)
    immutable = 'Invalid value: "object": spec.branchName is immutable'
    assert status["message"] == f'Branch.oms.dev "a" is invalid: spec: {immutable}'
    assert status["details"]["causes"] == [{"reason": "FieldValueInvalid", "message": immutable, "field": "spec"}]


async def test_schema_errors_as_kubectl_shows_them(branches: Api, kubectl: Kubectl, tmp_path: pathlib.Path) -> None:
    manifest = tmp_path / "bad.json"
    manifest.write_text(json.dumps(branch("a", "Bad Name", priority=11)))
    rc, _, err = await kubectl("create", "-f", str(manifest))
    assert rc == 1
    assert err == (
        'The Branch "a" is invalid: \n'
        "* spec.branchName: Invalid value: \"Bad Name\": spec.branchName in body should match '^[a-z][a-z0-9/-]*$'\n"
        "* spec.priority: Invalid value: 11: spec.priority in body should be less than or equal to 10"
    )


async def test_not_found_already_exists_conflict_as_kubectl_shows_them(
    branches: Api, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    rc, _, err = await kubectl("get", "branch", "nope")
    assert (rc, err) == (1, 'Error from server (NotFound): branches.oms.dev "nope" not found')
    manifest = tmp_path / "a.json"
    manifest.write_text(json.dumps(branch("a")))
    assert (await kubectl("create", "-f", str(manifest)))[0] == 0
    rc, _, err = await kubectl("create", "-f", str(manifest))
    assert (rc, err) == (
        1,
        f'Error from server (AlreadyExists): error when creating "{manifest}": branches.oms.dev "a" already exists',
    )
    stale = {**branch("a"), "metadata": {"name": "a", "resourceVersion": "1"}}
    manifest.write_text(json.dumps(stale))
    rc, _, err = await kubectl("replace", "-f", str(manifest))
    assert (rc, err) == (
        1,
        f'Error from server (Conflict): error when replacing "{manifest}": Operation cannot be fulfilled on '
        'branches.oms.dev "a": the object has been modified; please apply your changes to the latest version '
        "and try again",
    )


# ------------------------------------------------------------------------------------ protobuf bodies


async def test_kubectl_typed_create_commands_send_protobuf(
    server: EmbeddedApiServer, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "ca.pem").write_bytes(b"\x00\xffbinary")
    commands = [
        ("create", "namespace", "team", "--save-config"),
        ("-n", "team", "create", "secret", "generic", "s", "--from-literal=password=p w", "--type=example/x",
         f"--from-file=ca.crt={tmp_path / 'ca.pem'}"),
        ("-n", "team", "create", "configmap", "c", "--from-literal=a=1", "--from-literal=b=2"),
    ]  # fmt: skip
    for args in commands:
        rc, _, err = await kubectl(*args)
        assert rc == 0, (args, err)
    namespace = server.get_object("", "v1", "namespaces", None, "team")
    assert namespace is not None and namespace["status"] == {"phase": "Active"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in namespace["metadata"]["annotations"]
    secret = server.get_object("", "v1", "secrets", "team", "s")
    assert secret is not None and secret["type"] == "example/x"
    assert secret["data"] == {"password": "cCB3", "ca.crt": "AP9iaW5hcnk="}
    configmap = server.get_object("", "v1", "configmaps", "team", "c")
    assert configmap is not None and configmap["data"] == {"a": "1", "b": "2"}
