"""Merge windows: cron schedule + duration + IANA time zone, in the style of Argo CD sync windows.

Pure logic, no I/O. A window ``{kind, schedule, duration, timeZone}`` is *active* at ``t`` when one of
its start times ``s`` (a cron match, read as wall-clock time in ``timeZone``) satisfies
``s <= t < s + duration``. Merging is *open* at ``t`` when no ``deny`` window is active and, if the
policy has any ``allow`` window, at least one of them is active: deny always beats allow, and a policy
with only deny windows is open outside them.

Cron: the classic five fields ``minute hour day-of-month month day-of-week`` with ``*``, lists
(``1,15``), ranges (``1-5``), steps (``*/15``, ``8-18/2``) and names (``JAN``-``DEC``, ``SUN``-``SAT``;
day-of-week ``7`` is Sunday too). As in Vixie cron (and robfig/cron, which Argo CD uses), when both
day-of-month and day-of-week are restricted a day matches if *either* does. The macros ``@yearly``,
``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight`` and ``@hourly`` are accepted.
The grammar is checked here, so that an error names the field and what is wrong with it and nothing
beyond it (no ``L``, ``W``, ``#`` or seconds) is accepted; when a schedule fires is ``cronsim``'s to
say (zoneinfo-aware, and it iterates backwards, which "is a window active now" needs). Its daylight
saving rules are Debian cron's:

* a schedule whose minute and hour fields are both fixed (neither starts with ``*``: ``30 2 * * *``,
  ``0 9-17 * * 1-5``) names wall-clock times, each happening once: a start in the
  spring-forward gap starts when the clock jumps (02:30 on a day clocks go 02:00 -> 03:00 starts at
  03:00), a start in the repeated fall-back hour at its first occurrence;
* any other schedule (``0 * * * *``, ``*/15 * * * *``) runs on real time: it fires at every instant
  whose wall clock matches, so in both passes of the repeated hour, and not in the gap.

croniter is not used: it fires ``30 1 * * *`` twice on a fall-back day.

Durations are Go-style (what Argo CD uses): ``9h``, ``1h30m``, ``90m``, ``45s``; positive, at most
31 days. Every time this module returns is an aware datetime in UTC.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from branch_operator.domain.timefmt import compact_duration

__all__ = [
    "MAX_DURATION",
    "CronSchedule",
    "Occurrence",
    "Window",
    "WindowVerdict",
    "compile_window",
    "evaluate_windows",
    "parse_cron",
    "parse_duration",
    "parse_zone",
]

MAX_DURATION = timedelta(days=31)
# How far ahead an opening is searched for: longer than any cron period (Feb 29 recurs within it).
HORIZON = timedelta(days=5 * 366)
# Bounds the open/closed hand-off loop of next_opening: each step crosses one window edge (the end of a
# deny, the start of an allow). Deny windows that leave no gap in 512 edges (e.g. "*/20 * * * *" for
# 20m, which never ends) yield "no opening found" rather than an unbounded search.
_MAX_STEPS = 512

_MONTHS = {m: i for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                       "NOV", "DEC"), start=1)}
_DAYS = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
_DURATION_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:h|m|s))+")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0}


# ------------------------------------------------------------------------------------------------ cron


@dataclass(frozen=True)
class CronSchedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]  # day of month, 1-31
    months: frozenset[int]  # 1-12
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool  # day-of-month field was not "*"
    weekdays_restricted: bool

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow  # Vixie cron: either restricted field may match
        return dom and dow


def _field(text: str, low: int, high: int, names: dict[str, int] | None, what: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{what}: invalid step {step_text!r}")
            step = int(step_text)
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, names, what), _value(b, names, what)
        else:
            start = _value(part, names, what)
            # "5/15" means "from 5 to the end, every 15", as in Vixie cron.
            end = high if step != 1 else start
        if not (low <= start <= high and low <= end <= high):
            raise ValueError(f"{what}: {part!r} is outside {low}-{high}")
        if start > end:
            raise ValueError(f"{what}: range {part!r} runs backwards")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _value(text: str, names: dict[str, int] | None, what: str) -> int:
    if names is not None and text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ValueError(f"{what}: {text!r} is not a number{' or name' if names else ''}")
    return int(text)


@functools.lru_cache(maxsize=256)
def parse_cron(expression: str) -> CronSchedule:
    """Parse a five-field cron expression (or a macro); ``ValueError`` says what is wrong."""
    text = _MACROS.get(expression.strip().lower(), expression.strip())
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expression!r}: expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, dom, month, dow = fields
    weekdays = _field(dow, 0, 7, _DAYS, "day-of-week")
    if 7 in weekdays:
        weekdays = (weekdays - {7}) | {0}
    return CronSchedule(
        minutes=_field(minute, 0, 59, None, "minute"),
        hours=_field(hour, 0, 23, None, "hour"),
        days=_field(dom, 1, 31, None, "day-of-month"),
        months=_field(month, 1, 12, _MONTHS, "month"),
        weekdays=weekdays,
        days_restricted=not dom.startswith("*"),
        weekdays_restricted=not dow.startswith("*"),
    )


def parse_duration(text: str) -> timedelta:
    """A Go-style duration (``9h``, ``1h30m``, ``90m``), positive and at most :data:`MAX_DURATION`."""
    compact = text.strip()
    if not _DURATION_WHOLE.fullmatch(compact):
        raise ValueError(f"duration {text!r}: expected e.g. 9h, 1h30m, 90m or 45s")
    seconds = sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(compact))
    # Compared as a number first: timedelta overflows (OverflowError, not ValueError) long before a
    # string of 32 digits runs out.
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    if not seconds <= MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


@functools.lru_cache(maxsize=128)
def parse_zone(name: str) -> ZoneInfo:
    """An IANA time zone (``Asia/Seoul``); ``ValueError`` for unknown names."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, IsADirectoryError) as exc:
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as Asia/Seoul)") from exc


