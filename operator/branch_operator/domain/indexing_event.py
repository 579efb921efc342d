"""What the lifecycle planner needs from a parsed Funnel indexing event.

Structural types, so the domain does not depend on the contract module that parses the wire format
(``branch_operator.contracts.funnel.IndexingEvent`` satisfies them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

__all__ = ["IndexingDataLike", "IndexingEventLike", "ValidationLike"]


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
