"""The Flux example health-checks the AutoMergePolicies it applies (kstatus reads the operator's
conditions), so a policy the operator rejects fails the Kustomization instead of passing it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

FLUX = Path(__file__).resolve().parents[1] / "manifests" / "gitops" / "flux"


def _objects() -> list[dict[str, Any]]:
    listed = yaml.safe_load((FLUX / "kustomization.yaml").read_text())["resources"]
    return [doc for name in listed for doc in yaml.safe_load_all((FLUX / name).read_text()) if doc]


def test_the_flux_kustomization_waits_on_the_policies() -> None:
    objects = _objects()
    [policies] = [o for o in objects if o["kind"] == "Kustomization"
                  and o["apiVersion"].startswith("kustomize.toolkit.fluxcd.io/")]
    spec = policies["spec"]
    assert spec["wait"] is True and spec["timeout"]
    folder = FLUX.parents[2] / spec["path"]
    kinds = {d["kind"] for p in folder.glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d}
    assert "AutoMergePolicy" in kinds
    [source] = [o for o in objects if o["kind"] == spec["sourceRef"]["kind"]]
    assert source["metadata"]["name"] == spec["sourceRef"]["name"]
    assert source["metadata"]["namespace"] == policies["metadata"]["namespace"]
