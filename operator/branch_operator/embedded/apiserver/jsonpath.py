"""client-go's JSONPath (k8s.io/client-go/util/jsonpath), as kube-apiserver evaluates printer columns.

Its own implementation rather than a JSONPath library: client-go's dialect is not RFC 9535 nor Goessner's.
Field names run up to a terminator (so ``.metadata.labels.k8s-app`` and ``.labels.web/html`` are one
key each, ``\\.`` escapes a dot), ``['key']`` is re-parsed as ``.key``, a filter compares exactly one value
per side with Go template semantics (``1 == "1"`` is an error, not false), an out-of-range index is an error,
and missing keys yield nothing when allowed. jsonpath-ng follows none of these.

Not supported: ``range``/``end`` blocks (no column uses them; they raise :class:`JsonPathError`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["JsonPath", "JsonPathError", "go_json", "go_text"]


class JsonPathError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ nodes


@dataclass(frozen=True, slots=True)
class _Text:
    value: Any  # a literal: str, int, float or bool


@dataclass(frozen=True, slots=True)
class _Field:
    name: str


@dataclass(frozen=True, slots=True)
class _Wildcard:
    pass


@dataclass(frozen=True, slots=True)
class _Recursive:
    pass


@dataclass(frozen=True, slots=True)
class _Slice:
    start: int | None
    end: int | None
    step: int | None
    index: bool  # written as [n]: the end is derived from the start


@dataclass(frozen=True, slots=True)
class _Union:
    branches: tuple[tuple[object, ...], ...]


@dataclass(frozen=True, slots=True)
class _Filter:
    left: tuple[object, ...]
    op: str
    right: tuple[object, ...]


_TERMINATORS = frozenset(" \t\r\n.,[]$@{}")
_SLICE = re.compile(r"^(-?\d*)(:-?\d*)?(:-?\d*)?$")
_DICT_KEY = re.compile(r"^'([^']*)'$")
_FILTER = re.compile(r"^([^!<>=]+)([!<>=]+)(.+?)$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?")


# ---------------------------------------------------------------------------------------- parsing


def _parse_template(text: str) -> list[object]:
    """Top-level nodes: literal text between actions, and one step list per ``{...}`` action."""
    nodes: list[object] = []
    pos = 0
    while pos < len(text):
        start = text.find("{", pos)
        if start < 0:
            nodes.append(_Text(text[pos:]))
            break
        if start > pos:
            nodes.append(_Text(text[pos:start]))
        end = _action_end(text, start + 1)
        nodes.append(tuple(_parse_action(text[start + 1 : end])))
        pos = end + 1
    return nodes


def _action_end(text: str, pos: int) -> int:
    quote = ""
    while pos < len(text):
        c = text[pos]
        if quote:
            if c == "\\":
                pos += 1
            elif c == quote:
                quote = ""
        elif c == '"':
            quote = c
        elif c == "}":
            return pos
        pos += 1
    raise JsonPathError(f"unclosed action in {text!r}")


def _parse_action(text: str) -> list[object]:
    steps: list[object] = []
    pos, n = 0, len(text)
    while pos < n:
        c = text[pos]
        if c in " \t\r\n@$":
            pos += 1
        elif c == ".":
            if text.startswith("..", pos):
                steps.append(_Recursive())
                pos += 1
                while text.startswith("..", pos):  # client-go reads "...x" like "..x"
                    pos += 1
                continue
            end = pos + 1
            while end < n and text[end] not in _TERMINATORS:
                end += 2 if text[end] == "\\" else 1
            name = text[pos + 1 : end].replace("\\", "")
            steps.append(_Wildcard() if name == "*" else _Field(name))
            pos = end
        elif c == "[":
            pos = _parse_bracket(text, pos, steps)
        elif c == '"':
            end = pos + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if end >= n:
                raise JsonPathError(f"unterminated quoted string in {text!r}")
            steps.append(_Text(_unquote(text[pos + 1 : end])))
            pos = end + 1
        elif (m := _NUMBER.match(text, pos)) is not None and m.group(0):
            literal = m.group(0)
            steps.append(_Text(float(literal) if m.group(1) or m.group(2) else int(literal)))
            pos = m.end()
        else:
            word = re.match(r"[A-Za-z_]\w*", text[pos:])
            if word is None:
                raise JsonPathError(f"unrecognized character {c!r} in {text!r}")
            if word.group(0) in ("true", "false"):
                steps.append(_Text(word.group(0) == "true"))
                pos += word.end()
            else:
                raise JsonPathError(f"unsupported identifier {word.group(0)!r} in {text!r}")
    return steps


def _unquote(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), body)


def _parse_bracket(text: str, pos: int, steps: list[object]) -> int:
    if text.startswith("[?(", pos):
        return _parse_filter(text, pos, steps)
    end = text.find("]", pos)
    if end < 0:
        raise JsonPathError(f"unterminated array in {text!r}")
    inner = text[pos + 1 : end]
    if inner == "*":
        inner = ":"
    parts = inner.split(",")
    if len(parts) > 1:
        steps.append(_Union(tuple(tuple(_parse_action(f"[{p.strip()}]")) for p in parts)))
        return end + 1
    key = _DICT_KEY.match(inner)
    if key is not None:
        steps.extend(_parse_action(f".{key[1]}"))
        return end + 1
    m = _SLICE.match(inner)
    if m is None:
        raise JsonPathError(f"invalid array index {inner}")
    numbers = [int(g.lstrip(":")) if g and g.lstrip(":") else None for g in m.groups()]
    steps.append(_Slice(numbers[0], numbers[1], numbers[2], index=m[2] is None))
    return end + 1


def _parse_filter(text: str, pos: int, steps: list[object]) -> int:
    i = pos + 3
    begin = end = False
    pair = ""
    while True:
        if i >= len(text) or text[i] == "\n":
            raise JsonPathError("unterminated filter")
        c = text[i]
        i += 1
        if c in "\"'":
            if not begin:
                begin, pair = True, c
                continue
            if text[i - 2] != "\\" and c == pair:
                end = True
        elif c == ")" and begin == end:
            break
    if i >= len(text) or text[i] != "]":
        raise JsonPathError("unclosed array expect ]")
    body = text[pos + 3 : i - 1]
    m = _FILTER.match(body)
    if m is None:
        steps.append(_Filter(tuple(_parse_action(body)), "exists", ()))
    else:
        steps.append(_Filter(tuple(_parse_action(m[1])), m[2], tuple(_parse_action(m[3]))))
    return i + 1


# ------------------------------------------------------------------------------------- evaluation


class JsonPath:
    """A parsed template such as ``{.status.conditions[?(@.type=="Ready")].status}``."""

    __slots__ = ("allow_missing_keys", "nodes", "template")

    def __init__(self, template: str, *, allow_missing_keys: bool = False) -> None:
        self.template = template
        self.allow_missing_keys = allow_missing_keys
        self.nodes = _parse_template(template)

    def find_results(self, data: Any) -> list[list[Any]]:
        """One list of values per top-level node, as client-go's FindResults; raises JsonPathError."""
        out: list[list[Any]] = []
        for node in self.nodes:
            if isinstance(node, _Text):
                out.append([node.value])
            else:
                assert isinstance(node, tuple)
                out.append(self._eval_list([data], node))
        return out

    def execute(self, data: Any) -> str:
        """The printed text, as ``kubectl get -o jsonpath=...`` would print it."""
        return "".join(" ".join(go_text(v) for v in values) for values in self.find_results(data))

    def _eval_list(self, values: list[Any], steps: tuple[object, ...]) -> list[Any]:
        for step in steps:
            values = self._eval(values, step)
        return values

    def _eval(self, values: list[Any], step: object) -> list[Any]:
        if isinstance(step, _Field):
            found = [v[step.name] for v in values if isinstance(v, dict) and step.name in v]
            if not found and not self.allow_missing_keys:
                raise JsonPathError(f"{step.name} is not found")
            return found
        if isinstance(step, _Text):
            return [step.value]
        if isinstance(step, _Wildcard):
            return [x for v in values for x in _children(v)]
        if isinstance(step, _Recursive):
            return [x for v in values for x in _recurse(v)]
        if isinstance(step, _Slice):
            return [x for v in values if v is not None for x in _slice(v, step)]
        if isinstance(step, _Union):
            return [x for branch in step.branches for x in self._eval_list(values, branch)]
        assert isinstance(step, _Filter)
        return self._filter(values, step)

    def _filter(self, values: list[Any], step: _Filter) -> list[Any]:
        results: list[Any] = []
        for value in values:
            if value is None:
                continue
            if not isinstance(value, list):
                raise JsonPathError(f"{go_text(value)} is not array or slice and cannot be filtered")
            for item in value:
                try:
                    lefts = self._eval_list([item], step.left)
                except JsonPathError:
                    if step.op == "exists":
                        continue
                    raise
                if step.op == "exists":
                    if lefts:
                        results.append(item)
                    continue
                if not lefts:
                    continue
                rights = self._eval_list([item], step.right)
                if len(lefts) > 1 or len(rights) > 1:
                    raise JsonPathError("can only compare one element at a time")
                if rights and _compare(step.op, lefts[0], rights[0]):
                    results.append(item)
        return results


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return list(value)
    return []


