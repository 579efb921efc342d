"""Checks on where an event may make the operator write, applied to every parsed event before it is
processed. The event contract (``contracts/funnel.py``) checks each value's shape; this module checks that a
well-formed value is one this operator is allowed to act on.

An event names its namespace (``data.namespace`` or the ``namespace`` extension) and Funnel is not
trusted to name only the namespaces this operator serves. With ``OMS_WATCH_NAMESPACES`` set, an event
for any other namespace is rejected (and so dead-lettered with the reason), instead of being applied
wherever the operator's RBAC happens to reach.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from branch_operator.config import Settings
from branch_operator.contracts.funnel import DNS1123_LABEL_PATTERN, EventRejected, IndexingEvent

__all__ = ["NAMESPACE_NOT_ALLOWED", "check_event", "event_namespace", "namespace_problem"]

# The dead-letter / audit reason code (alongside events.RejectReason's codes).
NAMESPACE_NOT_ALLOWED: Final = "NamespaceNotAllowed"

_LABEL = re.compile(DNS1123_LABEL_PATTERN)


def event_namespace(event: IndexingEvent, settings: Settings) -> str:
    """The namespace an event applies to: its own, else the operator's default."""
    return event.namespace or settings.default_namespace


def namespace_problem(namespace: str, watched: Sequence[str]) -> str | None:
    """Why the operator must not act in ``namespace`` (None: it may). ``watched`` empty = every namespace."""
    if not namespace or len(namespace) > 63 or _LABEL.fullmatch(namespace) is None:
        return f"namespace {namespace[:80]!r} is not a DNS-1123 label"
    if watched and namespace not in watched:
        return f"namespace {namespace!r} is not one of the namespaces this operator watches ({', '.join(watched)})"
    return None


def check_event(event: IndexingEvent, settings: Settings) -> None:
    """Raise :class:`EventRejected` (code ``NamespaceNotAllowed``) for an event outside the watched namespaces."""
    namespace = event_namespace(event, settings)
    problem = namespace_problem(namespace, settings.namespaces)
    if problem is None:
        return
    origin = "the event" if event.namespace else "the operator's default namespace (the event names none)"
    raise EventRejected(
        NAMESPACE_NOT_ALLOWED, f"{problem}; it comes from {origin}",
        event_id=event.id, event_type=event.type, branch_name=event.data.branch_name,
        indexing_id=event.data.indexing_id, namespace=event.namespace,
    )
