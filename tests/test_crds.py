"""The CRDs rendered from the models: drift, structural rules, defaults, printer columns, samples."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from branch_operator.api import crdgen
from branch_operator.api.crdgen import (
    HEADER,
    CRDRenderError,
    check_crds,
    crds_yaml,
    render_crd,
    render_crds,
    render_schema,
    write_crds,
)
from branch_operator.api.models import (
    API_VERSION,
    BRANCH_NAME_PATTERN,
    KINDS,
    AutoMergePolicy,
    AutoMergePolicySpec,
    AutoMergePolicyStatus,
    BlockReason,
    Branch,
    BranchLock,
    BranchLockSpec,
    BranchLockStatus,
    BranchSpec,
    BranchStatus,
    Condition,
    ConditionType,
    Conflict,
    IndexingResult,
    IndexingStatus,
    LabelSelector,
    LabelSelectorRequirement,
    LockType,
    MergeDecision,
    MergeStatus,
    Phase,
    ValidationStatus,
)
from branch_operator.api.validation import _go_anchors, apply_defaults, to_json_schema, validate_object

REPO = Path(__file__).resolve().parents[1]
CRDS_DIR = REPO / "crds"
SAMPLES_DIR = REPO / "manifests" / "samples"
REGENERATE = (
    "regenerate with `branch-operator crds --write crds/` "
    "(or `python -m branch_operator.api.crdgen --write crds/`) and commit the result"
)

SCHEMA_BY_KIND = {crd["spec"]["names"]["kind"]: crd for crd in render_crds()}


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = SCHEMA_BY_KIND[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def load_sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SAMPLES_DIR / name).read_text(encoding="utf-8"))
    return data


def manifest(model: BaseModel, name: str = "x") -> dict[str, Any]:
    """A model's wire form as a full object, the way the operator sends it."""
    return {
        "apiVersion": API_VERSION,
        "kind": type(model).KIND,  # type: ignore[attr-defined]
        "metadata": {"name": name},
        **model.wire(),  # type: ignore[attr-defined]
    }


# ------------------------------------------------------------------------------------------------ (a) drift


def test_crds_directory_matches_models() -> None:
    problems = check_crds(CRDS_DIR)
    assert not problems, f"crds/ is out of date with models.py: {REGENERATE}\n\n" + "\n\n".join(problems)


def test_helm_chart_crds_match_models() -> None:
    # The chart ships its own copy (Helm only installs CRDs from the chart's crds/ folder).
    chart_crds = REPO / "helm" / "oms-branch-operator" / "crds"
    if not chart_crds.is_dir():
        pytest.skip("no Helm chart in this checkout")
    problems = check_crds(chart_crds)
    assert not problems, "\n\n".join(problems)


def test_crds_directory_concatenated_is_crds_yaml() -> None:
    on_disk = "".join(
        (CRDS_DIR / f"oms.dev_{model.PLURAL}.yaml").read_text(encoding="utf-8") for model in KINDS
    )
    assert on_disk == crds_yaml(), f"crds/ differs from crds_yaml(): {REGENERATE}"


def test_rendering_is_deterministic_and_parses_back() -> None:
    text = crds_yaml()
    assert text == crds_yaml()
    assert list(yaml.safe_load_all(text)) == render_crds()
    assert text.count(HEADER) == len(KINDS)


def test_write_then_check_round_trip(tmp_path: Path) -> None:
    paths = write_crds(tmp_path)
    assert [p.name for p in paths] == [
        "oms.dev_branches.yaml",
        "oms.dev_branchlocks.yaml",
        "oms.dev_automergepolicies.yaml",
    ]
    assert check_crds(tmp_path) == []
    assert "".join(p.read_text(encoding="utf-8") for p in paths) == crds_yaml()


