"""Every field of the three CRDs explains itself in `kubectl explain`, in plain text.

The descriptions come from the models (field docstrings and Field(description=...)); kubectl explain
prints them as they are, so markup such as reStructuredText's double backticks would show raw.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from branch_operator.api.crdgen import render_crds


def fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, str | None]]:
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}", child.get("description")
        yield from fields(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from fields(node["items"], f"{path}[]")


CRDS = {crd["spec"]["names"]["kind"]: crd for crd in render_crds()}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_is_described_in_plain_text(kind: str) -> None:
    schema = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    found = list(fields(schema, kind))
    assert len(found) > 10
    # metadata stays bare: the API server refuses anything on it but name/generateName restrictions,
    # and kubectl explain describes it from ObjectMeta.
    missing = [path for path, text in found if not (text or "").strip() and path != f"{kind}.metadata"]
    assert not missing, f"{len(missing)} of {len(found)} fields of {kind} have no description: {missing}"
    marked_up = [path for path, text in found if text and "`" in text]
    assert not marked_up, f"backticks would print raw in kubectl explain: {marked_up}"


def test_branchlock_columns_show_ttl_and_expiry() -> None:
    version = CRDS["BranchLock"]["spec"]["versions"][0]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["TTL"] == {"name": "TTL", "type": "integer", "jsonPath": ".spec.ttlSeconds"}
    # A string: a date column is printed as the age since it, so a future expiry would read <invalid>.
    assert columns["Expires"] == {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt"}
    assert "expiresAt" in version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
