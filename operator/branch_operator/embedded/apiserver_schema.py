"""Structural schemas of custom resources: pruning, defaulting, validation and CEL transition rules.

A CRD version's ``openAPIV3Schema`` is compiled once into a tree of :class:`_Node` objects; requests
then walk only the sections of an object that changed. A hand-written walker is used instead of the
``jsonschema`` library for two reasons: it is several times faster on the status-patch hot path, and
it reports errors the way the real API server does (``spec.x: Invalid value: ...`` causes with field
paths, ``Required value``, ``Unsupported value`` ...), which clients and tests match on.

Everything here is copy-on-write: pruning and defaulting return the same object when nothing changes
and copies of only the changed paths otherwise; stored objects are never mutated.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
from collections.abc import Iterable
from typing import Any

from .apiserver_errors import cause
from .apiserver_patch import json_equal

logger = logging.getLogger(__name__)

Cause = dict[str, str]

# Sections of the root object the schema never prunes, defaults or validates (the server owns them).
ROOT_EXEMPT = frozenset({"apiVersion", "kind", "metadata"})


class SchemaError(ValueError):
    """The CRD's schema cannot be compiled (bad pattern, unknown type, ...)."""


def _json_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _render(value: Any) -> str:
    """A bad value as the server prints it: scalars as JSON, containers by their type name."""
    if isinstance(value, dict | list) or value is None:
        return f'"{json_type(value)}"'
    return json.dumps(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_DATE_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def _valid_format(fmt: str, value: str) -> bool:
    if fmt == "date-time":
        if not _DATE_TIME_RE.match(value):
            return False
        try:
            datetime.datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
        except ValueError:
            return False
        return True
    if fmt == "date":
        if not _DATE_RE.match(value):
            return False
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            return False
        return True
    if fmt == "uuid":
        return bool(_UUID_RE.match(value))
    return True  # Other formats (int32, byte, ...) are not checked.


_TYPE_CHECKS = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


class _Node:
    """One compiled schema node. Attributes are ``None`` when the keyword is absent."""

    __slots__ = (
        "additional",
        "all_of",
        "any_of",
        "default",
        "embedded",
        "enum",
        "enum_strings",
        "exclusive_maximum",
        "exclusive_minimum",
        "format",
        "has_default",
        "int_or_string",
        "items",
        "list_map_keys",
        "list_type",
        "max_items",
        "max_length",
        "max_properties",
        "maximum",
        "min_items",
        "min_length",
        "min_properties",
        "minimum",
        "multiple_of",
        "not_",
        "nullable",
        "one_of",
        "pattern",
        "preserve_unknown",
        "properties",
        "required",
        "rules",
        "type",
    )

    def __init__(self, schema: Any, where: str) -> None:
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: a schema must be an object")
        self.type: str | None = schema.get("type")
        if self.type is not None and self.type not in _TYPE_CHECKS:
            raise SchemaError(f"{where}.type: unsupported type {self.type!r}")
        self.nullable = bool(schema.get("nullable", False))
        self.int_or_string = bool(schema.get("x-kubernetes-int-or-string", False))
        self.preserve_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields", False))
        self.embedded = bool(schema.get("x-kubernetes-embedded-resource", False))
        self.has_default = "default" in schema
        self.default = schema.get("default")

        props = schema.get("properties")
        self.properties: dict[str, _Node] | None = (
            {k: _Node(v, f"{where}.properties.{k}") for k, v in props.items()}
            if isinstance(props, dict)
            else None
        )
        additional = schema.get("additionalProperties")
        self.additional: _Node | None = None
        if isinstance(additional, dict):
            self.additional = _Node(additional, f"{where}.additionalProperties")
        elif additional is True:
            self.preserve_unknown = True
        items = schema.get("items")
        self.items: _Node | None = _Node(items, f"{where}.items") if isinstance(items, dict) else None
        self.required: tuple[str, ...] = tuple(schema.get("required") or ())

        enum = schema.get("enum")
        self.enum: list[Any] | None = list(enum) if isinstance(enum, list) else None
        self.enum_strings: frozenset[str] | None = None
        if self.enum is not None and all(isinstance(e, str) for e in self.enum):
            self.enum_strings = frozenset(self.enum)
        pattern = schema.get("pattern")
        try:
            self.pattern: re.Pattern[str] | None = re.compile(pattern) if pattern is not None else None
        except re.error as e:
            raise SchemaError(f"{where}.pattern: invalid regular expression {pattern!r}: {e}") from e
        self.format: str | None = schema.get("format")
        self.minimum: float | None = schema.get("minimum")
        self.maximum: float | None = schema.get("maximum")
        self.exclusive_minimum = bool(schema.get("exclusiveMinimum", False))
        self.exclusive_maximum = bool(schema.get("exclusiveMaximum", False))
        self.multiple_of: float | None = schema.get("multipleOf")
        self.min_length: int | None = schema.get("minLength")
        self.max_length: int | None = schema.get("maxLength")
        self.min_items: int | None = schema.get("minItems")
        self.max_items: int | None = schema.get("maxItems")
        self.min_properties: int | None = schema.get("minProperties")
        self.max_properties: int | None = schema.get("maxProperties")
        self.list_type: str | None = schema.get("x-kubernetes-list-type")
        self.list_map_keys: tuple[str, ...] = tuple(schema.get("x-kubernetes-list-map-keys") or ())

        def _many(key: str) -> list[_Node] | None:
            subs = schema.get(key)
            return (
                [_Node(s, f"{where}.{key}[{i}]") for i, s in enumerate(subs)]
                if isinstance(subs, list)
                else None
            )

        self.all_of = _many("allOf")
        self.any_of = _many("anyOf")
        self.one_of = _many("oneOf")
        self.not_: _Node | None = (
            _Node(schema["not"], f"{where}.not") if isinstance(schema.get("not"), dict) else None
        )
        self.rules: list[dict[str, Any]] = list(schema.get("x-kubernetes-validations") or ())

    # ------------------------------------------------------------------------------------- pruning

    def prune(self, value: Any) -> Any:
        if isinstance(value, dict):
            if self.embedded:
                return value
            properties, additional = self.properties, self.additional
            if properties is None and additional is None:
                # A structural object with no declared fields keeps nothing, unless told to preserve.
                return (
                    value
                    if (self.preserve_unknown or self.int_or_string or self.type is None)
                    else ({} if value else value)
                )
            changed = False
            out: dict[str, Any] = {}
            for key, item in value.items():
                child = properties.get(key) if properties is not None else None
                if child is None:
                    child = additional
                if child is None:
                    if self.preserve_unknown:
                        out[key] = item
                    else:
                        changed = True
                    continue
                if item is None and not child.nullable:
                    # Non-nullable nulls are dropped before defaulting, as the real server does.
                    changed = True
                    continue
                new = child.prune(item)
                changed = changed or new is not item
                out[key] = new
            return out if changed else value
        if isinstance(value, list) and self.items is not None:
            items_node = self.items
            new_items = [items_node.prune(v) for v in value]
            if any(n is not o for n, o in zip(new_items, value, strict=True)):
                return new_items
        return value

    # ------------------------------------------------------------------------------------ defaulting

    def apply_defaults(self, value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] | None = None
            if self.properties is not None:
                for key, child in self.properties.items():
                    if key in value:
                        old = value[key]
                        new = child.apply_defaults(old)
                    elif child.has_default:
                        old = None
                        new = child.apply_defaults(_json_copy(child.default))
                    else:
                        continue
                    if new is not old or key not in value:
                        if out is None:
                            out = dict(value)
                        out[key] = new
            if self.additional is not None:
                additional = self.additional
                for key, old in value.items():
                    if self.properties is not None and key in self.properties:
                        continue
                    new = additional.apply_defaults(old)
                    if new is not old:
                        if out is None:
                            out = dict(value)
                        out[key] = new
            return out if out is not None else value
        if isinstance(value, list) and self.items is not None:
            items_node = self.items
            new_items = [items_node.apply_defaults(v) for v in value]
            if any(n is not o for n, o in zip(new_items, value, strict=True)):
                return new_items
        return value

    # ------------------------------------------------------------------------------------ validation

    def validate(self, value: Any, path: str, errs: list[Cause]) -> None:
        if value is None:
            if not self.nullable and self.type is not None:
                errs.append(
                    cause(
                        "FieldValueTypeInvalid",
                        path,
                        f'{path}: Invalid value: "null": {path} in body must be of type {self.type}: "null"',
                    )
                )
            return
        if self.int_or_string:
            if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
                t = json_type(value)
                errs.append(
                    cause(
                        "FieldValueTypeInvalid",
                        path,
                        f'{path}: Invalid value: "{t}": {path} in body must be of type integer-or-string: "{t}"',
                    )
                )
                return
        elif self.type is not None and not _TYPE_CHECKS[self.type](value):
            t = json_type(value)
            errs.append(
                cause(
                    "FieldValueTypeInvalid",
                    path,
                    f'{path}: Invalid value: "{t}": {path} in body must be of type {self.type}: "{t}"',
                )
            )
            return

        if self.enum is not None:
            if self.enum_strings is not None:
                ok = isinstance(value, str) and value in self.enum_strings
            else:
                ok = any(json_equal(value, e) for e in self.enum)
            if not ok:
                supported = ", ".join(json.dumps(e) for e in self.enum)
                errs.append(
                    cause(
                        "FieldValueNotSupported",
                        path,
                        f"{path}: Unsupported value: {_render(value)}: supported values: {supported}",
                    )
                )

        if isinstance(value, str):
            self._validate_string(value, path, errs)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._validate_number(value, path, errs)
        elif isinstance(value, list):
            self._validate_array(value, path, errs)
        elif isinstance(value, dict):
            self._validate_object(value, path, errs)

        if self.all_of is not None:
            for sub in self.all_of:
                sub.validate(value, path, errs)
        if self.any_of is not None and not any(sub.accepts(value, path) for sub in self.any_of):
            errs.append(self._invalid(path, value, f"{path} in body must match at least one schema in anyOf"))
        if self.one_of is not None and sum(1 for sub in self.one_of if sub.accepts(value, path)) != 1:
            errs.append(self._invalid(path, value, f"{path} in body must match exactly one schema in oneOf"))
        if self.not_ is not None and self.not_.accepts(value, path):
            errs.append(self._invalid(path, value, f"{path} in body must not match the schema in not"))

    def accepts(self, value: Any, path: str) -> bool:
        errs: list[Cause] = []
        self.validate(value, path, errs)
        return not errs

    @staticmethod
    def _invalid(path: str, value: Any, detail: str) -> Cause:
        return cause("FieldValueInvalid", path, f"{path}: Invalid value: {_render(value)}: {detail}")

    def _validate_string(self, value: str, path: str, errs: list[Cause]) -> None:
        if self.max_length is not None and len(value) > self.max_length:
            errs.append(
                cause(
                    "FieldValueTooLong", path, f"{path}: Too long: may not be longer than {self.max_length}"
                )
            )
        if self.min_length is not None and len(value) < self.min_length:
            errs.append(
                self._invalid(path, value, f"{path} in body should be at least {self.min_length} chars long")
            )
        if self.pattern is not None and not self.pattern.search(value):
            errs.append(self._invalid(path, value, f"{path} in body should match '{self.pattern.pattern}'"))
        if self.format is not None and not _valid_format(self.format, value):
            errs.append(
                self._invalid(
                    path, value, f"{path} in body must be of type {self.format}: {json.dumps(value)}"
                )
            )

    def _validate_number(self, value: float, path: str, errs: list[Cause]) -> None:
        if self.minimum is not None:
            if self.exclusive_minimum and value <= self.minimum:
                errs.append(
                    self._invalid(path, value, f"{path} in body should be greater than {self.minimum}")
                )
            elif value < self.minimum:
                errs.append(
                    self._invalid(
                        path, value, f"{path} in body should be greater than or equal to {self.minimum}"
                    )
                )
        if self.maximum is not None:
            if self.exclusive_maximum and value >= self.maximum:
                errs.append(self._invalid(path, value, f"{path} in body should be less than {self.maximum}"))
            elif value > self.maximum:
                errs.append(
                    self._invalid(
                        path, value, f"{path} in body should be less than or equal to {self.maximum}"
                    )
                )
        if self.multiple_of:
            quotient = value / self.multiple_of
            if not math.isclose(quotient, round(quotient)):
                errs.append(
                    self._invalid(path, value, f"{path} in body should be a multiple of {self.multiple_of}")
                )

    def _validate_array(self, value: list[Any], path: str, errs: list[Cause]) -> None:
        if self.min_items is not None and len(value) < self.min_items:
            errs.append(
                self._invalid(path, value, f"{path} in body should have at least {self.min_items} items")
            )
        if self.max_items is not None and len(value) > self.max_items:
            errs.append(
                cause(
                    "FieldValueTooMany",
                    path,
                    f"{path}: Too many: {len(value)}: must have at most {self.max_items} items",
                )
            )
        if self.items is not None:
            items_node = self.items
            for i, item in enumerate(value):
                items_node.validate(item, f"{path}[{i}]", errs)
        if self.list_type in ("set", "map"):
            seen: list[Any] = []
            for i, item in enumerate(value):
                key = (
                    [item.get(k) for k in self.list_map_keys]
                    if self.list_type == "map" and isinstance(item, dict)
                    else item
                )
                if any(json_equal(key, s) for s in seen):
                    errs.append(
                        cause(
                            "FieldValueDuplicate",
                            f"{path}[{i}]",
                            f"{path}[{i}]: Duplicate value: {_render(key)}",
                        )
                    )
                seen.append(key)

    def _validate_object(self, value: dict[str, Any], path: str, errs: list[Cause]) -> None:
        for key in self.required:
            if key not in value:
                field = _join(path, key)
                errs.append(cause("FieldValueRequired", field, f"{field}: Required value"))
        if self.min_properties is not None and len(value) < self.min_properties:
            errs.append(
                self._invalid(
                    path, value, f"{path} in body should have at least {self.min_properties} properties"
                )
            )
        if self.max_properties is not None and len(value) > self.max_properties:
            errs.append(
                cause(
                    "FieldValueTooMany",
                    path,
                    f"{path}: Too many: {len(value)}: must have at most {self.max_properties} items",
                )
            )
        properties, additional = self.properties, self.additional
        if properties is None and additional is None:
            return
        for key, item in value.items():
            child = properties.get(key) if properties is not None else None
            if child is None:
                child = additional
            if child is not None:
                child.validate(item, _join(path, key), errs)


# ---------------------------------------------------------------------------------------------- CEL

# Only the immutability/transition forms ``self[.a.b] == oldSelf[.a.b]`` (either order) are evaluated.
# Any other rule is skipped, with one warning per distinct rule text: a full CEL interpreter is out of
# scope for a test double, and skipping is safer than rejecting objects the real server would accept.
_CEL_SIDE = r"(self|oldSelf)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
_CEL_EQ_RE = re.compile(rf"^\s*{_CEL_SIDE}\s*==\s*{_CEL_SIDE}\s*$")
_warned_rules: set[str] = set()

_ABSENT: Any = object()


def _dig(value: Any, path: Iterable[str]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return _ABSENT
        value = value[key]
    return value


class _TransitionRule:
    __slots__ = ("field", "message", "node_path", "rule", "sides")

    def __init__(self, node_path: tuple[str, ...], spec: dict[str, Any], sides: list[tuple[bool, list[str]]]):
        self.node_path = node_path
        self.rule: str = spec["rule"]
        self.sides = sides  # [(is_old, path), (is_old, path)]
        field_path = str(spec.get("fieldPath") or "").lstrip(".")
        self.field = ".".join([*node_path, *([field_path] if field_path else [])])
        message = spec.get("message")
        self.message = f'{self.field}: Invalid value: "object": {message or "failed rule: " + self.rule}'

    def holds(self, new: Any, old: Any) -> bool:
        lhs, rhs = (_dig(old if is_old else new, path) for is_old, path in self.sides)
        if lhs is _ABSENT and rhs is _ABSENT:
            return True
        return lhs is not _ABSENT and rhs is not _ABSENT and json_equal(lhs, rhs)


def _warn_once(rule: str, why: str) -> None:
    if rule not in _warned_rules:
        _warned_rules.add(rule)
        logger.warning("Embedded API server skips the CEL rule %r: %s", rule, why)


def _collect_rules(
    node: _Node, path: tuple[str, ...], out: list[_TransitionRule], *, reachable: bool
) -> None:
    for spec in node.rules:
        rule = str(spec.get("rule", ""))
        m = _CEL_EQ_RE.match(rule)
        if not reachable:
            _warn_once(rule, "rules under arrays or maps are not supported")
        elif m is None or {m[1], m[3]} != {"self", "oldSelf"}:
            _warn_once(rule, "only `self.x == oldSelf.x` transition rules are supported")
        else:
            sides = [
                (m[1] == "oldSelf", [p for p in m[2].split(".") if p]),
                (m[3] == "oldSelf", [p for p in m[4].split(".") if p]),
            ]
            out.append(_TransitionRule(path, spec, sides))
    for key, child in (node.properties or {}).items():
        _collect_rules(child, (*path, key), out, reachable=reachable)
    for sub in (node.items, node.additional):
        if sub is not None:
            _collect_rules(sub, path, out, reachable=False)


# ---------------------------------------------------------------------------------------- the schema


class CompiledSchema:
    """A CRD version's schema, compiled once and applied to every write of that version's objects."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.root = _Node(schema, "openAPIV3Schema")
        self.transition_rules: list[_TransitionRule] = []
        _collect_rules(self.root, (), self.transition_rules, reachable=True)

    def admit(self, obj: dict[str, Any], old: dict[str, Any] | None) -> tuple[dict[str, Any], list[Cause]]:
        """Prune, default and validate the sections of ``obj`` that differ (by identity) from ``old``.

        Unchanged sections were admitted when they were stored; skipping them keeps status writes cheap
        (and matches the server's validation ratcheting of unchanged fields).
        """
        root = self.root
        properties = root.properties or {}
        out: dict[str, Any] | None = None
        for key, value in obj.items():
            if key in ROOT_EXEMPT or (old is not None and old.get(key, _ABSENT) is value):
                continue
            child = properties.get(key, root.additional)
            if child is None:
                if not root.preserve_unknown:
                    out = dict(obj) if out is None else out
                    del out[key]
                continue
            if value is None and not child.nullable:
                out = dict(obj) if out is None else out
                del out[key]
                continue
            new = child.apply_defaults(child.prune(value))
            if new is not value:
                out = dict(obj) if out is None else out
                out[key] = new
        for key, child in properties.items():
            if child.has_default and key not in obj and key not in ROOT_EXEMPT:
                out = dict(obj) if out is None else out
                out[key] = child.apply_defaults(_json_copy(child.default))
        result = out if out is not None else obj

        errs: list[Cause] = []
        for key in root.required:
            if key not in result:
                errs.append(cause("FieldValueRequired", key, f"{key}: Required value"))
        for key, value in result.items():
            if key in ROOT_EXEMPT or (old is not None and old.get(key, _ABSENT) is value):
                continue
            child = properties.get(key, root.additional)
            if child is not None:
                child.validate(value, key, errs)
        if old is not None:
            for rule in self.transition_rules:
                section = rule.node_path[0] if rule.node_path else None
                if section is not None and result.get(section, _ABSENT) is old.get(section, _ABSENT):
                    continue
                new_node, old_node = _dig(result, rule.node_path), _dig(old, rule.node_path)
                if new_node is _ABSENT or old_node is _ABSENT:
                    continue
                if not rule.holds(new_node, old_node):
                    errs.append(cause("FieldValueInvalid", rule.field, rule.message))
        return result, errs
