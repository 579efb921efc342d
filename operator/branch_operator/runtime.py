"""Everything one running operator owns: clients, the NATS consumer task and the periodic resync.

Created in kopf's startup handler and kept in kopf's ``memo``; kopf handlers and the background
tasks reach each other only through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .config import Settings
from .consumer import IndexingConsumer
from .domain.policy import PolicyRef
from .emit import Emitter
from .kube import KubeClient, KubeError
from .nats_io import NatsBus
from .processor import EventProcessor
from .reconciler import MergeReconciler

log = logging.getLogger(__name__)


class IndexLookup:
    """Adapts kopf indices (filled by handlers.py) to the lookups the processor and reconciler need."""

    def __init__(self) -> None:
        self.branches_by_name: Any = None  # kopf.Index[(ns, branchName)] -> name
        self.ready_branches: Any = None  # kopf.Index[ns] -> name
        self.policies_by_ns: Any = None  # kopf.Index[ns] -> PolicyRef

    def find(self, namespace: str, branch_name: str) -> str | None:
        index = self.branches_by_name
        if index is None:
            return None
        names = sorted(index.get((namespace, branch_name), []))
        return names[0] if names else None

    def policies(self, namespace: str) -> Sequence[PolicyRef]:
        index = self.policies_by_ns
        if index is None:
            return []
        return list(index.get(namespace, []))

    def ready(self) -> list[tuple[str, str]]:
        index = self.ready_branches
        if index is None:
            return []
        return sorted((ns, name) for ns in list(index) for name in index.get(ns, []))


class Runtime:
    def __init__(
        self, settings: Settings, kube: KubeClient, bus: NatsBus,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.bus = bus
        self.lookup = IndexLookup()
        self.emitter = Emitter(bus, settings)
        self.processor = EventProcessor(kube, self.emitter, settings, self.lookup, clock)
        self.reconciler = MergeReconciler(kube, self.emitter, settings, self.lookup, clock)
        self.consumer = IndexingConsumer(bus, self.processor, self.emitter, settings, clock)
        self.tasks: list[asyncio.Task[None]] = []
        self.watching = False

    @property
    def ready(self) -> bool:
        return self.watching and self.consumer.ready

    def readiness(self) -> Mapping[str, bool]:
        return {
            "kubernetes": self.watching,
            "nats": self.bus.connected,
            "consumers": self.consumer.ready,
        }

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._nats(), name="oms-nats"),
            asyncio.create_task(self._resync(), name="oms-resync"),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.bus.close()
        with contextlib.suppress(Exception):
            await self.kube.close()

    async def _nats(self) -> None:
        """Connect (retrying until NATS is there), make sure streams exist, then consume forever."""
        delay = 0.5
        while True:
            try:
                if self.bus.nc is None or self.bus.nc.is_closed:
                    await self.bus.connect()
                await self.bus.ensure_streams()
                await self.bus.ensure_consumers()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("NATS not available yet (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)  # backoff between connection attempts, not synchronisation
                delay = min(delay * 2, 10.0)
        await self.consumer.run()

    async def _resync(self) -> None:
        """Periodic safety net: re-evaluate READY branches (only those), e.g. for policy timeouts."""
        while True:
            await asyncio.sleep(self.settings.reconcile_interval_seconds)
            for ns, name in self.lookup.ready():
                try:
                    obj = await self.kube.get_branch(ns, name)
                    await self.reconciler.reconcile(obj)
                except KubeError as exc:
                    log.warning("resync of %s/%s failed: %s", ns, name, exc)
