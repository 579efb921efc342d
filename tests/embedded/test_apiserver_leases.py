"""``coordination.k8s.io/v1`` Leases as the real API server serves them, through the official client, raw HTTP
and the real kubectl: what leader election relies on (resourceVersion preconditions, MicroTime fields)."""

from __future__ import annotations

import asyncio
import json
import pathlib
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .conftest import Api
from .test_apiserver_kubectl import KUBECTL

GROUP = "coordination.k8s.io"
LEASES = f"/apis/{GROUP}/v1/namespaces/default/leases"
T0 = "2026-12-03T13:00:00.123456Z"


def lease(name: str = "leader", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10, "acquireTime": T0, "renewTime": T0,
                 "leaseTransitions": 0, **spec},
    }


async def test_discovery_lists_the_group_and_leases(api: Api) -> None:
    _, groups = await api.get("/apis")
    [group] = [g for g in groups["groups"] if g["name"] == GROUP]
    assert group["preferredVersion"] == {"groupVersion": f"{GROUP}/v1", "version": "v1"}
    _, resources = await api.get(f"/apis/{GROUP}/v1")
    assert resources["groupVersion"] == f"{GROUP}/v1"
    [entry] = [r for r in resources["resources"] if r["name"] == "leases"]
    assert (entry["kind"], entry["namespaced"], entry["singularName"]) == ("Lease", True, "lease")
    assert set(entry["verbs"]) >= {"get", "list", "watch", "create", "update", "patch", "delete"}


async def test_stale_resource_version_is_a_conflict(api: Api) -> None:
    created = await api.ok("POST", LEASES, lease())
    rv = created["metadata"]["resourceVersion"]
    renewed = await api.ok("PUT", f"{LEASES}/leader", {**created, "spec": {**created["spec"], "holderIdentity": "b"}})
    assert renewed["metadata"]["resourceVersion"] != rv
    stale = {**created, "spec": {**created["spec"], "holderIdentity": "c"}}
    for method in ("PUT", "PATCH"):
        status, body = await api.request(method, f"{LEASES}/leader", stale,
                                         "application/json" if method == "PUT" else "application/merge-patch+json")
        assert status == 409, (method, body)
        assert body == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Conflict",
            "code": 409, "details": {"name": "leader", "group": GROUP, "kind": "leases"},
            "message": 'Operation cannot be fulfilled on leases.coordination.k8s.io "leader": the object has been '
                       "modified; please apply your changes to the latest version and try again",
        }
    _, current = await api.get(f"{LEASES}/leader")
    assert current["spec"]["holderIdentity"] == "b"
    # Leases, unlike custom resources, take an unconditional update.
    unconditional = {**lease(), "spec": {**lease()["spec"], "holderIdentity": "d"}}
    assert (await api.ok("PUT", f"{LEASES}/leader", unconditional))["spec"]["holderIdentity"] == "d"


async def test_micro_time_fields_are_decoded_as_the_real_server_does(api: Api) -> None:
    # Another offset is served back in UTC; six fractional digits are required.
    created = await api.ok("POST", LEASES, lease(renewTime="2026-12-03T15:00:00.000001+02:00"))
    assert created["spec"]["renewTime"] == "2026-12-03T13:00:00.000001Z"
    assert created["spec"]["acquireTime"] == T0
    for bad in ("2026-12-03T13:00:00Z", "2026-12-03T13:00:00.123Z", "2026-12-03T13:00:00.123456789Z", "yesterday"):
        status, body = await api.post(LEASES, lease("bad", renewTime=bad))
        assert status == 400 and body["reason"] == "BadRequest", (bad, body)
        assert body["message"].startswith('Lease in version "v1" cannot be handled as a Lease'), body
    status, body = await api.post(LEASES, lease("bad", leaseDurationSeconds=0, leaseTransitions=-1))
    assert status == 422 and body["reason"] == "Invalid"
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.leaseDurationSeconds", "spec.leaseTransitions"]
    assert (await api.get(f"{LEASES}/bad"))[0] == 404


