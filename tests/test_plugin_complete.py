"""Shell completion of `kubectl branch`, asked through the REAL kubectl 1.33 (`kubectl __complete branch …`),
which finds `kubectl_complete-branch` on PATH as it does in a user's shell."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from branch_operator.kubectl_branch import complete

from .plugin_cluster import Cluster, open_cluster

ROOT = Path(__file__).resolve().parents[1]


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path) as c:
        yield c


def _bin(tmp_path: Path) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, module in (("kubectl-branch", "cli"), ("kubectl_complete-branch", "complete")):
        launcher = bindir / name
        launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m branch_operator.kubectl_branch.{module} \"$@\"\n")
        launcher.chmod(0o755)
    return f"{bindir}:/usr/bin:/bin"


async def _complete(cluster: Cluster, path: str, *words: str) -> tuple[list[str], str]:
    out = await cluster.kubectl("__complete", "branch", *words, path=path, plugin=True)
    lines = out.splitlines()
    return [ln.split("\t")[0] for ln in lines[:-1]], lines[-1]


async def test_kubectl_completes_commands_flags_and_names(cluster: Cluster, tmp_path: Path) -> None:
    path = _bin(tmp_path)
    kc = str(cluster.kubeconfig)
    values, directive = await _complete(cluster, path, "")
    assert {"list", "describe", "why", "locks", "unlock", "set-state", "merge", "audit"} <= set(values)
    assert directive == ":4"  # no file names
    assert (await _complete(cluster, path, "de"))[0] == ["describe"]
    assert (await _complete(cluster, path, "describe", "--kubeconfig", kc, "feat-"))[0] == [
        "feat-a", "feat-b", "feat-c"]
    assert (await _complete(cluster, path, "why", "--kubeconfig", kc, "feat-b"))[0] == ["feat-b"]
    flags = (await _complete(cluster, path, "list", "--"))[0]
    assert {"--selector", "--watch", "--watch-only", "--output", "--namespace", "--all-namespaces"} <= set(flags)
    assert (await _complete(cluster, path, "list", "-o", "j"))[0] == ["json", "jsonpath=", "jsonpath-as-json="]
    assert (await _complete(cluster, path, "set-state", "--kubeconfig", kc, "feat-a", ""))[0] == [
        "ACTIVE", "READY", "ERROR"]
    locks = (await _complete(cluster, path, "unlock", "feat-a", "--kubeconfig", kc, "--lock", ""))[0]
    assert locks[:3] == ["INDEXING", "WRITE", "MERGE"] and any(n.startswith("feat-a-write-") for n in locks[3:])
    assert "default" in (await _complete(cluster, path, "list", "--kubeconfig", kc, "-n", ""))[0]


def test_no_cluster_completes_no_names(tmp_path: Path) -> None:
    values, directive = complete.complete(["describe", "--kubeconfig", str(tmp_path / "missing"), ""])
    assert values == [] and directive == complete.NO_FILE_COMP


def test_the_completer_is_installed_as_a_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl_complete-branch"] == "branch_operator.kubectl_branch.complete:main"
    assert scripts["kubectl-branch"] == "branch_operator.kubectl_branch.cli:main"
