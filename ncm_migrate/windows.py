"""Maintenance windows: `"Sat 02:00-04:00 UTC"` read strictly, and whether a moment is
inside one. Pure: the moment comes from a clock the caller passes (tests pass a fixed one).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# What tells the time: the system's clock, or a fixed one in tests.
Clock = Callable[[], datetime]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EXAMPLE = '"Sat 02:00-04:00 UTC"'
_WINDOW = re.compile(
    r"(?P<days>[A-Za-z*][A-Za-z,*-]*)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})"
    r"\s+(?P<zone>\S+)"
)


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday) on which a window opens at `start` for `length`, in
    the time zone `zone`; one that ends at or before its start ends on the next day."""

    text: str
    days: frozenset[int]
    start: time
    length: timedelta
    zone: str

    def contains(self, moment: datetime) -> bool:
        moment = _aware(moment)
        local = moment.astimezone(ZoneInfo(self.zone))
        # a window that crosses midnight may have opened the day before
        for day in (local.date(), local.date() - timedelta(days=1)):
            opens = self.opening(day)
            if opens is not None and opens <= moment < opens + self.length:
                return True
        return False

    def opening(self, day: date) -> datetime | None:
        """When the window opens on `day` (local), or None if it does not open that day."""
        if day.weekday() not in self.days:
            return None
        return datetime.combine(day, self.start, tzinfo=ZoneInfo(self.zone))


def parse_window(text: str) -> Window:
    """`"Sat 02:00-04:00 UTC"`: days (`Mon`...`Sun`, a range `Mon-Fri`, a list `Sat,Sun`, or
    `daily`), start and end (24-hour `HH:MM`, an end at or before the start is the next
    day) and an IANA time zone (`UTC`, `Europe/Paris`). `ValueError` says what is wrong."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a window: write it as {EXAMPLE} (days, HH:MM-HH:MM, time zone)")
    start, end = _clock_time(match["start"], text), _clock_time(match["end"], text)
    if start == end:
        raise ValueError(f"{text!r} starts and ends at the same time: give it a length")
    length = datetime.combine(date.min, end) - datetime.combine(date.min, start)
    if length <= timedelta(0):
        length += timedelta(days=1)  # crosses midnight
    zone = match["zone"]
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{text!r} names the time zone {zone!r}, which is not an IANA time zone "
            "(for example UTC, Europe/Paris, America/New_York)"
        ) from None
    return Window(text.strip(), _days(match["days"], text), start, length, zone)


def parse_windows(values: Sequence[str]) -> tuple[Window, ...]:
    return tuple(parse_window(v) for v in values)


def is_open(windows: Sequence[Window], moment: datetime) -> bool:
    """Whether `moment` is inside one of `windows` (no windows: never)."""
    return any(w.contains(moment) for w in windows)


def next_opening(windows: Sequence[Window], moment: datetime) -> datetime | None:
    """When the next of `windows` opens after `moment` (within a week), or None."""
    moment = _aware(moment)
    found: list[datetime] = []
    for w in windows:
        local = moment.astimezone(ZoneInfo(w.zone)).date()
        for offset in range(8):
            opens = w.opening(local + timedelta(days=offset))
            if opens is not None and opens > moment:
                found.append(opens)
                break
    return min(found, default=None)


def _aware(moment: datetime) -> datetime:
    """A clock's time; one without a zone is taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _clock_time(text: str, window: str) -> time:
    hours, minutes = (int(part) for part in text.split(":"))
    if hours > 23 or minutes > 59:
        raise ValueError(f"{window!r} has the time {text}, which is not a 24-hour HH:MM time")
    return time(hours, minutes)


def _days(text: str, window: str) -> frozenset[int]:
    spec = text.lower()
    if spec in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(
                f"{window!r} has the days {text!r}: use Mon, Tue, Wed, Thu, Fri, Sat, Sun, a "
                "range (Mon-Fri), a list (Sat,Sun) or daily"
            )
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return frozenset(days)
