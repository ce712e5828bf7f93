"""The business calendar of a window: holidays and 调休 workdays, weather, promotions, and
what each does to the order intensity.

Demand for fresh food follows the calendar more than anything else: the evening before
Mid-Autumn everyone buys for the family dinner, during the National Day week half the
residents are away, a rainstorm keeps people home ordering, a typhoon shuts deliveries and
makes people stock up the day before. The simulator draws every order's hour from an
intensity built here, and publishes the same calendar and promotions as reference files so
that a forecaster can learn the effects from the data, not from this module.

Holidays follow the State Council's published schedules, kept in :data:`HOLIDAYS` and
:data:`ADJUSTED_WORKDAYS` for the years known; in other years only Mid-Autumn day and
National Day 1-7 October are holidays (no 调休 workdays).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

from .catalog import Sku
from .config import SimulationConfig

#: Mid-Autumn (the 15th day of the 8th lunar month) per Gregorian year.
MID_AUTUMN: dict[int, date] = {
    2024: date(2024, 9, 17), 2025: date(2025, 10, 6), 2026: date(2026, 9, 25),
    2027: date(2027, 9, 15), 2028: date(2028, 10, 3),
}
#: Official days off (name, first day, last day) per year, weekends of a bridged break included.
HOLIDAYS: dict[int, tuple[tuple[str, date, date], ...]] = {
    2025: (("国庆节", date(2025, 10, 1), date(2025, 10, 8)),),  # National Day and Mid-Autumn together
    2026: (("中秋节", date(2026, 9, 25), date(2026, 9, 27)), ("国庆节", date(2026, 10, 1), date(2026, 10, 7))),
}
#: 调休: weekend days that are workdays to bridge a break, per year.
ADJUSTED_WORKDAYS: dict[int, tuple[date, ...]] = {
    2025: (date(2025, 9, 28), date(2025, 10, 11)),
    2026: (date(2026, 9, 20), date(2026, 10, 10)),
}

#: Demand on holidays and around them, relative to the weekday the day behaves like.
MID_AUTUMN_EVE_FACTOR = 1.35  # the family dinner is bought the day before
MID_AUTUMN_DAY_FACTOR = 1.2
NATIONAL_DAY_EVE_FACTOR = 1.2  # stocking up before the week off
NATIONAL_DAY_AWAY_FACTOR = 0.7  # 1-4 October: many residents travel
NATIONAL_DAY_RETURN_FACTOR = 0.85  # the rest of the week: they come back
#: Weather: share of days and demand factor. Rain keeps people at home ordering.
WEATHER_SHARE = {"rain": 0.18, "rainstorm": 0.06}
WEATHER_FACTOR = {"clear": 1.0, "rain": 1.1, "rainstorm": 1.3, "typhoon": 0.45}
#: The day before a typhoon people stock up; on the day deliveries to front warehouses stop.
PRE_TYPHOON_FACTOR = 1.4
#: Months in which the window gets one typhoon day (Zhejiang's typhoon season).
TYPHOON_MONTHS = (7, 8, 9, 10)

#: The blind box (盲盒): Wednesdays 14:00-17:00 of every other week (from the window's second
#: week), the slot's orders triple.
BLIND_BOX_HOURS = (14, 17)
BLIND_BOX_FACTOR = 3.0
#: Weekly price cuts: share of SKU-weeks cut, the cut, and how much more often a cut SKU is picked.
PRICE_CUT_SHARE = 0.12
PRICE_CUT_DISCOUNT = 0.15
PRICE_CUT_PICK_FACTOR = 1.8

WEEKDAY_MONDAY, WEEKDAY_SATURDAY = 0, 5


def mid_autumn(year: int) -> date:
    """Mid-Autumn day of ``year`` (20 September when the year is not in :data:`MID_AUTUMN`)."""
    return MID_AUTUMN.get(year, date(year, 9, 20))


@dataclass(frozen=True)
class Day:
    """One local date of the window and how it behaves."""

    date: date
    holiday: str | None
    is_holiday: bool
    is_workday: bool
    weather: str
    #: The weekday (0 = Monday) whose hourly rhythm the day follows: a day off behaves like a
    #: Saturday, a 调休 workday like a Monday.
    behaves_like: int
    #: Demand relative to an ordinary day of that weekday.
    factor: float
    #: Whether the 05:00 delivery reaches the front warehouses (not in a typhoon).
    deliveries: bool


@dataclass
class Calendar:
    """The window's days, blind-box hours and price cuts."""

    days: list[Day]
    #: Window hours (index from the window start) of blind-box slots.
    blind_box_hours: list[int]
    #: Per SKU index and week: the share off (0 = no cut).
    price_cut: np.ndarray

    def pick_factor(self, sku_index: int, week: int) -> float:
        return PRICE_CUT_PICK_FACTOR if self.price_cut[sku_index, week] > 0 else 1.0


def _holidays(year: int) -> tuple[tuple[str, date, date], ...]:
    if year in HOLIDAYS:
        return HOLIDAYS[year]
    festival = mid_autumn(year)
    return (("中秋节", festival, festival), ("国庆节", date(year, 10, 1), date(year, 10, 7)))


