"""Structural schemas of custom resources: pruning, defaulting, validation and CEL rules (``cel.py``).

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
import math
import re
from collections.abc import Callable
from typing import Any

from branch_operator.embedded.apiserver import cel
from branch_operator.embedded.apiserver.errors import cause
from branch_operator.embedded.apiserver.patch import json_equal

Cause = dict[str, str]

# Sections of the root object the schema never prunes, defaults or validates (the server owns them).
ROOT_EXEMPT = frozenset({"apiVersion", "kind", "metadata"})


class SchemaError(ValueError):
    """The CRD's schema cannot be compiled (bad pattern, unknown type, ...).

    ``field``: the path below the version's ``schema`` the real server reports it at, when that is known.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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


_CHECKED_FORMATS = frozenset({"date-time", "date", "uuid"})  # Others (int32, byte, ...) are not checked.


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


Validator = Callable[[Any, str, list[Cause]], None]
Normalizer = Callable[[Any], Any]

# Exact class checks: JSON-decoded data has no subclasses, and ``bool`` must not pass for ``integer``.
_TYPE_OK: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: v.__class__ is dict,
    "array": lambda v: v.__class__ is list,
    "string": lambda v: v.__class__ is str,
    "boolean": lambda v: v.__class__ is bool,
    "integer": lambda v: v.__class__ is int or (v.__class__ is float and v.is_integer()),
    "number": lambda v: v.__class__ is int or v.__class__ is float,
}


def _int_or_string(v: Any) -> bool:
    return v.__class__ is int or v.__class__ is str


def _invalid(path: str, value: Any, detail: str) -> Cause:
    return cause("FieldValueInvalid", path, f"Invalid value: {_render(value)}: {detail}")


