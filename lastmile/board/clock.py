"""Which day the board shows, and the instants every panel's SQL is bounded by.

"Today" is a business day in ``LASTMILE_BUSINESS_TZ``. By default it is the business day of
the newest order in the warehouse: in production that is the calendar's today, and for a
simulated or replayed history (whose events lie in the past) it is the last day with orders,
so the board never shows an empty "today" just because the data are old. Orders, not any
event, set the day: reviews and late pickups trail a history by days, and a day after the
last order has nothing to pick up or sell. ``as_of=YYYY-MM-DD`` chooses any other day.

``now`` is the instant "so far today" figures stop at (what is ready, overdue, open): the
wall clock while it lies inside the chosen day, otherwise the newest order, pickup or
locker reading inside that day (the data's own clock), otherwise the end of the day. The
page states which of these applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

#: Raw event tables whose newest ``occurred_at`` is the data clock (``now`` in a past day).
CLOCK_TABLES = ("raw_order", "raw_pickup", "raw_locker_telemetry")


class BadAsOf(ValueError):
    """``as_of`` is not a date the board can show."""


@dataclass(frozen=True)
class BoardWindow:
    """The day shown and its bounds, all instants in UTC (what the raw tables hold)."""

    day: date
    zone: str
    day_start: datetime
    day_end: datetime
    #: Start of the business day six days before ``day``: the 7-day window ends with today.
    week7_start: datetime
    #: Monday of the business week holding ``day`` (the marts' ``week_start``).
    week_start: date
    now: datetime
    #: The wall clock when the window was made: ingestion-time figures (events/s, freshness,
    #: quarantine spikes) are measured against it, whatever day is shown.
    wall_now: datetime
    newest_event_at: datetime | None
    newest_order_at: datetime | None
    #: How ``day`` was chosen: ``newest_order``, ``as_of`` or ``wall_clock`` (no orders).
    day_source: str
    #: How ``now`` was chosen: ``wall_clock``, ``newest_event`` or ``end_of_day``.
    now_source: str

    def parameters(self) -> dict[str, Any]:
        """Query parameters shared by every panel (``{day_start:DateTime64(3, 'UTC')}`` ...)."""
        return {"day_start": self.day_start, "day_end": self.day_end, "week7_start": self.week7_start,
                "now": self.now, "wall_now": self.wall_now, "week_start": self.week_start, "tz": self.zone}

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "zone": self.zone, "day_start": _iso(self.day_start),
                "day_end": _iso(self.day_end), "week_start": self.week_start.isoformat(), "now": _iso(self.now),
                "wall_now": _iso(self.wall_now), "newest_event_at": _iso(self.newest_event_at),
                "newest_order_at": _iso(self.newest_order_at),
                "day_source": self.day_source, "now_source": self.now_source}


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


def parse_as_of(text: str | None) -> date | None:
    """``YYYY-MM-DD`` (or empty / ``latest`` for the newest event's day)."""
    if text is None or text.strip() in ("", "latest"):
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise BadAsOf(f"as_of={text!r} is not a date: give YYYY-MM-DD, or leave it out for the newest order's business day") from None


def business_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant the business day ``day`` starts at (correct across DST changes)."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(timezone.utc)


def window_for(newest_order_at: datetime | None, newest_event_at: datetime | None, zone_name: str,
               as_of: date | None = None, wall_now: datetime | None = None) -> BoardWindow:
    """The window for ``as_of`` (None: the newest order's business day)."""
    zone = ZoneInfo(zone_name)
    wall = (wall_now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    newest = newest_event_at.astimezone(timezone.utc) if newest_event_at else None
    order = newest_order_at.astimezone(timezone.utc) if newest_order_at else None
    if as_of is not None:
        day, day_source = as_of, "as_of"
    elif order is not None:
        day, day_source = order.astimezone(zone).date(), "newest_order"
    else:
        day, day_source = wall.astimezone(zone).date(), "wall_clock"
    start, end = business_midnight(day, zone), business_midnight(day + timedelta(days=1), zone)
    if start <= wall < end:
        now, now_source = wall, "wall_clock"
    elif newest is not None and start <= newest < end:
        now, now_source = newest, "newest_event"
    elif end <= wall:
        now, now_source = end - timedelta(milliseconds=1), "end_of_day"
    else:  # a day still to come: nothing has happened in it yet
        now, now_source = start, "start_of_day"
    return BoardWindow(day=day, zone=zone_name, day_start=start, day_end=end,
                       week7_start=business_midnight(day - timedelta(days=6), zone),
                       week_start=day - timedelta(days=day.weekday()), now=now, wall_now=wall,
                       newest_event_at=newest, newest_order_at=order, day_source=day_source, now_source=now_source)
