"""kopf registrations for BranchLocks: merge triggers, then the lock lifecycle (TTL, expiry)."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from branch_operator.api.models import GROUP, VERSION, BranchLock
from branch_operator.handlers.context import acting_runtime


@kopf.on.event(GROUP, VERSION, BranchLock.PLURAL)
async def lock_changed(namespace: str | None, spec: kopf.Spec, memo: Any, **_: Any) -> None:
    """A lock taken or released can block or unblock the merge of the READY Branches merging into the
    locked Branch, and of the locked Branch itself."""
    runtime = acting_runtime(memo)
    if runtime is None or namespace is None:
        return
    branch = str(spec.get("branch", ""))
    await runtime.triggers.lock_on_target(namespace, branch)
    await runtime.triggers.lock_on(namespace, branch)


@kopf.on.event(GROUP, VERSION, BranchLock.PLURAL)
async def lock_observed(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = acting_runtime(memo)
    if runtime is not None:
        await runtime.lock_lifecycle.observe(type, copy.deepcopy(dict(body)))
