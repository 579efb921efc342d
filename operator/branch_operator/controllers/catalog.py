"""What the operator knows about every Branch it watches, kept in memory from the watch stream.

Why not kopf indices: kopf holds its handlers back until every indexed object has been indexed, and it
tracks that with one readiness toggle per object, each addition re-checking all of them. With 10,000
Branches that kept a core busy for minutes after start-up. This catalog is filled from the start-up
list call (:meth:`BranchCatalog.prime`) and then from one watch handler (:meth:`BranchCatalog.observe`),
so it is complete before any handler runs without kopf's readiness machinery.

It is pure (no I/O, no clock) and every operation costs O(1) or O(size of its answer): reverse maps are
updated on each change instead of scanning all Branches, because an event storm at start-up touches
every Branch and a scan per event would bring the O(n²) back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from branch_operator.api.models import Phase

__all__ = ["BranchCatalog", "BranchFacts", "facts_of"]

READY = Phase.READY.value
DEFAULT_TARGET = "main"

Key = tuple[str, str]  # (namespace, Kubernetes name) or (namespace, OMS branch name), as said at each use


@dataclass(frozen=True, slots=True)
class BranchFacts:
    """The few fields lookups need; everything else is read fresh from the API server when acted on."""

    branch_name: str
    target_branch: str
    phase: str | None


def facts_of(body: Mapping[str, Any]) -> BranchFacts:
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    phase = status.get("phase")
    # Same defaults as the reconciler, so a lookup and a decision never disagree about a Branch's target.
    return BranchFacts(
        branch_name=str(spec.get("branchName", "")),
        target_branch=str(spec.get("targetBranch", DEFAULT_TARGET)),
        phase=str(phase) if phase else None,
    )


def _key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _add(index: dict[Key, set[str]], key: Key, name: str) -> None:
    index.setdefault(key, set()).add(name)


def _remove(index: dict[Key, set[str]], key: Key, name: str) -> None:
    names = index.get(key)
    if names is None:
        return
    names.discard(name)
    if not names:  # empty sets would make the maps grow with every name ever seen
        del index[key]


class BranchCatalog:
    """Branches by (namespace, name), with the reverse lookups the handlers, processor and reconciler need."""

    def __init__(self) -> None:
        self._facts: dict[Key, BranchFacts] = {}
        self._by_branch_name: dict[Key, set[str]] = {}  # (ns, branchName) -> names
        self._ready_by_target: dict[Key, set[str]] = {}  # (ns, targetBranch) -> names of READY Branches
        self._ready: set[Key] = set()  # (ns, name) of READY Branches

    def __len__(self) -> int:
        return len(self._facts)

    # ------------------------------------------------------------------------------------ updates

    def observe(self, type_: str | None, body: Mapping[str, Any]) -> bool:
        """Apply one watch event (``ADDED``, ``MODIFIED``, ``DELETED``, or None for a listed object).

        Returns True when the Branch newly claims its branchName here (first seen, or renamed): READY
        Branches targeting that name may have been evaluated without it and deserve another look.
        """
        namespace, name = _key_of(body)
        if type_ == "DELETED":
            self.forget(namespace, name)
            return False
        return self._put(namespace, name, facts_of(body))

    def prime(self, items: Iterable[Mapping[str, Any]]) -> None:
        """Take in a list call's items; later events for the same Branches replace what it said."""
        for body in items:
            namespace, name = _key_of(body)
            self._put(namespace, name, facts_of(body))

    def forget(self, namespace: str, name: str) -> None:
        """Drop a Branch: deleted, or found missing when acted on (e.g. deleted while not watched)."""
        old = self._facts.pop((namespace, name), None)
        if old is not None:
            self._unlink(namespace, name, old)

    def _put(self, namespace: str, name: str, facts: BranchFacts) -> bool:
        key = (namespace, name)
        old = self._facts.get(key)
        if old == facts:
            return False  # status-only writes mostly: nothing a lookup can see has changed
        if old is not None:
            self._unlink(namespace, name, old)
        self._facts[key] = facts
        _add(self._by_branch_name, (namespace, facts.branch_name), name)
        if facts.phase == READY:
            self._ready.add(key)
            _add(self._ready_by_target, (namespace, facts.target_branch), name)
        return old is None or old.branch_name != facts.branch_name

    def _unlink(self, namespace: str, name: str, facts: BranchFacts) -> None:
        _remove(self._by_branch_name, (namespace, facts.branch_name), name)
        if facts.phase == READY:
            self._ready.discard((namespace, name))
            _remove(self._ready_by_target, (namespace, facts.target_branch), name)

    # ------------------------------------------------------------------------------------ queries

    def find(self, namespace: str, branch_name: str) -> str | None:
        """The Branch named ``branch_name`` in OMS; the smallest name if several claim it, so every
        caller and every replica picks the same one."""
        names = self._by_branch_name.get((namespace, branch_name))
        return min(names) if names else None

    def claimants(self, namespace: str, branch_name: str) -> list[str]:
        """Every Branch with ``branch_name``, sorted: the first is the one :meth:`find` answers with."""
        return sorted(self._by_branch_name.get((namespace, branch_name), ()))

    def ready(self) -> list[Key]:
        """Every READY Branch as (namespace, name), sorted so a resync pass has a stable order."""
        return sorted(self._ready)

    def is_ready(self, namespace: str, name: str) -> bool:
        """Whether Branch ``name`` is READY; for handlers that must not sort every READY Branch per event."""
        return (namespace, name) in self._ready

    def ready_by_target(self, namespace: str, target_branch: str) -> list[str]:
        """Names of the READY Branches of ``namespace`` that merge into ``target_branch``, sorted."""
        return sorted(self._ready_by_target.get((namespace, target_branch), ()))

    def branch_name_of(self, namespace: str, name: str) -> str | None:
        """The OMS branchName of Branch ``name``, or None if the catalog does not know it."""
        facts = self._facts.get((namespace, name))
        return facts.branch_name if facts is not None else None
