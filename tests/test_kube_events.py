"""The one builder of core/v1 Event bodies (clients.kube.event_body), and how repeats are aggregated."""

from __future__ import annotations

from typing import Any

from branch_operator.clients.kube import EventAggregator, KubeClient, event_body, event_name, object_ref

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


def test_an_event_can_name_the_object_behind_it() -> None:
    policy = {"apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy",
              "metadata": {"name": "default", "namespace": "oms"}}
    assert body(related=object_ref(policy))["related"] == {
        "apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy", "name": "default", "namespace": "oms"}
    assert "related" not in body()


# ------------------------------------------------------------------------------ aggregation, for real


async def events(client: KubeClient) -> list[dict[str, Any]]:
    data = await client._raw(lambda: client.core.list_namespaced_event("oms", _preload_content=False))
    return list(data["items"])


async def test_repeats_of_an_event_count_up_one_object_as_client_go_s_recorder_does(kube: Any) -> None:
    client, _ = kube
    for _ in range(3):
        await client.post_event(BRANCH, type_="Warning", reason="MergeBlocked", message="outside the window")
    await client.post_event(BRANCH, type_="Warning", reason="MergeBlocked", message="frozen")
    by_message = {e["message"]: e for e in await events(client)}
    assert sorted(by_message) == ["frozen", "outside the window"]
    repeated, once = by_message["outside the window"], by_message["frozen"]
    assert repeated["count"] == 3 and repeated["series"]["count"] == 3
    assert repeated["series"]["lastObservedTime"].endswith(".000000Z")
    assert repeated["lastTimestamp"] >= repeated["firstTimestamp"]
    assert once["count"] == 1 and "series" not in once


async def test_a_repeat_after_the_window_or_of_a_deleted_event_starts_a_new_one(kube: Any) -> None:
    client, _ = kube
    now = [0.0]
    client.events = EventAggregator(clock=lambda: now[0])
    await client.post_event(BRANCH, type_="Normal", reason="Merged", message="m")
    now[0] = 601.0
    await client.post_event(BRANCH, type_="Normal", reason="Merged", message="m")
    assert sorted(e["count"] for e in await events(client)) == [1, 1]
    for event in await events(client):
        await client.core.delete_namespaced_event(event["metadata"]["name"], "oms")
    await client.post_event(BRANCH, type_="Normal", reason="Merged", message="m")  # patch: 404, then create
    assert [e["count"] for e in await events(client)] == [1]


def test_the_aggregator_forgets_the_oldest_keys_beyond_its_size() -> None:
    aggregator = EventAggregator(size=2, clock=lambda: 0.0)
    for key in ("a", "b", "c"):
        aggregator.record((key,), key, 1)
    assert aggregator.repeat_of(("a",)) is None and aggregator.repeat_of(("c",)) is not None
