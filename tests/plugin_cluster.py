"""The cluster the plugin tests run against: the embedded API server with the real CRDs, and the REAL
kubectl 1.33 next to the plugin (both run with an isolated HOME)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

from branch_operator.api.models import LockType
from branch_operator.clients.kube import KubeClient
from branch_operator.domain.locks import lock_body
from branch_operator.embedded.apiserver.server import EmbeddedApiServer
from branch_operator.embedded.env import install_crds
from branch_operator.kubectl_branch import cli as plugin

from . import k8s_tools

KUBECTL = k8s_tools.kubectl_path()


class Cluster:
    def __init__(self, server: EmbeddedApiServer, kubeconfig: Path, kube: KubeClient, home: Path) -> None:
        self.server, self.kubeconfig, self.kube, self.home = server, kubeconfig, kube, home

    async def plugin(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await plugin.run(["--kubeconfig", str(self.kubeconfig), *argv], out, err)
        return code, out.getvalue(), err.getvalue()

    def env(self, path: str | None = None) -> dict[str, str]:
        env = {"HOME": str(self.home), "PATH": path or os.environ.get("PATH", "")}
        env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
        return env

    async def kubectl(self, *args: str, path: str | None = None, plugin: bool = False) -> str:
        # kubectl refuses flags before a plugin's name; after it, they are the plugin's.
        flags = [] if plugin else ["--kubeconfig", str(self.kubeconfig)]
        proc = await asyncio.create_subprocess_exec(
            KUBECTL, *flags, *args, env=self.env(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (args, err.decode())
        return out.decode()


@contextlib.asynccontextmanager
async def open_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """An embedded API server with the real CRDs, three Branches (two labelled team=…) and a WRITE lock."""
    server = EmbeddedApiServer()
    url = await server.start()
    await install_crds(url)
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    kube = await KubeClient.connect(str(kubeconfig))
    (tmp_path / "home").mkdir()
    try:
        for name, labels in (("feat-a", {"team": "search"}), ("feat-b", {"team": "graph"}), ("feat-c", {})):
            await kube.create("branches", "default", {
                "apiVersion": "oms.dev/v1alpha1", "kind": "Branch",
                "metadata": {"name": name, "labels": labels}, "spec": {"branchName": f"feature/{name}"}})
        branch = await kube.get_branch("default", "feat-a")
        await kube.create_lock("default", lock_body(branch, LockType.WRITE, key="editor", holder="oms-editor",
                                                    reason="editing", ttl_seconds=300))
        yield Cluster(server, kubeconfig, kube, tmp_path / "home")
    finally:
        await kube.close()
        await server.stop()
