"""``/openapi/v3`` and ``/openapi/v2`` as kube-apiserver serves them, checked with the real kubectl 1.33:
``apply`` and ``create`` validate without flags (server-side, through ``fieldValidation``), a wrong field
gets kube-apiserver's strict decoding error, and ``explain`` works to any depth and follows CRD changes."""

from __future__ import annotations

import asyncio
import copy
import json
import pathlib
from typing import Any

from branch_operator.embedded.apiserver.server import EmbeddedApiServer
from branch_operator.embedded.env import install_crds

from .conftest import CRDS, Api, crd
from .kubectl_run import Kubectl

REPO = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))
BAD_BRANCH = """\
apiVersion: oms.dev/v1alpha1
kind: Branch
metadata:
  name: typo
spec:
  branchName: feature/typo
  autoMerg: false
  targetBranch: main
"""


async def failing(kubectl: Kubectl, *args: str) -> tuple[int, str, str]:
    proc = await kubectl.start(*args)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_apply_and_create_validate_without_flags(server: EmbeddedApiServer, tmp_path: pathlib.Path) -> None:
    await install_crds(server.url)
    kubectl = Kubectl(server, tmp_path)
    assert SAMPLES, "manifests/samples has the samples the README applies"
    for sample in SAMPLES:
        assert "created" in await kubectl("apply", "-f", str(sample))
        assert "unchanged" in await kubectl("apply", "-f", str(sample))
    # Each apply asked the server to validate strictly: kubectl found fieldValidation in the OpenAPI document.
    writes = [r for r in server.requests if r.method in ("POST", "PATCH") and "/apis/oms.dev/" in r.path]
    assert writes and all(r.query.get("fieldValidation") == "Strict" for r in writes), writes
    await kubectl("delete", "-f", str(SAMPLES[0]))
    assert "created" in await kubectl("create", "-f", str(SAMPLES[0]))


async def test_a_wrong_field_gets_kube_apiservers_strict_decoding_error(
    server: EmbeddedApiServer, tmp_path: pathlib.Path
) -> None:
    await install_crds(server.url)
    kubectl = Kubectl(server, tmp_path)
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(BAD_BRANCH)
    for verb in ("apply", "create"):
        code, _, err = await failing(kubectl, verb, "-f", str(manifest))
        assert code == 1
        assert err.strip() == (f'Error from server (BadRequest): error when creating "{manifest}": Branch in version '
                               '"v1alpha1" cannot be handled as a Branch: strict decoding error: unknown field '
                               '"spec.autoMerg"')
    # Warn: accepted, the field dropped, and kubectl prints the server's warning.
    code, out, err = await failing(kubectl, "create", "--validate=warn", "-f", str(manifest))
    assert code == 0 and "created" in out
    assert 'Warning: unknown field "spec.autoMerg"' in err
    stored = json.loads(await kubectl("get", "branch", "typo", "-o", "json"))
    assert "autoMerg" not in stored["spec"] and stored["spec"]["autoMerge"] is True  # pruned, then defaulted
    # A later apply of a fixed manifest (a patch) is validated too.
    manifest.write_text(BAD_BRANCH.replace("autoMerg: false", "autoMerge: false\n  extra: 1"))
    code, _, err = await failing(kubectl, "apply", "-f", str(manifest))
    assert code == 1 and 'strict decoding error: unknown field "spec.extra"' in err
    # --validate=false: Ignore, as before.
    assert "configured" in await kubectl("apply", "--validate=false", "-f", str(manifest))


async def test_explain_reads_the_crd_descriptions_at_any_depth(
    server: EmbeddedApiServer, tmp_path: pathlib.Path
) -> None:
    await install_crds(server.url)
    kubectl = Kubectl(server, tmp_path)
    spec = await kubectl("explain", "branch.spec")
    assert "KIND:       Branch" in spec and "VERSION:    v1alpha1" in spec
    assert "branchName\t<string> -required-" in spec and "targetBranch\t<string>" in spec
    windows = await kubectl("explain", "automergepolicy.spec.mergeWindows")
    assert "FIELD: mergeWindows <[]Object>" in windows and "schedule\t<string> -required-" in windows
    kind = await kubectl("explain", "automergepolicy.spec.mergeWindows.kind")
    assert "ENUM:\n    allow\n    deny" in kind and "deny wins" in kind
    conditions = await kubectl("explain", "branch.status.conditions.lastTransitionTime")
    assert "FIELD: lastTransitionTime" in conditions
    meta = await kubectl("explain", "branchlock.metadata.labels")
    assert "FIELD: labels <map[string]string>" in meta
    recursive = await kubectl("explain", "branch", "--recursive")
    assert "indexing\t<Object>" in recursive
    assert "The object that this event is about." in await kubectl("explain", "events.involvedObject")
    assert "holderIdentity\t<string>" in await kubectl("explain", "lease.spec")
    code, _, err = await failing(kubectl, "explain", "branch.spec.nosuchfield")
    assert code == 1 and 'field "nosuchfield" does not exist' in err


