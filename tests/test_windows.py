"""Merge windows: cron, durations, time zones, DST, and the open/closed/next-opening logic."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branch_operator.domain.timefmt import compact_duration
from branch_operator.domain.windows import (
    Window,
    compile_window,
    evaluate_windows,
    occurrences,
    parse_cron,
    parse_duration,
    parse_zone,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ cron


@pytest.mark.parametrize(
    ("expression", "minutes", "hours", "weekdays"),
    [
        ("0 9 * * 1-5", {0}, {9}, {1, 2, 3, 4, 5}),
        ("*/15 8-10 * * *", {0, 15, 30, 45}, {8, 9, 10}, set(range(7))),
        ("5,35 */6 * * MON-FRI", {5, 35}, {0, 6, 12, 18}, {1, 2, 3, 4, 5}),
        ("0 0 * * 7", {0}, {0}, {0}),  # 7 is Sunday too
        ("0 0 * * sun,sat", {0}, {0}, {0, 6}),
        ("30 8-18/5 * * *", {30}, {8, 13, 18}, set(range(7))),
        ("10/20 * * * *", {10, 30, 50}, set(range(24)), set(range(7))),  # "start/step" runs to the end
        ("@daily", {0}, {0}, set(range(7))),
        ("@hourly", {0}, set(range(24)), set(range(7))),
    ],
)
def test_cron_fields(expression: str, minutes: set[int], hours: set[int], weekdays: set[int]) -> None:
    schedule = parse_cron(expression)
    assert (set(schedule.minutes), set(schedule.hours), set(schedule.weekdays)) == (minutes, hours, weekdays)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("0 9 * *", "expected 5 fields"),
        ("60 * * * *", "outside 0-59"),
        ("* 24 * * *", "outside 0-23"),
        ("* * 0 * *", "outside 1-31"),
        ("* * * 13 *", "outside 1-12"),
        ("* * * * 8", "outside 0-7"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "invalid step"),
        ("x * * * *", "not a number"),
        ("* * * * FUNDAY", "not a number or name"),
    ],
)
def test_cron_errors_say_what_is_wrong(expression: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_cron(expression)


@pytest.mark.parametrize(
    ("expression", "day", "matches"),
    [
        ("0 0 13 * *", date(2024, 9, 13), True),  # a Friday the 13th
        ("0 0 13 * *", date(2024, 9, 12), False),
        ("0 0 * * 5", date(2024, 9, 6), True),
        ("0 0 13 * 5", date(2024, 9, 6), True),  # both restricted: either field may match (Vixie cron)
        ("0 0 13 * 5", date(2024, 9, 13), True),
        ("0 0 13 * 5", date(2024, 9, 12), False),
        ("0 0 * 2 *", date(2024, 3, 1), False),
        ("0 0 29 2 *", date(2024, 2, 29), True),
    ],
)
def test_cron_day_matching(expression: str, day: date, matches: bool) -> None:
    assert parse_cron(expression).matches_day(day) is matches


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("9h", 9 * 3600), ("1h30m", 5400), ("90m", 5400), ("45s", 45), ("1.5h", 5400), ("744h", 31 * 86400)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "9", "h", "9 h", "1d", "-1h", "0h", "745h", "1h-30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [compact_duration(timedelta(seconds=s)) for s in (5400, 32400, 45, 3661)] == ["1h30m", "9h", "45s", "1h1m1s"]


def test_zones() -> None:
    assert parse_zone("Asia/Seoul").key == "Asia/Seoul"
    for bad in ("Mars/Olympus", "", "../etc/passwd", "asia/seoul/"):
        with pytest.raises(ValueError, match="time zone"):
            parse_zone(bad)


def test_compile_window_names_the_wrong_field() -> None:
    with pytest.raises(ValueError, match="kind"):
        compile_window("maybe", "0 9 * * *", "1h", "UTC")
    assert compile_window("deny", "0 9 * * *", "90m", "Europe/Berlin").label == (
        "deny '0 9 * * *' for 1h30m (Europe/Berlin)")


# ------------------------------------------------------------------------------------------- time zones


SEOUL_WEEKDAYS = compile_window("allow", "0 9 * * 1-5", "9h", "Asia/Seoul")  # the example


@pytest.mark.parametrize(
    ("now", "is_open", "next_opening"),
    [
        (utc(2024, 1, 8, 0, 0), True, None),  # Monday 09:00 KST, the first instant
        (utc(2024, 1, 8, 8, 59), True, None),
        (utc(2024, 1, 8, 9, 0), False, utc(2024, 1, 9, 0, 0)),  # 18:00 KST: closed until Tuesday 09:00
        (utc(2024, 1, 7, 23, 59), False, utc(2024, 1, 8, 0, 0)),  # Monday 08:59 KST
        (utc(2024, 1, 12, 12, 0), False, utc(2024, 1, 15, 0, 0)),  # Friday evening: next Monday
    ],
)
def test_weekday_window_in_seoul(now: datetime, is_open: bool, next_opening: datetime | None) -> None:
    verdict = evaluate_windows([SEOUL_WEEKDAYS], now)
    assert verdict.open is is_open
    assert verdict.next_opening == next_opening
    if is_open:
        assert verdict.next_change == utc(2024, 1, 8, 9, 0)


NEW_YORK = "America/New_York"


def test_a_start_in_the_spring_forward_gap_starts_when_the_clock_jumps() -> None:
    # 2024-03-10: clocks jump 02:00 -> 03:00 EST/EDT; 02:30 does not exist and starts at 03:00 EDT, as
    # in cron (Debian, Vixie) and cronsim.
    w = compile_window("allow", "30 2 * * *", "1h", NEW_YORK)
    assert w.starts_on(date(2024, 3, 10)) == [utc(2024, 3, 10, 7, 0)]
    assert w.starts_on(date(2024, 3, 9)) == [utc(2024, 3, 9, 7, 30)]  # 02:30 EST
    assert w.starts_on(date(2024, 3, 11)) == [utc(2024, 3, 11, 6, 30)]  # 02:30 EDT


def test_a_fixed_start_in_the_fall_back_hour_happens_once_at_its_first_occurrence() -> None:
    # 2024-11-03: 01:00-02:00 happens twice (EDT, then EST).
    w = compile_window("allow", "30 1 * * *", "30m", NEW_YORK)
    assert w.starts_on(date(2024, 11, 3)) == [utc(2024, 11, 3, 5, 30)]  # 01:30 EDT
    assert w.active(utc(2024, 11, 3, 6, 30)) is None  # 01:30 EST is not a second start
    assert w.active(utc(2024, 11, 3, 5, 50)) is not None


def test_an_hourly_start_fires_in_both_passes_of_the_fall_back_hour() -> None:
    hourly = compile_window("allow", "0 * * * *", "1h", NEW_YORK)  # open all the time, hour after hour
    assert [s for s in hourly.starts_on(date(2024, 11, 3)) if s.hour in (5, 6, 7)] == [
        utc(2024, 11, 3, 5), utc(2024, 11, 3, 6), utc(2024, 11, 3, 7)]  # 01:00 EDT, 01:00 EST, 02:00 EST
    assert all(evaluate_windows([hourly], utc(2024, 11, 3, 5) + timedelta(minutes=m)).open for m in range(0, 180, 5))
    deny = compile_window("deny", "0 * * * *", "30m", NEW_YORK)
    verdict = evaluate_windows([deny], utc(2024, 11, 3, 6, 10))  # 01:10 EST, in the second 01:00 deny
    assert not verdict.open and verdict.next_opening == utc(2024, 11, 3, 6, 30)


def test_a_local_daily_window_follows_the_wall_clock_across_dst() -> None:
    w = compile_window("allow", "0 9 * * *", "8h", NEW_YORK)
    assert list(occurrences(w, utc(2024, 3, 9), utc(2024, 3, 12))) == [
        utc(2024, 3, 9, 14), utc(2024, 3, 10, 13), utc(2024, 3, 11, 13)]


# ---------------------------------------------------------------------------------------------- verdicts


def test_no_windows_is_always_open_and_never_changes() -> None:
    verdict = evaluate_windows([], utc(2024, 1, 1))
    assert verdict.open and verdict.next_change is None and verdict.next_opening is None


def test_deny_beats_allow_and_chained_denies_are_crossed() -> None:
    allow = compile_window("allow", "0 0 * * *", "24h", "UTC")  # always open by itself
    deny_a = compile_window("deny", "0 10 * * *", "2h", "UTC")
    deny_b = compile_window("deny", "30 11 * * *", "2h", "UTC")  # starts before deny_a ends
    verdict = evaluate_windows([allow, deny_a, deny_b], utc(2024, 1, 1, 10, 15))
    assert not verdict.open
    assert [o.window for o in verdict.denies] == [deny_a]
    assert verdict.next_opening == utc(2024, 1, 1, 13, 30)  # after both denies


def test_next_opening_skips_an_allow_covered_by_a_deny() -> None:
    allow = compile_window("allow", "0 12 * * *", "1h", "UTC")
    deny_monday = compile_window("deny", "0 0 * * 1", "24h", "UTC")
    verdict = evaluate_windows([allow, deny_monday], utc(2024, 1, 1, 9))  # a Monday
    assert verdict.next_opening == utc(2024, 1, 2, 12)


def test_an_allow_that_started_during_a_deny_is_open_when_the_deny_ends() -> None:
    allow = compile_window("allow", "0 9 * * *", "8h", "UTC")
    deny = compile_window("deny", "0 8 * * *", "2h", "UTC")
    verdict = evaluate_windows([allow, deny], utc(2024, 1, 1, 9, 30))
    assert verdict.next_opening == utc(2024, 1, 1, 10)


def test_a_window_that_never_comes_reports_no_opening() -> None:
    feb_30 = compile_window("allow", "0 0 30 2 *", "1h", "UTC")
    verdict = evaluate_windows([feb_30], utc(2024, 1, 1))
    assert not verdict.open and verdict.next_opening is None
    assert feb_30.active(utc(2024, 2, 29, 12)) is None


def test_leap_day_window_is_found_years_ahead() -> None:
    leap = compile_window("allow", "0 0 29 2 *", "1h", "UTC")
    assert evaluate_windows([leap], utc(2024, 3, 1)).next_opening == utc(2028, 2, 29)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        evaluate_windows([], datetime(2024, 1, 1))


# -------------------------------------------------------------------------------------------- properties

# Fixed-offset zones, so a minute-by-minute oracle can read the wall clock without DST ambiguity.
_ZONES = ["UTC", "Asia/Seoul", "Asia/Kolkata", "America/Bogota"]


@st.composite
def _windows(draw: st.DrawFn) -> Window:
    minute = draw(st.sampled_from(["0", "30", "*/20", "15,45"]))
    hour = draw(st.sampled_from(["*", "9", "8-17", "*/6", "22"]))
    dow = draw(st.sampled_from(["*", "1-5", "0,6", "3"]))
    duration = draw(st.sampled_from(["20m", "1h", "2h30m", "9h", "26h"]))
    return compile_window(draw(st.sampled_from(["allow", "deny"])), f"{minute} {hour} * * {dow}", duration,
                          draw(st.sampled_from(_ZONES)))


def _active_oracle(w: Window, t: datetime) -> bool:
    """Brute force: is there a minute-aligned start in (t - duration, t]?"""
    minute = t.replace(second=0, microsecond=0)
    steps = int(w.duration.total_seconds() // 60) + 1
    for i in range(steps):
        s = minute - timedelta(minutes=i)
        local = s.astimezone(w.zone)
        if (s <= t < s + w.duration and w.schedule.matches_day(local.date())
                and local.hour in w.schedule.hours and local.minute in w.schedule.minutes):
            return True
    return False


def _open_oracle(windows: list[Window], t: datetime) -> bool:
    if any(_active_oracle(w, t) for w in windows if w.kind == "deny"):
        return False
    allows = [w for w in windows if w.kind == "allow"]
    return not allows or any(_active_oracle(w, t) for w in allows)


_times = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2024, 12, 31), timezones=st.just(UTC))


@settings(max_examples=120, deadline=None)
@given(windows=st.lists(_windows(), min_size=1, max_size=3), now=_times)
def test_open_matches_a_brute_force_oracle_and_deny_always_wins(windows: list[Window], now: datetime) -> None:
    verdict = evaluate_windows(windows, now)
    assert verdict.open is _open_oracle(windows, now)
    if verdict.denies:
        assert not verdict.open


@settings(max_examples=120, deadline=None)
@given(windows=st.lists(_windows(), min_size=1, max_size=3), now=_times)
def test_next_opening_is_the_first_open_instant(windows: list[Window], now: datetime) -> None:
    verdict = evaluate_windows(windows, now)
    if verdict.open:
        assert verdict.next_opening is None
        if verdict.next_change is not None:
            assert verdict.next_change > now
        return
    opening = verdict.next_opening
    if opening is None:  # only when deny windows leave no gap: closed all week long
        assert not any(_open_oracle(windows, now + timedelta(minutes=m)) for m in range(0, 7 * 24 * 60, 97))
        return
    assert opening > now
    assert _open_oracle(windows, opening)
    # Closed just before it; windows start on whole minutes, so check the minute before and a few samples.
    probes = [max(now, opening - timedelta(minutes=1))]
    probes += [now + (opening - now) * k / 7 for k in range(1, 7)]
    assert not any(_open_oracle(windows, p) for p in probes)


# ------------------------------------------------------------------ DST: a differential test per zone
#
# The oracle is written from the rule docs/policies.md states, minute by minute, with nothing of the
# code under test but the parsed cron fields:
# * a schedule whose minute and hour fields are both fixed (neither starts with "*") names wall-clock
#   times: each happens once; one in the repeated fall-back hour at its first occurrence; one in the
#   spring-forward gap when the clock jumps (the first instant after the gap);
# * any other schedule runs on real time: every instant whose local wall clock matches fires, so both
#   passes of the repeated hour do and the gap has none.

_DST_ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata"]  # Kolkata: no DST
_DST_SCHEDULES = ["0 * * * *", "30 * * * *", "*/20 * * * *", "30 1 * * *", "30 2 * * *", "15 2 * * *",
                  "45 1 * * *", "0 0 * * *", "0,30 1-3 * * *", "0 2 * * 0"]


def _transitions(zone_name: str, year: int) -> list[datetime]:
    """The UTC instants the zone's offset changes in ``year`` (found hour by hour, then minute by minute)."""
    zone = parse_zone(zone_name)
    found = []
    t = utc(year, 1, 1)
    while t.year == year:
        nxt = t + timedelta(hours=1)
        if t.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            m = t
            while m.astimezone(zone).utcoffset() == t.astimezone(zone).utcoffset():
                m += timedelta(minutes=1)
            found.append(m)
        t = nxt
    return found