def test_check_reports_edits_missing_and_stale_files(tmp_path: Path) -> None:
    write_crds(tmp_path)
    edited = tmp_path / "oms.dev_branches.yaml"
    edited.write_text(edited.read_text(encoding="utf-8").replace("default: main", "default: master"))
    (tmp_path / "oms.dev_branchlocks.yaml").unlink()
    (tmp_path / "oms.dev_widgets.yaml").write_text(HEADER + "---\n{}\n")

    problems = check_crds(tmp_path)

    assert len(problems) == 3
    assert all(f"branch-operator crds --write {tmp_path}/" in p for p in problems)
    assert "oms.dev_branches.yaml: differs" in problems[0] and "+                default: main" in problems[0]
    assert "oms.dev_branchlocks.yaml: missing" in problems[1]
    assert "oms.dev_widgets.yaml: no model renders this file" in problems[2]


def test_write_removes_only_generated_stale_files(tmp_path: Path) -> None:
    (tmp_path / "oms.dev_widgets.yaml").write_text(HEADER + "---\n{}\n")
    hand_written = tmp_path / "oms.dev_handwritten.yaml"
    hand_written.write_text("kind: Something\n")
    (tmp_path / "README.md").write_text("keep me\n")

    write_crds(tmp_path)

    assert not (tmp_path / "oms.dev_widgets.yaml").exists()
    assert hand_written.exists() and (tmp_path / "README.md").exists()
    # Not ours to delete, but still drift the check must surface.
    assert [p for p in check_crds(tmp_path) if "oms.dev_handwritten.yaml" in p]


def test_module_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--check", str(tmp_path)]) == 1
    assert "missing" in capsys.readouterr().err
    assert crdgen.main(["--write", str(tmp_path)]) == 0
    assert crdgen.main(["--check", str(tmp_path)]) == 0
    capsys.readouterr()
    assert crdgen.main([]) == 0
    assert capsys.readouterr().out == crds_yaml()


# ------------------------------------------------------------------------------------------ (b) structural

