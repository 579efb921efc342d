"""What a request does to the stored state: the API server's write semantics, free of HTTP.

Every operation runs synchronously to completion (no awaits), so writes are atomic with respect to each
other and to watch registration on the single event loop. Stored objects are immutable: writes build
new objects, sharing unchanged subtrees with the old ones (see ``apiserver_patch``).
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
import time
import uuid
from typing import Any

from branch_operator.embedded.apiserver import admission
from branch_operator.embedded.apiserver.errors import (
    ApiError,
    already_exists,
    bad_request,
    cause,
    conflict,
    gone,
    invalid,
    not_found,
)
from branch_operator.embedded.apiserver.leases import admit_lease
from branch_operator.embedded.apiserver.patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    PATCH_TYPES,
    STRATEGIC_PATCH,
    check_patch_request,
    json_patch,
    merge_patch,
    strip_strategic_directives,
)
from branch_operator.embedded.apiserver.registry import Registry, ResourceType
from branch_operator.embedded.apiserver.selectors import Predicate
from branch_operator.embedded.apiserver.store import Key, Stored, Watcher, dumps

__all__ = ["APPLY_PATCH", "JSON_PATCH", "MERGE_PATCH", "PATCH_TYPES", "STRATEGIC_PATCH", "Cluster"]

# Metadata only the server sets; writes to the main resource cannot change them.
_SYSTEM_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "name",
    "namespace",
    "resourceVersion",
)
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the real server's: no vowels, no look-alikes
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_RE = re.compile(f"^{_SUBDOMAIN}$")
_LABEL_RE = re.compile(f"^{_LABEL}$")
_NAMESPACE_LABEL = "kubernetes.io/metadata.name"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


class Cluster:
    def __init__(self, *, history_size: int, event_retention: int | None, watch_queue_size: int) -> None:
        self.registry = Registry(history_size=history_size, event_retention=event_retention)
        self.rv = 0
        self.watch_queue_size = watch_queue_size
        self.gate = admission.Gate(self.registry)
        namespaces = self.resource("", "v1", "namespaces")
        for name in ("default", "kube-system"):
            self.create(namespaces, None, {"metadata": {"name": name}})

    def resource(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.registry.lookup(group, version, plural)
        if rt is None:
            raise ApiError(404, f"the server could not find the requested resource ({group}/{version} {plural})")
        return rt

    @staticmethod
    def key(rt: ResourceType, namespace: str | None, name: str) -> Key:
        return ((namespace or "") if rt.namespaced else "", name)

    # ------------------------------------------------------------------------------------------ reads

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Stored:
        stored = rt.store.objects.get(self.key(rt, namespace, name))
        if stored is None:
            raise not_found(rt.plural, rt.group, name)
        return stored

    def raw(self, rt: ResourceType, stored: Stored) -> bytes:
        """The object as served through ``rt``'s version (objects are not converted between versions)."""
        if stored.obj.get("apiVersion") == rt.api_version:
            return stored.raw
        return dumps({**stored.obj, "apiVersion": rt.api_version})

    def select(self, rt: ResourceType, namespace: str | None, predicate: Predicate | None) -> list[Stored]:
        objects = rt.store.objects
        return [
            objects[key]
            for key in rt.store.keys_sorted(namespace if rt.namespaced else None)
            if predicate is None or predicate(objects[key].obj)
        ]

    def list_raw(
        self,
        rt: ResourceType,
        namespace: str | None,
        predicate: Predicate | None,
        *,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> bytes:
        store = rt.store
        keys = store.keys_sorted(namespace if rt.namespaced else None)
        if continue_token:
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(continue_token.encode())))
            except (ValueError, binascii.Error) as e:
                raise bad_request(f"invalid continue token: {e}") from e
            keys = [k for k in keys if k > after]
        items: list[bytes] = []
        next_token = ""
        for i, key in enumerate(keys):
            stored = store.objects[key]
            if predicate is not None and not predicate(stored.obj):
                continue
            items.append(self.raw(rt, stored))
            if limit and len(items) >= limit:
                if i + 1 < len(keys):
                    next_token = base64.urlsafe_b64encode(dumps(list(key))).decode()
                break
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if next_token:
            meta["continue"] = next_token
        head = dumps({"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta})
        return head[:-1] + b',"items":[' + b",".join(items) + b"]}"

    # ----------------------------------------------------------------------------------------- writes

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _check_type(self, rt: ResourceType, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the body of the request was in an unknown format: expected a JSON object")
        kind = body.get("kind")
        if kind not in (None, "", rt.kind):
            raise bad_request(f"the kind in the body ({kind}) does not match the resource ({rt.kind})")
        api_version = body.get("apiVersion")
        if api_version not in (None, ""):
            group = api_version.rpartition("/")[0] if isinstance(api_version, str) else None
            if group != rt.group:
                raise bad_request(
                    f"the API version in the data ({api_version}) does not match the expected API version "
                    f"({rt.api_version})"
                )
        return body

    def _validate_name(self, rt: ResourceType, name: Any) -> None:
        if rt.plural == "namespaces" and rt.group == "":
            ok = isinstance(name, str) and len(name) <= 63 and bool(_LABEL_RE.match(name))
            what, regex = "RFC 1123 label", _LABEL
        else:
            ok = isinstance(name, str) and len(name) <= 253 and bool(_SUBDOMAIN_RE.match(name))
            what, regex = "RFC 1123 subdomain", _SUBDOMAIN
        if not ok:
            message = (
                f"Invalid value: {json.dumps(name)}: a lowercase {what} must consist of lower case "
                f"alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character "
                f"(regex used for validation is '{regex}')"
            )
            raise invalid(rt.kind, rt.group, str(name), [cause("FieldValueInvalid", "metadata.name", message)])

    def create(self, rt: ResourceType, namespace: str | None, body: Any, *, dry_run: bool = False) -> Stored:
        body = self._check_type(rt, body)
        store = rt.store
        obj = {"apiVersion": rt.api_version, "kind": rt.kind, **body}
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = dict(_meta(body))
        ns = ""
        if rt.namespaced:
            ns = namespace or meta.get("namespace") or ""
            if not ns:
                raise bad_request("a namespaced object needs a namespace")
            if meta.get("namespace") not in (None, "", ns):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        name = meta.get("name")
        if not name:
            prefix = meta.get("generateName")
            if not prefix or not isinstance(prefix, str):
                message = "Required value: name or generateName is required"
                raise invalid(rt.kind, rt.group, "", [cause("FieldValueRequired", "metadata.name", message)])
            for _ in range(16):
                name = prefix + "".join(random.choices(_GENERATE_ALPHABET, k=5))
                if (ns, name) not in store.objects:
                    break
            meta["name"] = name
        self._validate_name(rt, name)
        for field in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "generation",
        ):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rt.generation:
            meta["generation"] = 1
        obj["metadata"] = meta
        if rt.status_subresource:
            obj.pop("status", None)
        obj = self._admit(rt, obj, None)
        obj = self.gate.check(rt, "CREATE", obj, None, subresource=None, dry_run=dry_run) or obj
        key = (ns, obj["metadata"]["name"])
        # Validation and admission come first, as on the real server: an invalid duplicate is 422, not 409.
        if key in store.objects:
            raise already_exists(rt.plural, rt.group, key[1])
        if dry_run:
            return Stored(obj, self.rv)
        rv = self._next_rv()
        obj["metadata"] = {**obj["metadata"], "resourceVersion": str(rv)}
        stored = Stored(obj, rv)
        store.commit("ADDED", key, stored, None)
        self._after_write(rt, "ADDED", stored)
        return stored

    def replace(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Stored:
        body = self._check_type(rt, body)
        current = self.get(rt, namespace, name)
        meta = _meta(body)
        if meta.get("name") not in (None, "", name):
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if rt.custom and not meta.get("resourceVersion"):
            # Custom resources refuse unconditional updates (AllowUnconditionalUpdate is false for them).
            message = "Invalid value: 0x0: must be specified for an update"
            raise invalid(rt.kind, rt.group, name, [cause("FieldValueInvalid", "metadata.resourceVersion", message)])
        return self._update(rt, current, body, subresource=subresource, dry_run=dry_run)

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_manager: str | None = None,
        force: bool = False,
    ) -> Stored:
        check_patch_request(rt.custom, patch_type, field_manager, force)
        current = rt.store.objects.get(self.key(rt, namespace, name))
        if current is None:
            if patch_type == APPLY_PATCH and subresource is None and isinstance(patch, dict):
                # Server-side apply creates missing objects; field ownership is not emulated.
                body = {**patch, "metadata": {**_meta(patch), "name": name}}
                return self.create(rt, namespace, body, dry_run=dry_run)
            raise not_found(rt.plural, rt.group, name)
        old = current.obj
        if patch_type == JSON_PATCH:
            candidate = json_patch(old, patch)
        else:
            if not isinstance(patch, dict):
                raise bad_request("a merge patch must be a JSON object")
            if patch_type == STRATEGIC_PATCH:
                patch = strip_strategic_directives(patch)
            candidate = merge_patch(old, patch)
        if not isinstance(candidate, dict):
            raise ApiError(422, "the patch turned the object into a non-object")
        return self._update(rt, current, candidate, subresource=subresource, dry_run=dry_run)

    def _update(
        self,
        rt: ResourceType,
        current: Stored,
        candidate: dict[str, Any],
        *,
        subresource: str | None,
        dry_run: bool,
    ) -> Stored:
        old = current.obj
        old_meta = old["metadata"]
        name = old_meta["name"]
        cand_meta = _meta(candidate)
        rv = cand_meta.get("resourceVersion")
        if rv not in (None, "") and rv != old_meta["resourceVersion"]:
            raise conflict(rt.plural, rt.group, name)

        if subresource == "status":
            # The status subresource changes the status and nothing else (not even labels/annotations).
            obj = dict(old)
            if "status" in candidate:
                obj["status"] = candidate["status"]
            else:
                obj.pop("status", None)
        else:
            obj = dict(candidate)
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            if rt.status_subresource:
                if "status" in old:
                    obj["status"] = old["status"]
                else:
                    obj.pop("status", None)
            meta = dict(cand_meta)
            for field in _SYSTEM_META:
                if field in old_meta:
                    meta[field] = old_meta[field]
                else:
                    meta.pop(field, None)
            if "deletionTimestamp" in old_meta:
                added = [f for f in meta.get("finalizers") or () if f not in (old_meta.get("finalizers") or ())]
                if added:
                    message = (
                        "Forbidden: no new finalizers can be added if the object is being "
                        f"deleted, found new finalizers {json.dumps(added)}"
                    )
                    raise invalid(
                        rt.kind,
                        rt.group,
                        name,
                        [cause("FieldValueForbidden", "metadata.finalizers", message)],
                    )
            obj["metadata"] = meta
            if rt.group == "" and rt.plural == "namespaces":
                meta["labels"] = {**(meta.get("labels") or {}), _NAMESPACE_LABEL: name}

        obj = self._admit(rt, obj, old, subresource=subresource)
        if rt.generation and subresource != "status" and self._spec_changed(rt, obj, old):
            obj["metadata"] = {**obj["metadata"], "generation": int(old_meta.get("generation", 0)) + 1}
        obj = self.gate.check(rt, "UPDATE", obj, old, subresource=subresource, dry_run=dry_run) or obj
        if obj == old:
            return current  # A no-op write: no new resourceVersion, no watch event, like the real server.

        new_meta = dict(obj["metadata"])
        if dry_run:
            obj["metadata"] = new_meta
            return Stored(obj, current.rv)
        new_rv = self._next_rv()
        new_meta["resourceVersion"] = str(new_rv)
        obj["metadata"] = new_meta
        stored = Stored(obj, new_rv)
        key = (old_meta.get("namespace", ""), name)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            rt.store.commit("DELETED", key, stored, old)
            self._after_write(rt, "DELETED", stored)
        else:
            rt.store.commit("MODIFIED", key, stored, old)
            self._after_write(rt, "MODIFIED", stored)
        return stored

    @staticmethod
    def _spec_changed(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any]) -> bool:
        """Whether ``metadata.generation`` must move: any change outside metadata (and status, if split off)."""
        ignored = ("metadata", "status") if rt.status_subresource else ("metadata",)
        return any(obj.get(k) != old.get(k) for k in obj.keys() | old.keys() if k not in ignored)

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: Any = None,
        *,
        dry_run: bool = False,
    ) -> Stored:
        current = self.get(rt, namespace, name)
        meta = current.obj["metadata"]
        preconditions = options.get("preconditions") if isinstance(options, dict) else None
        if isinstance(preconditions, dict):
            for field in ("uid", "resourceVersion"):
                wanted = preconditions.get(field)
                if wanted and wanted != meta.get(field):
                    why = (
                        f"Precondition failed: {field} in precondition: {wanted}, "
                        f"{field} in object meta: {meta.get(field)}"
                    )
                    raise conflict(rt.plural, rt.group, name, why)
        self.gate.check(rt, "DELETE", None, current.obj, subresource=None, dry_run=dry_run)
        key = (meta.get("namespace", ""), name)
        if meta.get("finalizers"):
            # Finalizers hold the object: it is only marked, and goes once the last finalizer is removed.
            if meta.get("deletionTimestamp"):
                return current
            new_meta = {**meta, "deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": 0}
            if rt.generation:
                new_meta["generation"] = int(meta.get("generation", 0)) + 1
            obj = {**current.obj, "metadata": new_meta}
            if dry_run:
                return Stored(obj, current.rv)
            rv = self._next_rv()
            new_meta["resourceVersion"] = str(rv)
            stored = Stored(obj, rv)
            rt.store.commit("MODIFIED", key, stored, current.obj)
            return stored
        if dry_run:
            return current
        rv = self._next_rv()
        stored = Stored({**current.obj, "metadata": {**meta, "resourceVersion": str(rv)}}, rv)
        rt.store.commit("DELETED", key, stored, current.obj)
        self._after_write(rt, "DELETED", stored)
        return stored

    # ---------------------------------------------------------------------------------- admission hooks

    def _admit(
        self,
        rt: ResourceType,
        obj: dict[str, Any],
        old: dict[str, Any] | None,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Schema (custom resources) and the built-in types' own rules; returns the object to store."""
        if rt.schema is not None:
            obj, errs = rt.schema.admit(obj, old)
            if errs:
                raise invalid(rt.kind, rt.group, _meta(obj).get("name", ""), errs)
        if rt.group == "":
            if rt.plural == "secrets" and "stringData" in obj:
                obj = self._fold_string_data(obj)
            elif rt.plural == "namespaces" and old is None:
                meta = obj["metadata"]
                obj["metadata"] = {
                    **meta,
                    "labels": {**(meta.get("labels") or {}), _NAMESPACE_LABEL: meta["name"]},
                }
                obj["status"] = {"phase": "Active"}
        elif rt.group == "apiextensions.k8s.io" and rt.plural == "customresourcedefinitions" and not subresource:
            obj = self._admit_crd(rt, obj, old)
        elif rt.group == "coordination.k8s.io" and rt.plural == "leases":
            obj = admit_lease(obj)
        elif rt.group == admission.GROUP and rt.plural == admission.PLURAL:
            obj = admission.default_configuration(obj)
            admission.validate_configuration(obj)
        return obj

    @staticmethod
    def _fold_string_data(obj: dict[str, Any]) -> dict[str, Any]:
        obj = dict(obj)
        string_data = obj.pop("stringData") or {}
        data = dict(obj.get("data") or {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data
        return obj

    def _admit_crd(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        _, problems = self.registry.types_from_crd(obj)
        name = _meta(obj).get("name", "")
        if problems:
            causes = [cause("FieldValueInvalid", field, msg) for field, msg in problems]
            raise invalid(rt.kind, rt.group, name, causes)
        spec = obj["spec"]
        names = dict(spec["names"])
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", f"{names['kind']}List")
        storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
        old_status = old.get("status") if old is not None else None
        if (
            isinstance(old_status, dict)
            and old_status.get("acceptedNames") == names
            and storage in (old_status.get("storedVersions") or ())
        ):
            obj["status"] = old_status
            return obj
        now = now_rfc3339()
        stored_versions = list((old_status or {}).get("storedVersions") or ())
        if storage not in stored_versions:
            stored_versions.append(storage)
        # The CRD is established at once: there is no asynchronous controller to wait for.
        obj["status"] = {
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
            "acceptedNames": names,
            "storedVersions": stored_versions,
        }  # fmt: skip
        return obj

    def _after_write(self, rt: ResourceType, type_: str, stored: Stored) -> None:
        if rt.group == "apiextensions.k8s.io" and rt.plural == "customresourcedefinitions":
            name = stored.obj["metadata"]["name"]
            if type_ == "DELETED":
                self.registry.unregister_crd(name)
            else:
                types, _ = self.registry.types_from_crd(stored.obj)
                self.registry.register_crd(name, types)
        elif rt.group == "" and rt.plural == "namespaces" and type_ == "DELETED":
            self._delete_namespace_contents(stored.obj["metadata"]["name"])
        if type_ == "ADDED" and rt.store.max_objects is not None:
            while len(rt.store.objects) > rt.store.max_objects:
                oldest = rt.store.oldest_key()
                if oldest is None:
                    break
                self._evict(rt, oldest)

    def _evict(self, rt: ResourceType, key: Key) -> None:
        current = rt.store.objects[key]
        rv = self._next_rv()
        stored = Stored({**current.obj, "metadata": {**current.obj["metadata"], "resourceVersion": str(rv)}}, rv)
        rt.store.commit("DELETED", key, stored, current.obj)

    def _delete_namespace_contents(self, namespace: str) -> None:
        seen: set[int] = set()
        for rt in self.registry.all_types():
            if not rt.namespaced or id(rt.store) in seen:
                continue
            seen.add(id(rt.store))
            for key in [k for k in rt.store.objects if k[0] == namespace]:
                if key in rt.store.objects:
                    self.delete(rt, namespace, key[1])

    # ------------------------------------------------------------------------------------------ watches

    def bookmark_line(self, rt: ResourceType, *, initial_events_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        body = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}
        return b'{"type":"BOOKMARK","object":' + dumps(body) + b"}\n"

    def open_watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        predicate: Predicate | None,
        resource_version: str | None,
        *,
        send_initial_events: bool = False,
        bookmarks: bool = False,
    ) -> tuple[list[bytes], Watcher | None]:
        """Register a watcher and return the lines it must get first (initial state or replayed history).

        Registration and the snapshot happen in one synchronous step, so no write can fall between them.
        """
        store = rt.store
        namespace = namespace if rt.namespaced else None
        lines: list[bytes] = []
        watcher = Watcher(namespace, predicate, self.watch_queue_size)
        if resource_version in (None, "", "0") or send_initial_events:
            for key, stored in store.objects.items():
                if namespace is not None and key[0] != namespace:
                    continue
                if predicate is None or predicate(stored.obj):
                    lines.append(b'{"type":"ADDED","object":' + stored.raw + b"}\n")
            if send_initial_events and bookmarks:
                lines.append(self.bookmark_line(rt, initial_events_end=True))
        else:
            try:
                since = int(str(resource_version))
            except ValueError as e:
                raise bad_request(f"invalid resource version: {resource_version!r}") from e
            if since < store.compacted_rv:
                error = gone(f"too old resource version: {since} ({store.compacted_rv})")
                return [b'{"type":"ERROR","object":' + dumps(error.status()) + b"}\n"], None
            for event_ns, event in store.history_after(since):
                line = watcher.line_for(event, event_ns)
                if line is not None:
                    lines.append(line)
        store.watchers.add(watcher)
        return lines, watcher

    @staticmethod
    def close_watch(rt: ResourceType, watcher: Watcher) -> None:
        rt.store.watchers.discard(watcher)
        watcher.closed = True

    def close_all_watches(self) -> None:
        for store in self.registry.stores.values():
            store.close_watchers()
