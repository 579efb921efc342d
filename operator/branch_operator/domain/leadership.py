"""Leader election over a ``coordination.k8s.io/v1`` Lease: the decisions, with client-go's semantics.

A replica never compares its clock with another replica's. The timestamps in the Lease (``renewTime``,
``acquireTime``) are written for people; the decisions use the local monotonic clock only:

- A standby judges the holder's lease by **when it itself last saw the record change** (client-go's
  ``observedTime``): the holder's lease has expired once ``leaseDurationSeconds`` have passed on the
  standby's clock since then. So a holder whose wall clock is hours off is judged correctly, and only a
  difference in clock *rates* between the replicas matters (the margin ``lease_duration - renew_deadline``
  absorbs that, see :func:`check_durations`).
- The holder stops acting once no renewal has succeeded within ``renew_deadline``, counted from the moment
  it *sent* the last successful renewal. The server stored that renewal later than that, and a standby
  saw it later still, so the standby's expiry comes at least ``lease_duration - renew_deadline`` after
  the holder stopped.

An empty ``holderIdentity`` means nobody holds the lease: anyone may take it at once. That is how a
holder gives a lease up on a graceful stop (client-go's ``ReleaseOnCancel``: holder cleared,
``leaseDurationSeconds`` 1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

# Go's metav1.MicroTime layout: exactly six fractional digits. The API server refuses anything else.
_MICRO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
RELEASED_LEASE_SECONDS = 1


def micro_time(when: datetime) -> str:
    """``when`` as a Lease timestamp: UTC, microseconds, e.g. ``2026-12-03T13:00:00.123456Z``."""
    if when.tzinfo is None:
        raise ValueError("a Lease timestamp needs a timezone-aware datetime")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_micro_time(value: str) -> bool:
    return bool(_MICRO_RE.match(value))


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """client-go's ``LeaderElectionRecord``, as stored in a Lease's spec. ``holder`` "" = nobody holds it."""

    holder: str
    lease_duration_seconds: int
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> LeaseRecord:
        spec = spec or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time is not None:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time is not None:
            spec["renewTime"] = self.renew_time
        return spec


@dataclass(frozen=True, slots=True)
class Observation:
    """A record as one replica saw it, and when (its own monotonic clock) it first saw it so."""

    record: LeaseRecord
    observed_at: float

    @property
    def expires_at(self) -> float:
        """On the observer's clock: when the holder's lease runs out unless the record changes first."""
        return self.observed_at + self.record.lease_duration_seconds


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """What the observer knows after reading ``record`` at ``now``: the clock restarts only on a change.

    A record read again unchanged keeps its first sighting, or a dead holder's lease would never expire
    for a replica that keeps reading it.
    """
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def is_expired(observation: Observation, now: float) -> bool:
    return now >= observation.expires_at


def may_acquire(observation: Observation, identity: str, now: float) -> bool:
    """Whether ``identity`` may write itself into the lease now: free, its own, or expired."""
    holder = observation.record.holder
    return not holder or holder == identity or is_expired(observation, now)


def lease_seconds(lease_duration: float) -> int:
    """``leaseDurationSeconds`` for a configured duration: whole seconds, rounded up, at least one."""
    whole = int(lease_duration)
    return max(1, whole if whole == lease_duration else whole + 1)


def acquire_or_renew(
    current: LeaseRecord | None, identity: str, now: datetime, lease_duration: float
) -> LeaseRecord:
    """The record ``identity`` writes to take (or keep) the lease.

    Keeping it leaves ``acquireTime`` and ``leaseTransitions`` as they are; taking it from someone else
    (or from nobody, after a release) counts one more transition.
    """
    stamp = micro_time(now)
    if current is None:
        return LeaseRecord(identity, lease_seconds(lease_duration), stamp, stamp, 0)
    if current.holder == identity:
        return replace(current, lease_duration_seconds=lease_seconds(lease_duration), renew_time=stamp)
    return LeaseRecord(identity, lease_seconds(lease_duration), stamp, stamp, current.transitions + 1)


def release(current: LeaseRecord, now: datetime) -> LeaseRecord:
    """The record a holder writes when it stops gracefully: nobody holds it, for one second."""
    stamp = micro_time(now)
    return LeaseRecord("", RELEASED_LEASE_SECONDS, stamp, stamp, current.transitions)


def renew_deadline_passed(last_renewal_sent: float, renew_deadline: float, now: float) -> bool:
    """Whether the holder must stop acting: its last successful renewal was sent too long ago."""
    return now >= last_renewal_sent + renew_deadline


def check_durations(lease_duration: float, renew_deadline: float, retry_period: float, jitter: float) -> None:
    """client-go's rule: lease_duration > renew_deadline > retry_period x (1 + jitter), all positive.

    The first gap lets the holder stop before any standby may take over; the second gives the holder at
    least one retry of a failed renewal before it gives up.
    """
    if min(lease_duration, renew_deadline, retry_period) <= 0 or jitter < 0:
        raise ValueError("leader election durations must be positive (and the jitter not negative)")
    if not lease_duration > renew_deadline:
        raise ValueError(f"lease duration ({lease_duration}s) must be greater than the renew deadline "
                         f"({renew_deadline}s)")
    if not renew_deadline > retry_period * (1 + jitter):
        raise ValueError(f"renew deadline ({renew_deadline}s) must be greater than the retry period "
                         f"({retry_period}s) x {1 + jitter}")
