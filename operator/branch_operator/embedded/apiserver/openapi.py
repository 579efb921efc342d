"""``/openapi/v3`` (and ``/openapi/v2``) as kube-apiserver publishes them, from the types the server serves.

kubectl reads them before ``apply`` and ``create`` (does the server take ``fieldValidation``? which
patch types does a kind accept?) and for ``explain``. Custom resources are described by their CRD's
``openAPIV3Schema``; the built-in kinds by the hand-written schemas in :mod:`openapi_builtin`.

The documents are built on first request after a CRD change (the registry's ``revision``), never on
the request path of reads and writes. Each group-version document's URL carries the hash of its
bytes, as kube-apiserver's do, so kubectl's disk cache refreshes when a CRD changes.

Definition names follow kube-apiserver: the group reversed (``oms.dev`` → ``dev.oms``), then version and
kind (``dev.oms.v1alpha1.Branch``); built-ins by their Go package (``io.k8s.api.core.v1.Namespace``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from branch_operator.embedded.apiserver.openapi_builtin import (
    BUILTIN_DEFINITIONS,
    BUILTIN_KINDS,
    META_DEFINITIONS,
    OBJECT_META,
)
from branch_operator.embedded.apiserver.registry import Registry, ResourceType

Doc = dict[str, Any]

_V3_REF = "#/components/schemas/"
_STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
_LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
_PATCH = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
_DELETE_OPTIONS = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"

# kube-apiserver accepts strategic merge patches for built-in kinds only; kubectl apply reads this list to
# choose between a strategic and a JSON merge patch.
_CR_PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json")
_BUILTIN_PATCH_TYPES = (*_CR_PATCH_TYPES, "application/strategic-merge-patch+json")

_WRITE_PARAMS = [
    {"name": "dryRun", "in": "query", "description": "When present, modifications are not persisted. Valid "
     "values are: - All: all dry run stages will be processed", "schema": {"type": "string", "uniqueItems": True}},
    {"name": "fieldManager", "in": "query", "description": "A name associated with the actor or entity that is "
     "making these changes.", "schema": {"type": "string", "uniqueItems": True}},
    {"name": "fieldValidation", "in": "query", "description": "How the server handles an object with unknown or "
     "duplicate fields: Ignore, Warn (the default), or Strict (fail the request).",
     "schema": {"type": "string", "uniqueItems": True}},
]


def definition_name(group: str, version: str, kind: str) -> str:
    if not group:
        return f"io.k8s.api.core.v1.{kind}" if version == "v1" else f"io.k8s.api.core.{version}.{kind}"
    builtin = BUILTIN_KINDS.get((group, version, kind))
    if builtin is not None:
        return builtin
    return ".".join(reversed(group.split("."))) + f".{version}.{kind}"


def gv_path(rt: ResourceType) -> str:
    return f"apis/{rt.group}/{rt.version}" if rt.group else f"api/{rt.version}"


class OpenApiDocuments:
    """The server's OpenAPI documents, rebuilt when the registry's resource types change."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._revision = -1
        self._v3: dict[str, bytes] = {}
        self._v3_hashes: dict[str, str] = {}
        self._v2: bytes | None = None

    def _current(self) -> None:
        if self._revision == self.registry.revision:
            return
        by_gv: dict[str, list[ResourceType]] = {}
        for rt in self.registry.all_types():
            by_gv.setdefault(gv_path(rt), []).append(rt)
        self._v3 = {path: _dumps(_v3_document(types)) for path, types in sorted(by_gv.items())}
        self._v3_hashes = {path: hashlib.sha512(body).hexdigest().upper() for path, body in self._v3.items()}
        self._v2 = None
        self._revision = self.registry.revision

    def v3_index(self) -> bytes:
        self._current()
        return _dumps({"paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
                                 for path, digest in self._v3_hashes.items()}})

    def v3(self, path: str) -> bytes | None:
        self._current()
        return self._v3.get(path.strip("/"))

    def v2(self) -> bytes:
        self._current()
        if self._v2 is None:
            docs = [json.loads(body) for body in self._v3.values()]
            self._v2 = _dumps(_v2_document(docs))
        return self._v2


