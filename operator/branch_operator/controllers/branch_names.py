"""Telling a Branch that another Branch of its namespace answers to its ``spec.branchName``.

Funnel's events name an OMS branch, and the catalog lets exactly one Branch answer to each name (the
smallest Kubernetes name, so every replica picks the same one). Any other Branch with that name
receives no event at all; rather than let that be found out from a branch that never moves, each
shadowed Branch gets a Warning Event and the operator log a line, whenever the set of claimants
changes by a new claim.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from branch_operator.clients.kube import KubeError
from branch_operator.controllers.catalog import BranchCatalog

__all__ = ["SHADOWED_REASON", "BranchNameClaims"]

log = logging.getLogger(__name__)

SHADOWED_REASON = "BranchNameShadowed"


class _Kube(Protocol):
    async def get_branch(self, namespace: str, name: str) -> Mapping[str, Any]: ...

    async def post_event(
        self, obj: Mapping[str, Any], *, type_: str, reason: str, message: str, action: str = "Reconcile",
        once_per: str | None = None,
    ) -> None: ...


class BranchNameClaims:
    def __init__(self, catalog: BranchCatalog, kube: _Kube) -> None:
        self.catalog = catalog
        self.kube = kube

    async def claimed(self, namespace: str, branch_name: str) -> None:
        """A Branch newly claims ``branch_name``: warn every claimant that does not answer to it."""
        claimants = self.catalog.claimants(namespace, branch_name)
        if len(claimants) < 2:
            return
        answering, shadowed = claimants[0], claimants[1:]
        for name in shadowed:
            log.warning("Branch %s/%s is shadowed: Branch %s also has spec.branchName %r and receives its events",
                        namespace, name, answering, branch_name)
            try:
                obj = await self.kube.get_branch(namespace, name)
            except KubeError as exc:  # deleted meanwhile, or the API away: the log line stays
                log.debug("cannot read Branch %s/%s to warn it: %s", namespace, name, exc)
                continue
            uid = str((obj.get("metadata") or {}).get("uid") or name)
            await self.kube.post_event(
                obj, type_="Warning", reason=SHADOWED_REASON,
                message=(f"Branch {answering} has the same spec.branchName {branch_name!r} and receives its "
                         f"indexing events; this Branch receives none until its branchName is unique or "
                         f"{answering} is gone."),
                once_per=f"shadowed:{uid}:{answering}",
            )
