"""Validate resources offline against the rendered CRDs, the way the API server would.

The CRD's structural schema is converted to JSON Schema (draft 2020-12) and checked with ``jsonschema``.
Before validating, the object goes through the API server's admission steps that change it: nulls on
non-nullable fields are pruned (or replaced by the default) and spec defaults are applied. Unknown fields
are reported, as ``kubectl apply`` does with its default strict field validation.

Not covered: CEL rules (``x-kubernetes-validations``: the branchName transition rule needs the old
object anyway; a Branch that targets itself is refused by the API server and blocked ``SelfMerge`` by
the operator) and the API server's metadata checks beyond names and labels.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from jsonschema.protocols import Validator

from branch_operator.api.crdgen import render_crds

JSON = dict[str, Any]

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
# RFC 3339 as Kubernetes' strfmt accepts it (a missing offset is tolerated there too).
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$")


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the type keyword reports non-strings
    if not _DATE_TIME.match(value):
        return False
    try:
        # fromisoformat checks the calendar (month 13, Feb 30); it does not take lowercase t/z or
        # fractions longer than microseconds, which RFC 3339 allows.
        normalised = re.sub(r"(\.\d{6})\d+", r"\1", value.upper().replace("Z", "+00:00"))
        datetime.fromisoformat(normalised)
    except ValueError:
        return False
    return True


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("date-time")(_is_date_time)


def _list_map_keys(
    validator: Validator, keys: list[str], instance: Any, schema: JSON
) -> Iterator[ValidationError]:
    """Kubernetes rejects two entries of a ``map`` list with the same key (e.g. two Ready conditions)."""
    if not isinstance(instance, list):
        return
    seen: dict[tuple[Any, ...], int] = {}
    for index, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(repr(item.get(k)) for k in keys)
        if key in seen:
            shown = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
            yield ValidationError(f"duplicate entry ({shown}), also at index {seen[key]}", path=[index])
        else:
            seen[key] = index


# jsonschema's `extend` is untyped in its stubs; the result is a regular validator class.
_KubeValidator: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"x-oms-list-map-keys": _list_map_keys}
)


def _go_anchors(pattern: str) -> str:
    """Make ``$`` mean end-of-string, as in Go's RE2 (the API server) and pydantic's Rust regex.

    Python's ``$`` also matches before a trailing newline, so ``"feature/x\\n"`` would pass here and
    be rejected by the API server.
    """
    out: list[str] = []
    escaped = in_class = False
    class_start = -1  # index just past "[" (or "[^"), where "]" is a literal
    for index, char in enumerate(pattern):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            if char == "^" and index == class_start:
                class_start += 1
            elif char == "]" and index != class_start:
                in_class = False
        elif char == "[":
            in_class, class_start = True, index + 1
        elif char == "$":
            out.append(r"\Z")
            continue
        out.append(char)
    return "".join(out)


def to_json_schema(node: Mapping[str, Any], *, strict: bool = True) -> JSON:
    """Convert one structural (OpenAPI v3.0, Kubernetes flavour) schema node to JSON Schema 2020-12.

    ``strict`` forbids fields the schema does not declare (``kubectl --validate=strict``).
    """
    out: JSON = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub, strict=strict) for name, sub in value.items()}
        elif key == "items":
            out[key] = to_json_schema(value, strict=strict)
        elif key == "additionalProperties" and isinstance(value, Mapping):
            out[key] = to_json_schema(value, strict=strict)
        elif key == "x-kubernetes-list-map-keys":
            out["x-oms-list-map-keys"] = list(value)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        elif key == "pattern":
            out[key] = _go_anchors(value)
        else:
            out[key] = copy.deepcopy(value)
    # OpenAPI v3.0's boolean exclusive bounds become 2020-12's numeric ones.
    for bound, numeric in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(bound) is True and numeric in node:
            out[bound] = out.pop(numeric)
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if (
        strict
        and node.get("type") == "object"
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# ----------------------------------------------------------------------------- admission-time rewrites


def _field_schema(schema: Mapping[str, Any] | None, field: str) -> Mapping[str, Any] | None:
    if schema is None:
        return None
    properties: Mapping[str, Any] = schema.get("properties", {})
    if field in properties:
        return properties[field]  # type: ignore[no-any-return]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def _null_needs_rewrite(value: Any, schema: Mapping[str, Any] | None) -> bool:
    return value is None and schema is not None and not schema.get("nullable")


def _admit(value: Any, schema: Mapping[str, Any] | None) -> None:
    """In place: the API server's null pruning and defaulting (apiextensions ``defaulting`` package)."""
    if isinstance(value, dict):
        for key in list(value):
            sub = _field_schema(schema, key)
            if _null_needs_rewrite(value[key], sub) and sub is not None and "default" not in sub:
                del value[key]
        if schema is not None:
            for key, sub in schema.get("properties", {}).items():
                if "default" in sub and (key not in value or _null_needs_rewrite(value[key], sub)):
                    value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            _admit(item, _field_schema(schema, key))
    elif isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        for item in value:
            _admit(item, items)


# ------------------------------------------------------------------------------------------- CRD lookup


