"""Which resources the embedded API server serves: built-ins, CRD-defined ones, and their discovery documents."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from branch_operator.embedded.apiserver.jsonpath import JsonPathError
from branch_operator.embedded.apiserver.schema import CompiledSchema, SchemaError
from branch_operator.embedded.apiserver.selectors import FieldLabels, builtin_field_labels, custom_field_labels
from branch_operator.embedded.apiserver.store import ObjectStore
from branch_operator.embedded.apiserver.tables import CrdPrinter, Printer, printer_for

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
SUBRESOURCE_VERBS = ["get", "patch", "update"]


@dataclass(eq=False, slots=True)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    store: ObjectStore
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    generation: bool = False  # whether objects carry metadata.generation
    custom: bool = False  # served from a CRD: schema applies, PUT needs a resourceVersion
    schema: CompiledSchema | None = None
    schema_doc: dict[str, Any] | None = None  # the CRD version's openAPIV3Schema, for /openapi
    crd_name: str | None = None
    field_labels: FieldLabels | None = None  # what ``fieldSelector=`` may name; None: any path
    crd_printer: Printer | None = None  # the CRD version's additionalPrinterColumns

    @property
    def printer(self) -> Printer:
        return printer_for(self.group, self.plural, self.crd_printer)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def discovery_entries(self) -> list[dict[str, Any]]:
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": VERBS,
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": SUBRESOURCE_VERBS,
                }
            )
        return entries


_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key putting versions in Kubernetes priority order: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > other."""
    m = _VERSION_RE.match(version)
    if not m:
        return (3, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[m[2]]
    return (stage, -int(m[1]), -int(m[3] or 0), version)


# (group, version, plural, singular, kind, namespaced, shortNames, categories, status, generation)
_BUILTINS: list[tuple[str, str, str, str, str, bool, tuple[str, ...], tuple[str, ...], bool, bool]] = [
    ("", "v1", "namespaces", "namespace", "Namespace", False, ("ns",), (), True, False),
    ("", "v1", "events", "event", "Event", True, ("ev",), (), False, False),
    ("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",), (), False, False),
    ("", "v1", "secrets", "secret", "Secret", True, (), (), False, False),
    ("events.k8s.io", "v1", "events", "event", "Event", True, ("ev",), (), False, False),
    (
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", "customresourcedefinition",
        "CustomResourceDefinition", False, ("crd", "crds"), ("api-extensions",), True, True,
    ),
    ("coordination.k8s.io", "v1", "leases", "lease", "Lease", True, (), (), False, False),
    (
        "admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", "validatingwebhookconfiguration",
        "ValidatingWebhookConfiguration", False, (), ("api-extensions",), False, True,
    ),
]  # fmt: skip

EVENT_RESOURCES = frozenset({("", "events"), ("events.k8s.io", "events")})


