"""The CRDs' printer columns, evaluated the way the API server and kubectl do, against sample objects.

The embedded API server does not serve Table output (kubectl prints NAME/AGE client-side there), so this
test re-implements the server's part in miniature: apiextensions' table convertor (JSONPath with missing
keys allowed, first result only, a typed cell per column type, ``date`` as a human duration) and kubectl's
printing (upper-case headers, nil cells empty). The JSONPath subset here fails loudly on syntax it does not
know, so a new column cannot pass by being misread. It then checks that ``kubectl get branches`` shows
what the README says, and that ``kubectl branch list`` agrees with it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from branch_operator.api.models import Branch, BranchLock
from branch_operator.kubectl_branch.render import BRANCH_HEADER, branch_rows

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2025, 6, 26, 10, 35, tzinfo=UTC)
MISSING = object()


# ----------------------------------------------------------------------------- kubectl JSONPath subset


_TOKEN = re.compile(r"""\.(?P<field>[A-Za-z_][\w-]*)
                       |\[\?\(@\.(?P<fpath>[\w.-]+)\s*(?P<op>==|!=)\s*(?P<q>["'])(?P<lit>.*?)(?P=q)\)\]
                       |\[(?P<index>-?\d+)\]
                       |\[\*\]""", re.X)


def parse_jsonpath(path: str) -> list[tuple[str, Any]]:
    """``.status.conditions[?(@.type=="Mergeable")].status`` -> steps; anything else is an error."""
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None:
            raise ValueError(f"unsupported JSONPath syntax at {path[pos:]!r} in {path!r}")
        if m["field"]:
            steps.append(("field", m["field"]))
        elif m["fpath"]:
            steps.append(("filter", (m["fpath"].split("."), m["op"], m["lit"])))
        elif m["index"] is not None:
            steps.append(("index", int(m["index"])))
        else:
            steps.append(("all", None))
        pos = m.end()
    return steps


def _get(value: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def find_results(obj: Any, path: str) -> list[Any]:
    """client-go's FindResults with AllowMissingKeys(true): the values the path reaches, in order."""
    current = [obj]
    for kind, arg in parse_jsonpath(path):
        nxt: list[Any] = []
        for value in current:
            if kind == "field":
                got = _get(value, [arg])
                if got is not MISSING:
                    nxt.append(got)
            elif kind == "index" and isinstance(value, list) and -len(value) <= arg < len(value):
                nxt.append(value[arg])
            elif kind == "all" and isinstance(value, list):
                nxt.extend(value)
            elif kind == "filter" and isinstance(value, list):
                keys, op, lit = arg
                for item in value:
                    got = _get(item, keys)
                    if got is not MISSING and (str(got) == lit) == (op == "=="):
                        nxt.append(item)
        current = nxt
    return current


# ------------------------------------------------------------------------------- the server's cells


def human_duration(delta: timedelta) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m" if seconds % 60 == 0 else f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // 24 // 365}y"


def go_json(value: Any) -> str:
    """encoding/json.Marshal: compact, non-ASCII kept, and <, >, & escaped as \\u003c, \\u003e, \\u0026."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def cell(column: dict[str, Any], obj: dict[str, Any], now: datetime) -> Any:
    """apiextensions-apiserver's tableconvertor: first result only; a typed cell, or None."""
    results = find_results(obj, column["jsonPath"])
    if not results:
        return None
    value = results[0]
    kind = column["type"]
    if kind == "string":
        # jsonpath PrintResults: strings raw, lists/maps as compact JSON (Go's json.Marshal), other scalars in
        # their JSON/Go spelling.
        if isinstance(value, list | dict):
            return go_json(value)
        return value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    if value is None:
        return None
    if kind == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "date" and isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return "<invalid>"
        return human_duration(now - when)
    return None


def kubectl_text(value: Any) -> str:
    """kubectl's table printer: nil prints nothing, Go's fmt for the rest (bools lower case)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def crd_columns(filename: str) -> list[dict[str, Any]]:
    crd = yaml.safe_load((ROOT / "crds" / filename).read_text())
    return list(crd["spec"]["versions"][0]["additionalPrinterColumns"])


def kubectl_get(filename: str, objs: list[dict[str, Any]], now: datetime = NOW) -> tuple[list[str], list[list[str]]]:
    columns = crd_columns(filename)
    header = ["NAME", *(c["name"].upper() for c in columns)]
    rows = [[o["metadata"]["name"], *(kubectl_text(cell(c, o, now)) for c in columns)] for o in objs]
    return header, rows


# ------------------------------------------------------------------------------------------ samples


def branch(name: str, branch_name: str, status: dict[str, Any] | None = None, age: timedelta = timedelta(minutes=5),
           ) -> dict[str, Any]:
    obj = {"apiVersion": "oms.dev/v1alpha1", "kind": "Branch",
           "metadata": {"name": name, "namespace": "oms", "creationTimestamp": _ts(NOW - age)},
           "spec": {"branchName": branch_name, "targetBranch": "main", "autoMerge": True}}
    if status is not None:
        obj["status"] = status
        Branch.model_validate(obj)  # the samples are objects the operator could have written
    return obj


def _ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(ctype: str, status: str, reason: str) -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": "", "lastTransitionTime": _ts(NOW)}


MERGED = branch("feature-user-schema", "feature/user-schema", {
    "phase": "ACTIVE",
    "indexing": {"indexingId": "idx-123", "recordsIndexed": 1250, "result": "success",
                 "validation": {"passed": True, "errors": []}},
    # Mergeable is not the first condition: the filter, not the position, must find it.
    "conditions": [_cond("Indexed", "True", "IndexingSucceeded"), _cond("Validated", "True", "ValidationPassed"),
                   _cond("Locked", "False", "LockReleased"), _cond("Mergeable", "False", "Merged")],
    "merge": {"decision": "Merged", "reasons": [], "policy": "default-feature-branches"},
})
BLOCKED = branch("feature-invalid", "feature/invalid", {
    "phase": "READY",
    "indexing": {"indexingId": "idx-7", "recordsIndexed": 0, "result": "success",
                 "validation": {"passed": False, "errors": ["ObjectType User: email has no type"]}},
    "conditions": [_cond("Mergeable", "False", "ValidationFailed"), _cond("Indexed", "True", "IndexingSucceeded")],
    # Every reason, not just the first: on-call sees all of them in `kubectl get branches`.
    "merge": {"decision": "Blocked", "reasons": ["ValidationFailed", "InsufficientRecords", "LockHeld"],
              "policy": "default-feature-branches"},
}, age=timedelta(hours=3, minutes=20))
NEW = branch("just-created", "feature/new", age=timedelta(seconds=42))


def test_kubectl_get_branches_shows_what_the_readme_says() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    at = next(i for i, line in enumerate(readme) if line.startswith("kubectl get branches"))
    readme_header, readme_rows = readme[at + 1].split(), [readme[at + 2].split(), readme[at + 3].split()]
    header, rows = kubectl_get("oms.dev_branches.yaml", [MERGED, BLOCKED])
    assert header == readme_header
    # The merged branch, and a blocked READY branch showing every reason it is not merging.
    assert rows == readme_rows


def test_branch_columns_on_other_objects() -> None:
    header, rows = kubectl_get("oms.dev_branches.yaml", [BLOCKED, NEW])
    assert header == ["NAME", "BRANCH", "PHASE", "RECORDS", "VALID", "MERGEABLE", "REASONS", "AGE"]
    # 0 records and a failed validation are values, not blanks; a blocked branch shows every reason.
    assert rows[0] == ["feature-invalid", "feature/invalid", "READY", "0", "false", "False",
                       '["ValidationFailed","InsufficientRecords","LockHeld"]', "3h20m"]
    # Not yet initialised by the operator: only what the spec and metadata say.
    assert rows[1] == ["just-created", "feature/new", "", "", "", "", "", "42s"]


def test_branch_column_types_and_paths_match_the_model() -> None:
    columns = {c["name"]: c for c in crd_columns("oms.dev_branches.yaml")}
    assert {n: (c["type"], c["jsonPath"]) for n, c in columns.items()} == {
        c["name"]: (c["type"], c["jsonPath"]) for c in Branch.PRINTER_COLUMNS}
    # A typed cell only shows when the value has that type: each column's JSON type must match.
    assert cell(columns["Records"], MERGED, NOW) == 1250
    assert cell(columns["Valid"], MERGED, NOW) is True
    assert cell(columns["Mergeable"], BLOCKED, NOW) == "False"
    assert cell(columns["Reasons"], BLOCKED, NOW) == '["ValidationFailed","InsufficientRecords","LockHeld"]'
    assert cell(columns["Reasons"], MERGED, NOW) == "[]"
    assert cell(columns["Reasons"], NEW, NOW) is None


def test_kubectl_branch_list_agrees_with_kubectl_get() -> None:
    objs = sorted([MERGED, BLOCKED, NEW], key=lambda o: o["metadata"]["name"])  # the API server lists by name
    header, rows = kubectl_get("oms.dev_branches.yaml", objs)
    plugin_rows = branch_rows(objs, [], all_namespaces=False, now=NOW)
    shared = [h for h in header if h in BRANCH_HEADER and h != "AGE"]
    assert "REASONS" in shared
    for get_row, list_row in zip(rows, plugin_rows, strict=True):
        assert [get_row[header.index(h)] for h in shared] == [list_row[BRANCH_HEADER.index(h)] for h in shared]


def test_branchlock_and_policy_columns() -> None:
    lock = {"apiVersion": "oms.dev/v1alpha1", "kind": "BranchLock",
            "metadata": {"name": "feature-user-schema-write-1a2b", "namespace": "oms",
                         "creationTimestamp": _ts(NOW - timedelta(minutes=2, seconds=30))},
            "spec": {"branch": "feature-user-schema", "lockType": "WRITE", "holder": "oms-editor", "ttlSeconds": 300},
            "status": {"acquiredAt": _ts(NOW), "renewedAt": _ts(NOW), "expiresAt": _ts(NOW + timedelta(minutes=5))}}
    BranchLock.model_validate(lock)
    header, rows = kubectl_get("oms.dev_branchlocks.yaml", [lock])
    assert header == ["NAME", "BRANCH", "TYPE", "HOLDER", "TTL", "EXPIRES", "AGE"]
    assert rows == [["feature-user-schema-write-1a2b", "feature-user-schema", "WRITE", "oms-editor", "300",
                     _ts(NOW + timedelta(minutes=5)), "2m30s"]]
    policy = {"metadata": {"name": "default", "creationTimestamp": _ts(NOW - timedelta(days=3, hours=4))},
              "spec": {"enabled": True, "priority": 0, "dryRun": False}}
    header, rows = kubectl_get("oms.dev_automergepolicies.yaml", [policy])
    assert header[:4] == ["NAME", "ENABLED", "PRIORITY", "DRYRUN"]
    assert rows[0][:4] == ["default", "true", "0", "false"] and rows[0][-1] == "3d4h"


@pytest.mark.parametrize("path", [crd for crd in ("oms.dev_branches.yaml", "oms.dev_branchlocks.yaml",
                                                  "oms.dev_automergepolicies.yaml")])
def test_every_column_path_is_understood(path: str) -> None:
    for column in crd_columns(path):
        assert parse_jsonpath(column["jsonPath"]), column


def test_jsonpath_subset() -> None:
    obj = {"a": {"list": [{"type": "X", "v": 1}, {"type": "Y", "v": 2}, {"type": "Y", "v": 3}]}}
    assert find_results(obj, '.a.list[?(@.type=="Y")].v') == [2, 3]
    assert find_results(obj, ".a.list[0].v") == [1]
    assert find_results(obj, ".a.list[*].type") == ["X", "Y", "Y"]
    assert find_results(obj, ".a.missing.deeper") == []
    with pytest.raises(ValueError, match="unsupported"):
        parse_jsonpath(".a..b")
    assert human_duration(timedelta(minutes=5)) == "5m" and human_duration(timedelta(minutes=7, seconds=5)) == "7m5s"
    assert human_duration(timedelta(hours=30)) == "30h" and human_duration(timedelta(days=400)) == "400d"
