"""The CRDs' printer columns as on-call sees them: the real ``kubectl get`` (1.33) against the embedded API
server with the real CRDs, whose Table output follows kube-apiserver's (tests/embedded/test_apiserver_tables.py).

The server's clock is pinned (creation times and "now") so the ages are the README's; everything else is
what kubectl prints from the server's cells.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
import yaml

from branch_operator.api.models import Branch, BranchLock
from branch_operator.embedded.apiserver import ops, tables
from branch_operator.embedded.apiserver.server import EmbeddedApiServer
from branch_operator.embedded.env import install_crds
from branch_operator.kubectl_branch.render import BRANCH_HEADER, branch_rows

from .embedded.kubectl_run import Kubectl, parse_table

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2025, 6, 26, 10, 35, tzinfo=UTC)
GROUP, VERSION, NS = "oms.dev", "v1alpha1", "oms"


def _ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(ctype: str, status: str, reason: str) -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": "", "lastTransitionTime": _ts(NOW)}


def branch(name: str, branch_name: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Branch",
                           "metadata": {"name": name, "namespace": NS},
                           "spec": {"branchName": branch_name, "targetBranch": "main", "autoMerge": True}}  # fmt: skip
    if status is not None:
        obj["status"] = status
        Branch.model_validate(obj)  # the samples are objects the operator could have written
    return obj


MERGED = branch("feature-user-schema", "feature/user-schema", {
    "phase": "ACTIVE",
    "indexing": {"indexingId": "idx-123", "recordsIndexed": 1250, "result": "success",
                 "validation": {"passed": True, "errors": []}},
    # Mergeable is not the first condition: the filter, not the position, must find it.
    "conditions": [_cond("Indexed", "True", "IndexingSucceeded"), _cond("Validated", "True", "ValidationPassed"),
                   _cond("Locked", "False", "LockReleased"), _cond("Mergeable", "False", "Merged")],
    "merge": {"decision": "Merged", "reasons": [], "policy": "default-feature-branches"},
})  # fmt: skip
BLOCKED = branch("feature-invalid", "feature/invalid", {
    "phase": "READY",
    "indexing": {"indexingId": "idx-7", "recordsIndexed": 0, "result": "success",
                 "validation": {"passed": False, "errors": ["ObjectType User: email has no type"]}},
    "conditions": [_cond("Mergeable", "False", "ValidationFailed"), _cond("Indexed", "True", "IndexingSucceeded")],
    # Every reason, not just the first: on-call sees all of them in `kubectl get branches`.
    "merge": {"decision": "Blocked", "reasons": ["ValidationFailed", "InsufficientRecords", "LockHeld"],
              "policy": "default-feature-branches"},
})  # fmt: skip
NEW = branch("just-created", "feature/new")
LOCK = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BranchLock",
        "metadata": {"name": "feature-user-schema-write-1a2b", "namespace": NS},
        "spec": {"branch": "feature-user-schema", "lockType": "WRITE", "holder": "oms-editor", "ttlSeconds": 300},
        "status": {"acquiredAt": _ts(NOW), "renewedAt": _ts(NOW),
                   "expiresAt": _ts(NOW + timedelta(minutes=5))}}  # fmt: skip
POLICY = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AutoMergePolicy",
          "metadata": {"name": "default", "namespace": NS}, "spec": {"enabled": True, "priority": 0, "dryRun": False}}


class Clock:
    """The server's clock: what ``creationTimestamp`` is stamped with, and what ages are measured against."""

    def __init__(self) -> None:
        self.created = NOW
        self.now = NOW

    def __call__(self) -> str:
        return _ts(self.created)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    clock = Clock()
    monkeypatch.setattr(ops, "now_rfc3339", clock)
    monkeypatch.setattr(tables, "time", SimpleNamespace(time=lambda: clock.now.timestamp()))
    yield clock


@pytest_asyncio.fixture
async def server(clock: Clock) -> AsyncIterator[EmbeddedApiServer]:
    async with EmbeddedApiServer() as server:
        await install_crds(server.url)
        server.create_object("", "v1", "namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": NS}})  # fmt: skip
        yield server


def create(server: EmbeddedApiServer, clock: Clock, plural: str, obj: dict[str, Any], age: timedelta) -> None:
    clock.created = NOW - age
    body = {k: v for k, v in obj.items() if k != "status"}
    server.create_object(GROUP, VERSION, plural, body, namespace=NS)
    if "status" in obj:
        name = obj["metadata"]["name"]
        server.patch_object(GROUP, VERSION, plural, NS, name, {"status": obj["status"]}, subresource="status")


