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
from typing import Any, Protocol

from branch_operator.clients.emitter import Emitter
from branch_operator.clients.kube import KubeClient, KubeError, NotFound
from branch_operator.clients.merge_backends import build_backend
from branch_operator.clients.nats_bus import NatsBus
from branch_operator.clients.notify import Notifier
from branch_operator.config import Settings
from branch_operator.controllers.admin import AdminExecutor
from branch_operator.controllers.catalog import BranchCatalog
from branch_operator.controllers.incidents import IncidentWatch
from branch_operator.controllers.indexing import EventProcessor
from branch_operator.controllers.locks import LockLifecycle
from branch_operator.controllers.merge import MergeReconciler
from branch_operator.controllers.policy_status import GenerationTracker, PolicyStatusKeeper
from branch_operator.controllers.triggers import MergeTriggers
from branch_operator.domain.merge import PolicyRef
from branch_operator.ingest.consumer import IndexingConsumer
from branch_operator.ops.metrics import OperatorMetrics
from branch_operator.ops.stalls import StallMonitor

log = logging.getLogger(__name__)


class PolicyIndex(Protocol):
    """kopf's index of AutoMergePolicies by namespace (``handlers.policies.policies_by_ns``)."""

    def get(self, namespace: str, default: Any = ..., /) -> Any: ...


class IndexLookup:
    """The lookups the processor and reconciler need: Branches from the catalog, policies from a kopf index.

    AutoMergePolicies stay a kopf index: they are few, so kopf's per-object readiness bookkeeping costs
    nothing there, unlike for Branches (see controllers/catalog.py).
    """

    def __init__(self, catalog: BranchCatalog, policies_by_ns: PolicyIndex | None) -> None:
        self.catalog = catalog
        self.policies_by_ns = policies_by_ns

    def find(self, namespace: str, branch_name: str) -> str | None:
        return self.catalog.find(namespace, branch_name)

    def forget(self, namespace: str, name: str) -> None:
        self.catalog.forget(namespace, name)

    def policies(self, namespace: str) -> Sequence[PolicyRef]:
        index = self.policies_by_ns
        if index is None:
            return []
        return list(index.get(namespace, []))

    def ready(self) -> list[tuple[str, str]]:
        return self.catalog.ready()


class Runtime:
    """The composition root: builds every part with what it needs, starts and stops the background tasks.

    ``policies`` is kopf's AutoMergePolicy index (None in tests that need no policies).
    """

    def __init__(
        self, settings: Settings, kube: KubeClient, bus: NatsBus, *,
        policies: PolicyIndex | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.bus = bus
        # Primed from start-up's list call (prime), then kept current by the first Branch handler.
        self.catalog = BranchCatalog()
        self.lookup = IndexLookup(self.catalog, policies)
        self.emitter = Emitter(bus, settings)
        self.reconciler = MergeReconciler(kube, self.emitter, settings, self.lookup, clock,
                                          backend=build_backend(settings))
        self.scheduler = self.reconciler.scheduler
        self._merging: set[asyncio.Task[None]] = set()
        self.processor = EventProcessor(kube, self.emitter, settings, self.lookup, clock, on_ready=self._merge_soon)
        if hasattr(clock, "subscribe"):  # a ManualClock: moving it wakes the scheduler
            clock.subscribe(self.scheduler.poke)
        self.consumer = IndexingConsumer(bus, self.processor, self.emitter, settings, clock)
        self.tasks: list[asyncio.Task[None]] = []
        self.watching = False
        self.triggers = MergeTriggers(self.catalog, self.reconciler)
        self.clock = clock
        self.policy_status = PolicyStatusKeeper(kube, clock)
        # Spec changes of policies, told apart from status-only writes (the keeper's own among them).
        self.policy_specs = GenerationTracker()
        self.metrics = OperatorMetrics() if settings.metrics_enabled else None
        self.notifier = Notifier.from_settings(settings, self.emitter, self.metrics)
        self.emitter.audit_observers.append(self.notifier.observe_audit)
        self.incidents = IncidentWatch(kube, self.notifier, settings, clock)
        self.lock_lifecycle = LockLifecycle(kube, self.emitter, settings, notifier=self.notifier,
                                            metrics=self.metrics, clock=clock)
        self.admin = AdminExecutor(kube, self.emitter, settings, clock=clock)
        if hasattr(clock, "subscribe"):  # a ManualClock: moving it re-checks lock expiries and blocked merges
            clock.subscribe(self.lock_lifecycle.scheduler.poke)
            clock.subscribe(self.incidents.scheduler.poke)
        if self.metrics is not None:
            self.metrics.attach(self)
        self.stalls = StallMonitor(settings.stall_warning_ms,
                                   on_lag=self.metrics.observe_lag if self.metrics else None,
                                   on_gc=self.metrics.observe_gc if self.metrics else None)
        self.http_url: str | None = None  # where /metrics, /healthz and /readyz are served

    def prime(self, branches: Sequence[Mapping[str, Any]]) -> None:
        """Start-up's list of every watched Branch, before kopf's watches deliver anything."""
        self.catalog.prime(branches)
        self.policy_status.prime(branches)
        self.watching = True

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
            asyncio.create_task(self.scheduler.run(), name="oms-merge-scheduler"),
            asyncio.create_task(self.lock_lifecycle.run(), name="oms-lock-expiry"),
            asyncio.create_task(self.incidents.run(), name="oms-blocked-merges"),
            asyncio.create_task(self.notifier.run(), name="oms-notifier"),
            asyncio.create_task(self.stalls.run(), name="oms-stalls"),
        ]

    async def stop(self) -> None:
        self.policy_status.close()
        tasks = [*self.tasks, *self._merging]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if hasattr(self.clock, "unsubscribe"):
            self.clock.unsubscribe(self.scheduler.poke)
        with contextlib.suppress(Exception):
            await self.reconciler.backend.close()
        with contextlib.suppress(Exception):
            await self.notifier.close()
        with contextlib.suppress(Exception):
            await self.bus.close()
        with contextlib.suppress(Exception):
            await self.kube.close()

    def _merge_soon(self, branch: Mapping[str, Any]) -> None:
        """A Branch an indexing result just made READY: decide its merge now, beside the event's acknowledgement.

        In a task of its own: the event is done once READY is committed. A decision that fails here is not
        remembered as made, so the watch event of that same write tries again (and the resync after it).
        """
        task = asyncio.create_task(self._merge(branch), name="oms-merge-ready")
        self._merging.add(task)
        task.add_done_callback(self._merging.discard)

    async def _merge(self, branch: Mapping[str, Any]) -> None:
        try:
            await self.reconciler.reconcile(branch, fresh=True)
        except Exception as exc:
            meta = branch.get("metadata") or {}
            log.warning("merge reconciliation of %s/%s failed: %s", meta.get("namespace"), meta.get("name"), exc)

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
                except NotFound:
                    # Deleted while no watch delivered it (e.g. between start-up's list and kopf's):
                    # without this it would be looked for again on every pass.
                    self.catalog.forget(ns, name)
                except KubeError as exc:
                    log.warning("resync of %s/%s failed: %s", ns, name, exc)
