"""Render the CustomResourceDefinitions (``apiextensions.k8s.io/v1``) from the pydantic models.

The models in :mod:`branch_operator.api.models` are the only definition of the API; ``crds/`` is output
of this module and is checked for drift in CI (``tests/test_crds.py``).

Kubernetes only accepts *structural* schemas (every node typed, no ``$ref``, no ``anyOf`` for
optionals, ``additionalProperties`` only for maps), which is not what pydantic emits, so the pydantic
JSON Schema is rewritten node by node. Anything this module does not know how to render raises
:class:`CRDRenderError` instead of being dropped, so a new model constraint can never silently vanish
from the API server's validation.

Usage: ``python -m branch_operator.api.crdgen [--write DIR | --check DIR]`` (no option: print YAML).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel

from branch_operator.api.models import (
    CATEGORY,
    GROUP,
    KINDS,
    VERSION,
    AutoMergePolicy,
    Branch,
    BranchLock,
    Condition,
)

JSON = dict[str, Any]
ResourceModel = type[Branch] | type[BranchLock] | type[AutoMergePolicy]

PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "oms-branch-operator"
HEADER = "# Generated from branch_operator.api.models by `branch-operator crds --write crds/`. DO NOT EDIT.\n"
REGENERATE_HINT = (
    "regenerate with `branch-operator crds --write {dir}` "
    "(or `python -m branch_operator.api.crdgen --write {dir}`)"
)

# Arrays whose items are merged by key under server-side apply (metav1.Condition convention).
LIST_MAP_KEYS: dict[type[BaseModel], list[str]] = {Condition: ["type"]}

PRINTER_COLUMN_TYPES = frozenset({"string", "integer", "number", "boolean", "date"})

# Keywords copied verbatim into the structural schema; anything not listed here (and not handled
# explicitly below) is an error rather than a silently dropped constraint.
_COPIED = (
    "description",
    "format",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
)
_HANDLED = frozenset(
    {
        *_COPIED,
        "type",
        "title",
        "examples",
        "default",
        "const",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "uniqueItems",
    }
)
# Kubernetes validates `pattern` with Go's RE2, which has no lookaround or backreferences; pydantic
# (Rust regex, falling back to Python re) would accept them, so catch the mismatch at render time.
_NON_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]")


class CRDRenderError(ValueError):
    """A model construct that has no structural-schema equivalent."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where or '<root>'}: {problem}")


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _models_in(arg)