async def test_explain_follows_a_crd_change(server: EmbeddedApiServer, api: Api, tmp_path: pathlib.Path) -> None:
    await api.ok("POST", CRDS, crd())
    kubectl = Kubectl(server, tmp_path)
    assert "colour" not in await kubectl("explain", "branches.spec")
    current = await api.ok("GET", f"{CRDS}/branches.oms.dev")
    changed = copy.deepcopy(current)
    spec = changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["colour"] = {"type": "string", "description": "The colour of the branch."}
    await api.ok("PUT", f"{CRDS}/branches.oms.dev", changed)
    # kubectl caches documents on disk by URL: the hash in the URL must change with the document.
    explained = await kubectl("explain", "branches.spec.colour")
    assert "The colour of the branch." in explained


async def test_the_documents_shape(server: EmbeddedApiServer, api: Api) -> None:
    await install_crds(server.url)
    status, index = await api.get("/openapi/v3")
    assert status == 200
    url = index["paths"]["apis/oms.dev/v1alpha1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/oms.dev/v1alpha1?hash=") and len(url.split("hash=")[1]) == 128
    assert {"api/v1", "apis/coordination.k8s.io/v1", "apis/apiextensions.k8s.io/v1"} <= set(index["paths"])
    status, doc = await api.get("/openapi/v3/apis/oms.dev/v1alpha1")
    assert status == 200 and doc["openapi"] == "3.0.0"
    schemas = doc["components"]["schemas"]
    branch = schemas["dev.oms.v1alpha1.Branch"]
    assert branch["x-kubernetes-group-version-kind"] == [{"group": "oms.dev", "kind": "Branch", "version": "v1alpha1"}]
    assert branch["properties"]["metadata"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in schemas and "dev.oms.v1alpha1.BranchList" in schemas
    item = doc["paths"]["/apis/oms.dev/v1alpha1/namespaces/{namespace}/branches/{name}"]
    patch: dict[str, Any] = item["patch"]
    # kubectl apply builds a strategic merge patch only where a kind's patch accepts one: never for a CR.
    assert sorted(patch["requestBody"]["content"]) == [
        "application/apply-patch+yaml", "application/json-patch+json",
        "application/merge-patch+json"]
    assert "fieldValidation" in {p["name"] for p in patch["parameters"]}
    _, core = await api.get("/openapi/v3/api/v1")
    ns_patch = core["paths"]["/api/v1/namespaces/{name}"]["patch"]
    assert "application/strategic-merge-patch+json" in ns_patch["requestBody"]["content"]
    status, swagger = await api.get("/openapi/v2")
    assert status == 200 and swagger["swagger"] == "2.0"
    assert swagger["definitions"]["dev.oms.v1alpha1.Branch"]["properties"]["metadata"] == {
        "$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "description": swagger["definitions"]["dev.oms.v1alpha1.Branch"]["properties"]["metadata"]["description"]}
    assert (await api.get("/openapi/v3/apis/nope/v1"))[0] == 404


async def test_documents_are_built_once_per_change_not_per_request(server: EmbeddedApiServer, api: Api) -> None:
    await api.ok("POST", CRDS, crd())
    docs = server.openapi
    first = docs.v3("apis/oms.dev/v1alpha1")
    assert first is not None and docs.v3("apis/oms.dev/v1alpha1") is first
    _, index = await api.get("/openapi/v3")
    await api.ok("DELETE", f"{CRDS}/branches.oms.dev")
    _, after = await api.get("/openapi/v3")
    assert "apis/oms.dev/v1alpha1" in index["paths"] and "apis/oms.dev/v1alpha1" not in after["paths"]