# --------------------------------------------------------------------------------------------- windows


@dataclass(frozen=True, slots=True)
class Window:
    kind: Literal["allow", "deny"]
    schedule_text: str
    schedule: CronSchedule
    duration: timedelta
    zone: ZoneInfo
    expression: str  # the five fields cronsim reads: schedule_text with its macro expanded

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.schedule_text}' for {compact_duration(self.duration)} ({self.zone.key})"

    def _starts(self, begin: datetime, reverse: bool) -> Iterator[datetime]:
        """cronsim's starts from ``begin`` (exclusive), in UTC; nothing for a schedule that never fires."""
        try:
            it = CronSim(self.expression, begin.astimezone(self.zone), reverse=reverse)
        except CronSimError:
            return  # the grammar was accepted, the day never comes (e.g. "0 0 30 2 *")
        try:
            for start in it:
                yield start.astimezone(UTC)
        except StopIteration:  # cronsim gives up after 50 years without a match
            return

    def _fall_back_margin(self, t: datetime) -> timedelta:
        """How much later than ``t`` a wall clock reads the same again, when ``t`` is in a repeated hour.

        cronsim reads a fixed-time schedule ("30 1 * * *") on the naive wall clock, so an instant in the
        second pass of a repeated hour looks like the first pass: starting an hour (Lord Howe: half an
        hour) later and skipping what lies beyond ``t`` sees every start at or before it.
        """
        local = t.astimezone(self.zone)
        if not local.fold:
            return timedelta(0)
        first, second = local.replace(fold=0).utcoffset(), local.utcoffset()
        return (first - second) if first is not None and second is not None else timedelta(0)

    def _latest_start(self, t: datetime) -> datetime | None:
        for start in self._starts(t + self._fall_back_margin(t) + timedelta(seconds=1), reverse=True):
            if start <= t:
                return start
        return None

    def _first_start(self, after: datetime, horizon: timedelta) -> datetime | None:
        for start in self._starts(after, reverse=False):
            if start - after > horizon:
                return None
            if start > after:  # a fixed-time start read on the wall clock may lie before a fold=1 ``after``
                return start
        return None

    # cronsim's forward iteration jumps to the next matching minute as if every hour had 60 minutes, and
    # so misses a start that exists only in a half-hour repeat (Australia/Lord_Howe's 01:30 on the
    # night clocks go back from 02:00 to 01:30); its backward iteration finds it. Across an offset change
    # each answer is checked against the other direction; the differential test over DST transitions
    # holds both.

    def _may_cross_a_change(self, a: datetime, b: datetime) -> bool:
        return b - a > timedelta(days=1) or a.astimezone(self.zone).utcoffset() != b.astimezone(self.zone).utcoffset()

    def last_start(self, t: datetime) -> datetime | None:
        """The latest start at or before ``t`` (cronsim iterating backwards)."""
        start = self._latest_start(t)
        for _ in range(4):
            if start is None or not self._may_cross_a_change(start, t):
                break
            later = self._first_start(start, t - start)
            if later is None or later > t:
                break
            start = later
        return start

    def next_start(self, after: datetime, horizon: timedelta = HORIZON) -> datetime | None:
        """The first start strictly after ``after``, within ``horizon``."""
        start = self._first_start(after, horizon)
        for _ in range(4):
            if start is None or not self._may_cross_a_change(after, start):
                break
            earlier = self._latest_start(start - timedelta(microseconds=1))
            if earlier is None or earlier <= after:
                break
            start = earlier
        return start

    def active(self, t: datetime) -> Occurrence | None:
        """The occurrence covering ``t``: the latest start at or before it, if still running.

        Every occurrence lasts ``duration``, so the latest start is the one that ends last.
        """
        start = self.last_start(t)
        if start is None or t >= start + self.duration:
            return None
        return Occurrence(self, start, start + self.duration)

    def starts_on(self, day: date) -> list[datetime]:
        """This window's start times on one local calendar day, in UTC, ascending."""
        begin = datetime.combine(day, time(), self.zone).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(), self.zone).astimezone(UTC)
        return list(occurrences(self, begin, end))


