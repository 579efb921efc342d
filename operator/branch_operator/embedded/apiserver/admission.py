"""Validating admission webhooks: which writes they see, and the pause in a write while they answer.

``ValidatingWebhookConfiguration`` objects are defaulted and validated here as kube-apiserver does (the
subset of its rules a configuration written by hand or by kopf's managed mode can break). Each webhook
is then matched against every create, update and delete the HTTP API receives: ``rules`` (groups,
versions, ``resource/subresource`` with ``*``, operations, scope), ``namespaceSelector``,
``objectSelector`` and ``matchPolicy``.

A write runs synchronously to completion (see ``ops``), but webhooks are called over the network. The
:class:`Gate` joins the two without making writes asynchronous: the write reaches the gate just before
it would commit, with the object exactly as it would be stored; when webhooks match, the gate stops it
with :class:`Pending`. The server calls the webhooks with that object and, once they all allow it, runs
the write again; the gate lets it commit only if it produces the same object from the same old object
(otherwise another write slipped in, and the webhooks are asked again, as kube-apiserver's retried
update would). A create keeps the uid, name and timestamp the webhooks saw.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from branch_operator.embedded.apiserver.errors import cause, invalid
from branch_operator.embedded.apiserver.patch import json_equal
from branch_operator.embedded.apiserver.registry import Registry, ResourceType

GROUP = "admissionregistration.k8s.io"
PLURAL = "validatingwebhookconfigurations"

_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT", "*"})
_SIDE_EFFECTS = ("None", "NoneOnDryRun")
_REVIEW_VERSIONS = ("v1", "v1beta1")
_SCOPES = frozenset({"*", "Cluster", "Namespaced"})
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL}){{2,}}$")
# Who made the request: the embedded server authenticates nobody, so every caller is the admin.
USER_INFO: dict[str, Any] = {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]}


# ------------------------------------------------------------------------------------- configurations


def default_configuration(obj: dict[str, Any]) -> dict[str, Any]:
    """The defaults kube-apiserver fills in, so a read-back equals what kopf's managed mode compares."""
    hooks = obj.get("webhooks")
    if not isinstance(hooks, list):
        return obj
    defaulted = []
    for hook in hooks:
        if not isinstance(hook, dict):
            defaulted.append(hook)
            continue
        hook = {
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "namespaceSelector": {},
            "objectSelector": {},
            "timeoutSeconds": 10,
            **{k: v for k, v in hook.items() if v is not None},
        }
        rules = hook.get("rules")
        if isinstance(rules, list):
            hook["rules"] = [{"scope": "*", **r} if isinstance(r, dict) else r for r in rules]
        defaulted.append(hook)
    return {**obj, "webhooks": defaulted}