class Registry:
    def __init__(self, *, history_size: int, event_retention: int | None) -> None:
        self.history_size = history_size
        self.event_retention = event_retention
        self.by_gv: dict[tuple[str, str], dict[str, ResourceType]] = {}
        self.stores: dict[tuple[str, str], ObjectStore] = {}
        self.crds: dict[str, list[ResourceType]] = {}
        self.revision = 0  # counts changes of the served types (what /openapi documents describe)
        for group, version, plural, singular, kind, namespaced, short, cats, status, gen in _BUILTINS:
            self.add(
                ResourceType(
                    group=group,
                    version=version,
                    plural=plural,
                    singular=singular,
                    kind=kind,
                    namespaced=namespaced,
                    store=self.store_for(group, plural),
                    short_names=short,
                    categories=cats,
                    status_subresource=status,
                    generation=gen,
                    field_labels=builtin_field_labels(group, plural),
                )
            )

    def store_for(self, group: str, plural: str) -> ObjectStore:
        store = self.stores.get((group, plural))
        if store is None:
            # Events pile up with every reconciliation; the retention cap stands in for the real TTL.
            cap = self.event_retention if (group, plural) in EVENT_RESOURCES else None
            store = self.stores[(group, plural)] = ObjectStore(self.history_size, max_objects=cap)
        return store

    def add(self, rt: ResourceType) -> None:
        self.by_gv.setdefault((rt.group, rt.version), {})[rt.plural] = rt

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.by_gv.get((group, version), {}).get(plural)

    def all_types(self) -> list[ResourceType]:
        return [rt for resources in self.by_gv.values() for rt in resources.values()]

    # ------------------------------------------------------------------------------------------ CRDs

    def types_from_crd(self, crd: dict[str, Any]) -> tuple[list[ResourceType], list[tuple[str, str]]]:
        """The resource types a CRD object defines, or the (field, message) problems preventing it."""
        problems: list[tuple[str, str]] = []
        spec = crd.get("spec")
        if not isinstance(spec, dict):
            return [], [("spec", "Required value")]
        group = spec.get("group")
        names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
        assert isinstance(names, dict)
        plural, kind = names.get("plural"), names.get("kind")
        scope = spec.get("scope")
        versions = spec.get("versions")
        if not group or not isinstance(group, str):
            problems.append(("spec.group", "Required value"))
        if not plural or not isinstance(plural, str):
            problems.append(("spec.names.plural", "Required value"))
        if not kind or not isinstance(kind, str):
            problems.append(("spec.names.kind", "Required value"))
        if scope not in ("Namespaced", "Cluster"):
            problems.append(("spec.scope", f'Unsupported value: {scope!r}: supported values: "Cluster", "Namespaced"'))
        if not isinstance(versions, list) or not versions:
            problems.append(("spec.versions", "Required value: must have exactly one version marked as storage"))
        elif sum(1 for v in versions if isinstance(v, dict) and v.get("storage")) != 1:
            problems.append(("spec.versions", "Invalid value: must have exactly one version marked as storage"))
        name = crd.get("metadata", {}).get("name")
        if plural and group and name != f"{plural}.{group}":
            problems.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
        if problems:
            return [], problems
        assert isinstance(versions, list) and isinstance(group, str) and isinstance(plural, str)
        assert isinstance(kind, str)

        types: list[ResourceType] = []
        store = self.store_for(group, plural)
        for i, version in enumerate(versions):
            if not isinstance(version, dict) or not version.get("served", True):
                continue
            schema_doc = (version.get("schema") or {}).get("openAPIV3Schema")
            schema: CompiledSchema | None = None
            if schema_doc is not None:
                try:
                    schema = CompiledSchema(schema_doc)
                except SchemaError as e:
                    if e.field is not None:
                        problems.append((f"spec.versions[{i}].schema.{e.field}", str(e)))
                    else:
                        problems.append((f"spec.versions[{i}].schema.openAPIV3Schema", f"Invalid value: {e}"))
                    continue
            columns = version.get("additionalPrinterColumns") or []
            try:
                printer = CrdPrinter(list(columns))
            except (JsonPathError, TypeError, ValueError, AttributeError) as e:
                problems.append((f"spec.versions[{i}].additionalPrinterColumns", f"Invalid value: {e}"))
                continue
            subresources = version.get("subresources") or {}
            types.append(
                ResourceType(
                    group=group,
                    version=str(version.get("name")),
                    plural=plural,
                    singular=names.get("singular") or kind.lower(),
                    kind=kind,
                    namespaced=scope == "Namespaced",
                    store=store,
                    short_names=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                    status_subresource="status" in subresources,
                    generation=True,
                    custom=True,
                    schema=schema,
                    schema_doc=schema_doc if isinstance(schema_doc, dict) else None,
                    crd_name=name,
                    field_labels=custom_field_labels(version.get("selectableFields")),
                    crd_printer=printer,
                )
            )
        return (types, []) if not problems else ([], problems)

    def register_crd(self, name: str, types: list[ResourceType]) -> None:
        previous = self.crds.get(name, [])
        for rt in previous:
            self.by_gv.get((rt.group, rt.version), {}).pop(rt.plural, None)
        if previous and types and (previous[0].group, previous[0].plural) != (types[0].group, types[0].plural):
            self._drop_store(previous[0].group, previous[0].plural)
        for rt in types:
            self.add(rt)
        self.crds[name] = types
        self._drop_empty_group_versions()
        self.revision += 1

    def unregister_crd(self, name: str) -> None:
        types = self.crds.pop(name, [])
        for rt in types:
            self.by_gv.get((rt.group, rt.version), {}).pop(rt.plural, None)
        if types:
            self._drop_store(types[0].group, types[0].plural)
        self._drop_empty_group_versions()
        self.revision += 1

    def _drop_store(self, group: str, plural: str) -> None:
        store = self.stores.pop((group, plural), None)
        if store is not None:
            store.close_watchers()

    def _drop_empty_group_versions(self) -> None:
        for gv in [gv for gv, resources in self.by_gv.items() if not resources]:
            del self.by_gv[gv]

    # ------------------------------------------------------------------------------------- discovery

    def _group_versions(self, group: str) -> list[str]:
        return sorted((v for g, v in self.by_gv if g == group), key=version_priority)

    def core_versions(self) -> list[str]:
        return self._group_versions("")

    def api_group(self, group: str) -> dict[str, Any] | None:
        versions = self._group_versions(group)
        if not group or not versions:
            return None
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def api_group_list(self) -> dict[str, Any]:
        groups: list[str] = []
        for group, _ in self.by_gv:
            if group and group not in groups:
                groups.append(group)
        docs = [self.api_group(g) for g in groups]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [d for d in docs if d is not None]}

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        resources = self.by_gv.get((group, version))
        if not resources:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [entry for rt in resources.values() for entry in rt.discovery_entries()],
        }