def _recurse(value: Any) -> Iterator[Any]:
    if isinstance(value, dict | list) and value:
        yield value
        for child in _children(value):
            yield from _recurse(child)
    elif isinstance(value, str) and value:
        yield value  # Go indexes into it, yielding bytes that no later step can match


def _slice(value: Any, step: _Slice) -> list[Any]:
    if not isinstance(value, list):
        raise JsonPathError(f"{type(value).__name__} is not array or slice")
    length = len(value)
    start = step.start or 0
    if start < 0:
        start += length
    if step.index:
        end = start + 1
    else:
        end = length if step.end is None else step.end
        if end < 0:
            end += length
    if end == start:
        return []
    if start >= length or start < 0:
        raise JsonPathError(f"array index out of bounds: index {start}, length {length}")
    if end > length or end < 0:
        raise JsonPathError(f"array index out of bounds: index {end - 1}, length {length}")
    if start > end:
        raise JsonPathError(f"starting index {start} is greater than ending index {end}")
    return value[start : end : step.step or 1]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _compare(op: str, left: Any, right: Any) -> bool:
    """Go text/template's eq/ne/lt/le/gt/ge: both sides of one basic kind, else an error."""
    kind = _kind(left)
    if kind != _kind(right):
        raise JsonPathError("incompatible types for comparison")
    if op == "==":
        if kind == "other":
            raise JsonPathError("non-comparable types")
        return bool(left == right)
    if op == "!=":
        if kind == "other":
            raise JsonPathError("non-comparable types")
        return bool(left != right)
    if kind in ("bool", "other"):
        raise JsonPathError("invalid type for comparison")
    if op == "<":
        return bool(left < right)
    if op == ">":
        return bool(left > right)
    if op == "<=":
        return bool(left <= right)
    if op == ">=":
        return bool(left >= right)
    raise JsonPathError(f"unrecognized filter operator {op}")