def validate_configuration(obj: dict[str, Any]) -> None:
    causes: list[dict[str, str]] = []

    def add(reason: str, path: str, body: str) -> None:
        causes.append(cause(reason, path, f"{path}: {body}"))

    hooks = obj.get("webhooks") or []
    if not isinstance(hooks, list):
        hooks = []
        add("FieldValueInvalid", "webhooks", 'Invalid value: "object": must be a list')
    seen: set[str] = set()
    for i, hook in enumerate(hooks):
        at = f"webhooks[{i}]"
        if not isinstance(hook, dict):
            add("FieldValueInvalid", at, 'Invalid value: "string": must be an object')
            continue
        name = hook.get("name")
        if not name:
            add("FieldValueRequired", f"{at}.name", "Required value")
        elif not isinstance(name, str) or not _QUALIFIED_RE.match(name):
            add("FieldValueInvalid", f"{at}.name",
                f'Invalid value: "{name}": should be a domain with at least three segments separated by dots')
        elif name in seen:
            add("FieldValueDuplicate", f"{at}.name", f'Duplicate value: "{name}"')
        else:
            seen.add(name)
        side_effects = hook.get("sideEffects")
        if side_effects is None:
            add("FieldValueRequired", f"{at}.sideEffects", "Required value: must specify one of None, NoneOnDryRun")
        elif side_effects not in _SIDE_EFFECTS:
            add("FieldValueNotSupported", f"{at}.sideEffects",
                f'Unsupported value: "{side_effects}": supported values: "None", "NoneOnDryRun"')
        versions = hook.get("admissionReviewVersions")
        if not versions:
            add("FieldValueRequired", f"{at}.admissionReviewVersions",
                "Required value: must specify one of v1, v1beta1")
        elif not any(v in _REVIEW_VERSIONS for v in versions):
            add("FieldValueInvalid", f"{at}.admissionReviewVersions",
                f"Invalid value: {_go_list(versions)}: must include at least one of v1, v1beta1")
        config = hook.get("clientConfig") if isinstance(hook.get("clientConfig"), dict) else {}
        assert isinstance(config, dict)
        url, service = config.get("url"), config.get("service")
        if (url is None) == (service is None):
            add("FieldValueRequired", f"{at}.clientConfig", "Required value: exactly one of url or service is required")
        elif isinstance(url, str) and not url.startswith("https://"):
            add("FieldValueInvalid", f"{at}.clientConfig.url",
                f"Invalid value: \"{url}\": 'https' is the only allowed URL scheme")
        for policy, allowed in (("failurePolicy", ("Fail", "Ignore")), ("matchPolicy", ("Equivalent", "Exact"))):
            if hook.get(policy) not in (None, *allowed):
                supported = ", ".join(f'"{a}"' for a in allowed)
                add("FieldValueNotSupported", f"{at}.{policy}",
                    f'Unsupported value: "{hook.get(policy)}": supported values: {supported}')
        timeout = hook.get("timeoutSeconds")
        if timeout is not None and (not isinstance(timeout, int) or not 1 <= timeout <= 30):
            add("FieldValueInvalid", f"{at}.timeoutSeconds",
                f"Invalid value: {timeout}: the timeout value must be between 1 and 30 seconds")
        for j, rule in enumerate(hook.get("rules") or ()):
            rat = f"{at}.rules[{j}]"
            if not isinstance(rule, dict):
                continue
            for op in rule.get("operations") or ():
                if op not in _OPERATIONS:
                    add("FieldValueNotSupported", f"{rat}.operations",
                        f'Unsupported value: "{op}": supported values: "*", "CONNECT", "CREATE", "DELETE", "UPDATE"')
            if rule.get("scope") not in _SCOPES:
                add("FieldValueNotSupported", f"{rat}.scope",
                    f'Unsupported value: "{rule.get("scope")}": supported values: "*", "Cluster", "Namespaced"')
    if causes:
        raise invalid("ValidatingWebhookConfiguration", GROUP, obj["metadata"].get("name", ""), causes)


def _go_list(values: Any) -> str:
    return "[]string{" + ", ".join(f'"{v}"' for v in values) + "}" if isinstance(values, list) else repr(values)


# --------------------------------------------------------------------------------------------- matching


def _requirement(expr: Any) -> Callable[[dict[str, str]], bool]:
    key, op = expr.get("key"), expr.get("operator")
    values = frozenset(expr.get("values") or ())
    if op == "In":
        return lambda labels: labels.get(key) in values
    if op == "NotIn":
        return lambda labels: labels.get(key) not in values
    if op == "Exists":
        return lambda labels: key in labels
    if op == "DoesNotExist":
        return lambda labels: key not in labels
    return lambda labels: False


def selector_matches(selector: Any, labels: dict[str, str]) -> bool:
    """A ``metav1.LabelSelector``: an empty or absent one matches everything."""
    if not isinstance(selector, dict):
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_requirement(e)(labels) for e in selector.get("matchExpressions") or () if isinstance(e, dict))


def _labels(obj: dict[str, Any] | None) -> dict[str, str]:
    labels = ((obj or {}).get("metadata") or {}).get("labels")
    return labels if isinstance(labels, dict) else {}


def _listed(values: Any, value: str) -> bool:
    return isinstance(values, list) and ("*" in values or value in values)


def _resource_listed(resources: Any, plural: str, subresource: str | None) -> bool:
    if not isinstance(resources, list):
        return False
    for entry in resources:
        res, _, sub = str(entry).partition("/")
        if res not in ("*", plural):
            continue
        if subresource is None and not sub:
            return True
        if subresource is not None and sub in ("*", subresource):
            return True
    return False


def rules_match(hook: dict[str, Any], registry: Registry, rt: ResourceType, operation: str,
                subresource: str | None) -> bool:  # fmt: skip
    equivalent = hook.get("matchPolicy", "Equivalent") == "Equivalent"
    for rule in hook.get("rules") or ():
        if not isinstance(rule, dict):
            continue
        if not _listed(rule.get("operations"), operation) or not _listed(rule.get("apiGroups"), rt.group):
            continue
        if not _resource_listed(rule.get("resources"), rt.plural, subresource):
            continue
        scope = rule.get("scope", "*")
        if (scope == "Cluster" and rt.namespaced) or (scope == "Namespaced" and not rt.namespaced):
            continue
        versions = rule.get("apiVersions")
        if _listed(versions, rt.version):
            return True
        if equivalent and any(
            _listed(versions, other.version)
            for other in registry.all_types()
            if other.store is rt.store and other is not rt
        ):
            return True  # another version of the same resource: the real server would convert the object
    return False