def readme_block(command: str) -> tuple[list[str], list[list[str]]]:
    """The example output the README shows after ``command``, as (header, rows)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(command))
    block = []
    for line in lines[at + 1 :]:
        if line.startswith("kubectl ") or line.startswith("```"):
            break
        block.append(line)
    return parse_table("\n".join(block))


def by_column(header: list[str], row: list[str]) -> dict[str, str]:
    return dict(zip(header, row, strict=True))


async def test_kubectl_get_branches_shows_what_the_readme_says(
    server: EmbeddedApiServer, clock: Clock, tmp_path: Path
) -> None:
    create(server, clock, "branches", MERGED, timedelta(minutes=5))
    create(server, clock, "branches", BLOCKED, timedelta(hours=3, minutes=20))
    readme_header, readme_rows = readme_block("kubectl get branches")
    assert len(readme_rows) == 2
    kubectl = Kubectl(server, tmp_path, namespace=NS)
    for resource in ("branches", "br"):
        header, rows = parse_table(await kubectl("get", resource, "--sort-by=.status.phase"))
        assert header == readme_header
        # The merged branch, and a blocked READY branch showing every reason it is not merging.
        assert rows == readme_rows


async def test_branch_columns_on_other_objects(server: EmbeddedApiServer, clock: Clock, tmp_path: Path) -> None:
    create(server, clock, "branches", BLOCKED, timedelta(hours=3, minutes=20))
    create(server, clock, "branches", NEW, timedelta(seconds=42))
    header, rows = parse_table(await Kubectl(server, tmp_path, namespace=NS)("get", "branches"))
    assert header == ["NAME", "BRANCH", "PHASE", "RECORDS", "VALID", "MERGEABLE", "REASONS", "AGE"]
    # 0 records and a failed validation are values, not blanks; a blocked branch shows every reason.
    assert rows[0] == ["feature-invalid", "feature/invalid", "READY", "0", "false", "False",
                       '["ValidationFailed","InsufficientRecords","LockHeld"]', "3h20m"]  # fmt: skip
    # Not yet initialised by the operator: only what the spec and metadata say.
    assert rows[1] == ["just-created", "feature/new", "", "", "", "", "", "42s"]


def crd_columns(filename: str) -> list[dict[str, Any]]:
    crd = yaml.safe_load((ROOT / "crds" / filename).read_text())
    return list(crd["spec"]["versions"][0]["additionalPrinterColumns"])


def test_branch_column_types_and_paths_match_the_model() -> None:
    columns = {c["name"]: c for c in crd_columns("oms.dev_branches.yaml")}
    assert {n: (c["type"], c["jsonPath"]) for n, c in columns.items()} == {
        c["name"]: (c["type"], c["jsonPath"]) for c in Branch.PRINTER_COLUMNS
    }


async def test_kubectl_branch_list_agrees_with_kubectl_get(
    server: EmbeddedApiServer, clock: Clock, tmp_path: Path
) -> None:
    for obj, age in ((MERGED, timedelta(minutes=5)), (BLOCKED, timedelta(hours=1)), (NEW, timedelta(seconds=1))):
        create(server, clock, "branches", obj, age)
    header, rows = parse_table(await Kubectl(server, tmp_path, namespace=NS)("get", "branches"))
    objs = server.list_objects(GROUP, VERSION, "branches", NS)
    plugin_rows = branch_rows(objs, [], all_namespaces=False, now=NOW)
    shared = [h for h in header if h in BRANCH_HEADER and h != "AGE"]
    assert "REASONS" in shared
    for get_row, list_row in zip(rows, plugin_rows, strict=True):
        assert [get_row[header.index(h)] for h in shared] == [list_row[BRANCH_HEADER.index(h)] for h in shared]


async def test_branchlock_and_policy_columns(server: EmbeddedApiServer, clock: Clock, tmp_path: Path) -> None:
    BranchLock.model_validate(LOCK)
    create(server, clock, "branchlocks", LOCK, timedelta(minutes=2, seconds=30))
    create(server, clock, "automergepolicies", POLICY, timedelta(days=3, hours=4))
    kubectl = Kubectl(server, tmp_path, namespace=NS)

    header, rows = parse_table(await kubectl("get", "brl", "-l", "oms.dev/branch!=nothing"))
    assert header == ["NAME", "BRANCH", "TYPE", "HOLDER", "TTL", "EXPIRES", "AGE"]
    lock = by_column(header, rows[0])
    assert lock == {
        "NAME": "feature-user-schema-write-1a2b", "BRANCH": "feature-user-schema", "TYPE": "WRITE",
        "HOLDER": "oms-editor", "TTL": "300", "EXPIRES": _ts(NOW + timedelta(minutes=5)), "AGE": "2m30s"}  # fmt: skip

    header, rows = parse_table(await kubectl("get", "amp"))
    assert header == ["NAME", "ENABLED", "PRIORITY", "DRYRUN", "ACCEPTED", "MATCHED", "AGE"]
    # Not yet reconciled: no Accepted condition, no match count — empty cells, not zeros.
    assert rows == [["default", "true", "0", "false", "", "", "3d4h"]]


async def test_kubectl_get_oms_prints_every_kind_with_its_columns(
    server: EmbeddedApiServer, clock: Clock, tmp_path: Path
) -> None:
    create(server, clock, "branches", MERGED, timedelta(minutes=5))
    create(server, clock, "branchlocks", LOCK, timedelta(minutes=1))
    create(server, clock, "automergepolicies", POLICY, timedelta(minutes=1))
    out = await Kubectl(server, tmp_path, namespace=NS)("get", "oms")
    headers = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.startswith("NAME")]
    assert sorted(h[:3] for h in headers) == [["NAME", "BRANCH", "PHASE"], ["NAME", "BRANCH", "TYPE"],
                                              ["NAME", "ENABLED", "PRIORITY"]]  # fmt: skip
    assert "branch.oms.dev/feature-user-schema" in out and "ACTIVE" in out
