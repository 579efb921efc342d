"""The official clients work against the server through the kubeconfig it writes."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import kubernetes
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .conftest import GROUP, VERSION, Api, branch, crd


@pytest.fixture
async def k8s(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(server.write_kubeconfig(tmp_path / "kubeconfig")), client_configuration=configuration
    )
    async with client.ApiClient(configuration=configuration) as api_client:
        yield api_client


async def test_kubeconfig_points_at_the_server(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> None:
    path = server.write_kubeconfig(tmp_path / "nested" / "kubeconfig", namespace="team")
    _, active = kubernetes.config.list_kube_config_contexts(str(path))  # type: ignore[no-untyped-call]
    assert active["context"]["namespace"] == "team"
    loaded = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=loaded)  # type: ignore[no-untyped-call]
    assert loaded.host == server.url
    assert loaded.api_key == {"BearerToken": "Bearer embedded-dummy-token"}


async def test_sync_client_reads_namespaces(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> None:
    path = server.write_kubeconfig(tmp_path / "kubeconfig")

    def list_namespaces() -> list[str]:
        api_client = kubernetes.config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
        try:
            namespaces = kubernetes.client.CoreV1Api(api_client).list_namespace().items
            return [str(ns.metadata.name) for ns in namespaces if ns.metadata is not None]
        finally:
            api_client.close()

    assert {"default", "kube-system"} <= set(await asyncio.to_thread(list_namespaces))


async def test_core_api_create_read_patch_delete(k8s: client.ApiClient) -> None:
    core = client.CoreV1Api(k8s)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg", labels={"a": "1"}), data={"k": "v"})
    created = await core.create_namespaced_config_map("default", body)
    assert created.metadata.uid and created.metadata.resource_version
    with pytest.raises(ApiException) as exc:
        await core.create_namespaced_config_map("default", body)
    assert exc.value.status == 409
    patched = await core.patch_namespaced_config_map("cfg", "default", {"data": {"k2": "v2"}})
    assert patched.data == {"k": "v", "k2": "v2"}
    listed = await core.list_namespaced_config_map("default", label_selector="a=1")
    assert [i.metadata.name for i in listed.items] == ["cfg"]
    await core.delete_namespaced_config_map("cfg", "default", propagation_policy="Background")
    with pytest.raises(ApiException) as exc:
        await core.read_namespaced_config_map("cfg", "default")
    assert exc.value.status == 404


async def test_custom_objects_and_status(branches: Api, k8s: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(k8s)
    created = await custom.create_namespaced_custom_object(GROUP, VERSION, "default", "branches", branch("feat"))
    assert created["spec"]["targetBranch"] == "main"
    # The generated client labels dict bodies as json-patch unless told otherwise.
    merge: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
    patched = await custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", "branches", "feat", {"status": {"phase": "READY"}}, **merge
    )
    assert patched["status"] == {"phase": "READY"}
    json_patched = await custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", "branches", "feat", [{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}]
    )
    assert json_patched["metadata"]["labels"] == {"x": "y"}
    with pytest.raises(ApiException) as exc:
        await custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", "branches", "feat", {"spec": {"branchName": "z"}}, **merge
        )
    assert exc.value.status == 422
    listed = await custom.list_cluster_custom_object(GROUP, VERSION, "branches")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["feat"]


async def test_crd_through_the_apiextensions_client(k8s: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(k8s)
    created = await ext.create_custom_resource_definition(crd(plural="widgets", kind="Widget", short_names=[]))  # type: ignore[arg-type]
    assert {c.type for c in created.status.conditions} == {"Established", "NamesAccepted"}
    resources = await client.CustomObjectsApi(k8s).get_api_resources(GROUP, VERSION)
    assert [r.name for r in resources.resources] == ["widgets", "widgets/status"]
    listed = await ext.list_custom_resource_definition()
    assert [c.metadata.name for c in listed.items] == ["widgets.oms.dev"]


async def test_watch_with_the_official_client(k8s: client.ApiClient, server: EmbeddedApiServer) -> None:
    core = client.CoreV1Api(k8s)
    server.create_object("", "v1", "configmaps", {"metadata": {"name": "w"}}, namespace="default")
    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    async with w.stream(core.list_namespaced_config_map, "default", timeout_seconds=5) as stream:
        async for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 1:
                server.patch_object("", "v1", "configmaps", "default", "w", {"data": {"x": "1"}})
            else:
                w.stop()
    assert seen == [("ADDED", "w"), ("MODIFIED", "w")]