# ----------------------------------------------------------------------------------------- the gate


@dataclass(slots=True)
class Attempt:
    """One write as it would commit, and the webhooks that must see it first."""

    rt: ResourceType
    operation: str
    subresource: str | None
    namespace: str
    name: str
    obj: dict[str, Any] | None
    old: dict[str, Any] | None
    dry_run: bool
    options: dict[str, Any]
    hooks: list[dict[str, Any]]
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


class Pending(Exception):
    def __init__(self, attempt: Attempt) -> None:
        super().__init__(attempt.operation)
        self.attempt = attempt


_IDENTITY = ("uid", "creationTimestamp", "name")


class Gate:
    """Stops the one write a request makes until its webhooks allowed it (see the module docstring)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._armed: dict[str, Any] | None = None
        self._approved: Attempt | None = None

    def configured(self) -> bool:
        store = self.registry.stores.get((GROUP, PLURAL))
        return bool(store and store.objects)

    def arm(self, options: dict[str, Any], approved: Attempt | None) -> None:
        self._armed, self._approved = options, approved

    def disarm(self) -> None:
        self._armed = self._approved = None

    def check(self, rt: ResourceType, operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None,
              *, subresource: str | None, dry_run: bool) -> dict[str, Any] | None:  # fmt: skip
        """The object to commit; raises :class:`Pending` while matching webhooks have not seen it."""
        options = self._armed
        if options is None:
            return obj
        self._armed = None  # one write per request: what that write does in turn (namespace contents) is not
        approved, self._approved = self._approved, None
        hooks = self.matching(rt, operation, obj, old, subresource)
        if not hooks:
            return obj
        if approved is not None and _same_write(approved, operation, obj, old):
            return approved.obj
        meta = (obj or old or {}).get("metadata") or {}
        raise Pending(Attempt(rt, operation, subresource, meta.get("namespace", ""), meta.get("name", ""),
                              obj, old, dry_run, options, hooks))  # fmt: skip

    def matching(self, rt: ResourceType, operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None,
                 subresource: str | None) -> list[dict[str, Any]]:  # fmt: skip
        store = self.registry.stores.get((GROUP, PLURAL))
        if not store or not store.objects or rt.group == GROUP:
            return []  # webhook configurations themselves are never reviewed: a broken webhook could not be removed
        namespace_labels: dict[str, str] | None = None
        found: list[dict[str, Any]] = []
        for key in sorted(store.objects):
            for hook in store.objects[key].obj.get("webhooks") or ():
                if not rules_match(hook, self.registry, rt, operation, subresource):
                    continue
                selector = hook.get("objectSelector")
                if not (selector_matches(selector, _labels(obj)) or (old is not None
                                                                      and selector_matches(selector, _labels(old)))):
                    continue  # fmt: skip
                if rt.namespaced or (rt.group == "" and rt.plural == "namespaces"):
                    if namespace_labels is None:
                        namespace_labels = self._namespace_labels(rt, obj or old)
                    if not selector_matches(hook.get("namespaceSelector"), namespace_labels):
                        continue
                found.append(hook)
        return found

    def _namespace_labels(self, rt: ResourceType, obj: dict[str, Any] | None) -> dict[str, str]:
        if rt.group == "" and rt.plural == "namespaces":
            return _labels(obj)
        namespace = ((obj or {}).get("metadata") or {}).get("namespace", "")
        namespaces = self.registry.stores.get(("", "namespaces"))
        stored = namespaces.objects.get(("", namespace)) if namespaces else None
        return _labels(stored.obj) if stored is not None else {}


def _same_write(approved: Attempt, operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None) -> bool:
    if approved.operation != operation:
        return False
    old_rv = ((old or {}).get("metadata") or {}).get("resourceVersion")
    approved_rv = ((approved.old or {}).get("metadata") or {}).get("resourceVersion")
    if old_rv != approved_rv:
        return False
    if operation == "DELETE" or obj is None or approved.obj is None:
        return obj is None and approved.obj is None
    if operation == "CREATE":
        meta, seen = obj.get("metadata") or {}, approved.obj.get("metadata") or {}
        pinned = _IDENTITY if meta.get("generateName") else _IDENTITY[:2]
        obj = {**obj, "metadata": {**meta, **{k: seen[k] for k in pinned if k in seen}}}
    return json_equal(obj, approved.obj)