FORBIDDEN = {"$ref", "$defs", "definitions", "anyOf", "oneOf", "allOf", "not", "title", "const", "examples"}


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def structural_violations(schema: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for path, node in walk(schema):
        where = path or "<root>"
        if "type" not in node and not (
            node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        ):
            found.append(f"{where}: no type")
        found += [f"{where}: {key}" for key in sorted(FORBIDDEN & set(node))]
        if "additionalProperties" in node:
            if "properties" in node:
                found.append(f"{where}: additionalProperties alongside properties")
            if not isinstance(node["additionalProperties"], dict):
                found.append(f"{where}: additionalProperties must be a schema")
        if node.get("uniqueItems"):
            found.append(f"{where}: uniqueItems")
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node and not isinstance(node[bound], bool):
                found.append(f"{where}: {bound} must be the OpenAPI v3.0 boolean form")
        if node.get("type") == "array" and "items" not in node:
            found.append(f"{where}: array without items")
        if node.get("x-kubernetes-list-type") == "map":
            required = node["items"].get("required", [])
            keys = node["x-kubernetes-list-map-keys"]
            found += [f"{where}: list-map key {k} not required" for k in keys if k not in required]
    if schema["properties"]["metadata"] != {"type": "object"}:
        found.append(".metadata: Kubernetes only allows name/generateName restrictions")
    return found


@pytest.mark.parametrize("kind", sorted(SCHEMA_BY_KIND))
def test_schema_is_structural(kind: str) -> None:
    assert structural_violations(schema_of(kind)) == []


def test_structural_check_catches_pydantic_output() -> None:
    # The checker itself must bite: pydantic's raw schema is not structural.
    raw = Branch.model_json_schema(by_alias=True)
    raw["properties"]["metadata"] = {"type": "object"}
    found = structural_violations(raw)
    assert any("$ref" in v for v in found) and any("title" in v for v in found)


@pytest.mark.parametrize("kind", sorted(SCHEMA_BY_KIND))
def test_schema_defaults_validate_against_their_own_node(kind: str) -> None:
    # The API server refuses a CRD whose defaults do not validate.
    for path, node in walk(schema_of(kind)):
        if "default" in node:
            jsonschema.validate(node["default"], to_json_schema(node), cls=jsonschema.Draft202012Validator)
            assert path.startswith(".spec"), f"{path}: defaults only belong in spec"


@pytest.mark.parametrize("model", KINDS, ids=lambda m: m.KIND)
def test_crd_envelope(model: Any) -> None:
    crd = render_crd(model)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"] == {
        "name": f"{model.PLURAL}.oms.dev",
        "labels": {"app.kubernetes.io/part-of": "oms-branch-operator"},
    }
    spec = crd["spec"]
    assert spec["group"] == "oms.dev" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": model.KIND,
        "listKind": f"{model.KIND}List",
        "plural": model.PLURAL,
        "singular": model.SINGULAR,
        "shortNames": model.SHORT_NAMES,
        "categories": ["oms"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["required"] == ["spec"]
    assert schema["properties"]["status"]["type"] == "object"
    assert "default" not in schema["properties"]["status"]


def test_branch_spec_carries_cel_transition_rule() -> None:
    spec = schema_of("Branch")["properties"]["spec"]
    assert spec["x-kubernetes-validations"] == [
        {"rule": "self.branchName == oldSelf.branchName", "message": "spec.branchName is immutable"},
        {"rule": "self.targetBranch != self.branchName",
         "message": "spec.targetBranch must differ from spec.branchName"},
    ]
    ruled = sorted(
        p for kind in SCHEMA_BY_KIND for p, n in walk(schema_of(kind)) if "x-kubernetes-validations" in n
    )
    # The Branch spec's, and a policy's selector requirements and merge windows (also checked by the webhook).
    assert ruled == [".spec", ".spec.branchSelector.matchExpressions[]", ".spec.mergeWindows[]"]


@pytest.mark.parametrize("kind", ["Branch", "AutoMergePolicy"])
def test_conditions_are_a_list_map_keyed_by_type(kind: str) -> None:
    conditions = schema_of(kind)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    transition = conditions["items"]["properties"]["lastTransitionTime"]
    assert {k: v for k, v in transition.items() if k != "description"} == {"type": "string", "format": "date-time"}


def test_enums_bounds_and_maps_are_rendered() -> None:
    lock_type = schema_of("BranchLock")["properties"]["spec"]["properties"]["lockType"]
    assert {k: v for k, v in lock_type.items() if k != "description"} == {"type": "string",
                                                                          "enum": [t.value for t in LockType]}
    ttl = schema_of("BranchLock")["properties"]["spec"]["properties"]["ttlSeconds"]
    assert (ttl["minimum"], ttl["maximum"]) == (1, 604800)
    spec = schema_of("AutoMergePolicy")["properties"]["spec"]["properties"]
    timeout = spec["timeoutHours"]
    assert (timeout["minimum"], timeout["exclusiveMinimum"]) == (0, True)
    match_labels = spec["branchSelector"]["properties"]["matchLabels"]
    assert (match_labels["type"], match_labels["additionalProperties"]) == ("object", {"type": "string"})
    phase = schema_of("Branch")["properties"]["status"]["properties"]["phase"]
    assert phase["enum"] == [p.value for p in Phase] and "nullable" not in phase


class _Fake(BaseModel):
    KIND: ClassVar[str] = "Fake"
    PLURAL: ClassVar[str] = "fakes"


class _UnionSpec(BaseModel):
    value: int | str


class _LookaheadSpec(BaseModel):
    # Only the python-re engine accepts lookaround; the API server's RE2 never does.
    model_config = ConfigDict(regex_engine="python-re")

    value: Annotated[str, Field(pattern=r"^(?!x).*$")]


class _Node(BaseModel):
    children: list[_Node] = []


@pytest.mark.parametrize(
    ("spec", "problem"),
    [(_UnionSpec, "anyOf other than Optional"), (_LookaheadSpec, "not RE2"), (_Node, "recursive model")],
)
def test_unrenderable_models_fail_loudly(spec: type[BaseModel], problem: str) -> None:
    fake = type("FakeKind", (_Fake,), {"__annotations__": {"spec": spec}})
    with pytest.raises(CRDRenderError, match=re.escape(problem)):
        render_schema(fake)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- (c) samples

SAMPLES = sorted(p.name for p in SAMPLES_DIR.glob("*.yaml"))
MODEL_BY_KIND: dict[str, Any] = {model.KIND: model for model in KINDS}


def test_expected_samples_exist() -> None:
    assert set(SAMPLES) >= {
        "branch-feature-user-schema.yaml",
        "automergepolicy-default.yaml",
        "automergepolicy-release-dryrun.yaml",
        "branchlock-write.yaml",
    }


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_validates_and_parses_with_the_model(name: str) -> None:
    sample = load_sample(name)
    assert validate_object(sample) == []
    assert "namespace" not in sample["metadata"], "samples are applied into whatever namespace is current"
    MODEL_BY_KIND[sample["kind"]].model_validate(sample)


def test_sample_contents() -> None:
    branch = load_sample("branch-feature-user-schema.yaml")
    assert branch["metadata"]["name"] == "feature-user-schema"
    assert branch["spec"]["branchName"] == "feature/user-schema"

    policy = AutoMergePolicy.model_validate(load_sample("automergepolicy-default.yaml")).spec
    assert policy.enabled and policy.require_validation and policy.block_on_conflicts and not policy.dry_run
    assert (policy.timeout_hours, policy.priority) == (24, 10)
    assert policy.branch_name_patterns == ["feature/*", "fix/*"] and policy.target_branches == ["main"]

    dry_run = AutoMergePolicy.model_validate(load_sample("automergepolicy-release-dryrun.yaml")).spec
    assert dry_run.dry_run and dry_run.branch_selector is not None

    lock = BranchLock.model_validate(load_sample("branchlock-write.yaml")).spec
    assert lock.lock_type is LockType.WRITE and lock.holder != "oms-branch-operator"
    assert lock.branch == branch["metadata"]["name"]


_DELETE = object()


def _broken(name: str, path: list[str], value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(load_sample(name))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if value is _DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


BRANCH, LOCK = "branch-feature-user-schema.yaml", "branchlock-write.yaml"
POLICY, DRY_RUN = "automergepolicy-default.yaml", "automergepolicy-release-dryrun.yaml"


@pytest.mark.parametrize(
    ("name", "path", "value", "expected"),
    [
        (LOCK, ["spec", "lockType"], "READ", "spec.lockType: 'READ' is not one of"),
        (BRANCH, ["spec", "branchName"], "-feature", "spec.branchName: '-feature' does not match"),
        (BRANCH, ["spec", "branchName"], "feature user", "spec.branchName: 'feature user' does not match"),
        (BRANCH, ["spec", "branchName"], "feature/x\n", "spec.branchName: 'feature/x\\n' does not match"),
        (BRANCH, ["spec", "branchName"], "", "spec.branchName: '' should be non-empty"),
        (BRANCH, ["spec", "branchName"], _DELETE, "spec.branchName: Required value"),
        (BRANCH, ["spec"], _DELETE, "spec: Required value"),
        (POLICY, ["spec", "timeoutHours"], -1, "spec.timeoutHours: -1 is less than or equal to"),
        (POLICY, ["spec", "timeoutHours"], 0, "spec.timeoutHours: 0 is less than or equal to"),
        (POLICY, ["spec", "priority"], 5000, "spec.priority: 5000 is greater than the maximum"),
        (POLICY, ["spec", "timeout_hours"], 1, "spec.timeout_hours: unknown field"),
        (
            DRY_RUN,
            ["spec", "branchSelector", "matchExpressions", 0, "operator"],
            "Maybe",
            "spec.branchSelector.matchExpressions[0].operator: 'Maybe' is not one of",
        ),
        (LOCK, ["spec", "ttlSeconds"], 0, "spec.ttlSeconds: 0 is less than the minimum"),
        (LOCK, ["kind"], "Widget", "kind: no CustomResourceDefinition for Widget"),
        (LOCK, ["apiVersion"], "oms.dev/v1", "apiVersion: oms.dev/v1 is not served"),
        (LOCK, ["metadata", "name"], "Bad_Name", "metadata.name: 'Bad_Name' is not"),
        (LOCK, ["metadata", "labels", "oms.dev/branch"], "a/b", "metadata.labels[oms.dev/branch]: invalid"),
    ],
)
def test_broken_samples_are_rejected_at_the_right_field(
    name: str, path: list[Any], value: Any, expected: str
) -> None:
    errors = validate_object(_broken(name, path, value))
    assert any(e.startswith(expected) for e in errors), errors


def test_all_errors_are_reported_at_once_in_stable_order() -> None:
    obj = load_sample("branchlock-write.yaml")
    obj["spec"].update(lockType="READ", holder="", ttlSeconds=-5)
    errors = validate_object(obj)
    assert [e.split(":")[0] for e in errors] == ["spec.holder", "spec.lockType", "spec.ttlSeconds"]
    assert validate_object(obj) == errors


def test_non_strict_accepts_unknown_fields_like_the_pruning_api_server() -> None:
    obj = _broken("branch-feature-user-schema.yaml", ["spec", "colour"], "blue")
    assert validate_object(obj, strict=False) == []
    assert validate_object(obj) == ["spec.colour: unknown field (not declared in the schema)"]


def test_explicit_crds_are_used() -> None:
    only_locks = [render_crd(BranchLock)]
    assert validate_object(load_sample("branchlock-write.yaml"), only_locks) == []
    assert validate_object(load_sample("branch-feature-user-schema.yaml"), only_locks) == [
        "kind: no CustomResourceDefinition for Branch in oms.dev/v1alpha1"
    ]


def test_duplicate_condition_types_are_rejected() -> None:
    condition = {
        "type": "Mergeable",
        "status": "True",
        "lastTransitionTime": "2024-05-01T10:00:00Z",
        "reason": "Ok",
    }
    obj = {**load_sample("branch-feature-user-schema.yaml"), "status": {"conditions": [condition, condition]}}
    assert validate_object(obj) == [
        "status.conditions[1]: duplicate entry (type='Mergeable'), also at index 0"
    ]


@pytest.mark.parametrize(
    ("stamp", "ok"),
    [
        ("2024-05-01T10:00:00Z", True),
        ("2024-05-01T10:00:00.123456789+02:00", True),
        ("2024-05-01t10:00:00z", True),
        ("2024-13-01T10:00:00Z", False),
        ("2024-02-30T10:00:00Z", False),
        ("yesterday", False),
        ("2024-05-01", False),
    ],
)
def test_date_time_format(stamp: str, ok: bool) -> None:
    obj = {**load_sample("branchlock-write.yaml"), "status": {"acquiredAt": stamp}}
    assert (validate_object(obj) == []) is ok


def test_non_nullable_nulls_are_pruned_and_nullable_ones_kept() -> None:
    # As the API server does: a null on a non-nullable field is dropped (or defaulted), never an error.
    obj = load_sample("automergepolicy-default.yaml")
    obj["spec"].update(branchSelector=None, priority=None, timeoutHours=None)
    obj["status"] = {"lastEvaluationTime": None}
    assert validate_object(obj) == []
    admitted = apply_defaults(obj)
    assert "branchSelector" not in admitted["spec"] and admitted["status"] == {}
    assert admitted["spec"]["priority"] == 0  # defaulted
    assert admitted["spec"]["timeoutHours"] is None  # nullable: "no timeout" survives
    assert AutoMergePolicy.model_validate(admitted).spec.timeout_hours is None


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.one_of(st.from_regex(BRANCH_NAME_PATTERN), st.text(alphabet="aZ09._/-: \n~é*", max_size=12)))
def test_branch_name_acceptance_matches_the_model(name: str) -> None:
    # pydantic (Rust regex) and the API server (Go RE2) agree; Python's re must be made to agree too.
    try:
        BranchSpec(branch_name=name)
        model_ok = True
    except ValidationError:
        model_ok = False
    obj = {**load_sample("branch-feature-user-schema.yaml"), "spec": {"branchName": name}}
    assert (validate_object(obj) == []) is model_ok


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"^a$", r"^a\Z"),
        (r"^a\$b$", r"^a\$b\Z"),
        (r"^[$]$", r"^[$]\Z"),
        (r"^[]$]$", r"^[]$]\Z"),
        (r"^[^]$]$", r"^[^]$]\Z"),
    ],
)
def test_dollar_anchors_follow_go(pattern: str, expected: str) -> None:
    assert _go_anchors(pattern) == expected


