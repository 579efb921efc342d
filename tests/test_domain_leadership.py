"""The leader-election decisions (domain/leadership.py): expiry on the observer's clock, the records written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from branch_operator.domain.leadership import (
    LeaseRecord,
    Observation,
    acquire_or_renew,
    check_durations,
    is_expired,
    is_micro_time,
    lease_seconds,
    may_acquire,
    micro_time,
    observe,
    release,
    renew_deadline_passed,
)

NOW = datetime(2026, 12, 3, 13, 0, 0, tzinfo=UTC)


def held_by(holder: str, *, renewed: datetime = NOW, duration: int = 10, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(holder, duration, micro_time(NOW - timedelta(minutes=5)), micro_time(renewed), transitions)


def test_micro_time_is_utc_with_six_digits() -> None:
    assert micro_time(NOW) == "2026-12-03T13:00:00.000000Z"
    plus_two = timezone(timedelta(hours=2))
    assert micro_time(datetime(2026, 12, 3, 15, 0, 0, 123456, tzinfo=plus_two)) == "2026-12-03T13:00:00.123456Z"
    assert is_micro_time(micro_time(NOW)) and not is_micro_time("2026-12-03T13:00:00Z")
    with pytest.raises(ValueError):
        micro_time(datetime(2026, 12, 3))  # naive: which zone is unknown


def test_spec_round_trip() -> None:
    record = held_by("a")
    assert LeaseRecord.from_spec(record.to_spec()) == record
    assert LeaseRecord.from_spec(None) == LeaseRecord("", 0, None, None, 0)
    assert LeaseRecord("", 1).to_spec() == {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 0}


def test_expiry_counts_from_when_the_observer_saw_the_change() -> None:
    first = observe(None, held_by("a"), now=100.0)
    assert not is_expired(first, 109.9) and is_expired(first, 110.0)
    # Read again unchanged: the first sighting stays, or a dead holder would never expire.
    again = observe(first, held_by("a"), now=105.0)
    assert again.observed_at == 100.0 and is_expired(again, 110.0)
    # A renewal (a changed record) restarts the count.
    renewed = observe(again, held_by("a", renewed=NOW + timedelta(seconds=2)), now=106.0)
    assert renewed.observed_at == 106.0 and not is_expired(renewed, 110.0) and is_expired(renewed, 116.0)


@pytest.mark.parametrize("skew", [timedelta(hours=-3), timedelta(0), timedelta(days=400)])
def test_the_holders_clock_does_not_matter(skew: timedelta) -> None:
    """A holder whose wall clock is far behind or ahead is judged the same: only the observer's clock counts."""
    seen = observe(None, held_by("a", renewed=NOW + skew), now=50.0)
    assert not may_acquire(seen, "b", 59.0)
    assert may_acquire(seen, "b", 60.0)


def test_who_may_acquire() -> None:
    held = Observation(held_by("a"), observed_at=0.0)
    assert may_acquire(held, "a", 1.0)  # its own
    assert not may_acquire(held, "b", 9.99)
    assert may_acquire(held, "b", 10.0)  # expired
    free = Observation(release(held_by("a"), NOW), observed_at=0.0)
    assert may_acquire(free, "b", 0.0)  # released: at once, not after its one second


def test_acquire_renew_and_release_records() -> None:
    later = NOW + timedelta(seconds=3)
    created = acquire_or_renew(None, "a", NOW, 10.0)
    assert created == LeaseRecord("a", 10, micro_time(NOW), micro_time(NOW), 0)
    renewed = acquire_or_renew(created, "a", later, 10.0)
    assert renewed == LeaseRecord("a", 10, micro_time(NOW), micro_time(later), 0)  # acquireTime kept
    taken = acquire_or_renew(renewed, "b", later, 10.0)
    assert taken == LeaseRecord("b", 10, micro_time(later), micro_time(later), 1)  # a transition
    released = release(taken, later)
    assert released == LeaseRecord("", 1, micro_time(later), micro_time(later), 1)  # client-go's release
    assert acquire_or_renew(released, "a", later, 10.0).transitions == 2


def test_lease_seconds_round_up() -> None:
    assert [lease_seconds(d) for d in (0.2, 1.0, 1.5, 2.0, 10.0)] == [1, 1, 2, 2, 10]


def test_renew_deadline() -> None:
    assert not renew_deadline_passed(100.0, 7.0, 106.9)
    assert renew_deadline_passed(100.0, 7.0, 107.0)


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [(10, 10, 1), (10, 12, 1), (10, 7, 7), (2, 1.5, 1.4), (0, 0, 0), (10, 7, -1)],
)
def test_durations_refused(lease: float, renew: float, retry: float) -> None:
    with pytest.raises(ValueError):
        check_durations(lease, renew, retry, 0.1)


def test_durations_accepted() -> None:
    check_durations(10, 7, 1, 0.1)
    check_durations(2, 1.5, 0.2, 0.1)
