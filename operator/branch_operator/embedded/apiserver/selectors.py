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


def _field_value(obj: dict[str, Any], path: list[str]) -> str:
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


def parse_field_selector(selector: str | None) -> Predicate | None:
    """Equality-based field selectors on any dotted path (``metadata.name``, ``involvedObject.uid``, ...).

    The real server only allows a per-resource set of fields; accepting any path is a superset.
    """
    if not selector:
        return None
    requirements: list[tuple[list[str], bool, str]] = []
    for part in _split_requirements(selector):
        m = _FIELD_RE.match(part)
        if not m:
            raise bad_request(f"invalid field selector: {part.strip()!r}")
        requirements.append((m["key"].split("."), m["op"] != "!=", m["value"]))

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
