"""The admission webhook's review of one AutoMergePolicy or Branch write: the I/O half of
:mod:`branch_operator.domain.admission` (the other Branches of the namespace come from the catalog).

Only a change of ``spec`` is judged on UPDATE: an object stored before the webhook was installed (or while
it was off) must stay editable and deletable, or its finalizer and annotations could never be removed;
the operator keeps marking such objects as it always did. A second claim on a ``spec.branchName`` is
refused on CREATE only, since the name is immutable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from branch_operator.api.models import AutoMergePolicy, Branch
from branch_operator.controllers.catalog import BranchCatalog
from branch_operator.domain.admission import Refusal, branch_refusal, policy_refusal

__all__ = ["AdmissionReview"]


class AdmissionReview:
    def __init__(self, catalog: BranchCatalog | None) -> None:
        # None before the operator's start-up built it: the uniqueness check then has nothing to read.
        self.catalog = catalog

    def review(
        self, plural: str, operation: str | None, namespace: str, name: str,
        new: Mapping[str, Any] | None, old: Mapping[str, Any] | None,
    ) -> Refusal | None:
        if new is None:
            return None
        spec = new.get("spec") or {}
        if operation == "UPDATE" and old is not None and (old.get("spec") or {}) == spec:
            return None
        if plural == AutoMergePolicy.PLURAL:
            return policy_refusal(spec)
        if plural == Branch.PLURAL:
            claimants: list[str] = []
            if operation == "CREATE" and self.catalog is not None:
                claimants = self.catalog.claimants(namespace, str(spec.get("branchName", "")))
            return branch_refusal(spec, name=name, claimants=claimants)
        return None
