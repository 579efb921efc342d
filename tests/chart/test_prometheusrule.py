"""The chart's PrometheusRule, checked by the real ``promtool``: ``check rules`` on the rendered groups and
``test rules`` with, per alert, series that make it fire once its ``for`` has passed and series that
must not; plus the rule conventions (severity, runbook anchor in docs/operations.md) and the docs' table.

``promtool``: see tests/promtool.py (skips on a workstation without it, fails in CI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..promtool import promtool_path
from .conftest import NAMESPACE, RELEASE, REPO_ROOT, Obj, Renderer

DOCS_OPERATIONS = REPO_ROOT / "docs" / "operations.md"
ON: Obj = {"serviceMonitor": {"enabled": True}}
SEVERITIES = {"critical", "warning", "info"}
# What every series of this release carries once scraped through the chart's ServiceMonitor.
TARGET = f'job="{RELEASE}",namespace="{NAMESPACE}"'


@pytest.fixture(scope="session")
def promtool() -> Path:
    return promtool_path()


def _prometheus_rules(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] == "PrometheusRule"]


def _rules(renderer: Renderer, values: Obj | None = None) -> list[Obj]:
    [rule] = _prometheus_rules(renderer.render(ON if values is None else values))
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


@pytest.fixture(scope="session")
def rules_file(renderer: Renderer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    [rule] = _prometheus_rules(renderer.render(ON))
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def _promtool(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rendered_rules(promtool: Path, rules_file: Path) -> None:
    proc = _promtool(promtool, "check", "rules", str(rules_file), cwd=rules_file.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


# ------------------------------------------------------------------------------------ unit tests


@dataclass
class Case:
    """Input series (promtool's expanding notation, 1 m apart) and the alerts expected at each time."""

    series: dict[str, str]
    # eval time -> the labels of each alert firing then (beyond alertname and severity); [] = none
    expect: dict[str, list[dict[str, str]]]
    value: str = ""  # what `{{ $value }}` renders to in the annotations at the firing eval times
    why: str = ""


def _s(metric: str, labels: str = "") -> str:
    return f"{metric}{{{TARGET}{',' + labels if labels else ''}}}"


def _buckets(metric: str, le_counts: dict[str, str]) -> dict[str, str]:
    return {_s(f"{metric}_bucket", f'type="completed",le="{le}"'): v for le, v in le_counts.items()}


CASES: dict[str, list[Case]] = {
    "OmsBranchOperatorDown": [
        Case({"up{job=\"other\",namespace=\"oms-system\"}": "1x20"}, {"4m": [], "6m": [{}]},
             why="no target of the job at all (scaled to 0): fires after 5m"),
        Case({_s("up", 'pod="a"'): "0x20", _s("up", 'pod="b"'): "0x20"}, {"4m": [], "6m": [{}]},
             why="every replica down"),
        Case({_s("up", 'pod="a"'): "0x20", _s("up", 'pod="b"'): "1x20"}, {"10m": []},
             why="one replica of two still up"),
        Case({_s("up", 'pod="a"'): "0 0 0 1x20"}, {"6m": []}, why="came back before the 5m passed"),
    ],
    "OmsBranchOperatorNatsDisconnected": [
        Case({_s("oms_branch_operator_nats_connected", 'pod="a"'): "0x10",
              _s("oms_branch_operator_nats_connected", 'pod="b"'): "0x10"}, {"1m": [], "3m": [{}]}),
        Case({_s("oms_branch_operator_nats_connected", 'pod="a"'): "0x10",
              _s("oms_branch_operator_nats_connected", 'pod="b"'): "1x10"}, {"5m": []},
             why="one replica connected"),
        Case({'oms_branch_operator_nats_connected{job="other",namespace="oms-system"}': "0x10"}, {"5m": []},
             why="another release's operator is not ours"),
    ],
    "OmsBranchOperatorNoLeader": [
        Case({_s("oms_branch_operator_leader", 'pod="a"'): "0x10",
              _s("oms_branch_operator_leader", 'pod="b"'): "0x10"}, {"0m": [], "2m": [{}]}),
        Case({_s("oms_branch_operator_leader", 'pod="a"'): "0x10",
              _s("oms_branch_operator_leader", 'pod="b"'): "1x10"}, {"5m": []}),
        Case({_s("oms_branch_operator_leader", 'pod="a"'): "1 0 0 1x10"}, {"3m": []},
             why="a handover shorter than 1m"),
    ],
    "OmsBranchOperatorNotReady": [
        Case({_s("oms_branch_operator_ready", 'pod="a",check="nats"'): "0x10",
              _s("oms_branch_operator_ready", 'pod="a",check="kubernetes"'): "1x10",
              _s("oms_branch_operator_ready", 'pod="b",check="nats"'): "1x10"},
             {"4m": [], "6m": [{"pod": "a"}]}),
        Case({_s("oms_branch_operator_ready", 'pod="a",check="nats"'): "1x10"}, {"8m": []}),
    ],
    "OmsFunnelEventsBacklog": [
        Case({_s("oms_branch_operator_consumer_pending_messages", 'pod="a",consumer="c1"'): "150x20",
              _s("oms_branch_operator_consumer_pending_messages", 'pod="a",consumer="c2"'): "3x20"},
             {"9m": [], "11m": [{"consumer": "c1"}]}, value="150"),
        Case({_s("oms_branch_operator_consumer_pending_messages", 'pod="a",consumer="c1"'): "50x20"}, {"15m": []}),
    ],
    "OmsFunnelEventsDeadLettered": [
        Case({_s("oms_branch_operator_events_rejected_total", 'type="unknown",reason="InvalidJSON"'): "0 0 0 1x20"},
             {"3m": [], "4m": [{"reason": "InvalidJSON"}]}),
        Case({_s("oms_branch_operator_events_rejected_total", 'type="unknown",reason="InvalidJSON"'): "4x20"},
             {"10m": []}, why="an old count, nothing new"),
    ],
    "OmsIndexingFailures": [
        Case({_s("oms_branch_operator_state_transitions_total", 'from_state="LOCKED_FOR_WRITE",to_state="ERROR"'):
              "0+1x40"}, {"4m": [], "10m": [{}]}, value="10"),
        Case({_s("oms_branch_operator_state_transitions_total", 'from_state="LOCKED_FOR_WRITE",to_state="ERROR"'):
              "0 1 2 2x40",
              _s("oms_branch_operator_state_transitions_total", 'from_state="READY",to_state="ACTIVE"'): "0+5x40"},
             {"20m": []}, why="two failures, many merges"),
    ],
    "OmsEventProcessingSlow": [
        Case(_buckets("oms_branch_operator_event_processing_seconds",
                      {"0.1": "0x30", "5.0": "0x30", "10.0": "0+10x30", "+Inf": "0+10x30"}),
             {"9m": [], "12m": [{}]}, value="9.95"),
        Case(_buckets("oms_branch_operator_event_processing_seconds",
                      {"0.1": "0+10x30", "5.0": "0+10x30", "10.0": "0+10x30", "+Inf": "0+10x30"}),
             {"20m": []}),
    ],
    "OmsMergesBlockedByLocks": [
        Case({_s("oms_branch_operator_merge_blocks_total", 'reason="LockHeld"'): "0+1x60"},
             {"25m": [], "40m": [{}]}, value="40"),
        Case({_s("oms_branch_operator_merge_blocks_total", 'reason="Frozen"'): "0+1x60"}, {"50m": []},
             why="blocked by a freeze, not by locks"),
    ],
}


def _expected(rule: Obj, labels: dict[str, str], value: str) -> dict[str, Any]:
    """The alert as promtool reports it: the rule's labels plus the series', and its annotations with
    Prometheus' ``{{ $labels.x }}`` / ``{{ $value }}`` filled in."""
    def fill(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        return text.replace("{{ $value }}", value)

    return {
        "exp_labels": {**rule["labels"], **labels},
        "exp_annotations": {k: fill(v) for k, v in rule["annotations"].items()},
    }


def _unit_test_file(rule: Obj, cases: list[Case]) -> Obj:
    tests = []
    for case in cases:
        tests.append({
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
            "alert_rule_test": [
                {"eval_time": t, "alertname": rule["alert"],
                 "exp_alerts": [_expected(rule, labels, case.value) for labels in firing]}
                for t, firing in case.expect.items()
            ],
        })
    return {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_unit_tests(renderer: Renderer) -> None:
    assert sorted(r["alert"] for r in _rules(renderer)) == sorted(CASES)
    for alert, cases in CASES.items():
        assert any(any(c.expect.values()) for c in cases), f"{alert}: no case where it fires"
        assert any(not f for c in cases for f in c.expect.values()), f"{alert}: no case where it must not fire"


@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_fires_only_when_it_should(
    promtool: Path, renderer: Renderer, rules_file: Path, alert: str, tmp_path: Path
) -> None:
    [rule] = [r for r in _rules(renderer) if r["alert"] == alert]
    # The firing cases are checked after the rule's `for`, and (at least one) just before it.
    shutil.copy(rules_file, tmp_path / "rules.yaml")
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(_unit_test_file(rule, CASES[alert]), sort_keys=False))
    proc = _promtool(promtool, "test", "rules", "test.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _minutes(duration: str) -> float:
    m = re.fullmatch(r"(\d+)([smh])", duration)
    assert m, duration
    return int(m.group(1)) * {"s": 1 / 60, "m": 1, "h": 60}[m.group(2)]


def test_firing_cases_straddle_the_for(renderer: Renderer) -> None:
    """A firing case expects nothing at some evaluation before it fires, and fires no earlier than its
    rule's `for`; with the cases' times chosen just before and after, the unit tests prove the `for`."""
    for rule in _rules(renderer):
        wait = _minutes(rule["for"])
        for case in CASES[rule["alert"]]:
            times = {_minutes(t): bool(f) for t, f in case.expect.items()}
            if any(times.values()):
                first = min(t for t, f in times.items() if f)
                assert first >= wait, f"{rule['alert']}: expected to fire before its `for` has passed"
                assert any(not f and t < first for t, f in times.items()), f"{rule['alert']}: nothing before"


# --------------------------------------------------------------------------------- conventions


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        if m := re.match(r"#+ (.+)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_every_alert_has_for_severity_and_a_runbook(renderer: Renderer) -> None:
    anchors = _github_anchors(DOCS_OPERATIONS.read_text())
    base = "https://github.com/oms-dev/oms-branch-operator/blob/main/docs/operations.md#"
    for rule in _rules(renderer):
        name = rule["alert"]
        assert _minutes(rule["for"]) > 0, name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(base), url
        assert url.removeprefix(base) == name.lower(), f"{name}: its runbook section is named after it"
        assert name.lower() in anchors, f"{name}: docs/operations.md has no section `### {name}`"
        assert f'{{{TARGET}' in rule["expr"], f"{name}: not scoped to this release's targets"


def test_docs_alert_table_matches_the_chart(renderer: Renderer) -> None:
    """docs/operations.md lists the rules (name, severity, for) without copying their YAML."""
    rows = {}
    for line in DOCS_OPERATIONS.read_text().splitlines():
        if m := re.match(r"\| \[`(\w+)`\]\(#(\w+)\) \| (\w+) \| (\w+) \|", line):
            assert m.group(1).lower() == m.group(2), line
            rows[m.group(1)] = (m.group(3), m.group(4))
    assert rows == {r["alert"]: (r["labels"]["severity"], r["for"]) for r in _rules(renderer)}


# ------------------------------------------------------------------------------------- values


def test_created_with_the_service_monitor_unless_overridden(renderer: Renderer) -> None:
    assert not _prometheus_rules(renderer.render({}))
    assert _prometheus_rules(renderer.render(ON))
    assert not _prometheus_rules(renderer.render({**ON, "prometheusRule": {"enabled": False}}))
    [rule] = _prometheus_rules(renderer.render({"prometheusRule": {"enabled": True, "namespace": "monitoring",
                                                                   "labels": {"release": "prometheus"}}}))
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_job_label_follows_the_service_or_the_override(renderer: Renderer) -> None:
    [service] = [o for o in renderer.render(ON) if o["kind"] == "Service"]
    # The Prometheus Operator names a ServiceMonitor's job after the Service (the chart sets no jobLabel).
    assert f'job="{service["metadata"]["name"]}"' in TARGET
    overridden = _rules(renderer, {**ON, "prometheusRule": {"job": "oms-operator-pods"}})
    assert all('job="oms-operator-pods",namespace="oms-system"' in r["expr"] for r in overridden)
    renamed = _rules(renderer, {**ON, "fullnameOverride": "branch-op"})
    assert all('job="branch-op",' in r["expr"] for r in renamed)
