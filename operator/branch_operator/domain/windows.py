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
This module implements cron itself (about a hundred lines) instead of depending on ``croniter``,
whose time-zone handling across DST changes has a history of surprises; here the DST rule is
explicit and tested:

* a wall-clock start that does not exist (the spring-forward gap) starts at the same offset from
  the start of the gap, i.e. 02:30 on a day clocks jump 02:00 -> 03:00 starts at 03:30;
* a wall-clock start that exists twice (the fall-back hour) starts at its first occurrence.

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

    @functools.cached_property
    def times(self) -> tuple[time, ...]:
        return tuple(time(h, m) for h in sorted(self.hours) for m in sorted(self.minutes))


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
    value = timedelta(seconds=seconds)
    if value <= timedelta(0):
        raise ValueError(f"duration {text!r} must be positive")
    if value > MAX_DURATION:
        raise ValueError(f"duration {text!r} is longer than {MAX_DURATION.days} days")
    return value


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

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.schedule_text}' for {compact_duration(self.duration)} ({self.zone.key})"

    def starts_on(self, day: date) -> list[datetime]:
        """This window's start times on one local calendar day, in UTC, ascending."""
        if not self.schedule.matches_day(day):
            return []
        # fold=0 resolves both DST edge cases as the module docstring says.
        starts = {datetime.combine(day, t, self.zone).astimezone(UTC) for t in self.schedule.times}
        return sorted(starts)

    def _local_day(self, t: datetime) -> date:
        return t.astimezone(self.zone).date()

    def active(self, t: datetime) -> Occurrence | None:
        """The occurrence covering ``t`` (the latest start at or before it, if still running)."""
        # A gap-shifted start can land on the previous local day's UTC range: look one day further.
        day = self._local_day(t) + timedelta(days=1)
        earliest = self._local_day(t - self.duration) - timedelta(days=1)
        while day >= earliest:
            for start in reversed(self.starts_on(day)):
                if start <= t:
                    end = start + self.duration
                    return Occurrence(self, start, end) if t < end else None
            day -= timedelta(days=1)
        return None

    def next_start(self, after: datetime, horizon: timedelta = HORIZON) -> datetime | None:
        """The first start strictly after ``after``, within ``horizon``."""
        day = self._local_day(after) - timedelta(days=1)
        last = self._local_day(after + horizon)
        while day <= last:
            for start in self.starts_on(day):
                if start > after:
                    return start
            day += timedelta(days=1)
        return None


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
