"""``x-kubernetes-validations``: CEL rules of a CRD schema, compiled once, evaluated as kube-apiserver does.

The evaluator is ``common-expression-language`` (bindings to the Rust CEL implementation): it has the
macros and functions Kubernetes rules use (``has``, ``size``, ``matches`` with RE2-like regexes,
``startsWith``, ``all``, ``exists``, ``duration``, ``timestamp`` ...) and evaluates a compiled rule in
microseconds (Kubernetes' strings and sets extensions come from its ``cel.stdlib``; the list, regex,
quantity, IP and URL libraries are not there). It does not type-check against the schema, so a rule
naming an undeclared field is refused at evaluation (``no such key``) rather than when the CRD is created.

What kube-apiserver does and this module copies:

* a rule's ``self`` is the value of the schema node it sits on; under ``items`` it runs for every element,
  under ``additionalProperties`` for every value;
* transition rules (those naming ``oldSelf``) run only on updates, and only where the old value exists
  (correlated by map key; list elements are not correlated, so transition rules under lists do not run);
* ratcheting: a rule without ``oldSelf`` does not run on a value that the update left unchanged;
* failures read ``<path>: Invalid value: "<type>": <message>`` (the cause holds the message without the
  path; ``Forbidden``/``Required``/``Duplicate`` with ``reason``), at the rule's ``fieldPath`` if it has
  one; ``messageExpression`` wins over ``message``, and falls back to it when it fails; an evaluation
  error reads
  ``<path>: Invalid value: "<type>": <error> evaluating rule: <rule>``;
* no rule runs while the object has blocking schema errors (their causes plus one note saying so).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import cel
from cel.stdlib import add_stdlib_to_context

from branch_operator.embedded.apiserver.errors import cause
from branch_operator.embedded.apiserver.patch import json_equal

Cause = dict[str, str]

_ABSENT: Any = object()
_ITEMS = "[]"  # path step: every element of a list
_VALUES = "{}"  # path step: every value of a map
_OLD_SELF_RE = re.compile(r"\boldSelf\b")

# Errors after which kube-apiserver runs no rule (the object may not have the shape the rules assume).
BLOCKING_REASONS = frozenset(
    {"FieldValueTypeInvalid", "FieldValueRequired", "FieldValueNotSupported", "FieldValueTooLong", "FieldValueTooMany"}
)
BLOCKED_NOTE = cause(
    "FieldValueInvalid",
    "<nil>",
    'Invalid value: "null": some validation rules were not checked because the object was invalid; '
    "correct the existing errors to complete validation",
)


# One context for every evaluation (requests run one at a time on the event loop), with the extension
# libraries Kubernetes enables that the core evaluator lacks: strings (split, lowerAscii, ...) and sets.
_CONTEXT = cel.Context()
add_stdlib_to_context(_CONTEXT, ["strings", "sets"])


class RuleError(ValueError):
    """A rule of the schema does not compile: ``field`` is where, ``detail`` kube-apiserver's ``Invalid value``."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def _go_rule(spec: dict[str, Any]) -> str:
    """The rule as kube-apiserver prints the Go struct in a compilation error."""

    def text(key: str) -> str:
        return json.dumps(str(spec.get(key) or ""))

    reason = f'"{spec["reason"]}"' if spec.get("reason") else "(*apiextensions.FieldValueErrorReason)(nil)"
    return (
        f"apiextensions.ValidationRule{{Rule:{text('rule')}, Message:{text('message')}, "
        f"MessageExpression:{text('messageExpression')}, Reason:{reason}, FieldPath:{text('fieldPath')}, "
        "OptionalOldSelf:(*bool)(nil)}"
    )


