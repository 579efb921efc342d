"""CloudEvents 1.0 primitives shared by what the operator reads (``funnel*``) and what it emits
(``outbound``): the spec version, the structured content type, the NATS binding's header prefix, the
attribute names the spec reserves, and the one way timestamps and data values are rendered to JSON.

Kept apart so neither direction has to import the other to agree on the wire format.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel

__all__ = [
    "CE_HEADER_PREFIX",
    "CORE_ATTRIBUTES",
    "DATA_MEMBERS",
    "SPECVERSION",
    "STRUCTURED_CONTENT_TYPE",
    "format_time",
    "jsonable",
]

SPECVERSION: Final = "1.0"
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
CE_HEADER_PREFIX: Final = "ce-"

CORE_ATTRIBUTES: Final = frozenset(
    {"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema"}
)
DATA_MEMBERS: Final = frozenset({"data", "data_base64"})


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when.isoformat()}; pass a timezone-aware datetime")
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON values: models dumped, datetimes as :func:`format_time`, enums by value,
    non-finite floats as null, anything else unknown as its ``str``."""
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="json", by_alias=True, exclude_none=True))
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