class _Node:
    """One compiled schema node.

    Compilation turns the node into two closures that do only what its keywords ask for:
    ``normalize`` (pruning and defaulting in one pass; None when the subtree has nothing to prune or
    default) and ``validate`` (appends causes to a list).
    """

    __slots__ = (
        "additional",
        "default",
        "has_default",
        "items",
        "keep_unknown",
        "normalize",
        "nullable",
        "properties",
        "required",
        "validate",
    )

    def __init__(self, schema: Any, where: str) -> None:
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: a schema must be an object")
        type_: str | None = schema.get("type")
        if type_ is not None and type_ not in _TYPE_OK:
            raise SchemaError(f"{where}.type: unsupported type {type_!r}")
        self.nullable = bool(schema.get("nullable", False))
        self.has_default = "default" in schema
        self.default = schema.get("default")

        props = schema.get("properties")
        self.properties: dict[str, _Node] | None = (
            {k: _Node(v, f"{where}.properties.{k}") for k, v in props.items()} if isinstance(props, dict) else None
        )
        additional_doc = schema.get("additionalProperties")
        additional = (
            _Node(additional_doc, f"{where}.additionalProperties") if isinstance(additional_doc, dict) else None
        )
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields", False)) or additional_doc is True
        items_doc = schema.get("items")
        self.items: _Node | None = _Node(items_doc, f"{where}.items") if isinstance(items_doc, dict) else None
        int_or_string = bool(schema.get("x-kubernetes-int-or-string", False))
        embedded = bool(schema.get("x-kubernetes-embedded-resource", False))
        self.additional = additional
        self.keep_unknown = preserve or int_or_string or embedded or type_ is None
        self.required: tuple[str, ...] = tuple(schema.get("required") or ())

        self.normalize = self._compile_normalize(type_, additional, self.keep_unknown, embedded)
        self.validate = self._compile_validate(schema, where, type_, additional, int_or_string)

    # ---------------------------------------------------------------------------- pruning, defaulting

    def default_value(self) -> Any:
        value = _json_copy(self.default)
        return self.normalize(value) if self.normalize is not None else value

    def _compile_normalize(
        self, type_: str | None, additional: _Node | None, keep_unknown: bool, embedded: bool
    ) -> Normalizer | None:
        if embedded:
            return None
        properties = self.properties or {}
        if self.items is not None and self.items.normalize is not None:
            normalize_item = self.items.normalize

            def normalize_list(value: Any) -> Any:
                if value.__class__ is not list:
                    return value
                new_items = [normalize_item(v) for v in value]
                for new, old in zip(new_items, value, strict=True):
                    if new is not old:
                        return new_items
                return value

            return normalize_list
        if self.properties is None and additional is None:
            if keep_unknown:
                return None

            def prune_all(value: Any) -> Any:
                # A structural object with no declared fields keeps nothing.
                return {} if value.__class__ is dict and value else value

            return prune_all

        defaults = [(k, c) for k, c in properties.items() if c.has_default]

        def normalize_object(value: Any) -> Any:
            if value.__class__ is not dict:
                return value
            out: dict[str, Any] | None = None
            for key, item in value.items():
                child = properties.get(key, additional)
                if child is None:
                    if not keep_unknown:
                        if out is None:
                            out = dict(value)
                        del out[key]
                    continue
                if item is None:
                    if not child.nullable:
                        # Non-nullable nulls are dropped before defaulting, as the real server does.
                        if out is None:
                            out = dict(value)
                        del out[key]
                    continue
                normalize = child.normalize
                if normalize is not None:
                    new = normalize(item)
                    if new is not item:
                        if out is None:
                            out = dict(value)
                        out[key] = new
            for key, child in defaults:
                if key not in (value if out is None else out):
                    if out is None:
                        out = dict(value)
                    out[key] = child.default_value()
            return value if out is None else out

        return normalize_object

    # ------------------------------------------------------------------------------------ validation

    def _compile_validate(
        self, schema: dict[str, Any], where: str, type_: str | None, additional: _Node | None, int_or_string: bool
    ) -> Validator:
        checks: list[Validator] = []
        enum = schema.get("enum")
        if isinstance(enum, list):
            checks.append(_enum_check(enum))
        string_check = _string_check(schema, where, guard=type_ != "string")
        if string_check is not None:
            checks.append(string_check)
        number_check = _number_check(schema, guard=type_ not in ("integer", "number"))
        if number_check is not None:
            checks.append(number_check)
        if self.items is not None or any(k in schema for k in ("minItems", "maxItems", "x-kubernetes-list-type")):
            checks.append(_array_check(schema, self.items, guard=type_ != "array"))
        if (
            self.properties is not None
            or additional is not None
            or any(k in schema for k in ("required", "minProperties", "maxProperties"))
        ):
            checks.append(_object_check(schema, self.properties, additional, guard=type_ != "object"))
        checks.extend(_combinator_checks(schema, where))

        type_ok = _int_or_string if int_or_string else (_TYPE_OK[type_] if type_ is not None else None)
        type_name = "integer-or-string" if int_or_string else type_
        nullable = self.nullable

        def validate(value: Any, path: str, errs: list[Cause]) -> None:
            if value is None:
                if not nullable and type_name is not None:
                    errs.append(
                        cause(
                            "FieldValueTypeInvalid",
                            path,
                            f'Invalid value: "null": {path} in body must be of type {type_name}: "null"',
                        )
                    )
                return
            if type_ok is not None and not type_ok(value):
                t = json_type(value)
                errs.append(
                    cause(
                        "FieldValueTypeInvalid",
                        path,
                        f'Invalid value: "{t}": {path} in body must be of type {type_name}: "{t}"',
                    )
                )
                return
            for check in checks:
                check(value, path, errs)

        return validate

    def accepts(self, value: Any, path: str) -> bool:
        errs: list[Cause] = []
        self.validate(value, path, errs)
        return not errs


def _enum_check(enum: list[Any]) -> Validator:
    strings = frozenset(e for e in enum if isinstance(e, str)) if all(isinstance(e, str) for e in enum) else None
    supported = ", ".join(json.dumps(e) for e in enum)

    def check(value: Any, path: str, errs: list[Cause]) -> None:
        ok = (
            (value.__class__ is str and value in strings)
            if strings is not None
            else any(json_equal(value, e) for e in enum)
        )
        if not ok:
            errs.append(
                cause(
                    "FieldValueNotSupported",
                    path,
                    f"Unsupported value: {_render(value)}: supported values: {supported}",
                )
            )

    return check


def _string_check(schema: dict[str, Any], where: str, *, guard: bool) -> Validator | None:
    max_length: int | None = schema.get("maxLength")
    min_length: int | None = schema.get("minLength")
    pattern_text: str | None = schema.get("pattern")
    fmt: str | None = schema.get("format")
    if fmt not in _CHECKED_FORMATS:
        fmt = None
    if max_length is None and min_length is None and pattern_text is None and fmt is None:
        return None
    try:
        pattern = re.compile(pattern_text) if pattern_text is not None else None
    except re.error as e:
        raise SchemaError(f"{where}.pattern: invalid regular expression {pattern_text!r}: {e}") from e

    def check(value: Any, path: str, errs: list[Cause]) -> None:
        if guard and value.__class__ is not str:
            return
        if max_length is not None and len(value) > max_length:
            errs.append(cause("FieldValueTooLong", path, f"Too long: may not be longer than {max_length}"))
        if min_length is not None and len(value) < min_length:
            errs.append(_invalid(path, value, f"{path} in body should be at least {min_length} chars long"))
        if pattern is not None and not pattern.search(value):
            errs.append(_invalid(path, value, f"{path} in body should match '{pattern.pattern}'"))
        if fmt is not None and not _valid_format(fmt, value):
            errs.append(_invalid(path, value, f"{path} in body must be of type {fmt}: {json.dumps(value)}"))

    return check


