"""`kubectl branch` prints like kubectl: ``-o json|yaml|name|jsonpath|wide``, ``-l``, ``-w``, kubectl's ages.

The structured outputs are checked against the REAL kubectl 1.33 (``tests/k8s_tools.py``) printing the
same objects from the same embedded API server, so "like kubectl" is kubectl's word, not ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from branch_operator.domain.timefmt import human_duration
from branch_operator.kubectl_branch.jsonpath import JSONPathError, render, results_as_json

from .plugin_cluster import Cluster, open_cluster
from .waiting import wait_for

# ------------------------------------------------------------------------------------ kubectl's ages


@pytest.mark.parametrize(("seconds", "text"), [
    (-2, "<invalid>"), (-1, "0s"), (-0.5, "0s"), (0, "0s"), (95, "95s"), (119, "119s"), (120, "2m"),
    (125, "2m5s"), (599, "9m59s"), (600, "10m"), (9000, "150m"), (10799, "179m"), (10800, "3h"),
    (3 * 3600 + 20 * 60, "3h20m"), (8 * 3600 - 1, "7h59m"), (8 * 3600, "8h"), (48 * 3600 - 1, "47h"),
    (48 * 3600, "2d"), (277200, "3d5h"), (8 * 86400 - 1, "7d23h"), (8 * 86400, "8d"), (400 * 86400, "400d"),
    (730 * 86400 - 1, "729d"), (730 * 86400, "2y"), (775 * 86400, "2y45d"), (8 * 365 * 86400 - 1, "7y364d"),
    (8 * 365 * 86400, "8y"), (20 * 365 * 86400 + 86400, "20y"),
])
def test_ages_follow_apimachinery_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


# ------------------------------------------------------------------------------------------ JSONPath


DOC = {"kind": "List", "items": [
    {"metadata": {"name": "a", "labels": {"oms.dev/branch": "x"}},
     "status": {"conditions": [{"type": "Mergeable", "status": "False"}], "n": 3}},
    {"metadata": {"name": "b"}, "status": {"conditions": [], "n": 10}},
]}


def test_jsonpath_templates() -> None:
    assert render("{.items[*].metadata.name}", DOC) == "a b"
    assert render('{range .items[*]}{.metadata.name}{"\\t"}{.status.n}{"\\n"}{end}', DOC) == "a\t3\nb\t10\n"
    assert render('{.items[?(@.status.n > 5)].metadata.name}', DOC) == "b"
    assert render('{.items[0].status.conditions[?(@.type=="Mergeable")].status}', DOC) == "False"
    assert render("{.items[0].metadata.labels.oms\\.dev/branch}", DOC) == "x"
    assert render("names: {..name}", DOC) == "names: a b"
    assert render("{.items[-1:].metadata}", DOC) == '{"name":"b"}'
    assert render("{.items[0].missing}{.kind}", DOC) == "List"
    assert results_as_json("n: {.items[*].status.n}", DOC) == '[\n    "n: "\n]\n[\n    3,\n    10\n]\n'
    with pytest.raises(JSONPathError, match="array index out of bounds: index 2, length 2"):
        render("{.items[2].metadata}", DOC)
    for bad in ("{.items[", "{range .items[*]}", "{end}", "{.items[?(@.a ~ 1)]}"):
        with pytest.raises(JSONPathError):
            render(bad, DOC)


# ------------------------------------------------------------------------------ against the server


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path) as c:
        yield c


async def test_json_and_yaml_are_what_kubectl_prints(cluster: Cluster) -> None:
    code, out, _ = await cluster.plugin("list", "-o", "json")
    assert code == 0
    ours = json.loads(out)
    theirs = json.loads(await cluster.kubectl("get", "branches", "-o", "json"))
    assert ours == theirs
    assert ours["kind"] == "List" and ours["metadata"] == {"resourceVersion": ""}
    assert [i["metadata"]["name"] for i in ours["items"]] == ["feat-a", "feat-b", "feat-c"]
    code, out, _ = await cluster.plugin("list", "-o", "yaml")
    assert code == 0 and yaml.safe_load(out) == theirs  # the YAML round-trips to the same objects
    code, out, _ = await cluster.plugin("locks", "-o", "json")
    assert json.loads(out) == json.loads(await cluster.kubectl("get", "branchlocks", "-o", "json"))


async def test_name_jsonpath_and_selectors_match_kubectl(cluster: Cluster) -> None:
    for args in ([], ["-l", "team=search"], ["-l", "team in (search,graph),team!=graph"], ["-l", "!team"]):
        code, out, _ = await cluster.plugin("list", "-o", "name", *args)
        assert code == 0 and out == await cluster.kubectl("get", "branches", "-o", "name", *args), args
    code, out, _ = await cluster.plugin("list", "-l", "team=search", "-o", "name")
    assert out == "branch.oms.dev/feat-a\n"
    for template in ("{.items[*].metadata.name}",
                     '{range .items[*]}{.metadata.name}{"\\t"}{.spec.branchName}{"\\n"}{end}',
                     "{.items[0].metadata.labels}", '{.items[?(@.metadata.name=="feat-b")].spec}',
                     "count: {.items[*].spec.autoMerge}"):
        code, out, _ = await cluster.plugin("list", "-o", f"jsonpath={template}")
        assert code == 0 and out == await cluster.kubectl("get", "branches", "-o", f"jsonpath={template}"), template
        code, out, _ = await cluster.plugin("list", "-o", f"jsonpath-as-json={template}")
        assert out == await cluster.kubectl("get", "branches", "-o", f"jsonpath-as-json={template}"), template
    code, out, _ = await cluster.plugin("locks", "feat-a", "-o", "jsonpath={.items[*].spec.holder}")
    assert (code, out) == (0, "oms-editor")
    code, _, err = await cluster.plugin("list", "-o", "jsonpath={.items[")
    assert code == 2 and "error parsing jsonpath" in err
    code, _, err = await cluster.plugin("list", "-o", "jsonpath={.items[7].metadata}")
    assert code == 1 and "array index out of bounds: index 7, length 3" in err
    code, _, err = await cluster.plugin("list", "-o", "csv")
    assert code == 2 and "allowed formats are: json,yaml,wide,name" in err


async def test_wide_describe_and_why_outputs(cluster: Cluster) -> None:
    code, out, _ = await cluster.plugin("list", "-o", "wide", "-l", "team=search")
    header, row = out.splitlines()
    assert header.split()[-4:] == ["AGE", "TARGET", "DECISION", "POLICY"] and row.split()[-1] == "main"
    assert row.split()[:2] == ["feat-a", "feature/feat-a"] and row.split()[2] == "1"  # LOCKS
    code, out, _ = await cluster.plugin("locks", "-o", "wide")
    header, row = out.splitlines()
    assert header.split()[-2:] == ["INDEXING-ID", "OWNER"] and row.split()[-1] == "Branch/feat-a"
    code, out, _ = await cluster.plugin("describe", "feat-a", "-o", "json")
    doc = json.loads(out)
    assert doc["kind"] == "List" and [i["kind"] for i in doc["items"]] == ["Branch", "BranchLock"]
    code, out, _ = await cluster.plugin("describe", "feat-a", "-o", "name")
    assert out.splitlines()[0] == "branch.oms.dev/feat-a" and out.splitlines()[1].startswith("branchlock.oms.dev/")
    code, out, _ = await cluster.plugin("why", "feat-b", "-o", "yaml")
    why = yaml.safe_load(out)
    assert why["name"] == "feat-b" and why["targetBranch"] == "main" and why["hints"] == {}
    code, out, _ = await cluster.plugin("why", "feat-b", "-o", "jsonpath={.branchName}")
    assert (code, out) == (0, "feature/feat-b")


async def test_kubectl_finds_the_plugin_on_path(cluster: Cluster, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    launcher = bindir / "kubectl-branch"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m branch_operator.kubectl_branch.cli \"$@\"\n")
    launcher.chmod(0o755)
    path = f"{bindir}:/usr/bin:/bin"  # not the venv's bin: its installed kubectl-branch would shadow this one
    assert "kubectl-branch" in await cluster.kubectl("plugin", "list", path=path)
    out = await cluster.kubectl("branch", "list", "-o", "name", "--kubeconfig", str(cluster.kubeconfig), path=path,
                                plugin=True)
    assert out.splitlines() == ["branch.oms.dev/feat-a", "branch.oms.dev/feat-b", "branch.oms.dev/feat-c"]


async def test_watch_prints_a_row_per_change_and_ends_on_ctrl_c(cluster: Cluster) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "branch_operator.kubectl_branch.cli", "--kubeconfig", str(cluster.kubeconfig),
        "list", "-w", "-l", "team", env={**os.environ, **cluster.env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode().rstrip("\n"))

    reader = asyncio.create_task(pump())
    try:
        await wait_for(lambda: len(lines) >= 3, timeout=30, what="the initial table")
        assert lines[0].split()[0] == "NAME" and [ln.split()[0] for ln in lines[1:3]] == ["feat-a", "feat-b"]
        await cluster.kube.create("branches", "default", {
            "apiVersion": "oms.dev/v1alpha1", "kind": "Branch",
            "metadata": {"name": "feat-new", "labels": {"team": "x"}}, "spec": {"branchName": "feature/new"}})
        await cluster.kube.patch("branches", "default", "feat-c", {"metadata": {"labels": {"other": "1"}}})
        await wait_for(lambda: any(ln.startswith("feat-new ") for ln in lines), timeout=30, what="the new row")
        assert len([ln for ln in lines if ln.startswith("NAME")]) == 1  # the header once, as kubectl
        assert not any(ln.startswith("feat-c") for ln in lines)  # -l team is passed to the watch too
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
        await reader
    err = (await proc.stderr.read()).decode()
    assert code == 1 and "Traceback" not in err, err  # kubectl get -w exits 1 on Ctrl-C, quietly
