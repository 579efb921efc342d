"""``x-kubernetes-validations`` CEL rules, evaluated and reported as kube-apiserver does (through HTTP and kubectl)."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

from branch_operator.embedded.apiserver.schema import CompiledSchema
from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .. import k8s_tools
from .conftest import BRANCHES, CRDS, Api, branch, crd

KUBECTL = k8s_tools.kubectl_path()

_RULES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "branchName": {"type": "string"},
                "targetBranch": {"type": "string"},
                "ttl": {"type": "string", "x-kubernetes-validations": [
                    {"rule": "self.matches('^[0-9]+(s|m|h)$')", "message": "must be a duration like 30s, 5m or 2h"},
                ]},
                "schedule": {"type": "string", "x-kubernetes-validations": [
                    {"rule": "size(self.split(' ')) == 5", "messageExpression": "'cron needs 5 fields: ' + self"},
                ]},
                "reviewers": {
                    "type": "array",
                    "items": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "self.startsWith('team-')"},
                    ]},
                    "x-kubernetes-validations": [{"rule": "self.all(r, size(r) <= 12)", "message": "too long"}],
                },
                "limits": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "x-kubernetes-validations": [
                        {"rule": "self >= 0", "message": "must not be negative"},
                        {"rule": "self >= oldSelf", "message": "may only grow"},
                    ]},
                },
                "window": {"type": "object", "properties": {"start": {"type": "integer"}, "end": {"type": "integer"}}},
            },
            "x-kubernetes-validations": [
                {"rule": "self.targetBranch != self.branchName", "message": "a branch cannot target itself"},
                {"rule": "!has(self.window) || self.window.start < self.window.end",
                 "fieldPath": ".window", "reason": "FieldValueForbidden", "message": "start must come before end"},
                {"rule": "self.branchName == oldSelf.branchName", "message": "spec.branchName is immutable"},
                {"rule": "has(self.targetBranch) ? self.targetBranch.size() > 0 : true"},
            ],
        },
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "x-kubernetes-validations": [
            {"rule": "self.phase == 'ok'"},
        ]},
    },
}  # fmt: skip


def _spec(**spec: Any) -> dict[str, Any]:
    return {**branch("a"), "spec": {"branchName": "a", "targetBranch": "main", **spec}}


async def _causes(api: Api, method: str, path: str, body: Any) -> list[dict[str, str]]:
    status, answer = await api.request(
        method, path, body, "application/merge-patch+json" if method == "PATCH" else "application/json"
    )
    assert status == 422, answer
    assert answer["reason"] == "Invalid" and answer["kind"] == "Status"
    causes: list[dict[str, str]] = answer["details"]["causes"]
    return causes


async def test_rules_of_several_kinds_accept_and_reject_with_the_servers_messages(api: Api) -> None:
    await api.ok("POST", CRDS, crd(schema=_RULES_SCHEMA))
    assert await _causes(api, "POST", BRANCHES, _spec(ttl="5 minutes")) == [
        {"reason": "FieldValueInvalid", "field": "spec.ttl",
         "message": 'Invalid value: "string": must be a duration like 30s, 5m or 2h'},
    ]  # fmt: skip
    assert await _causes(api, "POST", BRANCHES, _spec(schedule="0 3 * *")) == [
        {"reason": "FieldValueInvalid", "field": "spec.schedule",
         "message": 'Invalid value: "string": cron needs 5 fields: 0 3 * *'},
    ]  # fmt: skip
    assert await _causes(api, "POST", BRANCHES, _spec(reviewers=["team-a", "bob", "team-abcdefghijk"])) == [
        {"reason": "FieldValueInvalid", "field": "spec.reviewers",
         "message": 'Invalid value: "array": too long'},
        {"reason": "FieldValueInvalid", "field": "spec.reviewers[1]",
         "message": "Invalid value: \"string\": failed rule: self.startsWith('team-')"},
    ]  # fmt: skip
    assert await _causes(api, "POST", BRANCHES, _spec(window={"start": 5, "end": 1}, targetBranch="a")) == [
        {"reason": "FieldValueInvalid", "field": "spec",
         "message": 'Invalid value: "object": a branch cannot target itself'},
        {"reason": "FieldValueForbidden", "field": "spec.window",
         "message": "Forbidden: start must come before end"},
    ]  # fmt: skip
    assert await _causes(api, "POST", BRANCHES, _spec(limits={"cpu": -1})) == [
        {"reason": "FieldValueInvalid", "field": "spec.limits[cpu]",
         "message": 'Invalid value: "integer": must not be negative'},
    ]  # fmt: skip
    good = _spec(
        ttl="30s", schedule="0 3 * * 1", reviewers=["team-a"], limits={"cpu": 2}, window={"start": 1, "end": 2}
    )
    await api.ok("POST", BRANCHES, good)

    # Transition rules: on update only, against the old value (map values correlate by key).
    assert await _causes(api, "PATCH", f"{BRANCHES}/a", {"spec": {"limits": {"cpu": 1, "mem": 0}}}) == [
        {"reason": "FieldValueInvalid", "field": "spec.limits[cpu]",
         "message": 'Invalid value: "integer": may only grow'},
    ]  # fmt: skip
    assert (await api.patch(f"{BRANCHES}/a", {"spec": {"limits": {"cpu": 3, "mem": 0}}}))[0] == 200
    assert await _causes(api, "PATCH", f"{BRANCHES}/a", {"spec": {"branchName": "b"}}) == [
        {"reason": "FieldValueInvalid", "field": "spec",
         "message": 'Invalid value: "object": spec.branchName is immutable'},
    ]  # fmt: skip
    # A rule on the status holds for status writes; a spec rule is not re-run by them.
    status_path = f"{BRANCHES}/a/status"
    assert await _causes(api, "PATCH", status_path, {"status": {"phase": "bad"}}) == [
        {"reason": "FieldValueInvalid", "field": "status",
         "message": "Invalid value: \"object\": failed rule: self.phase == 'ok'"},
    ]  # fmt: skip
    assert (await api.patch(status_path, {"status": {"phase": "ok"}}))[0] == 200


async def test_evaluation_errors_and_blocking_schema_errors(api: Api) -> None:
    await api.ok("POST", CRDS, crd(schema=_RULES_SCHEMA))
    # No targetBranch: the first rule reads a missing key, which is an evaluation error on the real server.
    assert await _causes(api, "POST", BRANCHES, {**branch("a"), "spec": {"branchName": "a"}}) == [
        {"reason": "FieldValueInvalid", "field": "spec",
         "message": 'Invalid value: "object": no such key: targetBranch evaluating rule: '
                    "self.targetBranch != self.branchName"},
    ]  # fmt: skip
    # A type error blocks every rule; the server says so with a cause of its own.
    assert await _causes(api, "POST", BRANCHES, _spec(ttl=5, targetBranch="a")) == [
        {"reason": "FieldValueTypeInvalid", "field": "spec.ttl",
         "message": 'Invalid value: "integer": spec.ttl in body must be of type string: "integer"'},
        {"reason": "FieldValueInvalid", "field": "<nil>",
         "message": 'Invalid value: "null": some validation rules were not checked because the object was '
                    "invalid; correct the existing errors to complete validation"},
    ]  # fmt: skip


async def test_ratcheting_keeps_unchanged_values_that_a_newer_rule_refuses(server: EmbeddedApiServer, api: Api) -> None:
    loose = {"type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    await api.ok("POST", CRDS, crd(schema=loose))
    await api.ok("POST", BRANCHES, {**branch("a"), "spec": {"branchName": "a", "ttl": "forever"}})
    stored = await api.ok("GET", f"{CRDS}/branches.oms.dev")
    stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = _RULES_SCHEMA
    await api.ok("PUT", f"{CRDS}/branches.oms.dev", stored)
    # The ttl is not touched: the real server does not re-judge it (nor the spec rules it would now fail).
    assert (await api.patch(f"{BRANCHES}/a", {"metadata": {"labels": {"x": "y"}}}))[0] == 200
    causes = await _causes(api, "PATCH", f"{BRANCHES}/a", {"spec": {"ttl": "never", "targetBranch": "main"}})
    assert [c["field"] for c in causes] == ["spec.ttl"]


async def test_a_rule_that_does_not_compile_refuses_the_crd(api: Api) -> None:
    bad = {"type": "object", "properties": {"spec": {"type": "object", "x-kubernetes-validations": [
        {"rule": "self.a =="}]}}}  # fmt: skip
    status, body = await api.post(CRDS, crd(schema=bad))
    assert status == 422, body
    field = "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule"
    [problem] = body["details"]["causes"]
    assert problem["field"] == field
    assert problem["message"].startswith(
        'Invalid value: apiextensions.ValidationRule{Rule:"self.a ==", Message:"", MessageExpression:"", '
        'Reason:(*apiextensions.FieldValueErrorReason)(nil), FieldPath:"", OptionalOldSelf:(*bool)(nil)}: '
        "compilation failed: ERROR: <input>:1:"
    ), problem["message"]


def test_every_rule_of_the_operators_crds_compiles_and_runs() -> None:
    from branch_operator.api.crdgen import render_crds

    schemas = {c["spec"]["names"]["kind"]: CompiledSchema(v["schema"]["openAPIV3Schema"])
               for c in render_crds() for v in c["spec"]["versions"]}  # fmt: skip
    assert sum(len(s.rules) for s in schemas.values()) >= 2
    branch_schema = schemas["Branch"]
    ok = {"spec": {"branchName": "feature/x", "targetBranch": "main"}}
    obj, errs = branch_schema.admit(ok, None)
    assert errs == [], errs
    _, errs = branch_schema.admit({"spec": {"branchName": "main", "targetBranch": "main"}}, None)
    assert [c["field"] for c in errs] == ["spec"]
    _, errs = branch_schema.admit({"spec": {**obj["spec"], "branchName": "feature/y"}}, obj)
    assert [c["message"] for c in errs] == ['Invalid value: "object": spec.branchName is immutable']


async def test_kubectl_apply_of_an_object_a_rule_refuses(
    server: EmbeddedApiServer, api: Api, tmp_path: pathlib.Path
) -> None:
    await api.ok("POST", CRDS, crd(schema=_RULES_SCHEMA))
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    manifest = tmp_path / "b.yaml"
    manifest.write_text(
        "apiVersion: oms.dev/v1alpha1\nkind: Branch\nmetadata:\n  name: kb\n"
        "spec:\n  branchName: main\n  targetBranch: main\n  ttl: soon\n"
    )
    assert KUBECTL is not None
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(kubeconfig), "apply", "-f", str(manifest),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"HOME": str(tmp_path)},
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    text = err.decode()
    # The cause lines kubectl prints come from the Status' causes; the rules of the node first, then its fields'.
    assert text.startswith('The Branch "kb" is invalid: \n* spec'), text
    assert 'spec: Invalid value: "object": a branch cannot target itself\n' in text
    assert 'spec.ttl: Invalid value: "string": must be a duration like 30s, 5m or 2h\n' in text
