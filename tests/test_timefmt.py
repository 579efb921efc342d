"""Timestamps read from objects: one parser for the controllers, the notifier and the plugin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from branch_operator.domain.timefmt import parse_time, rfc3339

SEOUL = timezone(timedelta(hours=9))


@pytest.mark.parametrize(("raw", "expected"), [
    ("2025-06-26T10:00:00Z", datetime(2025, 6, 26, 10, 0, tzinfo=UTC)),
    ("2025-06-26T19:00:00+09:00", datetime(2025, 6, 26, 10, 0, tzinfo=UTC)),
    ("2025-06-26T10:00:00.250000Z", datetime(2025, 6, 26, 10, 0, 0, 250000, tzinfo=UTC)),
    ("2025-06-26T10:00:00", datetime(2025, 6, 26, 10, 0, tzinfo=UTC)),  # naive: the API server speaks UTC
    (datetime(2025, 6, 26, 19, 0, tzinfo=SEOUL), datetime(2025, 6, 26, 10, 0, tzinfo=UTC)),
    (datetime(2025, 6, 26, 10, 0), datetime(2025, 6, 26, 10, 0, tzinfo=UTC)),
])
def test_timestamps_come_back_in_utc(raw: object, expected: datetime) -> None:
    parsed = parse_time(raw)
    assert parsed == expected and parsed is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("raw", [None, "", "yesterday", "2025-13-01T00:00:00Z", 0])
def test_missing_or_mangled_values_are_unknown(raw: object) -> None:
    assert parse_time(raw) is None


def test_what_rfc3339_writes_parse_time_reads() -> None:
    when = datetime(2025, 6, 26, 19, 0, 0, 5, tzinfo=SEOUL)
    assert parse_time(rfc3339(when)) == when