def _exists(naive: datetime, zone: ZoneInfo) -> bool:
    aware = naive.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive


def _oracle_starts(w: Window, lo: datetime, hi: datetime) -> set[datetime]:
    s, zone = w.schedule, w.zone
    fixed = not w.schedule_text.split()[0].startswith("*") and not w.schedule_text.split()[1].startswith("*")
    starts: set[datetime] = set()
    if fixed:
        day = lo.astimezone(zone).date() - timedelta(days=1)
        while day <= hi.astimezone(zone).date() + timedelta(days=1):
            if s.matches_day(day):
                for h in s.hours:
                    for m in s.minutes:
                        wall = datetime(day.year, day.month, day.day, h, m)
                        while not _exists(wall, zone):  # in the gap: the first wall minute that exists
                            wall += timedelta(minutes=1)
                        starts.add(wall.replace(tzinfo=zone, fold=0).astimezone(UTC))
            day += timedelta(days=1)
    else:
        t = lo.replace(second=0, microsecond=0)
        while t < hi:
            local = t.astimezone(zone)
            if s.matches_day(local.date()) and local.hour in s.hours and local.minute in s.minutes:
                starts.add(t)
            t += timedelta(minutes=1)
    return {x for x in starts if lo <= x < hi}


_DST_CASES = [(z, sch, when) for z in _DST_ZONES for sch in _DST_SCHEDULES
              for when in (_transitions(z, 2024) or [utc(2024, 3, 10, 7), utc(2024, 11, 3, 6)])]


