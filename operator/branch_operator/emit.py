"""What the operator tells the world besides Kubernetes: audit records, merge announcements and
notifications, each published into its own JetStream stream with a de-duplication id."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .config import Settings
from .domain.audit import AuditRecord
from .events import make_cloudevent
from .nats_io import NatsBus

audit_log = logging.getLogger("oms.audit")
log = logging.getLogger(__name__)


class Emitter:
    def __init__(self, bus: NatsBus | None, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        # In-process observers (the demo prints audit ids, metrics count them).
        self.audit_observers: list[Callable[[AuditRecord], None]] = []

    async def audit(self, record: AuditRecord) -> None:
        """One JSON line on the ``oms.audit`` logger and one message on the audit stream.

        The audit id is the JetStream ``Nats-Msg-Id``, so a record re-published after a redelivery is
        dropped by the server's duplicate window instead of appearing twice.
        """
        line = record.to_json()
        audit_log.info(line)
        for observer in self.audit_observers:
            observer(record)
        if self.bus is not None:
            await self.bus.publish(self.settings.audit_subject, line.encode(), msg_id=record.audit_id)

    async def branch_merged(
        self, *, msg_id: str, namespace: str, name: str, branch_name: str, target_branch: str,
        policy: str | None, indexing_id: str | None, merged_at: datetime, correlation_id: str | None,
    ) -> None:
        data = {
            "branch_name": branch_name,
            "target_branch": target_branch,
            "namespace": namespace,
            "branch": name,
            "policy": policy,
            "indexing_id": indexing_id,
            "merged_at": merged_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "correlation_id": correlation_id,
        }
        await self._cloudevent(self.settings.merged_subject, "com.oms.branch.merged", branch_name, data, msg_id)

    async def notify(self, *, msg_id: str, kind: str, branch_name: str, data: dict[str, Any]) -> None:
        """A notification CloudEvent for admins (e.g. ``com.oms.branch.indexing_failed``)."""
        await self._cloudevent(self.settings.notifications_subject, f"com.oms.branch.{kind}", branch_name, data, msg_id)

    async def _cloudevent(self, subject: str, type_: str, ce_subject: str, data: dict[str, Any], msg_id: str) -> None:
        event = make_cloudevent(type_, self.settings.operator_id, ce_subject, data, event_id=msg_id)
        if self.bus is None:
            log.info("would publish %s: %s", type_, json.dumps(event))
            return
        await self.bus.publish(
            subject, json.dumps(event).encode(), msg_id=msg_id,
            headers={"Content-Type": "application/cloudevents+json"},
        )
