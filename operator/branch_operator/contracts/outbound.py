"""What the operator emits on NATS besides audit records: the merge announcement and the notifications
for people on call, each a structured-JSON CloudEvent built by :func:`make_cloudevent`.

The type strings are a contract with OMS and with whoever subscribes to notifications, so they are
spelled once, here. A notification's type is ``com.oms.branch.<kind>``; the kind also names the
incident in webhook payloads and metrics.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

from branch_operator.contracts.cloudevents import SPECVERSION, STRUCTURED_CONTENT_TYPE, format_time, jsonable

__all__ = [
    "STRUCTURED_CONTENT_TYPE",
    "TYPE_BRANCH_MERGED",
    "make_cloudevent",
    "notification_type",
]

# The announcement that tells OMS to merge (merge backend "event"), on ``oms.branch.merged``.
TYPE_BRANCH_MERGED: Final = "com.oms.branch.merged"

_NOTIFICATION_TYPE_PREFIX: Final = "com.oms.branch."


def notification_type(kind: str) -> str:
    """The CloudEvent type of a notification of ``kind`` (e.g. ``com.oms.branch.indexing_failed``; the kinds
    are the incident kinds of :mod:`branch_operator.domain.incidents`)."""
    return _NOTIFICATION_TYPE_PREFIX + kind


def make_cloudevent(
    type_: str,
    source: str,
    subject: str | None,
    data: Any,
    *,
    event_id: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """A structured-JSON CloudEvent for what the operator emits (e.g. ``com.oms.branch.merged``).

    ``data`` may hold datetimes, enums and pydantic models; they are rendered to JSON values here so
    the result is plain JSON (timestamps as RFC 3339 ``Z``).
    """
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": type_,
    }
    if subject is not None:
        event["subject"] = subject
    event["time"] = format_time(time or datetime.now(UTC))
    event["datacontenttype"] = "application/json"
    event["data"] = jsonable(data)
    return event
