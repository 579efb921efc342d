"""Suite-wide test configuration."""

from collections.abc import AsyncIterator
from pathlib import Path

# Imported here, at collection, on purpose: otherwise hypothesis's pytest plugin imports it lazily in its
# terminal-summary hook, where CPython 3.11's compiler has crashed ("AST constructor recursion depth
# mismatch") while pytest's assertion rewriter compiled hypothesis's modules at that late point.
import hypothesis  # noqa: F401
import pytest_asyncio

from branch_operator.clients.kube import KubeClient
from branch_operator.embedded.apiserver.server import EmbeddedApiServer
from branch_operator.embedded.env import install_crds


@pytest_asyncio.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[KubeClient, EmbeddedApiServer]]:
    """The operator's Kubernetes client against an embedded API server with the operator's CRDs."""
    server = EmbeddedApiServer()
    await install_crds(await server.start())
    client = await KubeClient.connect(str(server.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield client, server
    finally:
        await client.close()
        await server.stop()
