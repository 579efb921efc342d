"""The krew manifest (krew/branch.yaml) is a valid krew Plugin whose archive is the launcher built from
this repository, and the launcher runs the installed plugin."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "krew" / "branch.yaml"


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_launcher", ROOT / "krew" / "build_launcher.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest() -> dict[str, Any]:
    doc = yaml.safe_load(MANIFEST.read_text())
    assert isinstance(doc, dict)
    return doc


def test_manifest_has_krews_structure() -> None:
    doc = _manifest()
    assert doc["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2" and doc["kind"] == "Plugin"
    assert doc["metadata"]["name"] == "branch"  # `kubectl branch`
    spec = doc["spec"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert spec["version"] == f"v{version}" and re.fullmatch(r"v\d+\.\d+\.\d+", spec["version"])
    assert spec["homepage"].startswith("https://")
    assert 0 < len(spec["shortDescription"]) <= 50  # krew's index rule
    assert "pip install oms-branch-operator" in spec["caveats"] and spec["description"].strip()
    seen = set()
    for platform in spec["platforms"]:
        labels = platform["selector"]["matchLabels"]
        seen.add((labels["os"], labels["arch"]))
        assert platform["uri"].startswith("https://") and platform["uri"].endswith(".tar.gz")
        assert re.fullmatch(r"[0-9a-f]{64}", platform["sha256"])
        assert platform["bin"] == "kubectl-branch"
        assert {f["from"] for f in platform["files"]} >= {"kubectl-branch"}
    assert seen == {("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64")}


def test_sha256_is_the_launcher_archive_built_here() -> None:
    data = _builder().build()
    assert data == _builder().build()  # reproducible
    for platform in _manifest()["spec"]["platforms"]:
        assert platform["sha256"] == hashlib.sha256(data).hexdigest(), "rebuild: python krew/build_launcher.py"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
        for platform in _manifest()["spec"]["platforms"]:
            assert {f["from"] for f in platform["files"]} <= names
            assert tar.getmember(platform["bin"]).mode & 0o111


def test_the_launcher_runs_the_installed_plugin(tmp_path: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(_builder().build())) as tar:
        tar.extractall(tmp_path, filter="data")
    env = {**os.environ, "KUBECTL_BRANCH_PYTHON": sys.executable, "HOME": str(tmp_path)}
    proc = subprocess.run([str(tmp_path / "kubectl-branch"), "list", "--help"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--watch" in proc.stdout, proc.stderr
    # A Python without the package (no site-packages, no PYTHONPATH): the launcher says what to install.
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    bare.chmod(0o755)
    proc = subprocess.run([str(tmp_path / "kubectl-branch"), "list"], capture_output=True, text=True, timeout=60,
                          env={**env, "KUBECTL_BRANCH_PYTHON": str(bare)})
    assert proc.returncode == 1 and "python3 -m pip install oms-branch-operator" in proc.stderr, proc.stderr
