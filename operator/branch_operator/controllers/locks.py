"""BranchLock lifecycle with Lease-like semantics, and releasing a deleted Branch's locks.

- ``status.acquiredAt`` / ``status.renewedAt``: stamped by the operator the first time it sees a lock
  with a TTL without them (acquiredAt = the lock's creationTimestamp, when it really came to exist). Holders renew
  by patching ``status.renewedAt`` (RFC 3339), like a Lease's renewTime. ``status.expiresAt`` follows
  each stamp and renewal (what ``kubectl get branchlocks`` shows as EXPIRES).
- A lock with ``spec.ttlSeconds`` expires ``ttlSeconds`` after its last renewal (else its acquisition);
  the operator then deletes it (precondition: the resourceVersion it judged, so a renewal that races the
  deletion wins) and records ``lock.expired``, a Warning Event on the Branch and an incident. Locks
  without a TTL (the operator's own INDEXING locks) never expire: their run's events end them.
- A Branch being deleted: its locks are deleted and audited before kopf removes the finalizer
  (ownerReferences would garbage-collect them too, but without an audit record, and only in clusters
  running the garbage collector).

One :class:`~branch_operator.kit.deadlines.DeadlineScheduler` serves every lock's expiry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from branch_operator.api.models import Branch, BranchLock
from branch_operator.clients.emitter import Emitter
from branch_operator.clients.kube import Conflict, KubeClient, KubeError, NotFound, Obj, object_ref
from branch_operator.clients.notify import Notifier
from branch_operator.config import Settings
from branch_operator.domain.audit import AuditAction, AuditRecord
from branch_operator.domain.incidents import LOCK_EXPIRED, Incident
from branch_operator.domain.locks import label_value, release_record
from branch_operator.domain.timefmt import parse_time, rfc3339
from branch_operator.kit.deadlines import DeadlineScheduler

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0

LockKey = tuple[str, str]  # (namespace, name)


# ---------------------------------------------------------------------------------------------- pure


def acquired_at(lock: Mapping[str, Any]) -> datetime | None:
    status = lock.get("status") or {}
    return parse_time(status.get("acquiredAt")) or parse_time((lock.get("metadata") or {}).get("creationTimestamp"))


def last_renewal(lock: Mapping[str, Any]) -> datetime | None:
    """The later of renewedAt and the acquisition: a renewal can only extend a lock."""
    renewed = parse_time((lock.get("status") or {}).get("renewedAt"))
    acquired = acquired_at(lock)
    if renewed is None or acquired is None:
        return renewed or acquired
    return max(renewed, acquired)


def expires_at(lock: Mapping[str, Any]) -> datetime | None:
    """When ``lock`` expires if nobody renews it; None for locks without a TTL."""
    ttl = (lock.get("spec") or {}).get("ttlSeconds")
    base = last_renewal(lock)
    if not ttl or base is None:
        return None
    return base + timedelta(seconds=int(ttl))


def stamp_patch(lock: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """The status patch that gives an unstamped leased lock its acquiredAt/renewedAt (None: nothing to do).

    Only locks with a TTL are stamped: the stamp starts their lease. A lock without one never expires and
    readers take its creationTimestamp as its acquisition, so stamping it would be one more API write per
    lock (every indexing run's INDEXING lock) that tells nobody anything.
    """
    status = lock.get("status") or {}
    if status.get("acquiredAt") or not (lock.get("spec") or {}).get("ttlSeconds"):
        return None
    acquired = parse_time((lock.get("metadata") or {}).get("creationTimestamp")) or now
    patch = {"acquiredAt": rfc3339(acquired)}
    if not status.get("renewedAt"):
        patch["renewedAt"] = patch["acquiredAt"]
    return patch


def expiry_patch(lock: Mapping[str, Any]) -> dict[str, Any]:
    """``status.expiresAt`` brought in line with the lease (empty: already right), for ``kubectl get``'s
    EXPIRES column: a printer column can only show a field, not add ttlSeconds to renewedAt."""
    deadline = expires_at(lock)
    current = (lock.get("status") or {}).get("expiresAt")
    if deadline is None:
        return {"expiresAt": None} if current else {}
    wanted = rfc3339(deadline)
    return {} if parse_time(current) == deadline else {"expiresAt": wanted}


# ------------------------------------------------------------------------------------------------ I/O


class LockLifecycle:
    def __init__(
        self, kube: KubeClient, emitter: Emitter, settings: Settings, *, notifier: Notifier | None = None,
        metrics: Any = None, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.emitter = emitter
        self.settings = settings
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        self.held: dict[LockKey, str] = {}  # every lock the watch has seen -> its type (the gauge)
        self.scheduler: DeadlineScheduler[LockKey] = DeadlineScheduler(self._expire, name="lock expiry", clock=clock)

    async def run(self) -> None:
        await self.scheduler.run()

    async def observe(self, event_type: str | None, lock: Mapping[str, Any]) -> None:
        """A BranchLock watch event (kopf on.event): stamp it, and (re)schedule its expiry."""
        meta = lock.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event_type == "DELETED":
            self.scheduler.cancel(key)
            self.held.pop(key, None)
            self._gauge()
            return
        self.held[key] = str((lock.get("spec") or {}).get("lockType") or "")
        self._gauge()
        if meta.get("deletionTimestamp"):
            return
        stamp = stamp_patch(lock, self.clock())
        stamped = {**lock, "status": {**(lock.get("status") or {}), **(stamp or {})}}
        patch = {**(stamp or {}), **expiry_patch(stamped)} or None
        if patch is not None:
            try:
                # With the resourceVersion: a holder's own renewedAt written meanwhile is not overwritten.
                await self.kube.patch_status(BranchLock.PLURAL, key[0], key[1], patch,
                                             resource_version=meta.get("resourceVersion"))
            except (Conflict, NotFound):
                pass  # changed or gone; the next watch event brings the new state
            except KubeError as exc:
                log.warning("could not stamp lock %s/%s: %s", key[0], key[1], exc)
        deadline = expires_at(lock)
        if deadline is None:
            self.scheduler.cancel(key)
        else:
            self.scheduler.schedule(key, deadline)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.locks_held_now(self.held.values())

    async def _expire(self, key: LockKey) -> None:
        namespace, name = key
        try:
            lock = await self.kube.get(BranchLock.PLURAL, namespace, name)
        except NotFound:
            return
        except KubeError as exc:
            self._retry(key, exc)
            return
        deadline = expires_at(lock)
        now = self.clock()
        if deadline is None:
            return
        if deadline > now:  # renewed since it was scheduled
            self.scheduler.schedule(key, deadline)
            return
        try:
            # Preconditions: this one delete must not remove a lock renewed since (see the module docstring).
            await self.kube.delete_unchanged(BranchLock.PLURAL, namespace, lock)
        except NotFound:
            return
        except Conflict:
            # Renewed (or replaced) between our read and the delete: judge the new version.
            self.scheduler.schedule(key, now)
            return
        except KubeError as exc:
            self._retry(key, exc)
            return
        await self._expired(lock, deadline)

    def _retry(self, key: LockKey, exc: Exception) -> None:
        log.warning("lock expiry check of %s/%s failed (%s); retrying in %.0fs", key[0], key[1], exc, RETRY_SECONDS)
        self.scheduler.schedule(key, self.clock() + timedelta(seconds=RETRY_SECONDS))

    async def _expired(self, lock: Obj, deadline: datetime) -> None:
        meta, spec = lock["metadata"], lock.get("spec") or {}
        namespace, branch = meta["namespace"], str(spec.get("branch") or "")
        branch_obj = await self._branch(namespace, branch)
        branch_name = (branch_obj or {}).get("spec", {}).get("branchName")
        renewed = last_renewal(lock)
        message = (f"Lock {meta['name']} ({spec.get('lockType')}, held by {spec.get('holder')}) expired: not renewed "
                   f"for {spec.get('ttlSeconds')}s since {rfc3339(renewed) if renewed else '?'}; released.")
        details = {"lock": meta["name"], "lock_type": spec.get("lockType"), "holder": spec.get("holder"),
                   "ttl_seconds": spec.get("ttlSeconds"), "renewed_at": rfc3339(renewed) if renewed else None,
                   "expired_at": rfc3339(deadline)}
        await self.emitter.audit(AuditRecord.build(
            AuditAction.LOCK_EXPIRED, branch_name=branch_name, when=deadline,
            seed=f"{meta.get('uid')}|{AuditAction.LOCK_EXPIRED.value}", actor=self.settings.operator_id,
            namespace=namespace, branch=branch or None, reason="TTLExpired", details=details,
        ))
        if branch_obj is not None:
            await self.kube.post_event(branch_obj, type_="Warning", reason="LockExpired", message=message,
                                       related=object_ref(lock))
        if self.notifier is not None:
            self.notifier.submit(Incident(
                kind=LOCK_EXPIRED, key=f"{LOCK_EXPIRED}:{namespace}/{meta['name']}:{meta.get('uid')}",
                namespace=namespace, branch=branch or None, branch_name=branch_name,
                title=f"Lock {meta['name']} on {branch_name or branch} expired", message=message, at=deadline,
                details=details,
            ))
        log.warning("%s/%s: %s", namespace, branch, message)

    async def _branch(self, namespace: str, name: str) -> Obj | None:
        if not name:
            return None
        try:
            return await self.kube.get(Branch.PLURAL, namespace, name)
        except KubeError:
            return None

    async def release_for_deleted_branch(self, branch: Mapping[str, Any]) -> list[str]:
        """Delete and audit every lock of a Branch that is being deleted (kopf on.delete, before the finalizer goes)."""
        meta, spec = branch["metadata"], branch.get("spec") or {}
        namespace, name = meta["namespace"], meta["name"]
        released: list[str] = []
        for lock in await self.kube.list_locks(namespace, label_value(name)):
            if (lock.get("spec") or {}).get("branch") != name:
                continue
            lock_name = lock["metadata"]["name"]
            if not await self.kube.delete_lock(namespace, lock_name):
                continue  # gone already (a retry after a partial run): it was audited then
            released.append(lock_name)
            await self.emitter.audit(release_record(
                lock, seed=f"{meta.get('uid')}|branch-deleted|{lock['metadata'].get('uid')}", when=self.clock(),
                actor=self.settings.operator_id, reason="BranchDeleted", namespace=namespace, branch=name,
                branch_name=spec.get("branchName"),
            ))
        if released:
            await self.kube.post_event(branch, type_="Normal", reason="LocksReleased",
                                       message=f"Branch deleted: released {', '.join(released)}.")
        return released