# ------------------------------------------------------------------------------------------ (d) defaults


def test_spec_defaults_are_in_the_schema() -> None:
    branch = schema_of("Branch")["properties"]["spec"]["properties"]
    assert branch["targetBranch"]["default"] == "main"
    assert branch["autoMerge"]["default"] is True
    policy = schema_of("AutoMergePolicy")["properties"]["spec"]["properties"]
    assert {k: policy[k]["default"] for k in ("enabled", "requireValidation", "blockOnConflicts")} == {
        "enabled": True,
        "requireValidation": True,
        "blockOnConflicts": True,
    }
    assert (
        policy["timeoutHours"]["default"],
        policy["priority"]["default"],
        policy["dryRun"]["default"],
    ) == (
        24,
        0,
        False,
    )
    # Empty collections mean the same as absent; defaulting them would only add noise to every object.
    assert "default" not in policy["branchNamePatterns"]


@pytest.mark.parametrize(
    ("model", "spec"),
    [
        (Branch, {"branchName": "feature/x"}),
        (BranchLock, {"branch": "b", "lockType": "MERGE", "holder": "h"}),
        (AutoMergePolicy, {}),
        (AutoMergePolicy, {"branchSelector": {"matchExpressions": [{"key": "k", "operator": "Exists"}]}}),
    ],
)
def test_api_server_defaults_agree_with_model_defaults(model: Any, spec: dict[str, Any]) -> None:
    obj = {"apiVersion": API_VERSION, "kind": model.KIND, "metadata": {"name": "x"}, "spec": spec}
    defaulted = apply_defaults(obj)["spec"]

    def without_empty(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: without_empty(v) for k, v in value.items() if v is not None and v != [] and v != {}}
        if isinstance(value, list):
            return [without_empty(v) for v in value]
        return value

    assert defaulted == without_empty(model.model_validate(obj).wire()["spec"])


