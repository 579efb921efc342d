"""kopf registrations for AutoMergePolicies: the policy index, policy status, and merge triggers.

AutoMergePolicies are the one kopf index: they are few, so kopf's per-object readiness toggles cost
nothing there, unlike for Branches (see controllers/catalog.py).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from branch_operator.api.models import GROUP, VERSION, AutoMergePolicy, AutoMergePolicySpec
from branch_operator.domain.merge import PolicyRef
from branch_operator.handlers.context import runtime_of

log = logging.getLogger(__name__)


@kopf.index(GROUP, VERSION, AutoMergePolicy.PLURAL)
def policies_by_ns(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[str, PolicyRef] | None:
    namespace = namespace or ""
    try:
        parsed = AutoMergePolicySpec.model_validate(copy.deepcopy(dict(spec)))
    except ValueError as exc:
        # An invalid policy is ignored as a whole, never half-applied.
        log.warning("ignoring AutoMergePolicy %s/%s: %s", namespace, name, exc)
        return None
    return {namespace: PolicyRef(name=name, generation=int(meta.get("generation") or 0), spec=parsed)}


@kopf.on.event(GROUP, VERSION, AutoMergePolicy.PLURAL)
async def policy_status(type: str | None, body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    runtime = runtime_of(memo)
    if runtime is None or namespace is None or not runtime.policy_status.policies.changed(type, body):
        return
    if runtime.in_charge:
        await runtime.policy_status.refresh(namespace)


@kopf.on.event(GROUP, VERSION, AutoMergePolicy.PLURAL)
async def policy_changed(type: str | None, body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    """A policy applied, changed or deleted by GitOps: re-decide the READY branches it may affect."""
    runtime = runtime_of(memo)
    # Status-only writes (the keeper's own) change nothing a decision reads.
    if runtime is None or namespace is None or not runtime.policy_specs.changed(type, body):
        return
    if runtime.in_charge:
        await runtime.triggers.namespace(namespace)
