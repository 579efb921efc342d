"""Custom resources are validated, defaulted and pruned by their CRD's structural schema."""

from __future__ import annotations

from typing import Any

from .conftest import BRANCHES, CRDS, Api, branch, crd


async def _invalid(api: Api, spec: dict[str, Any]) -> dict[str, str]:
    status, body = await api.post(BRANCHES, {**branch("a"), "spec": {"branchName": "a", **spec}})
    assert status == 422, body
    assert body["kind"] == "Status" and body["reason"] == "Invalid" and body["details"]["kind"] == "Branch"
    causes: dict[str, str] = {}
    for c in body["details"]["causes"]:
        line = f"{c['field']}: {c['message']}"  # as kubectl prints a cause
        causes[c["field"]] = " | ".join(filter(None, [causes.get(c["field"]), line]))
    return causes


async def test_type_errors(branches: Api) -> None:
    causes = await _invalid(branches, {"priority": "high", "autoMerge": "yes", "tags": "x"})
    assert causes["spec.priority"] == (
        'spec.priority: Invalid value: "string": spec.priority in body must be of type integer: "string"'
    )
    # The CRD has CEL rules: after type errors kube-apiserver runs none of them, and says so in one more cause.
    assert set(causes) == {"spec.priority", "spec.autoMerge", "spec.tags", "<nil>"}
    causes = await _invalid(branches, {"priority": True})
    assert "must be of type integer" in causes["spec.priority"]


async def test_required(branches: Api) -> None:
    status, body = await branches.post(BRANCHES, {**branch("a"), "spec": {}})
    assert status == 422
    assert body["details"]["causes"][0] == {
        "reason": "FieldValueRequired",
        "message": "Required value",
        "field": "spec.branchName",
    }
    assert body["message"] == (
        'Branch.oms.dev "a" is invalid: [spec.branchName: Required value, <nil>: Invalid value: "null": '
        "some validation rules were not checked because the object was invalid; correct the existing errors to "
        "complete validation]"
    )


async def test_enum_and_pattern(branches: Api) -> None:
    causes = await _invalid(branches, {"mode": "turbo"})
    assert causes["spec.mode"] == 'spec.mode: Unsupported value: "turbo": supported values: "fast", "safe"'
    causes = await _invalid(branches, {"branchName": "Bad Name"})
    assert "should match '^[a-z][a-z0-9/-]*$'" in causes["spec.branchName"]


async def test_numeric_bounds(branches: Api) -> None:
    causes = await _invalid(branches, {"priority": 11, "ratio": 0})
    assert "should be less than or equal to 10" in causes["spec.priority"]
    assert "should be greater than 0" in causes["spec.ratio"]
    causes = await _invalid(branches, {"priority": -11})
    assert "should be greater than or equal to -10" in causes["spec.priority"]
    assert (await branches.post(BRANCHES, {**branch("a"), "spec": {"branchName": "a", "priority": 10, "ratio": 0.5}}))[
        0
    ] == 201


async def test_string_and_array_lengths(branches: Api) -> None:
    causes = await _invalid(branches, {"branchName": "a" * 21})
    assert causes["spec.branchName"] == "spec.branchName: Too long: may not be longer than 20"
    causes = await _invalid(branches, {"branchName": ""})
    assert "should be at least 1 chars long" in causes["spec.branchName"]
    causes = await _invalid(branches, {"tags": []})
    assert "should have at least 1 items" in causes["spec.tags"]
    causes = await _invalid(branches, {"tags": ["a", "b", "c", "d"]})
    assert causes["spec.tags"] == "spec.tags: Too many: 4: must have at most 3 items"
    causes = await _invalid(branches, {"tags": ["a", 5]})
    assert "spec.tags[1]" in causes


async def test_date_time_format(branches: Api) -> None:
    causes = await _invalid(branches, {"deadline": "tomorrow"})
    assert "must be of type date-time" in causes["spec.deadline"]
    await _invalid(branches, {"deadline": "2025-13-01T00:00:00Z"})
    for ok in ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00.123+02:00"):
        status, _ = await branches.post(
            BRANCHES, {**branch(f"d{len(ok)}"), "spec": {"branchName": "a", "deadline": ok}}
        )
        assert status == 201