def _number_check(schema: dict[str, Any], *, guard: bool) -> Validator | None:
    minimum: float | None = schema.get("minimum")
    maximum: float | None = schema.get("maximum")
    exclusive_minimum = bool(schema.get("exclusiveMinimum", False))
    exclusive_maximum = bool(schema.get("exclusiveMaximum", False))
    multiple_of: float | None = schema.get("multipleOf")
    if minimum is None and maximum is None and not multiple_of:
        return None

    def check(value: Any, path: str, errs: list[Cause]) -> None:
        if guard and value.__class__ not in (int, float):
            return
        if minimum is not None:
            if exclusive_minimum and value <= minimum:
                errs.append(_invalid(path, value, f"{path} in body should be greater than {minimum}"))
            elif value < minimum:
                errs.append(_invalid(path, value, f"{path} in body should be greater than or equal to {minimum}"))
        if maximum is not None:
            if exclusive_maximum and value >= maximum:
                errs.append(_invalid(path, value, f"{path} in body should be less than {maximum}"))
            elif value > maximum:
                errs.append(_invalid(path, value, f"{path} in body should be less than or equal to {maximum}"))
        if multiple_of:
            quotient = value / multiple_of
            if not math.isclose(quotient, round(quotient)):
                errs.append(_invalid(path, value, f"{path} in body should be a multiple of {multiple_of}"))

    return check


def _array_check(schema: dict[str, Any], items: _Node | None, *, guard: bool) -> Validator:
    min_items: int | None = schema.get("minItems")
    max_items: int | None = schema.get("maxItems")
    list_type: str | None = schema.get("x-kubernetes-list-type")
    map_keys: tuple[str, ...] = tuple(schema.get("x-kubernetes-list-map-keys") or ())
    validate_item = items.validate if items is not None else None

    def check(value: Any, path: str, errs: list[Cause]) -> None:
        if guard and value.__class__ is not list:
            return
        if min_items is not None and len(value) < min_items:
            errs.append(_invalid(path, value, f"{path} in body should have at least {min_items} items"))
        if max_items is not None and len(value) > max_items:
            errs.append(
                cause("FieldValueTooMany", path, f"Too many: {len(value)}: must have at most {max_items} items")
            )
        if validate_item is not None:
            for i, item in enumerate(value):
                validate_item(item, f"{path}[{i}]", errs)
        if list_type in ("set", "map"):
            seen: list[Any] = []
            for i, item in enumerate(value):
                key = [item.get(k) for k in map_keys] if list_type == "map" and isinstance(item, dict) else item
                if any(json_equal(key, s) for s in seen):
                    errs.append(
                        cause("FieldValueDuplicate", f"{path}[{i}]", f"Duplicate value: {_render(key)}")
                    )
                seen.append(key)

    return check


def _object_check(
    schema: dict[str, Any], properties: dict[str, _Node] | None, additional: _Node | None, *, guard: bool
) -> Validator:
    required: tuple[str, ...] = tuple(schema.get("required") or ())
    min_properties: int | None = schema.get("minProperties")
    max_properties: int | None = schema.get("maxProperties")
    validators = {k: c.validate for k, c in (properties or {}).items()}
    validate_additional = additional.validate if additional is not None else None
    has_children = bool(validators) or validate_additional is not None

    def check(value: Any, path: str, errs: list[Cause]) -> None:
        if guard and value.__class__ is not dict:
            return
        for key in required:
            if key not in value:
                field = _join(path, key)
                errs.append(cause("FieldValueRequired", field, "Required value"))
        if min_properties is not None and len(value) < min_properties:
            errs.append(_invalid(path, value, f"{path} in body should have at least {min_properties} properties"))
        if max_properties is not None and len(value) > max_properties:
            errs.append(
                cause(
                    "FieldValueTooMany",
                    path,
                    f"Too many: {len(value)}: must have at most {max_properties} items",
                )
            )
        if has_children:
            prefix = f"{path}." if path else ""
            for key, item in value.items():
                validate = validators.get(key, validate_additional)
                if validate is not None:
                    validate(item, prefix + key, errs)

    return check


