"""What makes a READY Branch's merge be decided again: the watch-driven triggers.

Each trigger reconciles by name. The reconciler reads the Branch itself, so a read here first would
be a second one, and a Branch that is not READY is filtered out from the catalog without any read.
A failed reconciliation is logged, not raised: kopf's ``on.event`` handlers have no retry of their
own, and the periodic resync (``Runtime``) is the safety net.
"""

from __future__ import annotations

import logging
from typing import Protocol

from branch_operator.clients.kube import KubeError
from branch_operator.controllers.catalog import BranchCatalog

__all__ = ["MergeTriggers"]

log = logging.getLogger(__name__)

Key = tuple[str, str]


class ReconcilesByName(Protocol):
    async def reconcile_key(self, key: Key) -> object: ...


class MergeTriggers:
    def __init__(self, catalog: BranchCatalog, reconciler: ReconcilesByName) -> None:
        self.catalog = catalog
        self.reconciler = reconciler

    async def branch(self, namespace: str, name: str) -> None:
        try:
            await self.reconciler.reconcile_key((namespace, name))
        except KubeError as exc:
            log.warning("merge reconciliation of %s/%s failed: %s", namespace, name, exc)

    async def namespace(self, namespace: str) -> None:
        """A policy applied, changed or deleted: every READY Branch of its namespace may be affected."""
        for ns, name in self.catalog.ready():
            if ns == namespace:
                await self.branch(ns, name)

    async def lock_on(self, namespace: str, branch: str) -> None:
        """A lock taken or released on ``branch`` (a Kubernetes name) can block or unblock its own merge."""
        if self.catalog.is_ready(namespace, branch):
            await self.branch(namespace, branch)

    async def lock_on_target(self, namespace: str, branch: str) -> None:
        """A lock on ``branch`` (a Kubernetes name) blocks or unblocks the READY Branches merging into it."""
        branch_name = self.catalog.branch_name_of(namespace, branch)
        if branch_name is not None:
            await self.merging_into(namespace, branch_name)

    async def merging_into(self, namespace: str, branch_name: str) -> None:
        """Re-decide the READY Branches of ``namespace`` whose target is ``branch_name`` (an OMS name)."""
        for name in self.catalog.ready_by_target(namespace, branch_name):
            await self.branch(namespace, name)