# ------------------------------------------------------------------------------------- (e) printer columns

_TOKEN = re.compile(r'\.(?P<field>[A-Za-z0-9_]+)|\[\?\(@\.(?P<key>[A-Za-z0-9_]+)=="(?P<value>[^"]*)"\)\]')
OBJECT_META = {"name": "string", "namespace": "string", "creationTimestamp": "date", "generation": "integer"}


def resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    """The schema node a printer column's JSONPath selects; KeyError/AssertionError if it selects nothing."""
    tokens = list(_TOKEN.finditer(json_path))
    assert "".join(t.group(0) for t in tokens) == json_path, f"unsupported JSONPath {json_path}"
    if tokens[0]["field"] == "metadata":
        assert len(tokens) == 2, json_path
        kind = OBJECT_META[tokens[1]["field"]]
        return {"type": "string", "format": "date-time"} if kind == "date" else {"type": kind}
    node = schema
    for token in tokens:
        if token["field"]:
            node = node["properties"][token["field"]]
        else:
            assert node["type"] == "array", f"{json_path}: filter on a non-list"
            node = node["items"]
            key = node["properties"][token["key"]]
            if "enum" in key:
                assert token["value"] in key["enum"], json_path
            elif node.get("description", "").startswith("The standard Kubernetes condition"):
                assert token["value"] in {c.value for c in ConditionType}, f"{json_path}: unknown condition"
    return node


