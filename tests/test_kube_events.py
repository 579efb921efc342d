"""The one builder of core/v1 Event bodies (clients.kube.event_body)."""

from __future__ import annotations

from typing import Any

from branch_operator.clients.kube import event_body, event_name

BRANCH: dict[str, Any] = {
    "apiVersion": "oms.dev/v1alpha1", "kind": "Branch",
    "metadata": {"name": "feature-x", "namespace": "oms", "uid": "u1", "resourceVersion": "7"},
}


def body(**kw: Any) -> dict[str, Any]:
    return event_body(BRANCH, type_="Warning", reason="MergeFailed", message="m" * 2000, action="Merge",
                      component="oms-branch-operator", instance="pod-" + "x" * 200,
                      timestamp="2024-01-01T10:00:00Z", **kw)


def test_an_event_names_its_object_and_who_reported_it() -> None:
    event = body()
    assert event["metadata"] == {"generateName": "feature-x.", "namespace": "oms"}
    assert event["involvedObject"] == {"apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "name": "feature-x",
                                       "namespace": "oms", "uid": "u1", "resourceVersion": "7"}
    assert (event["type"], event["reason"], event["action"]) == ("Warning", "MergeFailed", "Merge")
    assert len(event["message"]) == 1024 and len(event["reportingInstance"]) == 128
    assert event["source"] == {"component": "oms-branch-operator"}
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2024-01-01T10:00:00Z"


def test_an_event_posted_once_per_key_has_a_name_derived_from_the_key() -> None:
    name = event_name("feature-x", "merge-abc")
    assert name == event_name("feature-x", "merge-abc") != event_name("feature-x", "merge-abd")
    assert name.startswith("feature-x.")
    assert body(name=name)["metadata"] == {"name": name, "namespace": "oms"}
    assert len(event_name("b" * 300, "merge-abc")) == 253