# ---------------------------------------------------------------------------------------- printing


def go_float(value: float, *, json_style: bool) -> str:
    """Go's spelling of a float64: encoding/json's (exponent below 1e-6 and from 1e21) or fmt.Print's
    (``%g`` with the shortest digits: exponent below 1e-4 and from 1e6), both shortest round-trip digits."""
    if math.isnan(value) or math.isinf(value):
        if json_style:
            raise JsonPathError(f"json: unsupported value: {value}")
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 and not json_style else "0"
    sign, digit_tuple, exp = Decimal(repr(value)).as_tuple()
    assert isinstance(exp, int)
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    stripped = digits.rstrip("0")
    exp += len(digits) - len(stripped)
    digits = stripped
    exponent = len(digits) - 1 + exp  # as in d.ddd e exponent
    use_exp = (exponent < -6 or exponent >= 21) if json_style else (exponent < -4 or exponent >= 6)
    prefix = "-" if sign else ""
    if not use_exp:
        if exponent >= 0:
            ints, rest = digits[: exponent + 1].ljust(exponent + 1, "0"), digits[exponent + 1 :]
        else:
            ints, rest = "0", "0" * (-exponent - 1) + digits
        return prefix + ints + (f".{rest}" if rest else "")
    exp_digits = str(abs(exponent))
    if not json_style:
        exp_digits = exp_digits.rjust(2, "0")
    mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
    return f"{prefix}{mantissa}e{'-' if exponent < 0 else '+'}{exp_digits}"


def go_json(value: Any) -> str:
    """encoding/json.Marshal: compact, map keys sorted, <, > and & escaped, floats in Go's spelling."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value, json_style=True)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    if isinstance(value, dict):
        return "{" + ",".join(f"{go_json(str(k))}:{go_json(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise JsonPathError(f"can't print type {type(value).__name__}")


def go_text(value: Any) -> str:
    """jsonpath's PrintResults for one value: maps and lists as JSON, scalars as Go's fmt.Print."""
    if isinstance(value, dict | list):
        return go_json(value)
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value, json_style=False)
    return str(value)