@pytest.mark.parametrize(("zone", "schedule", "transition"), _DST_CASES)
def test_starts_and_activity_across_dst_match_the_rule(zone: str, schedule: str, transition: datetime) -> None:
    w = compile_window("allow", schedule, "40m", zone)
    lo, hi = transition - timedelta(hours=30), transition + timedelta(hours=30)
    expected = _oracle_starts(w, lo - w.duration, hi)
    assert set(occurrences(w, lo - w.duration, hi)) == expected
    t = lo
    while t < hi:
        covering = [x for x in expected if x <= t < x + w.duration]
        occurrence = w.active(t)
        assert (occurrence.start if occurrence else None) == (max(covering) if covering else None), t
        t += timedelta(minutes=5)


def test_the_zones_of_the_differential_test_have_their_transitions() -> None:
    assert [len(_transitions(z, 2024)) for z in _DST_ZONES] == [2, 2, 2, 0]
    assert _transitions("Australia/Lord_Howe", 2024)[0].astimezone(parse_zone("Australia/Lord_Howe")).minute == 30


_CRON_PARTS = st.tuples(
    st.sampled_from(["0", "30", "*/20", "15,45", "5/15", "*"]),
    st.sampled_from(["*", "9", "8-17", "*/6", "22", "1-3", "2"]),
    st.sampled_from(["*", "1", "13", "1-15/3", "29", "31"]),
    st.sampled_from(["*", "2", "JAN-MAR", "*/4", "11,12"]),
    st.sampled_from(["*", "1-5", "0,6", "3", "7", "MON-FRI", "sun"]),
)


