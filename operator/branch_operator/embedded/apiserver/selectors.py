"""Label and field selectors (``labelSelector=``, ``fieldSelector=``) for lists and watches.

Selectors are parsed once per request into a predicate, then evaluated per object (and per watch event).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from branch_operator.embedded.apiserver.errors import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")
_FIELD_RE = re.compile(r"^\s*(?P<key>[A-Za-z0-9_.]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^,]*?)\s*$")


def _split_requirements(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` value sets."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _label_requirement(text: str) -> Callable[[dict[str, str]], bool]:
    if m := _SET_RE.match(text):
        key = m["key"]
        values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
        if m["op"] == "in":
            return lambda labels: key in labels and labels[key] in values
        return lambda labels: labels.get(key) not in values
    if m := _CMP_RE.match(text):
        key, value = m["key"], m["value"]
        if m["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS_RE.match(text):
        key = m["key"]
        if m["neg"]:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: {text.strip()!r}")


def parse_label_selector(selector: str | None) -> Predicate | None:
    if not selector:
        return None
    requirements = [_label_requirement(part) for part in _split_requirements(selector)]

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req(labels) for req in requirements)

    return matches


def _field_value(obj: dict[str, Any], path: tuple[str, ...]) -> str:
    value: Any = obj
    for key in path:
        if not isinstance(value, dict):
            return ""
        value = value.get(key)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# A field label and the path of the value it selects; ``None`` as a resource's table: any dotted path.
FieldLabels = dict[str, tuple[str, ...]]

_META_FIELDS: FieldLabels = {"metadata.name": ("metadata", "name"), "metadata.namespace": ("metadata", "namespace")}
_CORE_EVENT_FIELDS: FieldLabels = {
    **{f"involvedObject.{f}": ("involvedObject", f)
       for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
    "reason": ("reason",),
    "reportingComponent": ("reportingComponent",),
    "source": ("source", "component"),
    "type": ("type",),
}  # fmt: skip
_EVENTS_V1_FIELDS: FieldLabels = {
    **{f"regarding.{f}": ("regarding", f)
       for f in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
    "reason": ("reason",),
    "reportingController": ("reportingController",),
    "type": ("type",),
}  # fmt: skip
# Each built-in type's own field labels (its ``ToSelectableFields`` and field label conversion), beyond
# ``metadata.name``/``metadata.namespace``; other built-ins have only those two.
_BUILTIN_FIELDS: dict[tuple[str, str], FieldLabels] = {
    ("", "namespaces"): {"status.phase": ("status", "phase")},
    ("", "events"): _CORE_EVENT_FIELDS,
    ("", "secrets"): {"type": ("type",)},
    ("events.k8s.io", "events"): _EVENTS_V1_FIELDS,
}


def builtin_field_labels(group: str, plural: str) -> FieldLabels:
    labels = {**_META_FIELDS, **_BUILTIN_FIELDS.get((group, plural), {})}
    if (group, plural) == ("", "namespaces"):
        del labels["metadata.namespace"]  # its conversion function knows only these two
    return labels


def custom_field_labels(selectable_fields: Any) -> FieldLabels:
    """``metadata.name``/``metadata.namespace`` plus the CRD version's ``selectableFields`` (``.spec.color``)."""
    labels = dict(_META_FIELDS)
    for entry in selectable_fields or ():
        json_path = str((entry or {}).get("jsonPath", "")).lstrip(".")
        if json_path:
            labels[json_path] = tuple(json_path.split("."))
    return labels


def parse_field_selector(selector: str | None, labels: FieldLabels | None = None) -> Predicate | None:
    """Equality-based field selectors (``=``, ``==``, ``!=``) on the field labels a resource supports.

    Any other field is refused with the real server's 400; ``labels=None`` allows any dotted path.
    """
    if not selector:
        return None
    requirements: list[tuple[tuple[str, ...], bool, str]] = []
    for part in _split_requirements(selector):
        m = _FIELD_RE.match(part)
        if not m:
            raise bad_request(f"invalid field selector: {part.strip()!r}")
        key = m["key"]
        if labels is None:
            path = tuple(key.split("."))
        elif (found := labels.get(key)) is not None:
            path = found
        else:
            raise bad_request(f"field label not supported: {key}")
        requirements.append((path, m["op"] != "!=", m["value"]))

    def matches(obj: dict[str, Any]) -> bool:
        return all((_field_value(obj, path) == value) == equal for path, equal, value in requirements)

    return matches


def combine(*predicates: Predicate | None) -> Predicate | None:
    active = [p for p in predicates if p is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]
    return lambda obj: all(p(obj) for p in active)
