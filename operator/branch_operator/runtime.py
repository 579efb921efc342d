"""Everything one running operator owns: clients, controllers, the consumer and the background tasks.

Created in kopf's startup handler and kept in kopf's ``memo``; kopf handlers and the background
tasks reach each other only through it.

With several replicas (``OMS_LEADER_ELECTION``), one is in charge at a time, by a Lease
(``controllers/leadership.py``). Every replica runs kopf standalone, so its watches keep what decisions
read (the Branch catalog, kopf's policy index) current whether or not it is in charge. Only the replica
in charge consumes JetStream, runs the schedulers and the resync, and acts in handlers; on taking
charge it first decides every Branch and lock again from the API server (:meth:`Runtime.catch_up`), so
nothing that happened while another replica was in charge, or while nobody was, is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from branch_operator.api.models import BranchLock
from branch_operator.clients.emitter import Emitter
from branch_operator.clients.kube import KubeClient, KubeError, NotFound
from branch_operator.clients.lease import LeaseClient
from branch_operator.clients.merge_backends import build_backend
from branch_operator.clients.nats_bus import NatsBus
from branch_operator.clients.notify import Notifier
from branch_operator.config import Settings
from branch_operator.controllers.admin import AdminExecutor
from branch_operator.controllers.branch_names import BranchNameClaims
from branch_operator.controllers.branches import BranchReactions
from branch_operator.controllers.catalog import BranchCatalog
from branch_operator.controllers.incidents import IncidentWatch
from branch_operator.controllers.indexing import EventProcessor
from branch_operator.controllers.leadership import LeaderElector
from branch_operator.controllers.locks import LockLifecycle
from branch_operator.controllers.merge import MergeReconciler
from branch_operator.controllers.policy_status import GenerationTracker, PolicyStatusKeeper
from branch_operator.controllers.triggers import MergeTriggers
from branch_operator.domain import admin
from branch_operator.domain.merge import PolicyRef
from branch_operator.ingest.consumer import IndexingConsumer
from branch_operator.kit.backoff import Backoff, call_with_backoff
from branch_operator.ops.metrics import OperatorMetrics
from branch_operator.ops.stalls import StallMonitor

log = logging.getLogger(__name__)

# Until NATS is there, however long that takes: nothing else can start without it.
NATS_CONNECT = Backoff(base=0.5, cap=10.0, attempts=0)


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
        self.branch_names = BranchNameClaims(self.catalog, kube)
        self.branches = BranchReactions(kube, self.reconciler, clock)
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
        # The admission webhook's server (its client_config says where and with which CA), when enabled.
        self.webhook: Any = None
        self.elector = LeaderElector(
            LeaseClient.of(kube), settings.lease_namespace, settings.leader_election_lease_name,
            settings.lease_identity,
            lease_duration=settings.leader_election_lease_duration_seconds,
            renew_deadline=settings.leader_election_renew_deadline_seconds,
            retry_period=settings.leader_election_retry_period_seconds,
            on_started_leading=self._take_charge, on_stopped_leading=self._stand_down,
        ) if settings.leader_election else None
        self._connected = asyncio.Event()  # NATS connected and the streams and consumers in place
        self._connecting: asyncio.Task[None] | None = None
        self._charge: list[asyncio.Task[None]] = []  # what only the replica in charge runs

    def prime(self, branches: Sequence[Mapping[str, Any]]) -> None:
        """Start-up's list of every watched Branch, before kopf's watches deliver anything."""
        self.catalog.prime(branches)
        self.policy_status.prime(branches)
        self.watching = True

    @property
    def in_charge(self) -> bool:
        """Whether this replica acts: always with one replica, else while it holds the Lease."""
        return self.elector is None or self.elector.is_leader

    @property
    def leader(self) -> str:
        """Who is in charge, as far as this replica knows (its own identity with one replica)."""
        if self.elector is None:
            return self.settings.operator_id
        return self.elector.leader

    @property
    def ready(self) -> bool:
        return all(self.readiness().values())

    def readiness(self) -> Mapping[str, bool]:
        """A standby is ready too: it is warm, and a rolling update must be able to wait for it."""
        return {
            "kubernetes": self.watching,
            "nats": self.bus.connected,
            "consumers": self.consumer.ready if self.in_charge else True,
        }

    @property
    def live_tasks(self) -> list[asyncio.Task[None]]:
        """The background tasks that must not die (``/healthz``)."""
        return [*self.tasks, *self._charge]

    def start(self) -> None:
        # Connecting ends once connected (it retries until then): not one of the tasks that must not end.
        self._connecting = asyncio.create_task(self._nats(), name="oms-nats")
        self.tasks = [
            asyncio.create_task(self.notifier.run(), name="oms-notifier"),
            asyncio.create_task(self.stalls.run(), name="oms-stalls"),
        ]
        if self.elector is None:
            self._start_charge()
        else:
            self.tasks.append(asyncio.create_task(self.elector.run(), name="oms-leader-election"))

    def _start_charge(self) -> None:
        self._charge = [
            asyncio.create_task(self._consume(), name="oms-consumer"),
            asyncio.create_task(self._resync(), name="oms-resync"),
            asyncio.create_task(self.scheduler.run(), name="oms-merge-scheduler"),
            asyncio.create_task(self.lock_lifecycle.run(), name="oms-lock-expiry"),
            asyncio.create_task(self.incidents.run(), name="oms-blocked-merges"),
        ]
        if self.metrics is not None:
            self.metrics.leader.set(1)

    async def _take_charge(self) -> None:
        """This replica now holds the Lease: start what only it runs, then catch up on what it missed."""
        self._start_charge()
        log.info("in charge (identity %s): consuming events and acting on watch events", self.settings.lease_identity)
        await self.catch_up()

    async def _stand_down(self) -> None:
        """No longer in charge (a graceful stop, or renewals failed): stop acting before another replica may.

        The consumer first stops fetching and finishes what it has in hand (so nothing waits for its
        acknowledgement timeout on the next replica); the rest is cancelled.
        """
        if self.metrics is not None:
            self.metrics.leader.set(0)
        charge, self._charge = self._charge, []
        await self.consumer.drain(timeout=self.settings.leader_election_renew_deadline_seconds / 4)
        merging = list(self._merging)
        for task in [*charge, *merging]:
            task.cancel()
        await asyncio.gather(*charge, *merging, return_exceptions=True)
        log.info("standing by (identity %s): %s is in charge", self.settings.lease_identity, self.leader or "nobody")

    async def catch_up(self) -> None:
        """Decide every watched Branch and lock again, from the API server, as the watches would have.

        Watch events reach every replica, but only the one in charge acts on them; those that arrived
        before this replica took charge (or while nobody was in charge) are made good here. Everything
        the operator does is level-triggered and idempotent, so doing it again for an object that needed
        nothing costs a read at most.
        """
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        seen: set[str] = set()
        for ns in namespaces:
            try:
                branches = await self.kube.list_branches(ns)
                locks = await self.kube.list_objects(BranchLock.PLURAL, ns)
            except KubeError as exc:
                log.warning("catching up on %s failed (%s); the resync and the watches continue",
                            ns or "all namespaces", exc)
                continue
            for obj in branches:
                seen.add(str(obj["metadata"].get("namespace") or ""))
                await self.on_branch(obj)
            for lock in locks:
                await self.lock_lifecycle.observe("ADDED", lock)
        for ns in sorted(seen):
            await self.policy_status.refresh(ns)

    async def on_branch(self, obj: dict[str, Any]) -> None:
        """Everything a Branch's current state asks of the replica in charge (as its handlers do)."""
        self.incidents.observe("MODIFIED", obj)
        await self.branches.changed(obj)
        if admin.has_request((obj.get("metadata") or {}).get("annotations") or {}):
            await self.admin.handle(obj)

    async def stop(self) -> None:
        if self.elector is not None:
            # Gives the Lease up after standing down, so that a standby takes over at once.
            await self.elector.release()
        self.policy_status.close()
        tasks = [*([self._connecting] if self._connecting else []), *self.tasks, *self._charge, *self._merging]
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
        """Connect (retrying until NATS is there) and make sure the streams and consumers exist."""

        async def attempt() -> None:
            if self.bus.nc is None or self.bus.nc.is_closed:
                await self.bus.connect()
            await self.bus.ensure_streams()
            await self.bus.ensure_consumers()

        def logged(_n: int, exc: BaseException, delay: float) -> None:
            log.warning("NATS not available yet (%s); retrying in %.1fs", exc, delay)

        await call_with_backoff(attempt, policy=NATS_CONNECT, sleep=asyncio.sleep, before_sleep=logged,
                                retry_on=lambda exc: isinstance(exc, Exception))
        self._connected.set()

    async def _consume(self) -> None:
        await self._connected.wait()
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