def _model_classes(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``root``, by class name (the name pydantic uses in ``$defs``)."""
    found: dict[str, type[BaseModel]] = {}
    stack: list[type[BaseModel]] = [root]
    while stack:
        cls = stack.pop()
        if found.setdefault(cls.__name__, cls) is not cls:
            # pydantic would disambiguate the $defs names and CEL rules / list keys could be lost.
            raise CRDRenderError(cls.__name__, "two models share this class name")
        for field in cls.model_fields.values():
            stack.extend(m for m in _models_in(field.annotation) if m.__name__ not in found)
    return found


def _is_empty_collection(value: Any) -> bool:
    return isinstance(value, list | dict) and not value


class _SchemaRenderer:
    def __init__(self, model_cls: type[BaseModel]) -> None:
        self.raw = model_cls.model_json_schema(by_alias=True, mode="validation")
        self.defs: dict[str, JSON] = self.raw.get("$defs", {})
        self.classes = _model_classes(model_cls)
        self.root_name = model_cls.__name__
        self.rendered_models: set[str] = set()

    def render(self) -> JSON:
        schema = self._node(self.raw, "", model=self.root_name, stack=())
        for name, cls in self.classes.items():
            if getattr(cls, "cel_rules", None) and name not in self.rendered_models:
                raise CRDRenderError(name, "has cel_rules but was not rendered from its own definition")
        return schema

    def _node(self, node: JSON, where: str, *, model: str | None, stack: tuple[str, ...]) -> JSON:
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            if name in stack:
                raise CRDRenderError(where, f"recursive model {name} cannot be inlined")
            if name not in self.defs:
                raise CRDRenderError(where, f"unresolvable $ref {node['$ref']}")
            # Field-level keywords (description, default) win over the referenced model's.
            merged = {**self.defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
            return self._node(merged, where, model=name, stack=(*stack, name))

        for junctor in ("anyOf", "oneOf", "allOf"):
            if junctor in node:
                return self._junction(node, junctor, where, model=model, stack=stack)

        unknown = set(node) - _HANDLED - {"$defs"}
        if unknown:
            raise CRDRenderError(where, f"unsupported JSON Schema keywords {sorted(unknown)}")

        if "const" in node:
            node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
        kind = node.get("type")
        if not isinstance(kind, str):
            raise CRDRenderError(where, f"every node needs a single type, got {kind!r}")

        out: JSON = {"type": kind}
        for key in _COPIED:
            if key in node:
                out[key] = node[key]
        if "pattern" in out and _NON_RE2.search(out["pattern"]):
            raise CRDRenderError(where, f"pattern {out['pattern']!r} is not RE2 (no lookaround/backrefs)")
        for bound, numeric in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if bound in node:
                if numeric in node:
                    raise CRDRenderError(where, f"both {bound} and {numeric} set")
                # OpenAPI v3.0 (what Kubernetes speaks) has the boolean form only.
                out[numeric] = node[bound]
                out[bound] = True
        if self._emits_default(where, node):
            out["default"] = node["default"]

        if kind == "object":
            self._object(node, out, where, stack=stack)
        elif kind == "array":
            self._array(node, out, where, stack=stack)

        if model is not None and node.get("type") == "object" and model in self.classes:
            self.rendered_models.add(model)
            rules = getattr(self.classes[model], "cel_rules", None)
            if rules:
                out["x-kubernetes-validations"] = [dict(rule) for rule in rules]
        return out

    def _junction(
        self, node: JSON, junctor: str, where: str, *, model: str | None, stack: tuple[str, ...]
    ) -> JSON:
        branches: list[JSON] = node[junctor]
        outer = {k: v for k, v in node.items() if k != junctor}
        non_null = [b for b in branches if b != {"type": "null"}]
        nullable = len(non_null) < len(branches)
        if len(non_null) != 1 or (junctor == "allOf" and nullable):
            raise CRDRenderError(where, f"{junctor} other than Optional[...] has no structural form")
        out = self._node({**non_null[0], **outer}, where, model=model, stack=stack)
        # The API server prunes a null on a non-nullable field (or replaces it with the default), so
        # `nullable` is only needed where null means something other than "absent": an Optional whose
        # default is not None (timeoutHours: null = no timeout, instead of the default 24). Elsewhere
        # pruning matches the models (None is omitted on the wire) and keeps nulls out of enums.
        if nullable and not ("default" in outer and outer["default"] is None):
            out["nullable"] = True
        return out

    @staticmethod
    def _emits_default(where: str, node: JSON) -> bool:
        if "default" not in node:
            return False
        value = node["default"]
        # Spec defaults are applied by the API server so `kubectl get -o yaml` shows the effective
        # desired state; status is written whole by the operator, so defaults there would be noise.
        # Empty collections mean the same as absent to the models.
        return where.startswith(".spec") and value is not None and not _is_empty_collection(value)

    def _object(self, node: JSON, out: JSON, where: str, *, stack: tuple[str, ...]) -> None:
        properties: JSON = node.get("properties", {})
        extra = node.get("additionalProperties")
        if properties:
            out["properties"] = {
                name: self._node(sub, f"{where}.{name}", model=None, stack=stack)
                for name, sub in properties.items()
            }
            required = [name for name in node.get("required", []) if name in properties]
            if required:
                out["required"] = required
            # Structural schemas forbid properties + additionalProperties; extra='forbid' models would
            # emit `false`, which Kubernetes' pruning already implies.
            if isinstance(extra, dict):
                raise CRDRenderError(where, "properties and additionalProperties together")
        elif isinstance(extra, dict):
            out["additionalProperties"] = self._node(extra, f"{where}.*", model=None, stack=stack)
        elif extra is True:
            # dict[str, Any]: free-form; without this the API server would prune every key.
            out["x-kubernetes-preserve-unknown-fields"] = True

    def _array(self, node: JSON, out: JSON, where: str, *, stack: tuple[str, ...]) -> None:
        items = node.get("items")
        if not isinstance(items, dict):
            raise CRDRenderError(where, "array without a single items schema")
        out["items"] = self._node(items, f"{where}[]", model=None, stack=stack)
        item_ref = str(items.get("$ref", "")).rsplit("/", 1)[-1]
        item_cls = self.classes.get(item_ref)
        keys = LIST_MAP_KEYS.get(item_cls) if item_cls is not None else None
        if keys:
            missing = [k for k in keys if k not in out["items"].get("required", [])]
            if missing:
                raise CRDRenderError(where, f"list-map keys {missing} must be required in {item_ref}")
            out["x-kubernetes-list-type"] = "map"
            out["x-kubernetes-list-map-keys"] = list(keys)
        elif node.get("uniqueItems"):
            # uniqueItems is forbidden in structural schemas (quadratic); `set` is the equivalent.
            out["x-kubernetes-list-type"] = "set"


def render_schema(model_cls: ResourceModel) -> JSON:
    """The structural ``openAPIV3Schema`` of one kind."""
    schema = _SchemaRenderer(model_cls).render()
    properties: JSON = schema["properties"]
    for name, what in (("spec", "desired"), ("status", "observed")):
        if name in properties:
            properties[name].setdefault("description", f"{name} is the {what} state of the {model_cls.KIND}.")
    schema["properties"] = {
        "apiVersion": {
            "type": "string",
            "description": "APIVersion defines the versioned schema of this representation of an object.",
        },
        "kind": {"type": "string", "description": "Kind is a string value representing the REST resource."},
        "metadata": {"type": "object"},
        **properties,
    }
    schema.setdefault("description", f"{model_cls.KIND} is the Schema for the {model_cls.PLURAL} API.")
    return schema


def _printer_columns(model_cls: ResourceModel) -> list[JSON]:
    columns: list[JSON] = []
    for column in model_cls.PRINTER_COLUMNS:
        json_path, priority = column.get("jsonPath", ""), column.get("priority", 0)
        if (column.get("type") not in PRINTER_COLUMN_TYPES or not isinstance(json_path, str)
                or not json_path.startswith(".") or not isinstance(priority, int) or priority < 0):
            raise CRDRenderError(model_cls.KIND, f"invalid printer column {column!r}")
        columns.append(dict(column))
    return columns


def render_crd(model_cls: ResourceModel) -> JSON:
    """The CustomResourceDefinition for one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{model_cls.PLURAL}.{GROUP}",
            "labels": {PART_OF_LABEL: PART_OF},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": model_cls.KIND,
                "listKind": f"{model_cls.KIND}List",
                "plural": model_cls.PLURAL,
                "singular": model_cls.SINGULAR,
                "shortNames": list(model_cls.SHORT_NAMES),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": render_schema(model_cls)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(model_cls),
                }
            ],
        },
    }


