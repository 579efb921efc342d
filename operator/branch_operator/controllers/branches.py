"""What the operator does with a Branch as it is now: initialise a new one, decide a READY one's merge.

Level-triggered: called by the Branch watch for every change, and with every Branch when a replica
takes charge (``Runtime.catch_up``), so the two can never disagree about what a Branch needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from branch_operator.clients.kube import Conflict, KubeClient, KubeError, NotFound
from branch_operator.controllers.merge import MergeReconciler
from branch_operator.domain.lifecycle import initial_status
from branch_operator.domain.readiness import observed_branch_status

__all__ = ["BranchReactions"]

log = logging.getLogger(__name__)


class BranchReactions:
    def __init__(self, kube: KubeClient, reconciler: MergeReconciler, clock: Callable[[], datetime]) -> None:
        self.kube = kube
        self.reconciler = reconciler
        self.clock = clock

    async def changed(self, obj: dict[str, Any], *, watched: bool = True) -> None:
        status = obj.get("status") or {}
        if not status.get("phase"):
            await self.initialise(obj)
            return
        obj = await self.observe(obj)
        if self.reconciler.wants(obj):  # READY, a merge request, or a merge to announce
            try:
                await self.reconciler.reconcile(obj, watched=watched)
            except KubeError as exc:
                # The periodic resync retries; an on.event handler has no retry of its own.
                log.warning("merge reconciliation of %s failed: %s", obj["metadata"]["name"], exc)

    async def observe(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Readiness for the Branch's current generation, when a spec edit left it behind; the Branch as
        written (the merge reconciliation that may follow needs its new resourceVersion)."""
        meta = obj["metadata"]
        patch = observed_branch_status(obj.get("status") or {}, meta.get("generation"), self.clock())
        if patch is None:
            return obj
        try:
            return await self.kube.patch_branch_status(meta["namespace"], meta["name"], patch,
                                                       resource_version=meta.get("resourceVersion"))
        except (Conflict, NotFound):
            return obj  # someone wrote first; that write's own watch event brings the Branch back here

    async def initialise(self, obj: dict[str, Any]) -> None:
        """A new Branch starts ACTIVE, with its conditions known."""
        meta = obj["metadata"]
        patch = initial_status(meta.get("generation"), self.clock())
        try:
            await self.kube.patch_branch_status(meta["namespace"], meta["name"], patch,
                                                resource_version=meta.get("resourceVersion"))
        except (Conflict, NotFound):
            return  # someone wrote first (e.g. a started event); that write initialised it
