"""Time in and out of text: RFC 3339 timestamps and the three ways durations are written.

Pure functions, shared by the domain, the controllers, the clients and the plugin, so every layer reads
and writes times the same way. The duration formats differ on purpose, one per audience:

- :func:`format_duration` (``"1h 2m 3s"``, ``"4.5s"``): prose, in condition and Event messages.
- :func:`compact_duration` (``"1h30m"``): the policy duration syntax, the inverse of
  :func:`branch_operator.domain.windows.parse_duration`.
- :func:`human_duration` (``"3d5h"``): kubectl's short ages, exactly as ``kubectl get`` prints them.
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
    """kubectl's short ages (k8s.io/apimachinery ``duration.HumanDuration``), branch for branch.

    Two units while the second one still says something (``7m5s``, ``3h20m``, ``3d5h``, ``2y45d``),
    one unit otherwise (``95s``, ``150m``, ``30h``, ``400d``); a second into the future is clock skew
    (``0s``), more than that is ``<invalid>``.
    """
    secs = int(seconds)  # Go's int(d.Seconds()) truncates toward zero
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    if secs < 60 * 2:
        return f"{secs}s"
    minutes = secs // 60
    if minutes < 10:
        return f"{minutes}m" if secs % 60 == 0 else f"{minutes}m{secs % 60}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = secs // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"