def test_branch_printer_column_names() -> None:
    names = [
        c["name"].upper() for c in SCHEMA_BY_KIND["Branch"]["spec"]["versions"][0]["additionalPrinterColumns"]
    ]
    assert names == ["BRANCH", "PHASE", "RECORDS", "VALID", "MERGEABLE", "REASONS", "AGE"]
    [reasons] = [c for c in SCHEMA_BY_KIND["Branch"]["spec"]["versions"][0]["additionalPrinterColumns"]
                 if c["name"] == "Reasons"]
    # priority 0: shown by plain `kubectl get branches`, not only with -o wide.
    assert reasons == {"name": "Reasons", "type": "string", "jsonPath": ".status.merge.reasons", "priority": 0}


@pytest.mark.parametrize("kind", sorted(SCHEMA_BY_KIND))
def test_printer_columns_point_at_fields_of_the_right_type(kind: str) -> None:
    compatible: dict[str, set[tuple[str, str | None]]] = {
        "string": {("string", None), ("string", "date-time")},  # a timestamp printed as is (BranchLock EXPIRES)
        "integer": {("integer", None)},
        "number": {("number", None), ("integer", None)},
        "boolean": {("boolean", None)},
        "date": {("string", "date-time")},
    }
    model_schema = render_schema(MODEL_BY_KIND[kind])
    for column in SCHEMA_BY_KIND[kind]["spec"]["versions"][0]["additionalPrinterColumns"]:
        node = resolve(model_schema, column["jsonPath"])
        if column["type"] == "string" and node["type"] == "array":
            # kubectl prints a list as compact JSON; only lists of strings (enums) read well that way.
            assert node["items"].get("type") == "string", column
            continue
        assert (node["type"], node.get("format")) in compatible[column["type"]], column


