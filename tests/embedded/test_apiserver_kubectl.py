"""Real kubectl (1.33, from the wheel the README's test command installs: ``tests/k8s_tools.py``) against the
server."""

from __future__ import annotations

import asyncio
import json
import pathlib

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .. import k8s_tools
from .conftest import CRDS, Api, crd

KUBECTL = k8s_tools.kubectl_path()

BRANCH_YAML = """\
apiVersion: oms.dev/v1alpha1
kind: Branch
metadata:
  name: kb
spec:
  branchName: feature/k
"""


async def test_kubectl_get_apply_patch_delete(server: EmbeddedApiServer, api: Api, tmp_path: pathlib.Path) -> None:
    await api.ok("POST", CRDS, crd())
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    manifest = tmp_path / "branch.yaml"
    manifest.write_text(BRANCH_YAML)

    async def kubectl(*args: str) -> str:
        # Asynchronously: the server answers on this very event loop.
        assert KUBECTL is not None
        proc = await asyncio.create_subprocess_exec(
            KUBECTL, "--kubeconfig", str(kubeconfig), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, (args, err.decode())
        return out.decode()

    assert "kube-system" in await kubectl("get", "namespaces")
    resources = await kubectl("api-resources", "--api-group=oms.dev")
    assert "branches" in resources and "br" in resources
    # OpenAPI documents are not served, so client-side validation is off.
    assert "created" in await kubectl("apply", "-f", str(manifest))
    assert "unchanged" in await kubectl("apply", "-f", str(manifest))
    await kubectl("patch", "br", "kb", "--type=merge", "-p", '{"spec":{"autoMerge":false}}')
    await kubectl("patch", "br", "kb", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"READY"}}')
    obj = json.loads(await kubectl("get", "branch", "kb", "-o", "json"))
    assert obj["spec"] == {"branchName": "feature/k", "targetBranch": "main", "autoMerge": False}
    assert obj["status"] == {"phase": "READY"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    await kubectl("delete", "br", "kb")
    assert server.get_object("oms.dev", "v1alpha1", "branches", "default", "kb") is None
