"""Time in and out of text: RFC 3339 timestamps and the three ways durations are written.

Pure functions, shared by the domain, the controllers, the clients and the plugin, so every layer reads
and writes times the same way. The duration formats differ on purpose, one per audience:

- :func:`format_duration` (``"1h 2m 3s"``, ``"4.5s"``): prose, in condition and Event messages.
- :func:`compact_duration` (``"1h30m"``): the policy duration syntax, the inverse of
  :func:`branch_operator.domain.windows.parse_duration`.
- :func:`human_duration` (``"3d"``): kubectl's short ages, the largest unit that fits.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["compact_duration", "format_duration", "human_duration", "parse_time", "rfc3339", "to_utc"]


def to_utc(dt: datetime) -> datetime:
    """``dt`` in UTC; naive datetimes are taken to be UTC already (Funnel and the API server speak UTC)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def rfc3339(dt: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix, as the API server writes timestamps."""
    text = to_utc(dt).isoformat(timespec="microseconds" if dt.microsecond else "seconds")
    return text.removesuffix("+00:00") + "Z"


def parse_time(raw: Any) -> datetime | None:
    """A timestamp read from an object (RFC 3339, ``Z`` or an offset; or a datetime), in UTC.

    None for a missing, empty or unparsable value: the callers read fields that other writers may have
    left out or mangled, and treat them as unknown rather than fail.
    """
    if not raw:
        return None
    if isinstance(raw, datetime):
        return to_utc(raw)
    try:
        return to_utc(datetime.fromisoformat(str(raw).replace("Z", "+00:00")))
    except ValueError:
        return None


def format_duration(seconds: float) -> str:
    total = round(seconds)
    if total < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{total}s"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h"] if hours else []
    if minutes:
        parts.append(f"{minutes}m")
    if secs:
        parts.append(f"{secs}s")
    return " ".join(parts)


def compact_duration(value: timedelta) -> str:
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{seconds}s" if seconds else "")
    return out or "0s"


def human_duration(seconds: float) -> str:
    """kubectl's short ages: 45s, 5m, 3h, 2d (the largest unit that fits, like `kubectl get`)."""
    secs = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"