def _combinator_checks(schema: dict[str, Any], where: str) -> list[Validator]:
    """allOf/anyOf/oneOf/not: value validations only (structural schemas keep types out of them)."""
    checks: list[Validator] = []

    def many(key: str) -> list[_Node]:
        subs = schema.get(key)
        return [_Node(s, f"{where}.{key}[{i}]") for i, s in enumerate(subs)] if isinstance(subs, list) else []

    if all_of := many("allOf"):

        def check_all(value: Any, path: str, errs: list[Cause]) -> None:
            for sub in all_of:
                sub.validate(value, path, errs)

        checks.append(check_all)
    if any_of := many("anyOf"):

        def check_any(value: Any, path: str, errs: list[Cause]) -> None:
            if not any(sub.accepts(value, path) for sub in any_of):
                errs.append(_invalid(path, value, f"{path} in body must match at least one schema in anyOf"))

        checks.append(check_any)
    if one_of := many("oneOf"):

        def check_one(value: Any, path: str, errs: list[Cause]) -> None:
            if sum(1 for sub in one_of if sub.accepts(value, path)) != 1:
                errs.append(_invalid(path, value, f"{path} in body must match exactly one schema in oneOf"))

        checks.append(check_one)
    if isinstance(schema.get("not"), dict):
        not_ = _Node(schema["not"], f"{where}.not")

        def check_not(value: Any, path: str, errs: list[Cause]) -> None:
            if not_.accepts(value, path):
                errs.append(_invalid(path, value, f"{path} in body must not match the schema in not"))

        checks.append(check_not)
    return checks


_ABSENT: Any = object()


# ---------------------------------------------------------------------------------------- the schema


class CompiledSchema:
    """A CRD version's schema, compiled once and applied to every write of that version's objects."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.root = _Node(schema, "openAPIV3Schema")
        try:
            self.rules = cel.compile_rules(schema)
        except cel.RuleError as e:
            raise SchemaError(e.detail, e.field) from e

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
                if not root.keep_unknown:
                    out = dict(obj) if out is None else out
                    del out[key]
                continue
            if value is None and not child.nullable:
                out = dict(obj) if out is None else out
                del out[key]
                continue
            if child.normalize is not None:
                new = child.normalize(value)
                if new is not value:
                    out = dict(obj) if out is None else out
                    out[key] = new
        for key, child in properties.items():
            if child.has_default and key not in ROOT_EXEMPT and key not in (obj if out is None else out):
                out = dict(obj) if out is None else out
                out[key] = child.default_value()
        result = out if out is not None else obj

        errs: list[Cause] = []
        for key in root.required:
            if key not in result:
                errs.append(cause("FieldValueRequired", key, "Required value"))
        for key, value in result.items():
            if key in ROOT_EXEMPT or (old is not None and old.get(key, _ABSENT) is value):
                continue
            child = properties.get(key, root.additional)
            if child is not None:
                child.validate(value, key, errs)
        if self.rules:
            if any(c["reason"] in cel.BLOCKING_REASONS for c in errs):
                errs.append(cel.BLOCKED_NOTE)
            else:
                untouched = frozenset(
                    k for k, v in result.items() if old is not None and old.get(k, _ABSENT) is v
                )
                errs.extend(cel.evaluate(self.rules, result, old, untouched))
        return result, errs


def unknown_fields(schema: CompiledSchema, obj: Any) -> list[str]:
    """The paths (``spec.tags[0].x``) of ``obj``'s fields the schema does not declare: what pruning would
    drop, and what ``fieldValidation=Strict`` refuses. Walked only when a client asks for field validation,
    so the write path pays nothing otherwise."""
    found: list[str] = []
    if isinstance(obj, dict):
        root = schema.root
        for key, value in obj.items():
            if key in ROOT_EXEMPT:
                continue
            _unknown(root, key, value, key, found)
    return found


def _unknown(parent: _Node, key: str, value: Any, path: str, found: list[str]) -> None:
    child = (parent.properties or {}).get(key, parent.additional)
    if child is None:
        if not parent.keep_unknown:
            found.append(path)
        return
    _unknown_in(child, value, path, found)


def _unknown_in(node: _Node, value: Any, path: str, found: list[str]) -> None:
    if node.keep_unknown:
        return
    if isinstance(value, dict) and (node.properties is not None or node.additional is not None):
        for key, item in value.items():
            _unknown(node, key, item, f"{path}.{key}", found)
    elif isinstance(value, dict) and node.items is None:
        found.extend(f"{path}.{key}" for key in value)  # an object with no declared fields keeps none
    elif isinstance(value, list) and node.items is not None:
        for i, item in enumerate(value):
            _unknown_in(node.items, item, f"{path}[{i}]", found)
