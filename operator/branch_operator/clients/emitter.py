"""What the operator tells the world besides Kubernetes: audit records, merge announcements and
notifications, each published into its own JetStream stream with a de-duplication id.

Messages are built first (:class:`Outgoing`) and sent second, so the processor can store them in the
Branch status (the outbox) in the same write as the state change they describe.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from branch_operator.clients.nats_bus import NatsBus
from branch_operator.config import Settings
from branch_operator.contracts.outbound import (
    STRUCTURED_CONTENT_TYPE,
    TYPE_BRANCH_MERGED,
    make_cloudevent,
    notification_type,
)
from branch_operator.domain.audit import AuditRecord
from branch_operator.domain.timefmt import rfc3339

audit_log = logging.getLogger("oms.audit")
log = logging.getLogger(__name__)

# An outbox about to be replaced is published once more first, if it is younger than this: JetStream's
# duplicate window on the output streams (120 s, nats_io.StreamSpec) must still drop what it already has.
OUTBOX_FLUSH_WINDOW_SECONDS = 90.0
# Outbox keys this process has published, remembered so that replacing one costs no re-publish. Bounded:
# a key forgotten early only costs a re-publish that JetStream drops.
SENT_KEYS_REMEMBERED = 8192


@dataclass(frozen=True)
class Outgoing:
    subject: str
    msg_id: str
    data: str
    record: AuditRecord | None = None  # set for audit records: logged and observed when first sent

    def wire(self) -> dict[str, str]:
        return {"subject": self.subject, "msgId": self.msg_id, "data": self.data}


def outbox(key: str, messages: Iterable[Outgoing], *, written_at: datetime) -> dict[str, Any]:
    """``status.outbox`` as written with the state change it belongs to (see api.models.Outbox)."""
    return {"key": key, "messages": [m.wire() for m in messages],
            "writtenAt": rfc3339(written_at)}


def _identity(key: str, msg_ids: Iterable[str]) -> str:
    return key + "\x00" + hashlib.sha256("\x00".join(msg_ids).encode()).hexdigest()[:20]


def from_outbox(box: Mapping[str, Any] | None) -> list[Outgoing]:
    if not box:
        return []
    return [Outgoing(m["subject"], m["msgId"], m["data"]) for m in box.get("messages") or []]


class Emitter:
    def __init__(self, bus: NatsBus | None, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        # In-process observers (the demo prints audit ids, metrics count them): called once per record.
        self.audit_observers: list[Callable[[AuditRecord], None]] = []
        self._sent: OrderedDict[str, None] = OrderedDict()

    # ------------------------------------------------------------------------------------ build

    def audit_message(self, record: AuditRecord) -> Outgoing:
        # The audit id is the Nats-Msg-Id: a record re-published after a redelivery is dropped by the
        # stream's duplicate window instead of appearing twice.
        return Outgoing(self.settings.audit_subject, record.audit_id, record.to_json(), record)

    def merged_message(
        self, *, msg_id: str, namespace: str, name: str, branch_name: str, target_branch: str,
        policy: str | None, indexing_id: str | None, merged_at: datetime, correlation_id: str | None,
    ) -> Outgoing:
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
        return self._cloudevent(self.settings.merged_subject, TYPE_BRANCH_MERGED, branch_name, data, msg_id)

    def notification_message(self, *, msg_id: str, kind: str, branch_name: str, data: dict[str, Any]) -> Outgoing:
        """A notification CloudEvent for admins (e.g. ``com.oms.branch.indexing_failed``)."""
        return self._cloudevent(
            self.settings.notifications_subject, notification_type(kind), branch_name, data, msg_id)

    def _cloudevent(self, subject: str, type_: str, ce_subject: str, data: dict[str, Any], msg_id: str) -> Outgoing:
        event = make_cloudevent(type_, self.settings.operator_id, ce_subject, data, event_id=msg_id)
        return Outgoing(subject, msg_id, json.dumps(event, separators=(",", ":")))

    # ------------------------------------------------------------------------------------- send

    async def send(self, messages: Iterable[Outgoing]) -> None:
        """Log and observe audit records, then publish every message (each awaited until stored).

        All records are logged and observed before the first publish: if publishing fails half-way (NATS
        away), a redelivery re-publishes the outbox without logging, so logging per message would lose the
        log lines (and the metrics and incident observers) of every record after the failed one.
        """
        messages = list(messages)
        for message in messages:
            if message.record is not None:
                record = message.record
                # The text line is the record itself; in JSON logs these fields make it searchable too.
                audit_log.info(message.data, extra={
                    "audit_id": record.audit_id, "action": str(record.action), "namespace": record.namespace,
                    "branch": record.branch, "event_id": record.correlation_id})
                for observer in self.audit_observers:
                    observer(message.record)
        await self.republish(messages)

    async def republish(self, messages: Iterable[Outgoing]) -> None:
        """Publish again after a redelivery: the stream drops what it already has, nothing is re-logged.

        The messages are published concurrently (their PUBs still leave in order on the one connection) and
        this returns once every one is stored: one round trip per batch instead of one per message.
        """
        messages = list(messages)
        if self.bus is None:
            for message in messages:
                log.info("would publish on %s: %s", message.subject, message.data)
            return
        if len(messages) == 1:
            await self._publish(messages[0])
            return
        results = await asyncio.gather(*(self._publish(m) for m in messages), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _publish(self, message: Outgoing) -> None:
        assert self.bus is not None
        # Audit records are plain JSON lines; everything else is a structured CloudEvent.
        headers = None if message.subject == self.settings.audit_subject else {
            "Content-Type": STRUCTURED_CONTENT_TYPE}
        await self.bus.publish(message.subject, message.data.encode(), msg_id=message.msg_id, headers=headers)

    # ---------------------------------------------------------------------------------- outboxes

    async def send_outbox(self, key: str, messages: Iterable[Outgoing]) -> None:
        """:meth:`send` the messages of the outbox ``key``, then remember that it was published."""
        messages = list(messages)
        await self.send(messages)
        self.mark_sent(key, [m.msg_id for m in messages])

    def mark_sent(self, key: str, msg_ids: Iterable[str]) -> None:
        identity = _identity(key, msg_ids)
        self._sent[identity] = None
        self._sent.move_to_end(identity)
        while len(self._sent) > SENT_KEYS_REMEMBERED:
            self._sent.popitem(last=False)

    def was_sent(self, key: str, msg_ids: Iterable[str]) -> bool:
        """Whether this process published exactly this outbox (False after a restart: it may not have been).

        By content, not key alone: one event can commit two outboxes under its id (a result kept for its
        run's started event, then applied), and the second must not pass for the first.
        """
        return _identity(key, msg_ids) in self._sent

    def box_sent(self, box: Mapping[str, Any] | None) -> bool:
        """:meth:`was_sent` for an outbox as stored in a Branch's status."""
        if not box or not box.get("key"):
            return False
        return self.was_sent(str(box["key"]), [str(m.get("msgId")) for m in box.get("messages") or []])

    async def flush_replaced(self, box: Any, *, new_key: str, now: datetime) -> None:
        """Publish the outbox a status write is about to replace (or a redelivery finds), in case it never was.

        ``box`` is the Branch's current :class:`~branch_operator.api.models.Outbox` (or None). Its writer
        committed it, but the publish failed or the process died before it; whoever replaces it must not
        lose it. Nothing to do when this process published it, or when it is older than the duplicate
        window (it was almost surely published right after it was written; re-publishing it could double
        it). JetStream drops the copies it already has.
        """
        if box is None or box.key == new_key or not box.messages or box.written_at is None:
            return
        msg_ids = [m.msg_id for m in box.messages]
        if self.was_sent(box.key, msg_ids) or (now - box.written_at).total_seconds() > OUTBOX_FLUSH_WINDOW_SECONDS:
            return
        await self.republish_outbox(box.wire())

    async def republish_outbox(self, box: Mapping[str, Any]) -> None:
        """Publish a stored outbox again (JetStream drops what it already has), then remember it as sent."""
        messages = from_outbox(box)
        await self.republish(messages)
        self.mark_sent(str(box["key"]), [m.msg_id for m in messages])

    # ------------------------------------------------------------------------- convenience (send now)

    async def audit(self, record: AuditRecord) -> None:
        await self.send([self.audit_message(record)])

    async def branch_merged(self, **kwargs: Any) -> None:
        await self.send([self.merged_message(**kwargs)])

    async def notify(self, *, msg_id: str, kind: str, branch_name: str, data: dict[str, Any]) -> None:
        await self.send([self.notification_message(msg_id=msg_id, kind=kind, branch_name=branch_name, data=data)])