@pytest.mark.parametrize(
    "json_path", [".status.nope", ".spec.branchName.length", '.status.conditions[?(@.type=="Merged")].status']
)
def test_printer_column_resolver_rejects_bad_paths(json_path: str) -> None:
    with pytest.raises((KeyError, AssertionError)):
        resolve(schema_of("Branch"), json_path)


# ------------------------------------------------------------------------------------------ (f) round trip

NOW = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def full_branch() -> Branch:
    return Branch(
        spec=BranchSpec(branch_name="feature/user-schema", target_branch="release/2024.05", auto_merge=False),
        status=BranchStatus(
            phase=Phase.READY,
            phase_transition_time=NOW,
            observed_generation=3,
            indexing=IndexingStatus(
                indexing_id="idx-42",
                event_id="evt-42",
                started_at=NOW,
                completed_at=NOW,
                duration_seconds=12.5,
                records_indexed=1200,
                result=IndexingResult.SUCCESS,
                validation=ValidationStatus(passed=False, errors=["field users.email: missing index"]),
            ),
            merge=MergeStatus(
                decision=MergeDecision.BLOCKED,
                reasons=[BlockReason.VALIDATION_FAILED, BlockReason.CONFLICTS_DETECTED],
                message="validation failed",
                policy="default",
                merged_at=NOW,
                target_branch="main",
                evaluated_at=NOW,
            ),
            conflicts=[Conflict(path="schemas/user.json", message="both modified")],
            conditions=[
                Condition(
                    type=t.value,
                    status="False",
                    observed_generation=3,
                    last_transition_time=NOW,
                    reason="Blocked",
                )
                for t in ConditionType
            ],
            recent_event_ids=["evt-41", "evt-42"],
        ),
    )


def full_policy() -> AutoMergePolicy:
    return AutoMergePolicy(
        spec=AutoMergePolicySpec(
            enabled=False,
            timeout_hours=0.5,
            branch_selector=LabelSelector(
                match_labels={"team": "data"},
                match_expressions=[LabelSelectorRequirement(key="tier", operator="In", values=["gold"])],
            ),
            branch_name_patterns=["feature/*"],
            target_branches=["main"],
            priority=-5,
            dry_run=True,
        ),
        status=AutoMergePolicyStatus(observed_generation=1, matched_branches=4, last_evaluation_time=NOW),
    )


def full_lock() -> BranchLock:
    return BranchLock(
        spec=BranchLockSpec(
            branch="feature-user-schema", lock_type=LockType.INDEXING, holder="oms-branch-operator",
            reason="indexing", indexing_id="idx-42", ttl_seconds=900,
        ),
        status=BranchLockStatus(acquired_at=NOW, renewed_at=NOW),
    )  # fmt: skip


@pytest.mark.parametrize("build", [full_branch, full_policy, full_lock], ids=lambda f: f.__name__)
def test_model_wire_form_validates(build: Any) -> None:
    model = build()
    assert validate_object(manifest(model)) == []
    # With nulls too (model_dump without exclude_none), as a careless writer might send them.
    with_nulls = {**manifest(model), **model.model_dump(by_alias=True, mode="json")}
    assert validate_object(with_nulls) == []
    # And what the API server would store reads back into an equal model.
    assert type(model).model_validate(apply_defaults(manifest(model))) == model


def test_default_model_status_validates() -> None:
    branch = Branch(spec=BranchSpec(branch_name="main"))
    assert validate_object(manifest(branch)) == []
