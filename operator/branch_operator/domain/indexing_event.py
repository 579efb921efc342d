"""What the lifecycle planner needs from a parsed Funnel indexing event.

Structural types, so the domain does not depend on the contract module that parses the wire format
(``branch_operator.contracts.funnel.IndexingEvent`` satisfies them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

__all__ = ["IndexingDataLike", "IndexingEventLike", "ValidationLike", "event_key"]


class ValidationLike(Protocol):
    @property
    def passed(self) -> bool: ...

    @property
    def errors(self) -> Sequence[str]: ...

    @property
    def errors_dropped(self) -> int:
        """Errors reported beyond those in ``errors`` (the contract keeps only the first ones)."""
        ...


class IndexingDataLike(Protocol):
    @property
    def branch_name(self) -> str: ...

    @property
    def indexing_id(self) -> str: ...

    @property
    def started_at(self) -> datetime | None: ...

    @property
    def completed_at(self) -> datetime | None: ...

    @property
    def records_indexed(self) -> int | None: ...

    @property
    def validation_results(self) -> ValidationLike | None: ...


class IndexingEventLike(Protocol):
    """What the planner needs from a parsed Funnel event (``branch_operator.contracts.funnel.IndexingEvent``)."""

    @property
    def id(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def succeeded(self) -> bool: ...

    @property
    def failed(self) -> bool: ...

    @property
    def data(self) -> IndexingDataLike: ...

    @property
    def duration_seconds(self) -> float | None: ...

    @property
    def occurred_at(self) -> datetime | None: ...


_SOURCE_TAG = 12  # hex digits of the source's digest
_MAX_KEY = 253  # what status.recentEventIds and status.indexing.eventId hold


def event_key(source: str, event_id: str) -> str:
    """A CloudEvent's identity, (source, id), as one string: ``<id>@<12 hex of the source's digest>``.

    CloudEvents only promise ids unique per source, so two producers (``funnel-eu``, ``funnel-us``) may both
    send ``evt-42``. Everything the operator de-duplicates or remembers by event is keyed by this: the ids
    in status, the outbox, and the seeds of every audit id and ``Nats-Msg-Id``. The id stays readable; an
    id too long to fit keeps its head and a digest of the whole. At most 253 characters.
    """
    tag = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:_SOURCE_TAG]
    if len(event_id) + 1 + _SOURCE_TAG <= _MAX_KEY:
        return f"{event_id}@{tag}"
    whole = hashlib.sha256(f"{source}\x00{event_id}".encode("utf-8", "surrogatepass")).hexdigest()[:24]
    head = _MAX_KEY - len(whole) - 2 - _SOURCE_TAG
    return f"{event_id[:head]}~{whole}@{tag}"
