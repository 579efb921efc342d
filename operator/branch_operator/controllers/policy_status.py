"""AutoMergePolicy status: the ``Accepted`` condition, the kstatus ``Ready``/``Reconciling``/``Stalled``
conditions, ``observedGeneration``, matched and governed branch counts and ``lastEvaluationTime``, kept
true one namespace at a time, and an Event when a policy is accepted, rejected or changed.

A namespace is recomputed when a policy's spec changes or a Branch appears, disappears or changes
what policies match on (name, target, labels), and a status is written only when it changes. The
decision is :func:`branch_operator.domain.merge.trace.policy_status_patch`; this is its I/O half.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from branch_operator.api.models import AutoMergePolicy
from branch_operator.clients.kube import KubeClient, NotFound
from branch_operator.domain.merge.trace import policy_status_patch, policy_statuses
from branch_operator.domain.readiness import policy_transition

__all__ = ["REFRESH_DEBOUNCE_SECONDS", "GenerationTracker", "PolicyStatusKeeper"]

log = logging.getLogger(__name__)

REFRESH_DEBOUNCE_SECONDS = 1.0


class GenerationTracker:
    """Remembers each object's (uid, generation), to tell spec changes from status-only writes."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[str, int]] = {}

    def changed(self, type_: str | None, body: Mapping[str, Any]) -> bool:
        """True for an object's first sighting, a spec change (new generation) and a deletion."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if type_ == "DELETED":
            self._seen.pop(key, None)
            return True
        seen = (str(meta.get("uid") or ""), int(meta.get("generation") or 0))
        if self._seen.get(key) == seen:
            return False
        self._seen[key] = seen
        return True


def _branch_facts(body: Mapping[str, Any]) -> tuple[str, str, frozenset[tuple[str, str]]]:
    spec = body.get("spec") or {}
    labels = (body.get("metadata") or {}).get("labels") or {}
    return str(spec.get("branchName", "")), str(spec.get("targetBranch", "main")), frozenset(labels.items())


class PolicyStatusKeeper:
    """Keeps AutoMergePolicy status true, one namespace at a time, writing only real changes."""

    def __init__(self, kube: KubeClient, clock: Callable[[], datetime]) -> None:
        self.kube = kube
        self.clock = clock
        self.policies = GenerationTracker()
        self._facts: dict[tuple[str, str], tuple[str, str, frozenset[tuple[str, str]]]] = {}
        self._dirty: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def prime(self, branches: Iterable[Mapping[str, Any]]) -> None:
        """Start-up's Branch list: without it, policy statuses written during kopf's first pass over the
        Branches would count only those seen so far (one status write per debounce, each a partial count)."""
        for branch in branches:
            self.branch_changed("ADDED", branch)

    def branch_changed(self, type_: str | None, body: Mapping[str, Any]) -> bool:
        """Whether this Branch event can change what policies match (status writes cannot)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if type_ == "DELETED":
            return self._facts.pop(key, None) is not None
        facts = _branch_facts(body)
        if self._facts.get(key) == facts:
            return False
        self._facts[key] = facts
        return True

    async def refresh(self, namespace: str) -> None:
        """Ask for the namespace's policy statuses to be recomputed; returns at once.

        The pass runs in a task of its own: a kopf handler that waited for it would hold up the next
        events of its object, and a policy's newer generation must reach the index without delay.
        Requests arriving while a pass is pending or running coalesce into one more pass.
        """
        self._dirty.add(namespace)
        task = self._tasks.get(namespace)
        if task is None or task.done():
            self._tasks[namespace] = asyncio.create_task(self._run(namespace), name=f"policy-status-{namespace}")

    async def _run(self, namespace: str) -> None:
        while namespace in self._dirty:
            # Gather a burst (e.g. GitOps applying many Branches) into one pass.
            await asyncio.sleep(REFRESH_DEBOUNCE_SECONDS)
            self._dirty.discard(namespace)
            try:
                await self._refresh_once(namespace)
            except Exception as exc:  # a background task: report, never die silently or crash the loop
                log.warning("policy status of namespace %s not updated: %s", namespace, exc)

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def _refresh_once(self, namespace: str) -> None:
        policies = await self.kube.list_policies(namespace)
        if not policies:
            return
        # From the facts every Branch event already gave us, not a list call: listing and decoding every
        # Branch of the namespace per pass kept the operator busy for as long as a burst lasted.
        branches = [
            {"metadata": {"name": name, "labels": dict(labels)}, "spec": {"branchName": bn, "targetBranch": target}}
            for (ns, name), (bn, target, labels) in list(self._facts.items()) if ns == namespace
        ]
        views = policy_statuses(policies, branches)
        now = self.clock()
        for obj in policies:
            meta = obj["metadata"]
            view = views.get(meta["name"])
            if view is None:
                continue
            current = obj.get("status") or {}
            patch = policy_status_patch(view, current, generation=meta.get("generation"), now=now)
            if patch is None:
                continue
            transition = policy_transition(
                current, uid=str(meta.get("uid") or ""), generation=meta.get("generation"), accepted=view.accepted,
                reason=view.reason, message=view.message)
            try:
                written = await self.kube.patch_status(AutoMergePolicy.PLURAL, namespace, meta["name"], patch,
                                                       resource_version=None)
            except NotFound:
                continue
            if transition is not None:
                # After the write, so an Event never announces a verdict the status does not show.
                await self.kube.post_event(written, type_=transition.type_, reason=transition.reason,
                                           message=transition.message, once_per=transition.key)