@settings(max_examples=200, deadline=None)
@given(parts=_CRON_PARTS, zone=st.sampled_from(_DST_ZONES), now=_times)
def test_next_start_and_active_agree_with_the_rule_anywhere(parts: tuple[str, ...], zone: str, now: datetime) -> None:
    w = compile_window("deny", " ".join(parts), "3h", zone)
    lo, hi = now - timedelta(hours=3), now + timedelta(hours=6)
    expected = sorted(_oracle_starts(w, lo, hi))
    later = [x for x in expected if x > now]
    nxt = w.next_start(now, timedelta(hours=6))
    if later:
        assert nxt == later[0]
    else:
        assert nxt is None or nxt >= hi
    covering = [x for x in expected if x <= now < x + w.duration]
    occurrence = w.active(now)
    assert (occurrence.start if occurrence else None) == (max(covering) if covering else None)


@settings(max_examples=200, deadline=None)
@given(parts=_CRON_PARTS)
def test_the_grammar_and_cronsim_read_the_same_fields(parts: tuple[str, ...]) -> None:
    from cronsim import CronSim, CronSimError

    expression = " ".join(parts)
    try:
        theirs = CronSim(expression, datetime(2024, 1, 1))
    except CronSimError:  # a day that never comes ("0 0 31 2 *"): no starts, as the window test shows
        assert (parts[2], parts[3]) == ("31", "2")
        return
    ours = parse_cron(expression)
    assert (set(ours.minutes), set(ours.hours), set(ours.months)) == (theirs.minutes, theirs.hours, theirs.months)
    assert set(ours.weekdays) == {d % 7 for d in theirs.weekdays if isinstance(d, int)}
    assert set(ours.days) == theirs.days
