"""When a test plan falls due: recurrences in a named time zone, turned into UTC instants.

Plans are written in local time (a district sounds at 10:00 its own time), so occurrences are
computed on local dates and only then resolved to UTC, with an explicit policy for the two
moments a local time does not name exactly one instant:

- a time that does not exist (clocks jump forward: 02:30 on a spring-forward night in Berlin)
  is taken as the same length of time after the jump, i.e. 03:30 local;
- a time that exists twice (clocks fall back) is taken at its first occurrence.

A yearly plan on 29 February falls only in leap years; a monthly plan on the 5th Tuesday only in
months that have one. Cron expressions are the usual five fields (minute hour day-of-month month
day-of-week, with `*`, lists, ranges and steps; names like `mon` and `sep` allowed); when both
day fields are restricted, either may match, as in cron.

Cron fields are parsed here rather than by a library, on purpose. cronsim (maintained, used by
Healthchecks) was tried: it follows Debian's cron, where a time skipped by a spring-forward jump
fires at the jump (02:30 -> 03:00 on 28 March 2027 in Berlin), while every plan kind here shares
one policy (03:30, above), so a cron plan would disagree with a yearly one on the same night.
Matching five fields on a local date is the ~40 lines below; the DST policy, the part worth
sharing, stays in one place (`resolve_local`).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# How far ahead the search for the next occurrence looks: past it, a plan is taken to never fall
# (a yearly plan on 29 February needs up to 8 years across a skipped leap year such as 2100).
SEARCH_DAYS = 366 * 9


def parse_time_of_day(text: str) -> time:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise ValueError(f"time must be HH:MM or HH:MM:SS, got {text!r}")
    hour, minute, second = (int(p) for p in [*parts, "0"][:3])
    return time(hour, minute, second)


def resolve_local(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local date and time, by the policy in the module docstring."""
    local = datetime.combine(day, at).replace(tzinfo=zone, fold=0)
    # fold=0 gives a gap time the offset in force before the jump: 02:30 CET = 03:30 CEST, and
    # an ambiguous time its first (summer) meaning.
    return local.astimezone(UTC)


@dataclass(frozen=True)
class Yearly:
    month: int
    day: int
    at: time

    def times_on(self, day: date) -> list[time]:
        return [self.at] if (day.month, day.day) == (self.month, self.day) else []


@dataclass(frozen=True)
class MonthlyNthWeekday:
    weekday: int  # 0 = Monday
    nth: int  # 1..5, or -1 for the last one in the month
    at: time

    def times_on(self, day: date) -> list[time]:
        if day.weekday() != self.weekday:
            return []
        if self.nth == -1:
            return [self.at] if day.day + 7 > calendar.monthrange(day.year, day.month)[1] else []
        return [self.at] if (day.day - 1) // 7 + 1 == self.nth else []


def _field(text: str, low: int, high: int, names: tuple[str, ...] = (), name_base: int = 0
           ) -> frozenset[int]:
    values: set[int] = set()

    def number(token: str) -> int:
        token = token.lower()
        if token in names:
            return names.index(token) + name_base
        if not token.isdigit():
            raise ValueError(f"{token!r} is not a number")
        return int(token)

    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError("a step must be at least 1")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = number(a), number(b)
        else:
            start = number(base)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError("a cron expression has 5 fields: minute hour day month weekday")
        minute, hour, dom, month, dow = fields
        # cron counts weekdays from Sunday = 0 (7 also Sunday); we count from Monday = 0.
        cron_days = _field(dow, 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
        weekdays = frozenset((d - 1) % 7 for d in cron_days)
        return cls(_field(minute, 0, 59), _field(hour, 0, 23), _field(dom, 1, 31),
                   _field(month, 1, 12, MONTHS, 1), weekdays, dom != "*", dow != "*")

    def times_on(self, day: date) -> list[time]:
        if day.month not in self.months:
            return []
        by_day, by_weekday = day.day in self.days, day.weekday() in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            matches = by_day or by_weekday
        else:
            matches = by_day and by_weekday
        if not matches:
            return []
        return [time(h, m) for h in sorted(self.hours) for m in sorted(self.minutes)]


Rule = Yearly | MonthlyNthWeekday | Cron


def occurrences(rule: Rule, zone: ZoneInfo, after: datetime) -> Iterator[tuple[date, datetime]]:
    """(local date, UTC instant) of every occurrence strictly after `after`, in order."""
    day = after.astimezone(zone).date() - timedelta(days=1)
    last = day + timedelta(days=SEARCH_DAYS)
    while day <= last:
        # A set: on a spring-forward night 02:30 and 03:30 name the same instant.
        instants = sorted({resolve_local(day, at, zone) for at in rule.times_on(day)})
        for instant in instants:
            if instant > after:
                yield day, instant
                last = day + timedelta(days=SEARCH_DAYS)
        day += timedelta(days=1)