async def test_official_client_crud_watch_and_conflict(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> None:
    path = server.write_kubeconfig(tmp_path / "kubeconfig")

    def scenario() -> dict[str, Any]:
        api_client = kubernetes.config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
        models = kubernetes.client
        try:
            api = models.CoordinationV1Api(api_client)
            when = datetime(2026, 12, 3, 13, 0, 0, 123456, tzinfo=UTC)
            body = models.V1Lease(
                metadata=models.V1ObjectMeta(name="op"),
                spec=models.V1LeaseSpec(holder_identity="a", lease_duration_seconds=10, acquire_time=when,
                                        renew_time=when, lease_transitions=0),
            )
            created = api.create_namespaced_lease("default", body)
            got = api.read_namespaced_lease("op", "default")
            assert got.spec.renew_time == when and got.spec.holder_identity == "a"
            got.spec.holder_identity = "b"
            got.spec.lease_transitions = 1
            replaced = api.replace_namespaced_lease("op", "default", got)
            created.spec.holder_identity = "c"  # still carries the first resourceVersion
            with pytest.raises(ApiException) as conflict:
                api.replace_namespaced_lease("op", "default", created)
            patched = api.patch_namespaced_lease("op", "default", {"spec": {"leaseDurationSeconds": 15}})
            listed = api.list_namespaced_lease("default")
            events = [
                (e["type"], e["object"].spec.holder_identity)
                for e in kubernetes.watch.Watch().stream(  # type: ignore[no-untyped-call]
                    api.list_namespaced_lease, "default", resource_version=created.metadata.resource_version,
                    timeout_seconds=1)
            ]
            api.delete_namespaced_lease("op", "default")
            return {
                "replaced": (replaced.spec.holder_identity, replaced.spec.lease_transitions),
                "conflict": (conflict.value.status, json.loads(conflict.value.body)["reason"]),
                "patched": (patched.spec.lease_duration_seconds, patched.spec.holder_identity),
                "listed": [item.metadata.name for item in listed.items],
                "events": events,
                "left": [item.metadata.name for item in api.list_namespaced_lease("default").items],
            }
        finally:
            api_client.close()

    result = await asyncio.to_thread(scenario)
    assert result == {
        "replaced": ("b", 1),
        "conflict": (409, "Conflict"),
        "patched": (15, "b"),
        "listed": ["op"],
        "events": [("MODIFIED", "b"), ("MODIFIED", "b")],
        "left": [],
    }


LEASE_YAML = """\
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: kl
  namespace: default
spec:
  holderIdentity: replica-a
  leaseDurationSeconds: 10
  renewTime: "2026-12-03T13:00:00.123456Z"
  leaseTransitions: 0
"""


async def test_kubectl_get_apply_and_stale_replace(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> None:
    assert KUBECTL is not None, "kubectl is needed: $KUBECTL or kubectl on PATH"
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")

    async def kubectl(*args: str, ok: bool = True) -> str:
        assert KUBECTL is not None
        proc = await asyncio.create_subprocess_exec(
            KUBECTL, "--kubeconfig", str(kubeconfig), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert (proc.returncode == 0) is ok, (args, out.decode(), err.decode())
        return out.decode() if ok else err.decode()

    manifest = tmp_path / "lease.yaml"
    manifest.write_text(LEASE_YAML)
    assert "created" in await kubectl("apply", "-f", str(manifest))
    assert "unchanged" in await kubectl("apply", "-f", str(manifest))
    assert "kl" in await kubectl("get", "leases")
    assert "leases" in await kubectl("api-resources", f"--api-group={GROUP}")
    first = json.loads(await kubectl("get", "lease", "kl", "-o", "json"))
    assert first["spec"]["holderIdentity"] == "replica-a"
    manifest.write_text(LEASE_YAML.replace("replica-a", "replica-b"))
    assert "configured" in await kubectl("apply", "-f", str(manifest))
    assert json.loads(await kubectl("get", "lease", "kl", "-o", "json"))["spec"]["holderIdentity"] == "replica-b"
    # A replace carrying the resourceVersion read before the apply: the server refuses it.
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**first, "spec": {**first["spec"], "holderIdentity": "replica-c"}}))
    error = await kubectl("replace", "-f", str(stale), ok=False)
    assert "Conflict" in error and "the object has been modified" in error, error
    lease_now = server.get_object(GROUP, "v1", "leases", "default", "kl")
    assert lease_now is not None and lease_now["spec"]["holderIdentity"] == "replica-b"
    await kubectl("delete", "lease", "kl")
    assert server.get_object(GROUP, "v1", "leases", "default", "kl") is None
