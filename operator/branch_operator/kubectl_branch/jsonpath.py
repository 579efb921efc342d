"""`-o jsonpath=TEMPLATE` as kubectl evaluates it (k8s.io/client-go/util/jsonpath).

kubectl's templates are not JSONPath proper: text outside ``{…}`` is printed as is, ``{range X}…{end}``
loops, ``{"\\n"}`` prints a string literal, the results of one ``{expr}`` are joined by a space, strings
print raw and maps and lists as compact JSON, and a missing key prints nothing (kubectl's default
``--allow-missing-template-keys=true``). jsonpath-ng and the other Python JSONPath libraries evaluate
bare expressions only, with other filter and output rules, so the template layer would have to be
written here anyway; the expression subset kubectl users write is small enough to write with it.

Supported: ``$`` ``@`` ``.field`` (``\\.`` escapes a dot in a key) ``..field`` ``.*`` ``[n]`` ``[-n]``
``[start:end:step]`` ``[*]`` ``['a','b']`` ``[?(@.path)]`` ``[?(@.path OP literal)]`` with OP one of
``== != < <= > >=`` and a quoted string, number, ``true``/``false`` literal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JSONPathError", "Template", "render", "results_as_json"]


class JSONPathError(ValueError):
    """A template kubectl would refuse too: printed as ``error: …``, exit 2."""


@dataclass(frozen=True)
class Step:
    kind: str  # field, recursive, wildcard, index, slice, union, filter
    arg: Any = None


@dataclass
class Node:
    kind: str  # text, expr, range
    text: str = ""
    steps: tuple[Step, ...] = ()
    body: list[Node] = field(default_factory=list)


_FIELD = re.compile(r"(?:\\.|[^.\[\]\s\\])+")
_FILTER = re.compile(r"^\s*@((?:\.(?:\\.|[^.\[\]\s\\=!<>])+)+)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*$")


def _split(template: str) -> Iterator[tuple[bool, str]]:
    """(is_action, text) pieces; braces inside quoted strings belong to the action."""
    pos = 0
    while pos < len(template):
        start = template.find("{", pos)
        if start < 0:
            yield False, template[pos:]
            return
        if start > pos:
            yield False, template[pos:start]
        i, quote = start + 1, ""
        while i < len(template):
            ch = template[i]
            if quote:
                if ch == "\\":
                    i += 1
                elif ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch == "}":
                break
            i += 1
        else:
            raise JSONPathError(f"unclosed action in {template!r}")
        yield True, template[start + 1:i]
        pos = i + 1


def _literal(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        try:
            return text[1:-1] if text[0] == "'" else json.loads(text, strict=False)
        except json.JSONDecodeError:
            raise JSONPathError(f"bad string literal {text}") from None
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise JSONPathError(f"unrecognized literal {text!r}") from None


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", r"\1", name)


def parse_expression(expr: str) -> tuple[Step, ...]:
    expr = expr.strip()
    steps: list[Step] = []
    pos = 0
    if expr[:1] in ("$", "@"):
        steps.append(Step("root" if expr[0] == "$" else "current"))
        pos = 1
    while pos < len(expr):
        if expr.startswith("..", pos):
            m = _FIELD.match(expr, pos + 2)
            if m is None:
                raise JSONPathError(f"expected a field name after '..' in {expr!r}")
            steps.append(Step("recursive", _unescape(m.group())))
            pos = m.end()
        elif expr[pos] == ".":
            if expr.startswith(".*", pos):
                steps.append(Step("wildcard"))
                pos += 2
                continue
            m = _FIELD.match(expr, pos + 1)
            if m is None:  # a lone "." is the current object
                pos += 1
                continue
            steps.append(Step("field", _unescape(m.group())))
            pos = m.end()
        elif expr[pos] == "[":
            end = _closing_bracket(expr, pos)
            steps.append(_bracket(expr[pos + 1:end].strip(), expr))
            pos = end + 1
        else:
            raise JSONPathError(f"unrecognized character {expr[pos]!r} in {expr!r}")
    return tuple(steps)


def _closing_bracket(expr: str, start: int) -> int:
    depth, quote = 0, ""
    for i in range(start, len(expr)):
        ch = expr[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i
    raise JSONPathError(f"unterminated '[' in {expr!r}")


def _bracket(inner: str, expr: str) -> Step:
    if inner == "*":
        return Step("wildcard")
    if inner.startswith("?(") and inner.endswith(")"):
        m = _FILTER.match(inner[2:-1])
        if m is None:
            raise JSONPathError(f"unsupported filter {inner!r} in {expr!r}")
        path = tuple(s.arg for s in parse_expression(m.group(1)))
        return Step("filter", (path, m.group(2), None if m.group(2) is None else _literal(m.group(3))))
    if re.fullmatch(r"-?\d+", inner):
        return Step("index", int(inner))
    if re.fullmatch(r"(-?\d+)?:(-?\d+)?(:(-?\d+)?)?", inner):
        parts = [int(p) if p else None for p in inner.split(":")]
        return Step("slice", slice(*parts))
    names = [p.strip() for p in inner.split(",")]
    if all(len(n) >= 2 and n[0] == n[-1] and n[0] in "\"'" for n in names):
        return Step("union", tuple(n[1:-1] for n in names))
    raise JSONPathError(f"unsupported subscript [{inner}] in {expr!r}")


def _compare(got: Any, op: str, want: Any) -> bool:
    try:
        if op == "==":
            return bool(got == want)
        if op == "!=":
            return bool(got != want)
        return bool({"<": got < want, "<=": got <= want, ">": got > want, ">=": got >= want}[op])
    except TypeError:
        return False


def _recurse(value: Any) -> Iterator[Any]:
    yield value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        yield from _recurse(child)


def find(steps: tuple[Step, ...], root: Any, current: Any) -> list[Any]:
    values = [current]
    for step in steps:
        nxt: list[Any] = []
        for value in values:
            if step.kind == "root":
                nxt.append(root)
            elif step.kind == "current":
                nxt.append(value)
            elif step.kind == "field":
                if isinstance(value, dict) and step.arg in value:
                    nxt.append(value[step.arg])
            elif step.kind == "recursive":
                nxt.extend(v[step.arg] for v in _recurse(value) if isinstance(v, dict) and step.arg in v)
            elif step.kind == "wildcard":
                nxt.extend(value.values() if isinstance(value, dict) else value if isinstance(value, list) else [])
            elif step.kind == "index" and isinstance(value, list):
                if not -len(value) <= step.arg < len(value):  # kubectl fails here even with missing keys allowed
                    raise JSONPathError(f"array index out of bounds: index {step.arg}, length {len(value)}")
                nxt.append(value[step.arg])
            elif step.kind == "slice" and isinstance(value, list):
                nxt.extend(value[step.arg])
            elif step.kind == "union" and isinstance(value, dict):
                nxt.extend(value[k] for k in step.arg if k in value)
            elif step.kind == "filter" and isinstance(value, list):
                path, op, want = step.arg
                for item in value:
                    got = find(tuple(Step("field", k) for k in path), root, item)
                    if got and (op is None or _compare(got[0], op, want)):
                        nxt.append(item)
        values = nxt
    return values


class Template:
    def __init__(self, template: str) -> None:
        self.source = template
        root: list[Node] = []
        stack = [root]
        for is_action, text in _split(template):
            if not is_action:
                stack[-1].append(Node("text", text=text))
                continue
            action = text.strip()
            if action.startswith("range ") or action.startswith("range\t"):
                node = Node("range", steps=parse_expression(action[6:]))
                stack[-1].append(node)
                stack.append(node.body)
            elif action == "end":
                if len(stack) == 1:
                    raise JSONPathError(f"{{end}} without {{range}} in {template!r}")
                stack.pop()
            elif len(action) >= 2 and action[0] == action[-1] and action[0] in "\"'":
                stack[-1].append(Node("text", text=str(_literal(action))))
            elif action:
                stack[-1].append(Node("expr", steps=parse_expression(action)))
        if len(stack) != 1:
            raise JSONPathError(f"{{range}} without {{end}} in {template!r}")
        self.nodes = root

    def render(self, data: Any) -> str:
        return "".join(self._walk(self.nodes, data, data))

    def as_json(self, data: Any) -> str:
        """``-o jsonpath-as-json``: each piece of the template (text, expression) as a JSON array of what it
        printed, one array per piece and per range iteration, as kubectl prints them."""
        return "".join(json.dumps(values, indent=4, sort_keys=True, ensure_ascii=False) + "\n"
                       for values in self._pieces(self.nodes, data, data))

    def _walk(self, nodes: list[Node], root: Any, current: Any) -> Iterator[str]:
        for node in nodes:
            if node.kind == "text":
                yield node.text
            elif node.kind == "expr":
                yield " ".join(_text(v) for v in find(node.steps, root, current))
            else:
                for item in find(node.steps, root, current):
                    yield from self._walk(node.body, root, item)

    def _pieces(self, nodes: list[Node], root: Any, current: Any) -> Iterator[list[Any]]:
        for node in nodes:
            if node.kind == "text":
                yield [node.text]
            elif node.kind == "expr":
                yield find(node.steps, root, current)
            else:
                for item in find(node.steps, root, current):
                    yield from self._pieces(node.body, root, item)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return str(value)


def render(template: str, data: Any) -> str:
    return Template(template).render(data)


def results_as_json(template: str, data: Any) -> str:
    return Template(template).as_json(data)