def _version(crd: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    for version in crd["spec"]["versions"]:
        if version["name"] == name and version.get("served", True):
            return version  # type: ignore[no-any-return]
    return None


def _find(
    obj: Mapping[str, Any], crds: Iterable[Mapping[str, Any]]
) -> tuple[Mapping[str, Any] | None, list[str]]:
    """The served version's schema for ``obj``, or the reason there is none."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return None, ["apiVersion: Required value"]
    if not isinstance(kind, str) or not kind:
        return None, ["kind: Required value"]
    group, _, version = api_version.rpartition("/")
    for crd in crds:
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            served = _version(crd, version)
            if served is None:
                names = ", ".join(f"{group}/{v['name']}" for v in crd["spec"]["versions"] if v.get("served"))
                return None, [f"apiVersion: {api_version} is not served for kind {kind} (served: {names})"]
            return served["schema"]["openAPIV3Schema"], []
    return None, [f"kind: no CustomResourceDefinition for {kind} in {api_version}"]


@lru_cache(maxsize=1)
def _default_crds() -> tuple[JSON, ...]:
    return tuple(render_crds())


def _compile(schema: Mapping[str, Any], *, strict: bool) -> Validator:
    return _KubeValidator(to_json_schema(schema, strict=strict), format_checker=_FORMATS)


@lru_cache(maxsize=1)
def _default_validators() -> dict[int, Validator]:
    """Strict validators for the rendered CRDs, by ``id`` of their (cached, never freed) schema.

    Compiling once matters for ``simulate``, which validates every object it replays.
    """
    return {
        id(version["schema"]["openAPIV3Schema"]): _compile(version["schema"]["openAPIV3Schema"], strict=True)
        for crd in _default_crds()
        for version in crd["spec"]["versions"]
    }


# ------------------------------------------------------------------------------------------- validation


def _path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(root)"


def _messages(error: ValidationError) -> Iterator[tuple[str, str]]:
    parts = list(error.absolute_path)
    instance = error.instance
    if (
        error.validator == "required"
        and isinstance(instance, dict)
        and isinstance(error.validator_value, list)
    ):
        for name in error.validator_value:
            if name not in instance:
                yield _path([*parts, name]), "Required value"
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        declared = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        for name in instance:
            if name not in declared:
                yield _path([*parts, name]), "unknown field (not declared in the schema)"
    else:
        yield _path(parts), error.message


def _metadata_errors(metadata: Any) -> list[str]:
    if not isinstance(metadata, dict):
        return ["metadata: Required value"]
    errors: list[str] = []
    name = metadata.get("name")
    if name is None and not metadata.get("generateName"):
        errors.append("metadata.name: Required value")
    elif name is not None and not (
        isinstance(name, str) and len(name) <= 253 and _DNS1123_SUBDOMAIN.match(name)
    ):
        errors.append(
            f"metadata.name: {name!r} is not a lowercase RFC 1123 subdomain (at most 253 characters)"
        )
    namespace = metadata.get("namespace")
    if namespace is not None and not (
        isinstance(namespace, str) and len(namespace) <= 63 and _DNS1123_LABEL.match(namespace)
    ):
        errors.append(f"metadata.namespace: {namespace!r} is not a lowercase RFC 1123 label")
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict):
        return [*errors, "metadata.labels: must be a map of strings"]
    for key, value in labels.items():
        prefix, _, label = str(key).rpartition("/")
        if (prefix and not (len(prefix) <= 253 and _DNS1123_SUBDOMAIN.match(prefix))) or not (
            len(label) <= 63 and _LABEL_NAME.match(label)
        ):
            errors.append(f"metadata.labels: invalid label key {key!r}")
        if not (isinstance(value, str) and len(value) <= 63 and _LABEL_VALUE.match(value)):
            errors.append(f"metadata.labels[{key}]: invalid label value {value!r}")
    return errors


def apply_defaults(obj: Mapping[str, Any], crds: list[JSON] | None = None) -> JSON:
    """A copy of ``obj`` as the API server would store it: non-nullable nulls pruned, defaults filled in.

    Objects of unknown kinds are returned unchanged (copied).
    """
    result = copy.deepcopy(dict(obj))
    schema, _ = _find(obj, crds if crds is not None else _default_crds())
    if schema is not None:
        _admit(result, schema)
    return result


def validate_object(
    obj: Mapping[str, Any], crds: list[JSON] | None = None, *, strict: bool = True
) -> list[str]:
    """Error messages (``"spec.lockType: ..."``) for ``obj`` against its CRD; empty when valid.

    ``crds`` defaults to the CRDs rendered from the models. ``strict=False`` accepts unknown fields
    (the API server would silently prune them).
    """
    if not isinstance(obj, Mapping):
        return ["(root): must be an object"]
    schema, lookup_errors = _find(obj, crds if crds is not None else _default_crds())
    if schema is None:
        return lookup_errors
    errors = _metadata_errors(obj.get("metadata"))
    admitted = copy.deepcopy(dict(obj))
    _admit(admitted, schema)
    validator = (
        _default_validators()[id(schema)] if crds is None and strict else _compile(schema, strict=strict)
    )
    found = {message for error in validator.iter_errors(admitted) for message in _messages(error)}
    # metadata is validated above; the schema only says it is an object.
    errors += [f"{path}: {message}" for path, message in sorted(found) if not path.startswith("metadata.")]
    return errors