def build_calendar(cfg: SimulationConfig, skus: tuple[Sku, ...]) -> Calendar:
    """The calendar of ``cfg``'s window (effects left out as the config switches them off)."""
    n_days = cfg.weeks * 7
    dates = [cfg.start + timedelta(days=d) for d in range(n_days)]
    years = sorted({d.year for d in dates})
    named = {d0 + timedelta(days=k): name for y in years for name, d0, d1 in _holidays(y)
             for k in range((d1 - d0).days + 1)} if cfg.holidays else {}
    adjusted = {d for y in years for d in ADJUSTED_WORKDAYS.get(y, ())} if cfg.holidays else set()
    weather = _weather(cfg, dates)
    factors = [1.0] * n_days
    if cfg.holidays:
        for i, d in enumerate(dates):
            eve = d + timedelta(days=1)
            if eve == mid_autumn(d.year):
                factors[i] *= MID_AUTUMN_EVE_FACTOR
            if d == mid_autumn(d.year):
                factors[i] *= MID_AUTUMN_DAY_FACTOR
            if eve == date(d.year, 10, 1):
                factors[i] *= NATIONAL_DAY_EVE_FACTOR
            if d.month == 10 and 1 <= d.day <= 4:
                factors[i] *= NATIONAL_DAY_AWAY_FACTOR
            elif d.month == 10 and 5 <= d.day <= 7:
                factors[i] *= NATIONAL_DAY_RETURN_FACTOR
    for i, w in enumerate(weather):
        factors[i] *= WEATHER_FACTOR[w]
        if i + 1 < n_days and weather[i + 1] == "typhoon":
            factors[i] *= PRE_TYPHOON_FACTOR
    days = []
    for i, d in enumerate(dates):
        holiday = named.get(d)
        workday = d in adjusted or (d.weekday() < 5 and holiday is None)
        if holiday is not None:
            behaves = WEEKDAY_SATURDAY if d.weekday() < 5 else d.weekday()
        elif d in adjusted:
            behaves = WEEKDAY_MONDAY
        else:
            behaves = d.weekday()
        days.append(Day(d, holiday, holiday is not None, workday, weather[i], behaves, factors[i],
                        weather[i] != "typhoon"))
    blind: list[int] = []
    cut = np.zeros((len(skus), cfg.weeks))
    if cfg.promotions:
        for week in range(1, cfg.weeks, 2):
            wednesday = week * 7 + 2
            blind.extend(wednesday * 24 + h for h in range(*BLIND_BOX_HOURS))
        rng = cfg.rng("promotions")
        draws = rng.random((len(skus), cfg.weeks)) < PRICE_CUT_SHARE
        for s, sku in enumerate(skus):
            for week in range(cfg.weeks):
                if draws[s, week] and any(sku.available_on(dates[week * 7 + k]) for k in range(7)):
                    cut[s, week] = PRICE_CUT_DISCOUNT
    return Calendar(days, blind, cut)


def _weather(cfg: SimulationConfig, dates: list[date]) -> list[str]:
    """Clear, rain or rainstorm per day, and one typhoon day when the window is in the season."""
    if not cfg.weather:
        return ["clear"] * len(dates)
    rng = cfg.rng("weather")
    u = rng.random(len(dates))
    rain, storm = WEATHER_SHARE["rain"], WEATHER_SHARE["rainstorm"]
    out = ["rainstorm" if x < storm else ("rain" if x < storm + rain else "clear") for x in u.tolist()]
    season = [i for i, d in enumerate(dates) if d.month in TYPHOON_MONTHS and i >= 7]
    if season:
        out[season[int(rng.integers(len(season)))]] = "typhoon"
    return out


def hourly_intensity(cal: Calendar, weekly: np.ndarray) -> np.ndarray:
    """Relative order intensity for every hour of the window, from a 168-hour weekly profile
    (Monday 00:00 first): each day takes the hours of the weekday it behaves like, times its
    factor; blind-box slots are multiplied by :data:`BLIND_BOX_FACTOR`."""
    out = np.empty(len(cal.days) * 24)
    for i, day in enumerate(cal.days):
        w = day.behaves_like
        out[i * 24:(i + 1) * 24] = weekly[w * 24:(w + 1) * 24] * day.factor
    if cal.blind_box_hours:
        out[cal.blind_box_hours] *= BLIND_BOX_FACTOR
    return out


def calendar_rows(cal: Calendar) -> list[dict[str, Any]]:
    """reference/calendar.jsonl: one row per local date."""
    return [{"date": d.date.isoformat(), "holiday": d.holiday, "is_holiday": d.is_holiday,
             "is_workday": d.is_workday, "weather": d.weather} for d in cal.days]


def promotion_rows(cal: Calendar, skus: tuple[Sku, ...], start: date) -> list[dict[str, Any]]:
    """reference/promotions.jsonl: the blind-box slots (for every SKU and community) and the
    weekly price cuts, as announced to shoppers (times ISO 8601, +08:00)."""
    def stamp(day: int, hour: int) -> str:
        return f"{(start + timedelta(days=day)).isoformat()}T{hour:02d}:00:00+08:00"

    rows: list[dict[str, Any]] = []
    days = sorted({h // 24 for h in cal.blind_box_hours})
    for day in days:
        rows.append({"promotion_id": f"PR-BB-{(start + timedelta(days=day)).strftime('%Y%m%d')}", "kind": "blind_box",
                     "sku": None, "community_id": None, "starts_at": stamp(day, BLIND_BOX_HOURS[0]),
                     "ends_at": stamp(day, BLIND_BOX_HOURS[1]), "discount": 0.0})
    weeks = cal.price_cut.shape[1]
    for week in range(weeks):
        for s in np.nonzero(cal.price_cut[:, week])[0].tolist():
            rows.append({"promotion_id": f"PR-PC-{skus[s].sku}-{(start + timedelta(days=week * 7)).strftime('%Y%m%d')}", "kind": "price_cut",
                         "sku": skus[s].sku, "community_id": None, "starts_at": stamp(week * 7, 0),
                         "ends_at": stamp(week * 7 + 7, 0), "discount": float(cal.price_cut[s, week])})
    return rows