def _dumps(doc: Doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


# -------------------------------------------------------------------------------------------- v3


def _v3_document(types: list[ResourceType]) -> Doc:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for rt in types:
        name = definition_name(rt.group, rt.version, rt.kind)
        schemas[name] = _object_schema(rt)
        schemas[name + "List"] = _list_schema(rt, name)
        paths.update(_paths(rt, name))
    for meta_name, meta_schema in META_DEFINITIONS.items():
        schemas.setdefault(meta_name, copy.deepcopy(meta_schema))
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths,
            "components": {"schemas": schemas}}


def _gvk(rt: ResourceType) -> list[dict[str, str]]:
    return [{"group": rt.group, "kind": rt.kind, "version": rt.version}]


def _object_schema(rt: ResourceType) -> Doc:
    name = definition_name(rt.group, rt.version, rt.kind)
    if not rt.custom:
        schema = copy.deepcopy(BUILTIN_DEFINITIONS.get(name) or {"type": "object"})
    else:
        schema = copy.deepcopy(rt.schema_doc) if rt.schema_doc is not None else {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    properties = schema.setdefault("properties", {})
    properties.setdefault("apiVersion", {"type": "string", "description": _API_VERSION_DOC})
    properties.setdefault("kind", {"type": "string", "description": _KIND_DOC})
    properties["metadata"] = {"allOf": [{"$ref": _V3_REF + OBJECT_META}], "default": {},
                              "description": _METADATA_DOC}
    schema["x-kubernetes-group-version-kind"] = _gvk(rt)
    return schema


def _list_schema(rt: ResourceType, item: str) -> Doc:
    return {
        "description": f"{rt.kind}List is a list of {rt.kind}",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": _API_VERSION_DOC},
            "items": {"type": "array", "description": f"List of {rt.plural}.",
                      "items": {"$ref": _V3_REF + item}},
            "kind": {"type": "string", "description": _KIND_DOC},
            "metadata": {"allOf": [{"$ref": _V3_REF + _LIST_META}], "default": {},
                         "description": "Standard list metadata."},
        },
        "x-kubernetes-group-version-kind": [{"group": rt.group, "kind": rt.kind + "List", "version": rt.version}],
    }


def _ok(name: str) -> Doc:
    return {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": _V3_REF + name}}}},
            "401": {"description": "Unauthorized"}}


def _operation(rt: ResourceType, action: str, op_id: str, response: str, *,
               params: list[Doc] | None = None, body: str | None = None,
               patch: tuple[str, ...] | None = None) -> Doc:
    op: Doc = {
        "operationId": op_id,
        "tags": [gv_path(rt).replace("/", "_")],
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "kind": rt.kind, "version": rt.version},
        "responses": _ok(response),
    }
    if params:
        op["parameters"] = copy.deepcopy(params)
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"*/*": {"schema": {"$ref": _V3_REF + body}}}}
    if patch is not None:
        op["requestBody"] = {"required": True,
                             "content": {t: {"schema": {"$ref": _V3_REF + _PATCH}} for t in patch}}
        op["parameters"] = [*copy.deepcopy(_WRITE_PARAMS),
                            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True},
                             "description": "Force is going to \"force\" Apply requests."}]
    return op


