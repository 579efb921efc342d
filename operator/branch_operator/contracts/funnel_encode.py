"""Funnel-format test events: build indexing events the way Funnel sends them, and encode them for
either content mode of the NATS binding.

These produce *inbound* messages (Funnel's format, read back by :func:`~.funnel.parse_message`), so
they sit with the inbound contract and share its type table; they are not what the operator emits
(that is :mod:`.outbound`). Used by ``branch-operator publish``, the kubectl plugin's publish command,
the benchmark and the tests. Builders check almost nothing on purpose: tests use them to build bad
events too.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from branch_operator.contracts.cloudevents import (
    CE_HEADER_PREFIX,
    CORE_ATTRIBUTES,
    DATA_MEMBERS,
    SPECVERSION,
    STRUCTURED_CONTENT_TYPE,
    format_time,
    jsonable,
)
from branch_operator.contracts.funnel import EVENT_TYPES, KINDS

__all__ = ["DEFAULT_SOURCE", "encode_binary", "encode_structured", "make_event"]

DEFAULT_SOURCE: Final = "funnel-service"

_TYPE_BY_KIND: Final[Mapping[str, str]] = {str(k): t for k, t in EVENT_TYPES.items()}
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")


def _timestamp(value: datetime | str) -> str:
    # Strings pass through untouched so tests can build deliberately malformed events.
    return value if isinstance(value, str) else format_time(value)


def make_event(
    kind: str,
    branch_name: str,
    indexing_id: str,
    *,
    status: str | None = None,
    records_indexed: int = 0,
    passed: bool = True,
    errors: Iterable[str] = (),
    started_at: datetime | str | None = None,
    completed_at: datetime | str | None = None,
    namespace: str | None = None,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    time: datetime | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A structured-JSON Funnel indexing event (as a dict) that :func:`~.funnel.parse_message` accepts.

    Missing timestamps default to now; a completed event without ``started_at`` gets a zero
    duration. No checking beyond the kind: tests use this to build bad events too.
    """
    event_type = _TYPE_BY_KIND.get(kind)
    if event_type is None:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    now = datetime.now(UTC)
    data: dict[str, Any] = {"branch_name": branch_name, "indexing_id": indexing_id}
    if kind == "started":
        data["started_at"] = _timestamp(started_at if started_at is not None else now)
        if completed_at is not None:
            data["completed_at"] = _timestamp(completed_at)
        if status is not None:
            data["status"] = status
    else:
        end = completed_at if completed_at is not None else now
        if started_at is None and kind == "completed":
            started_at = end
        if started_at is not None:
            data["started_at"] = _timestamp(started_at)
        data["completed_at"] = _timestamp(end)
        data["status"] = status or ("success" if kind == "completed" else "failed")
        data["records_indexed"] = records_indexed
        data["validation_results"] = {"passed": passed, "errors": list(errors)}
    if namespace is not None:
        data["namespace"] = namespace
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": format_time(time or now),
        "datacontenttype": "application/json",
    }
    for name, value in (extensions or {}).items():
        if name in CORE_ATTRIBUTES or name in DATA_MEMBERS:
            raise ValueError(f"extension {name!r} collides with a CloudEvents attribute")
        event[name] = value
    event["data"] = data
    return event


def _dumps(value: Any) -> bytes:
    return json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_structured(event: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Payload and headers for publishing ``event`` in structured mode."""
    return _dumps(event), {"Content-Type": STRUCTURED_CONTENT_TYPE}


def _canonical_string(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, str | int):
        return str(value)
    raise ValueError(f"attribute {name!r}: a {type(value).__name__} has no CloudEvents string form")


def encode_binary(event: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Payload (the data) and ``ce-*`` headers for publishing ``event`` in binary mode."""
    # specversion is REQUIRED in binary mode; the structured-mode leniency is for a legacy producer only.
    headers: dict[str, str] = {CE_HEADER_PREFIX + "specversion": SPECVERSION}
    for name, value in event.items():
        if name in DATA_MEMBERS or value is None:
            continue
        if _ATTRIBUTE_NAME.fullmatch(name) is None:
            raise ValueError(f"attribute name {name!r} is not valid in CloudEvents (lowercase a-z0-9 only)")
        headers[CE_HEADER_PREFIX + name] = _percent_encode(_canonical_string(name, value))
    if event.get("data_base64") is not None:
        body = base64.b64decode(event["data_base64"], validate=True)
    elif event.get("data") is not None:
        body = _dumps(event["data"])
        headers.setdefault(CE_HEADER_PREFIX + "datacontenttype", "application/json")
    else:
        body = b""
    return body, headers


def _percent_encode(value: str) -> str:
    parts: list[str] = []
    for char in value:
        if "\x21" <= char <= "\x7e" and char not in '"%':
            parts.append(char)
        else:
            parts.extend(f"%{b:02X}" for b in char.encode("utf-8"))
    return "".join(parts)