def render_crds() -> list[JSON]:
    """All CRDs, in the stable order of :data:`branch_operator.api.models.KINDS`."""
    return [render_crd(model_cls) for model_cls in KINDS]


def crd_filename(crd: JSON) -> str:
    """``oms.dev_branches.yaml``: the controller-gen naming convention."""
    return f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml"


def crd_yaml(crd: JSON) -> str:
    """One CRD document, exactly as written to its file."""
    # sort_keys makes the bytes independent of dict construction order (and pydantic versions);
    # a wide line keeps long patterns and descriptions unwrapped and greppable.
    body = yaml.safe_dump(crd, sort_keys=True, default_flow_style=False, allow_unicode=True, width=4096)
    return f"{HEADER}---\n{body}"


def rendered_files() -> dict[str, str]:
    """File name -> content for every CRD, in stable order."""
    return {crd_filename(crd): crd_yaml(crd) for crd in render_crds()}


def crds_yaml() -> str:
    """All CRDs as one multi-document YAML stream; equal to the ``crds/`` files concatenated in order."""
    return "".join(rendered_files().values())


def _generated_files(directory: Path) -> list[Path]:
    """Files in ``directory`` this module owns (by name prefix and header), current or stale."""
    return sorted(
        path
        for path in directory.glob(f"{GROUP}_*.yaml")
        if path.read_text(encoding="utf-8").startswith(HEADER)
    )


def write_crds(directory: Path | str) -> list[Path]:
    """Write one file per CRD into ``directory``; remove generated files of kinds that no longer exist."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = rendered_files()
    written: list[Path] = []
    for name, text in files.items():
        path = directory / name
        # Leave unchanged files alone so mtimes (and `make`-style tooling) stay quiet.
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in _generated_files(directory):
        if stale.name not in files:
            stale.unlink()
    return written


def check_crds(directory: Path | str) -> list[str]:
    """Drift between ``directory`` and the models, one message per file; empty when in sync."""
    directory = Path(directory)
    hint = REGENERATE_HINT.format(dir=f"{directory}/")
    problems: list[str] = []
    files = rendered_files()
    for name, expected in files.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing; {hint}")
            continue
        actual = path.read_text(encoding="utf-8")
        if actual != expected:
            diff = difflib.unified_diff(
                actual.splitlines(),
                expected.splitlines(),
                f"{path} (on disk)",
                f"{path} (from models)",
                n=1,
                lineterm="",
            )
            excerpt = "\n".join(list(diff)[:40])
            problems.append(f"{path}: differs from the models; {hint}\n{excerpt}")
    if directory.is_dir():
        for path in sorted(directory.glob(f"{GROUP}_*.yaml")):
            if path.name not in files:
                problems.append(f"{path}: no model renders this file (stale?); {hint}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m branch_operator.api.crdgen", description="Render the oms.dev CRDs from the models."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="DIR", type=Path, help="write one file per CRD into DIR")
    mode.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if DIR differs from the models")
    args = parser.parse_args(argv)
    if args.write is not None:
        for path in write_crds(args.write):
            print(path)
        return 0
    if args.check is not None:
        problems = check_crds(args.check)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    sys.stdout.write(crds_yaml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
