"""Incidents from Branch changes: failed merges at once, merges blocked past a threshold.

The I/O half of :mod:`branch_operator.domain.incidents`: it is fed every Branch the watch sees, asks the
domain whether that state is an incident, and hands incidents to the :class:`~branch_operator.clients.notify.Notifier`,
the one producer of incident notifications.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from branch_operator.clients.kube import KubeClient, KubeError, NotFound
from branch_operator.clients.notify import Notifier
from branch_operator.config import Settings
from branch_operator.domain.incidents import blocked_since, merge_blocked_incident, merge_failed_incident
from branch_operator.kit.deadlines import DeadlineScheduler

log = logging.getLogger(__name__)

__all__ = ["IncidentWatch"]


class IncidentWatch:
    """Turns Branch changes into incidents: failed merges at once, blocked merges past a threshold."""

    def __init__(self, kube: KubeClient, notifier: Notifier, settings: Settings,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.kube = kube
        self.notifier = notifier
        self.threshold = settings.notify_blocked_after_seconds
        self.clock = clock
        self.scheduler: DeadlineScheduler[tuple[str, str]] = DeadlineScheduler(
            self._check_blocked, name="blocked-merge notifications", clock=clock)

    def observe(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event_type == "DELETED":
            self.scheduler.cancel(key)
            return
        failed = merge_failed_incident(obj, self.clock())
        if failed is not None:
            self.notifier.submit(failed)
        since = blocked_since(obj)
        if since is None or self.threshold <= 0:
            self.scheduler.cancel(key)
        else:
            self.scheduler.schedule(key, datetime.fromtimestamp(since.timestamp() + self.threshold, UTC))

    async def _check_blocked(self, key: tuple[str, str]) -> None:
        try:
            obj = await self.kube.get_branch(*key)
        except NotFound:
            return
        except KubeError as exc:
            log.warning("blocked-merge check of %s/%s failed (%s); retrying", key[0], key[1], exc)
            self.scheduler.schedule(key, datetime.fromtimestamp(self.clock().timestamp() + 10, UTC))
            return
        since = blocked_since(obj)
        if since is None:
            return
        now = self.clock()
        due = since.timestamp() + self.threshold
        if due > now.timestamp():  # blocked again more recently: look later
            self.scheduler.schedule(key, datetime.fromtimestamp(due, UTC))
            return
        self.notifier.submit(merge_blocked_incident(obj, since, now))

    async def run(self) -> None:
        await self.scheduler.run()
