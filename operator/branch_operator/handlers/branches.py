"""kopf registrations for Branches, in the order kopf must run them for one object.

Branch reactions are ``on.event`` handlers: level-triggered on the object as it is now, with no
per-object state in annotations. The one exception is the deletion handler at the end, which makes
kopf put the finalizer ``oms.dev/finalizer`` on Branches so that their locks are released and audited
before a Branch goes away. Without a running operator such a delete waits; ``docs/operations.md``
says how to remove the finalizer by hand.

Branches are looked up in ``runtime.catalog`` (controllers/catalog.py), not in kopf indices: kopf's
readiness bookkeeping for indexed objects cost minutes of CPU at start-up with 10,000 Branches.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from branch_operator.api.models import GROUP, VERSION, Branch
from branch_operator.domain import admin
from branch_operator.handlers.context import acting_runtime, runtime_of

log = logging.getLogger(__name__)


@kopf.on.event(GROUP, VERSION, Branch.PLURAL)
async def branch_catalog(type: str | None, body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    """Keeps ``runtime.catalog`` current with every Branch event, DELETED included.

    Registered before every other Branch handler (kopf runs one object's handlers in registration
    order), so they all look things up in a catalog that already knows this event.
    """
    runtime = runtime_of(memo)
    if runtime is None:
        return
    claimed = runtime.catalog.observe(type, body)
    if not claimed or namespace is None or not runtime.in_charge:
        return
    branch_name = str((body.get("spec") or {}).get("branchName", ""))
    await runtime.branch_names.claimed(namespace, branch_name)  # a second claimant: someone is shadowed
    if runtime.catalog.find(namespace, branch_name) != body["metadata"]["name"]:
        return  # another Branch already answers to that name: READY Branches' targets are unchanged
    # READY Branches merging into this name were decided without its locks (target unknown then). At
    # start-up the primed catalog knows every target already, so this is for Branches created or renamed
    # later.
    await runtime.triggers.merging_into(namespace, branch_name)


@kopf.on.event(GROUP, VERSION, Branch.PLURAL)
async def branch_for_policy_status(
    type: str | None, body: kopf.Body, namespace: str | None, memo: Any, **_: Any
) -> None:
    """A Branch appearing, going or changing what policies match on changes its policies' counts."""
    runtime = runtime_of(memo)
    if runtime is None or namespace is None or not runtime.policy_status.branch_changed(type, body):
        return
    if runtime.in_charge:
        await runtime.policy_status.refresh(namespace)


@kopf.on.event(GROUP, VERSION, Branch.PLURAL)
async def branch_changed(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = acting_runtime(memo)
    if runtime is None or type == "DELETED":
        return
    await runtime.branches.changed(copy.deepcopy(dict(body)))


def _has_admin_request(annotations: kopf.Annotations, **_: Any) -> bool:
    return admin.has_request(annotations)


@kopf.on.event(GROUP, VERSION, Branch.PLURAL, when=_has_admin_request)
async def admin_requested(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = acting_runtime(memo)
    if runtime is None or type == "DELETED":
        return
    await runtime.admin.handle(copy.deepcopy(dict(body)))


@kopf.on.event(GROUP, VERSION, Branch.PLURAL)
async def branch_incidents(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = acting_runtime(memo)
    if runtime is not None:
        runtime.incidents.observe(type, copy.deepcopy(dict(body)))


@kopf.on.delete(GROUP, VERSION, Branch.PLURAL)
async def branch_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = runtime_of(memo)
    if runtime is None:
        raise kopf.TemporaryError("the operator runtime is not up yet", delay=1)
    if not runtime.in_charge:
        # The finalizer stays until the replica in charge has released and audited the locks.
        raise kopf.TemporaryError(f"{runtime.leader or 'another replica'} is in charge", delay=5)
    released = await runtime.lock_lifecycle.release_for_deleted_branch(copy.deepcopy(dict(body)))
    if released:
        log.info("branch %s/%s deleted: released %s", body["metadata"].get("namespace"),
                 body["metadata"].get("name"), ", ".join(released))