def _paths(rt: ResourceType, name: str) -> dict[str, Doc]:
    prefix = "/" + gv_path(rt)
    scope = "Namespaced" if rt.namespaced else ""
    kind = rt.kind
    base = f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{prefix}/{rt.plural}"
    path_params = [{"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"},
                    "description": "object name and auth scope, such as for teams and projects"}] \
        if rt.namespaced else []
    name_param = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": f"name of the {kind}"}]
    patch_types = _CR_PATCH_TYPES if rt.custom else _BUILTIN_PATCH_TYPES
    paths: dict[str, Doc] = {
        base: {
            "parameters": path_params,
            "get": _operation(rt, "list", f"list{scope}{kind}", name + "List"),
            "post": _operation(rt, "post", f"create{scope}{kind}", name, params=_WRITE_PARAMS, body=name),
        },
        f"{base}/{{name}}": {
            "parameters": [*name_param, *path_params],
            "get": _operation(rt, "get", f"read{scope}{kind}", name),
            "put": _operation(rt, "put", f"replace{scope}{kind}", name, params=_WRITE_PARAMS, body=name),
            "patch": _operation(rt, "patch", f"patch{scope}{kind}", name, patch=patch_types),
            "delete": _operation(rt, "delete", f"delete{scope}{kind}", _STATUS, body=_DELETE_OPTIONS),
        },
    }
    if rt.namespaced:
        paths[f"{prefix}/{rt.plural}"] = {"get": _operation(rt, "list", f"list{kind}ForAllNamespaces", name + "List")}
    if rt.status_subresource:
        paths[f"{base}/{{name}}/status"] = {
            "parameters": [*name_param, *path_params],
            "get": _operation(rt, "get", f"read{scope}{kind}Status", name),
            "put": _operation(rt, "put", f"replace{scope}{kind}Status", name, params=_WRITE_PARAMS, body=name),
            "patch": _operation(rt, "patch", f"patch{scope}{kind}Status", name, patch=patch_types),
        }
    return paths


# -------------------------------------------------------------------------------------------- v2


def _v2_document(v3_docs: list[Doc]) -> Doc:
    """Swagger 2.0, for clients that still read it: the same paths and definitions, with v2's shapes."""
    definitions: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for doc in v3_docs:
        for name, schema in doc["components"]["schemas"].items():
            definitions.setdefault(name, _v2_schema(schema))
        for path, item in doc["paths"].items():
            paths[path] = {verb: _v2_operation(op) if verb != "parameters" else [_v2_param(p) for p in op]
                           for verb, op in item.items()}
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths,
            "definitions": definitions}


def _v2_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_v2_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            out[key] = value.replace(_V3_REF, "#/definitions/")
        elif key == "nullable":
            continue  # not in Swagger 2.0
        elif key == "allOf" and isinstance(value, list) and len(value) == 1 and "$ref" in value[0]:
            out["$ref"] = value[0]["$ref"].replace(_V3_REF, "#/definitions/")
        elif key in ("properties", "patternProperties"):
            out[key] = {k: _v2_schema(v) for k, v in value.items()}
        else:
            out[key] = _v2_schema(value)
    if "$ref" in out:
        return {k: v for k, v in out.items() if k in ("$ref", "description")}
    return out


def _v2_param(param: Doc) -> Doc:
    out = {k: v for k, v in param.items() if k != "schema"}
    out.update(param.get("schema") or {})
    return out


def _v2_operation(op: Doc) -> Doc:
    out = {k: v for k, v in op.items() if k not in ("requestBody", "responses", "parameters")}
    params = [_v2_param(p) for p in op.get("parameters") or ()]
    body = op.get("requestBody")
    if body is not None:
        content = body["content"]
        out["consumes"] = sorted(content)
        schema = next(iter(content.values()))["schema"]
        params.insert(0, {"name": "body", "in": "body", "required": True, "schema": _v2_schema(schema)})
    if params:
        out["parameters"] = params
    out["produces"] = ["application/json", "application/yaml"]
    out["responses"] = {code: ({"description": r["description"],
                                "schema": _v2_schema(r["content"]["application/json"]["schema"])}
                               if "content" in r else {"description": r["description"]})
                        for code, r in op["responses"].items()}
    return out


_API_VERSION_DOC = ("APIVersion defines the versioned schema of this representation of an object. Servers should "
                    "convert recognized schemas to the latest internal value, and may reject unrecognized values. "
                    "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/"
                    "api-conventions.md#resources")
_KIND_DOC = ("Kind is a string value representing the REST resource this object represents. Servers may infer "
             "this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: "
             "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds")
_METADATA_DOC = ("Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/"
                 "sig-architecture/api-conventions.md#metadata")
