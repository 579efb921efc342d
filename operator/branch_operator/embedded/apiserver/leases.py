"""What the real API server does to a ``coordination.k8s.io/v1`` Lease on every write.

Two things clients notice: ``acquireTime``/``renewTime`` are ``MicroTime`` values, which the real server
decodes with Go's fixed layout ``2006-01-02T15:04:05.000000Z07:00`` (exactly six fractional digits: a
whole-second or millisecond timestamp is a 400 before validation runs) and serves back in UTC; and the
spec's integers are validated (a 422 with the field's cause). Leader election on clients depends on both:
a client that writes timestamps the real server refuses must fail here too.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from branch_operator.embedded.apiserver.errors import ApiError, cause, invalid

_MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
_MICRO_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})$")
_MICRO_FIELDS = ("acquireTime", "renewTime")
_INT_FIELDS = ("leaseDurationSeconds", "leaseTransitions")


def parse_micro_time(value: str) -> datetime | None:
    """The instant ``value`` names, or None where Go's MicroTime decoder would refuse it."""
    m = _MICRO_RE.match(value)
    if m is None:
        return None
    try:
        base = datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    offset = timedelta(0)
    if m[3] != "Z":
        sign = 1 if m[3][0] == "+" else -1
        hours, minutes = int(m[3][1:3]), int(m[3][4:6])
        if hours > 23 or minutes > 59:
            return None
        offset = sign * timedelta(hours=hours, minutes=minutes)
    return (base.replace(microsecond=int(m[2])) - offset).replace(tzinfo=UTC)


def format_micro_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _undecodable(message: str) -> ApiError:
    return ApiError(400, f'Lease in version "v1" cannot be handled as a Lease: {message}')


def admit_lease(obj: dict[str, Any]) -> dict[str, Any]:
    """The Lease to store: timestamps normalised to UTC micro-precision, or the real server's refusal."""
    spec = obj.get("spec")
    if spec is None:
        return obj
    if not isinstance(spec, dict):
        raise _undecodable("json: cannot unmarshal into Go struct field Lease.spec of type v1.LeaseSpec")
    spec = dict(spec)
    for field in _MICRO_FIELDS:
        value = spec.get(field)
        if value is None:
            spec.pop(field, None)
            continue
        when = parse_micro_time(value) if isinstance(value, str) else None
        if when is None:
            raise _undecodable(f'parsing time {json.dumps(value)} as "{_MICRO_LAYOUT}": cannot parse as MicroTime')
        spec[field] = format_micro_time(when)
    for field in (*_INT_FIELDS, "holderIdentity"):
        value = spec.get(field)
        if value is None:
            spec.pop(field, None)
        elif field in _INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
            raise _undecodable(f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                               f"LeaseSpec.spec.{field} of type int32")
        elif field == "holderIdentity" and not isinstance(value, str):
            raise _undecodable(
                "json: cannot unmarshal into Go struct field LeaseSpec.spec.holderIdentity of type string")
    causes = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        causes.append(cause("FieldValueInvalid", "spec.leaseDurationSeconds",
                            f"Invalid value: {duration}: must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        causes.append(cause("FieldValueInvalid", "spec.leaseTransitions",
                            f"Invalid value: {transitions}: must be greater than or equal to 0"))
    if causes:
        raise invalid("Lease", "coordination.k8s.io", str((obj.get("metadata") or {}).get("name", "")), causes)
    return {**obj, "spec": spec}
