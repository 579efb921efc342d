"""BranchLock objects: naming, labels and bodies (pure), so every writer makes the same lock, and the
audit record of a release, so every releaser records it the same way."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from branch_operator.api.models import (
    API_VERSION,
    LABEL_BRANCH,
    LABEL_LOCK_TYPE,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Branch,
    BranchLock,
    LockType,
)
from branch_operator.domain.audit import AuditAction, AuditRecord


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def label_value(name: str) -> str:
    """A Branch's name as a label value (max 63 chars), still unique for long names."""
    if len(name) <= 63:
        return name
    return f"{name[:54].rstrip('-.')}-{_digest(name, 8)}"


def lock_name(branch: str, lock_type: LockType, key: str) -> str:
    """Deterministic, so that creating the same lock twice is an AlreadyExists, not a second lock."""
    suffix = f"-{lock_type.value.lower()}-{_digest(key, 10)}"
    return f"{branch[: 253 - len(suffix)].rstrip('-.')}{suffix}"


def indexing_lock_key(branch_uid: str | None, indexing_id: str) -> str:
    """The key of a run's INDEXING lock (see :func:`lock_name`): the run, of this very Branch.

    The uid keeps a Branch deleted and re-created under the same name from finding its predecessor's lock
    (garbage-collected with it, but later) and taking it for its own. The event's source is not part of
    it: the lock belongs to the run, and events with one indexing id are one run whatever their source.
    """
    return f"{branch_uid}|{indexing_id}" if branch_uid else indexing_id


def lock_body(
    branch_obj: Mapping[str, Any], lock_type: LockType, *, key: str, holder: str, reason: str,
    indexing_id: str | None = None, ttl_seconds: int | None = None,
) -> dict[str, Any]:
    meta = branch_obj["metadata"]
    name = meta["name"]
    spec: dict[str, Any] = {
        "branch": name, "lockType": lock_type.value, "holder": holder[:253], "reason": reason[:1024]}
    if indexing_id:
        spec["indexingId"] = indexing_id
    if ttl_seconds:
        spec["ttlSeconds"] = ttl_seconds
    return {
        "apiVersion": API_VERSION,
        "kind": BranchLock.KIND,
        "metadata": {
            "name": lock_name(name, lock_type, key),
            "namespace": meta.get("namespace"),
            "labels": {
                LABEL_BRANCH: label_value(name),
                LABEL_LOCK_TYPE: lock_type.value.lower(),
                LABEL_MANAGED_BY: MANAGED_BY,
            },
            # Garbage-collected with its Branch.
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": Branch.KIND, "name": name, "uid": meta.get("uid"),
                "controller": False, "blockOwnerDeletion": False,
            }],
        },
        "spec": spec,
    }


def locks_to_release(
    locks: Iterable[Mapping[str, Any]], branch: str, scope: str, *, keep: str | None = None
) -> list[str]:
    """Names of the branch's locks in ``scope`` ("indexing" or "all"), except ``keep``."""
    names = []
    for lock in locks:
        spec = lock.get("spec", {})
        if spec.get("branch") != branch or lock["metadata"]["name"] == keep:
            continue
        if scope == "all" or (scope == "indexing" and spec.get("lockType") == LockType.INDEXING.value):
            names.append(lock["metadata"]["name"])
    return sorted(names)


def release_record(
    lock: str | Mapping[str, Any],
    *,
    seed: str,
    when: datetime,
    actor: str,
    reason: str,
    namespace: str,
    branch: str,
    branch_name: str | None,
    from_state: str | None = None,
    to_state: str | None = None,
    correlation_id: str | None = None,
    indexing_id: str | None = None,
) -> AuditRecord:
    """The ``lock.released`` audit record of one released lock.

    ``lock`` is the BranchLock as read, when the releaser has it (its type and holder are recorded
    too), else its name. ``seed`` must be the same on every retry of the same release and differ
    between releases: it makes the audit id, by which JetStream drops a republished copy.
    """
    if isinstance(lock, str):
        details: dict[str, Any] = {"lock": lock}
    else:
        spec = lock.get("spec") or {}
        details = {"lock": lock["metadata"]["name"], "lock_type": spec.get("lockType"), "holder": spec.get("holder")}
    return AuditRecord.build(
        AuditAction.LOCK_RELEASED, branch_name=branch_name, when=when, seed=seed, actor=actor, namespace=namespace,
        branch=branch, from_state=from_state, to_state=to_state, reason=reason, correlation_id=correlation_id,
        indexing_id=indexing_id, details=details,
    )
