"""One replica in charge at a time: leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does.

Every replica runs a :class:`LeaderElector`. A standby tries to take the Lease every ``retry_period``; the
leader renews it every ``retry_period`` and stops leading (``on_stopped_leading``) once no renewal has
succeeded within ``renew_deadline``. The decisions are :mod:`branch_operator.domain.leadership`'s; see
there why only local monotonic time is trusted.

Default timings (``config.Settings``): lease 10 s, renew deadline 7 s, retry period 0.5 s.

- After a SIGKILL of the leader, a standby saw the last renewal at most ``retry_period`` after it was
  written and takes over at its first try after ``leaseDurationSeconds`` since: at most lease duration +
  2 x retry period = 11 s (plus one round trip) after the leader's last renewal, within the 15 s budget.
- A graceful stop releases the Lease (holder cleared, ``leaseDurationSeconds`` 1, as client-go's
  ``ReleaseOnCancel``). A standby polls every half second (10 % jitter), so it takes over within 0.55 s
  plus a round trip of the release, within the 2 s budget with the drain before it (at most one pull of
  0.5 s, see ``ingest/consumer.py``). Polling rather than watching the Lease: the budget is met without a
  watch stream to keep alive, reconnect and grant (``list``/``watch``), and a poll is what detects a
  crashed leader in any case.
- A leader whose renewals fail stops acting 7 s after it sent the last successful one; nobody can take
  over before 10 s after that, which leaves 3 s for ``on_stopped_leading`` to stop in-flight work and
  absorbs clock-rate differences of up to 10/7 between replicas.
- Renewing every half second gives a leader 13 or 14 tries within the deadline, so a blip of the API
  server does not cost leadership; it is two small PUTs a second for the Deployment (and two GETs a
  second per standby).

``on_started_leading`` runs as a task beside the renew loop (it may take its time starting consumers);
``on_stopped_leading`` is awaited, after that task is cancelled if it has not finished, before the
elector competes for the Lease again or releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from branch_operator.clients.kube import Conflict, KubeError, NotFound
from branch_operator.clients.lease import Lease, LeaseClient
from branch_operator.domain import leadership as election
from branch_operator.domain.leadership import Observation

__all__ = ["LeaderElector"]

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]
JITTER = 0.1  # a standby waits retry_period x (1 + up to this) between tries


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    def __init__(
        self,
        lease_client: LeaseClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
        clock: Callable[[], float] = time.monotonic,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """``clock`` is monotonic and decides everything; ``wall_clock`` only stamps the Lease for people."""
        election.check_durations(lease_duration, renew_deadline, retry_period, JITTER)
        if not identity:
            raise ValueError("a leader election identity must not be empty")
        self.leases = lease_client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.wall_clock = wall_clock
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self._lease: Lease | None = None  # the last version read or written
        self._observed: Observation | None = None
        self._leading = False
        self._last_sent = 0.0  # when the last successful write was sent, on ``clock``
        self._reported_leader: str | None = None
        self._started: asyncio.Task[None] | None = None
        self._stopping_leadership: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._writing = asyncio.Lock()

    # ------------------------------------------------------------------------------------------ state

    @property
    def is_leader(self) -> bool:
        """True from winning the Lease until this replica stops acting (before another may take it)."""
        return self._leading

    @property
    def leader(self) -> str:
        """The holder last seen in the Lease ("" for nobody or not read yet): for logs and health."""
        return self._observed.record.holder if self._observed is not None else ""

    @property
    def describe(self) -> str:
        return f"{self.namespace}/{self.name}"

    # ------------------------------------------------------------------------------------------- loop

    async def run(self) -> None:
        """Compete for the Lease, lead while it holds, compete again after losing it; until :meth:`release`.

        Cancelling the task (a crash, as far as the Lease knows) stops leading without releasing the
        Lease: the others take over once it expires.
        """
        try:
            while not self._stop.is_set():
                if await self._acquire():
                    await self._renew_until_lost()
        finally:
            if self._leading:
                await asyncio.shield(self._stop_leading("the elector stopped"))

    async def release(self) -> bool:
        """Stop competing; if leading, stop acting first, then give the Lease up so a standby takes over
        at once. False if the Lease could not be written (the standby then waits for it to expire)."""
        self._stop.set()
        async with self._writing:  # after an attempt in flight, which may just have renewed the Lease
            if self._leading:
                await self._stop_leading("released on a graceful stop")
            if self._lease is None or self._lease.record.holder != self.identity:
                return True
            try:
                self._see(await self.leases.replace(
                    self._lease, election.release(self._lease.record, self.wall_clock())))
            except KubeError as exc:
                log.warning("could not release lease %s (identity %s): %s", self.describe, self.identity, exc)
                return False
            log.info("released lease %s (identity %s)", self.describe, self.identity)
            return True

    async def _acquire(self) -> bool:
        """Try until this replica holds the Lease (True) or the elector is stopped (False)."""
        while not self._stop.is_set():
            if await self._attempt(timeout=self.renew_deadline) and not self._stop.is_set():
                self._start_leading()
                return True
            await self._sleep(self.retry_period * (1 + random.uniform(0, JITTER)))
        return False

    async def _renew_until_lost(self) -> None:
        last_sent = self._last_sent
        while self._leading:
            deadline = last_sent + self.renew_deadline
            wait = min(self.retry_period, deadline - self.clock())
            if wait > 0 and await self._sleep(wait):
                return  # released: release() stops leading and writes the Lease
            if election.renew_deadline_passed(last_sent, self.renew_deadline, self.clock()):
                await self._stop_leading(f"no renewal succeeded within {self.renew_deadline}s")
                return
            if await self._attempt(timeout=deadline - self.clock()):
                last_sent = self._last_sent
            elif self.leader != self.identity:
                await self._stop_leading(f"the lease is held by {self.leader or 'nobody'}")
                return

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or wake as soon as the elector is stopped: True when it was."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        return self._stop.is_set()

    # --------------------------------------------------------------------------------- one attempt

    async def _attempt(self, *, timeout: float) -> bool:
        """One try to take or keep the Lease, within ``timeout``; False on refusal or any failure."""
        async with self._writing:
            if self._stop.is_set():
                return False
            sent = self.clock()
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    won = await self._try_acquire_or_renew()
            except TimeoutError:
                log.warning("lease %s: no answer within %.1fs", self.describe, timeout)
                won = False
            except KubeError as exc:
                log.warning("lease %s: %s", self.describe, exc)
                won = False
            if won:
                self._last_sent = sent
            self._report_leader()
            return won

    async def _try_acquire_or_renew(self) -> bool:
        now = self.clock()
        # The leader's fast path: write over the version it wrote last, without reading it first.
        if self._leading and self._lease is not None and self._observed is not None \
                and not election.is_expired(self._observed, now):
            record = election.acquire_or_renew(self._lease.record, self.identity, self.wall_clock(),
                                               self.lease_duration)
            try:
                self._see(await self.leases.replace(self._lease, record))
                return True
            except KubeError as exc:
                log.info("lease %s: renewal over the last version failed (%s); reading it", self.describe, exc)
        try:
            current = await self.leases.get(self.namespace, self.name)
        except NotFound:
            record = election.acquire_or_renew(None, self.identity, self.wall_clock(), self.lease_duration)
            try:
                self._see(await self.leases.create(self.namespace, self.name, record))
            except Conflict:
                return False  # another replica created it first
            return True
        self._see(current)
        assert self._observed is not None
        if not election.may_acquire(self._observed, self.identity, self.clock()):
            return False
        record = election.acquire_or_renew(current.record, self.identity, self.wall_clock(), self.lease_duration)
        try:
            self._see(await self.leases.replace(current, record))
        except Conflict:
            return False  # someone wrote it between our read and our write
        return True

    def _see(self, lease: Lease) -> None:
        self._lease = lease
        self._observed = election.observe(self._observed, lease.record, self.clock())

    # ------------------------------------------------------------------------------- transitions

    def _start_leading(self) -> None:
        self._leading = True
        log.info("became leader of lease %s (identity %s)", self.describe, self.identity)
        if self.on_started_leading is not None:
            self._started = asyncio.create_task(self._callback(self.on_started_leading, "on_started_leading"))

    async def _stop_leading(self, why: str) -> None:
        """Stop acting, once even if asked from two places; every caller returns only when it is done."""
        if self._stopping_leadership is None:
            self._leading = False
            log.warning("lost leadership of lease %s (identity %s): %s", self.describe, self.identity, why)
            self._stopping_leadership = asyncio.create_task(self._stopped())
        task = self._stopping_leadership
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._stopping_leadership is task:
                self._stopping_leadership = None

    async def _stopped(self) -> None:
        started, self._started = self._started, None
        if started is not None and not started.done():
            started.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await started
        if self.on_stopped_leading is not None:
            await self._callback(self.on_stopped_leading, "on_stopped_leading")

    async def _callback(self, callback: Callback, what: str) -> None:
        try:
            await callback()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lease %s: %s failed", self.describe, what)

    def _report_leader(self) -> None:
        holder = self.leader
        if holder != self._reported_leader:
            self._reported_leader = holder
            if holder != self.identity:
                log.info("leader is now %s (lease %s, identity %s)", holder or "nobody", self.describe,
                         self.identity)