class Rule:
    __slots__ = (
        "field_path",
        "message",
        "message_program",
        "node_path",
        "program",
        "reason",
        "rule",
        "transition",
        "type_name",
    )

    def __init__(self, node_path: tuple[str, ...], type_name: str, spec: dict[str, Any], where: str) -> None:
        self.node_path = node_path
        self.type_name = type_name
        self.rule = str(spec.get("rule", "")).strip()
        try:
            self.program = cel.compile(self.rule)
            expression = spec.get("messageExpression")
            self.message_program = cel.compile(str(expression)) if expression else None
        except ValueError as e:
            message = str(e)
            message = message[message.index("ERROR:") :] if "ERROR:" in message else message
            raise RuleError(where, f"Invalid value: {_go_rule(spec)}: compilation failed: {message}") from e
        self.transition = bool(_OLD_SELF_RE.search(self.rule))
        self.field_path = str(spec.get("fieldPath") or "").lstrip(".")
        message = str(spec.get("message") or "").strip()
        self.message = message or f"failed rule: {self.rule}"
        reason = spec.get("reason")
        self.reason = str(reason) if reason else None

    def check(self, path: str, new: Any, old: Any) -> Cause | None:
        """The cause the real server reports for this rule on one value, or None when the rule holds."""
        context = _CONTEXT
        context.add_variable("self", new)
        if old is not _ABSENT:
            context.add_variable("oldSelf", old)
        try:
            result = self.program.execute(context)
        except Exception as e:  # The bindings raise KeyError, ValueError, RuntimeError, ZeroDivisionError ...
            detail = f"{_describe(e)} evaluating rule: {self.rule}"
            return cause("FieldValueInvalid", path, self._invalid(detail))
        if result is True:
            return None
        if result is not False:
            detail = f"rule did not evaluate to a bool (got {type(result).__name__}) evaluating rule: {self.rule}"
            return cause("FieldValueInvalid", path, self._invalid(detail))
        message = self.message
        if self.message_program is not None:
            try:
                rendered = self.message_program.execute(context)
            except Exception:  # kube-apiserver falls back to the static message too.
                rendered = None
            if isinstance(rendered, str) and rendered.strip():
                message = rendered.strip()
        field = f"{path}.{self.field_path}" if self.field_path else path
        if self.reason == "FieldValueForbidden":
            return cause(self.reason, field, f"Forbidden: {message}")
        if self.reason == "FieldValueRequired":
            return cause(self.reason, field, f"Required value: {message}")
        if self.reason == "FieldValueDuplicate":
            return cause(self.reason, field, f'Duplicate value: "{self.type_name}"')
        return cause("FieldValueInvalid", field, self._invalid(message))

    def _invalid(self, detail: str) -> str:
        return f'Invalid value: "{self.type_name}": {detail}'


def _describe(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"no such key: {error.args[0] if error.args else ''}"
    if isinstance(error, ZeroDivisionError):
        return "division by zero"
    return str(error).strip() or type(error).__name__


def compile_rules(schema: Any, where: str = "openAPIV3Schema") -> list[Rule]:
    """Every rule of a schema document with the path of the node it sits on."""
    rules: list[Rule] = []
    _collect(schema, (), where, rules)
    return rules


def _collect(schema: Any, path: tuple[str, ...], where: str, out: list[Rule]) -> None:
    if not isinstance(schema, dict):
        return
    type_name = str(schema.get("type") or "object")
    for i, spec in enumerate(schema.get("x-kubernetes-validations") or ()):
        if isinstance(spec, dict):
            out.append(Rule(path, type_name, spec, f"{where}.x-kubernetes-validations[{i}].rule"))
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for key, child in properties.items():
            _collect(child, (*path, key), f"{where}.properties[{key}]", out)
    _collect(schema.get("items"), (*path, _ITEMS), f"{where}.items", out)
    _collect(schema.get("additionalProperties"), (*path, _VALUES), f"{where}.additionalProperties", out)


def _values(steps: tuple[str, ...], path: str, new: Any, old: Any) -> Iterator[tuple[str, Any, Any]]:
    """(field path, new value, old value or _ABSENT) of every node the steps reach in the new object."""
    if not steps:
        yield path, new, old
        return
    step, rest = steps[0], steps[1:]
    if step == _ITEMS:
        if new.__class__ is list:
            for i, item in enumerate(new):
                yield from _values(rest, f"{path}[{i}]", item, _ABSENT)
    elif step == _VALUES:
        if new.__class__ is dict:
            for key, item in new.items():
                before = old.get(key, _ABSENT) if old.__class__ is dict else _ABSENT
                yield from _values(rest, f"{path}[{key}]", item, before)
    elif new.__class__ is dict and step in new:
        before = old.get(step, _ABSENT) if old.__class__ is dict else _ABSENT
        yield from _values(rest, f"{path}.{step}" if path else step, new[step], before)


def evaluate(rules: list[Rule], obj: dict[str, Any], old: dict[str, Any] | None, skip: frozenset[str]) -> list[Cause]:
    """The causes of every failed rule; ``skip`` names the root sections the write left untouched."""
    errs: list[Cause] = []
    for rule in rules:
        if rule.transition and old is None:
            continue
        if rule.node_path and rule.node_path[0] in skip:
            continue
        for path, new, before in _values(rule.node_path, "", obj, old if old is not None else _ABSENT):
            if rule.transition:
                if before is _ABSENT:
                    continue
            elif before is not _ABSENT and (before is new or json_equal(before, new)):
                continue  # ratcheting: an unchanged value is not re-judged
            failure = rule.check(path or "<nil>", new, before)
            if failure is not None:
                errs.append(failure)
    return errs
