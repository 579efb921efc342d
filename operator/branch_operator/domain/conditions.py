"""Status conditions (wire format) and the bounded texts that go into their messages: pure helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from branch_operator.api.models import MAX_ERROR_LENGTH, MAX_ERRORS, ConditionType
from branch_operator.domain.timefmt import rfc3339

__all__ = [
    "ConditionStatus",
    "bounded_errors",
    "count_errors",
    "describe_errors",
    "find_condition",
    "set_condition",
    "truncate",
]

ConditionStatus = Literal["True", "False", "Unknown"]

# How many validation errors a condition/Event message quotes; the full list lives in status.
_QUOTED_ERRORS = 3
_QUOTED_ERROR_CHARS = 200


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str | ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return a new condition list with ``type_`` set (wire format, camelCase).

    ``lastTransitionTime`` only moves when ``status`` changes, as ``meta.SetStatusCondition`` does;
    the position of an existing condition is kept so patches stay small and diffs readable.
    """
    name = type_.value if isinstance(type_, ConditionType) else type_
    out: list[dict[str, Any]] = []
    found = False
    for existing in conditions:
        current = dict(existing)
        if current.get("type") == name and not found:
            found = True
            changed = current.get("status") != status or not current.get("lastTransitionTime")
            current["status"] = status
            current["reason"] = reason
            current["message"] = message
            if changed:
                current["lastTransitionTime"] = rfc3339(now)
            if observed_generation is not None:
                current["observedGeneration"] = observed_generation
            out.append(current)
        elif current.get("type") != name:
            out.append(current)
    if not found:
        new: dict[str, Any] = {
            "type": name,
            "status": status,
            "lastTransitionTime": rfc3339(now),
            "reason": reason,
            "message": message,
        }
        if observed_generation is not None:
            new["observedGeneration"] = observed_generation
        out.append(new)
    return out


def find_condition(conditions: Sequence[Mapping[str, Any]], type_: str | ConditionType) -> dict[str, Any] | None:
    name = type_.value if isinstance(type_, ConditionType) else type_
    for c in conditions:
        if c.get("type") == name:
            return dict(c)
    return None


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_errors(errors: Sequence[str]) -> list[str]:
    # The CRD caps the list and each entry; an oversized status would be rejected whole.
    return [truncate(e, MAX_ERROR_LENGTH) for e in list(errors)[:MAX_ERRORS]]


def count_errors(kept: int, total: int | None) -> str:
    """``50 of 102`` when only the first ``kept`` of ``total`` errors are held, else ``50``."""
    return f"{kept} of {total}" if total is not None and total > kept else str(kept)


def describe_errors(errors: Sequence[str], total: int | None = None) -> str:
    if not errors:
        return "no error details reported"
    quoted = "; ".join(truncate(e, _QUOTED_ERROR_CHARS) for e in errors[:_QUOTED_ERRORS])
    more = f" (and {len(errors) - _QUOTED_ERRORS} more)" if len(errors) > _QUOTED_ERRORS else ""
    plural = "s" if max(len(errors), total or 0) != 1 else ""
    return f"{count_errors(len(errors), total)} error{plural}: {quoted}{more}"
