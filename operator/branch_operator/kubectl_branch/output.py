"""`-o json|yaml|wide|name|jsonpath=…|jsonpath-as-json=…`, printed the way `kubectl get` prints them.

A listing prints as kubectl prints a list: ``{"apiVersion": "v1", "kind": "List", "items": […],
"metadata": {"resourceVersion": ""}}``, keys sorted, four-space JSON indent (Go's encoding/json, which
also escapes ``<``, ``>`` and ``&``). ``name`` prints ``branch.oms.dev/NAME`` per object. A JSONPath
template is applied to what ``-o json`` would print.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from branch_operator.api.models import API_VERSION, Branch, BranchLock
from branch_operator.kubectl_branch.jsonpath import JSONPathError, Template

Obj = Mapping[str, Any]

FORMATS = ("json", "yaml", "wide", "name", "jsonpath=TEMPLATE", "jsonpath-as-json=TEMPLATE")
_KINDS = {Branch.KIND: Branch.PLURAL, BranchLock.KIND: BranchLock.PLURAL}


class OutputError(ValueError):
    """An unknown format or a bad template: a usage error."""


class TemplateFailed(RuntimeError):
    """The template does not fit the objects (an index out of range): exit 1, as kubectl."""


@dataclass(frozen=True)
class Output:
    kind: str  # table, wide, json, yaml, name, jsonpath, jsonpath-as-json
    template: Template | None = None

    @property
    def structured(self) -> bool:
        return self.kind not in ("table", "wide")


def parse_output(value: str | None) -> Output:
    if not value or value in ("table", "text"):
        return Output("table")
    if value in ("json", "yaml", "wide", "name"):
        return Output(value)
    for kind in ("jsonpath-as-json", "jsonpath"):
        if value.startswith(kind + "="):
            try:
                return Output(kind, Template(value[len(kind) + 1:]))
            except JSONPathError as exc:
                raise OutputError(f"error parsing jsonpath {value[len(kind) + 1:]}, {exc}") from None
    raise OutputError(f"unable to match a printer suitable for the output format {value!r}, allowed formats "
                      f"are: {','.join(FORMATS)}")


def with_kind(obj: Obj, kind: str) -> dict[str, Any]:
    """The object with ``apiVersion``/``kind`` set, as kubectl prints list items."""
    api_version = API_VERSION if kind in _KINDS else "v1"
    return {"apiVersion": api_version, "kind": kind, **obj}


def as_list(items: Iterable[Obj]) -> dict[str, Any]:
    return {"apiVersion": "v1", "items": list(items), "kind": "List", "metadata": {"resourceVersion": ""}}


def dump_json(obj: Any) -> str:
    text = json.dumps(obj, indent=4, sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Go's YAML writes "" and multi-line strings the way kubectl users see them; PyYAML's '' is the same value.
    if value == "":
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True,
                     width=1 << 30).rstrip("\n")


def object_name(obj: Obj) -> str:
    """``branch.oms.dev/NAME`` (kubectl's ``-o name``: lower-case kind, the group for non-core kinds)."""
    kind = str(obj.get("kind") or "")
    group = str(obj.get("apiVersion") or "").rpartition("/")[0] if "/" in str(obj.get("apiVersion") or "") else ""
    resource = kind.lower() + (f".{group}" if group else "")
    return f"{resource}/{(obj.get('metadata') or {}).get('name', '')}"


def render_structured(fmt: Output, doc: Any, items: Sequence[Obj] | None = None) -> str:
    """``doc`` (a List or one object) in a structured format; ``items`` are what ``name`` prints."""
    if fmt.kind == "json":
        return dump_json(doc)
    if fmt.kind == "yaml":
        return dump_yaml(doc)
    if fmt.kind == "name":
        listed = items if items is not None else (doc.get("items") if doc.get("kind") == "List" else [doc])
        return "\n".join(object_name(o) for o in listed or [])
    assert fmt.template is not None
    plain = json.loads(json.dumps(doc))  # the JSON view: what the template sees is what -o json prints
    try:
        if fmt.kind == "jsonpath-as-json":
            return fmt.template.as_json(plain).rstrip("\n")
        return fmt.template.render(plain)
    except JSONPathError as exc:
        raise TemplateFailed(f"error executing jsonpath {fmt.template.source!r}: {exc}") from None