@dataclass(frozen=True, slots=True)
class Occurrence:
    window: Window
    start: datetime
    end: datetime


def compile_window(kind: str, schedule: str, duration: str, time_zone: str) -> Window:
    """A checked window; ``ValueError`` names the field that is wrong."""
    if kind not in ("allow", "deny"):
        raise ValueError(f"kind {kind!r}: expected allow or deny")
    return Window(
        kind="allow" if kind == "allow" else "deny",
        schedule_text=schedule,
        schedule=parse_cron(schedule),
        duration=parse_duration(duration),
        zone=parse_zone(time_zone),
        expression=_MACROS.get(schedule.strip().lower(), schedule.strip()),
    )


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    open: bool
    allows: tuple[Occurrence, ...]  # allow occurrences active now
    denies: tuple[Occurrence, ...]  # deny occurrences active now
    has_allow_windows: bool
    next_opening: datetime | None  # when closed: the first time it is open again (None: none found, see HORIZON)
    next_change: datetime | None  # when open: the first time it may close (an allow ends or a deny starts)


def _open_at(windows: Sequence[Window], t: datetime) -> tuple[bool, list[Occurrence], list[Occurrence]]:
    allows: list[Occurrence] = []
    denies: list[Occurrence] = []
    for w in windows:
        occurrence = w.active(t)
        if occurrence is not None:
            (allows if w.kind == "allow" else denies).append(occurrence)
    has_allow = any(w.kind == "allow" for w in windows)
    return (not denies and (bool(allows) or not has_allow)), allows, denies


def _next_opening(windows: Sequence[Window], now: datetime) -> datetime | None:
    t = now
    for _ in range(_MAX_STEPS):
        is_open, _allows, denies = _open_at(windows, t)
        if is_open:
            return t
        if denies:
            # Nothing before the last active deny ends can be open.
            t = max(o.end for o in denies)
            continue
        starts = [s for w in windows if w.kind == "allow" and (s := w.next_start(t)) is not None]
        if not starts or min(starts) - now > HORIZON:
            return None
        t = min(starts)
    return None


def _next_change(windows: Sequence[Window], now: datetime, allows: Sequence[Occurrence]) -> datetime | None:
    candidates = [o.end for o in allows]
    candidates += [s for w in windows if w.kind == "deny" and (s := w.next_start(now)) is not None]
    return min(candidates) if candidates else None


def evaluate_windows(windows: Sequence[Window], now: datetime) -> WindowVerdict:
    """Whether merging is open at ``now``, and when that changes next."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    is_open, allows, denies = _open_at(windows, now)
    has_allow = any(w.kind == "allow" for w in windows)
    if is_open:
        # With allow windows, only an allow occurrence that is still running keeps it open; an open
        # state without any window (none configured) never changes.
        change = _next_change(windows, now, allows) if windows else None
        return WindowVerdict(True, tuple(allows), tuple(denies), has_allow, None, change)
    return WindowVerdict(False, tuple(allows), tuple(denies), has_allow, _next_opening(windows, now), None)


def occurrences(window: Window, start: datetime, end: datetime) -> Iterator[datetime]:
    """Every start of ``window`` in ``[start, end)`` (for tests and the simulator's explanations)."""
    t = start - timedelta(microseconds=1)
    while (nxt := window.next_start(t, end - t)) is not None and nxt < end:
        yield nxt
        t = nxt