async def test_nullable_and_int_or_string(branches: Api) -> None:
    created = await branches.ok(
        "POST", BRANCHES, {**branch("a"), "spec": {"branchName": "a", "note": None, "port": "http"}}
    )
    assert created["spec"]["note"] is None and created["spec"]["port"] == "http"
    # Non-nullable nulls are dropped (and then defaulted), not rejected.
    created = await branches.ok("POST", BRANCHES, {**branch("b"), "spec": {"branchName": "b", "targetBranch": None}})
    assert created["spec"]["targetBranch"] == "main"
    causes = await _invalid(branches, {"port": 1.5})
    assert "integer-or-string" in causes["spec.port"]


async def test_defaults_apply_to_missing_fields_and_present_nested_objects(branches: Api) -> None:
    created = await branches.ok(
        "POST", BRANCHES, {**branch("a"), "spec": {"branchName": "a", "options": {"backoff": {}}}}
    )
    assert created["spec"]["targetBranch"] == "main" and created["spec"]["autoMerge"] is True
    assert created["spec"]["options"] == {"retries": 3, "backoff": {"seconds": 5}}
    created = await branches.ok("POST", BRANCHES, branch("b"))
    assert "options" not in created["spec"]  # Absent objects without a default stay absent.
    created = await branches.ok("POST", BRANCHES, {**branch("c"), "spec": {"branchName": "c", "autoMerge": False}})
    assert created["spec"]["autoMerge"] is False


async def test_unknown_fields_are_pruned_unless_preserved(branches: Api) -> None:
    body = {
        **branch("a"),
        "spec": {"branchName": "a", "bogus": 1, "options": {"bogus": 2}, "extra": {"anything": {"goes": True}}},
        "topLevelBogus": 3,
    }
    created = await branches.ok("POST", BRANCHES, body)
    assert "bogus" not in created["spec"] and "bogus" not in created["spec"]["options"]
    assert created["spec"]["extra"] == {"anything": {"goes": True}}
    assert "topLevelBogus" not in created


async def test_cel_transition_rule_makes_field_immutable(branches: Api) -> None:
    await branches.ok("POST", BRANCHES, branch("a"))
    status, body = await branches.patch(f"{BRANCHES}/a", {"spec": {"branchName": "b"}})
    assert status == 422
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "object": spec.branchName is immutable',
            "field": "spec",
        }
    ]
    assert (await branches.patch(f"{BRANCHES}/a", {"spec": {"autoMerge": False}}))[0] == 200


async def test_cel_whole_object_immutability(api: Api) -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {"frozen": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                          "x-kubernetes-validations": [{"rule": "self == oldSelf"}]},
                               "free": {"type": "string"}},
            }
        },
    }  # fmt: skip
    await api.ok("POST", CRDS, crd(schema=schema))
    await api.ok("POST", BRANCHES, {**branch("a"), "spec": {"frozen": {"a": 1}}})
    status, body = await api.patch(f"{BRANCHES}/a", {"spec": {"frozen": {"a": 2}}})
    assert status == 422 and body["details"]["causes"][0]["field"] == "spec.frozen"
    assert "failed rule: self == oldSelf" in body["message"]
    assert (await api.patch(f"{BRANCHES}/a", {"spec": {"free": "x"}}))[0] == 200


async def test_cel_rule_comparing_two_fields_holds_on_create_and_update(api: Api) -> None:
    # What the real API server answers for a failed x-kubernetes-validations rule: 422, FieldValueInvalid on
    # the object the rule sits on, "<path>: Invalid value: \"object\": <message>".
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {"branchName": {"type": "string"}, "targetBranch": {"type": "string", "default": "main"}},
                "x-kubernetes-validations": [{"rule": "self.targetBranch != self.branchName",
                                              "message": "a branch cannot target itself"}],
            }
        },
    }  # fmt: skip
    await api.ok("POST", CRDS, crd(schema=schema))
    itself = {**branch("a"), "spec": {"branchName": "x", "targetBranch": "x"}}
    status, body = await api.request("POST", BRANCHES, itself)
    assert status == 422
    assert body["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "spec",
                                          "message": 'Invalid value: "object": a branch cannot target itself'}]
    status, _ = await api.request("POST", BRANCHES, {**branch("m"), "spec": {"branchName": "main"}})  # the default
    assert status == 422
    await api.ok("POST", BRANCHES, {**branch("b"), "spec": {"branchName": "x"}})
    status, body = await api.patch(f"{BRANCHES}/b", {"spec": {"targetBranch": "x"}})
    assert status == 422 and "a branch cannot target itself" in body["message"]
    assert (await api.patch(f"{BRANCHES}/b", {"spec": {"targetBranch": "y"}}))[0] == 200
