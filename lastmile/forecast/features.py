"""Exogenous features of the forecast frame: calendar, holidays, weather, promotions, price,
community and SKU attributes.

Everything here is known ahead of the hour it describes (the calendar and the weather
outlook, promotions announced in the reference file, list prices), so the same functions
build the training frame and the 72 future hours the model is asked about. Lagged and rolling
demand are computed by mlforecast itself (:mod:`lastmile.forecast.model`).

The reference data comes from the ``ref_*`` tables ``lastmile transform`` loads. A warehouse
without a calendar or promotions file still forecasts: weekends are then the only
non-working days, with no holiday, promotion or weather signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: Weather classes of the calendar file, as an ordered severity code the trees can split on.
WEATHER_CODES = {"clear": 0, "rain": 1, "rainstorm": 2, "typhoon": 3}

#: Static (per-series) features; the rest of the exogenous columns change by the hour.
STATIC_FEATURES = ("community_code", "category_code", "class_code", "shelf_life_days", "list_price", "is_impulse")
DYNAMIC_FEATURES = ("is_holiday", "is_workday", "weather", "blind_box", "discount", "price", "available", "rhythm_day",
                    "rhythm_hour")


@dataclass
class Reference:
    """The master data the features read (each frame may be empty, never None)."""

    skus: pd.DataFrame
    calendar: pd.DataFrame
    promotions: pd.DataFrame
    distances: pd.DataFrame
    communities: list[str]


def load_reference(warehouse: Any) -> Reference:
    """Read the reference tables the forecast uses; missing optional ones are empty."""
    tables = set(warehouse.tables())
    if "ref_skus" not in tables:
        raise FileNotFoundError("ref_skus is missing: run `lastmile transform` to load the reference data")

    def read(table: str) -> pd.DataFrame:
        if table not in tables:
            return pd.DataFrame()
        result = warehouse.query(f"SELECT * FROM {table}")
        return pd.DataFrame(result.result_rows, columns=list(result.column_names))

    communities = sorted(str(c) for (c,) in warehouse.rows("SELECT community_id FROM ref_communities")) if "ref_communities" in tables else []
    return Reference(skus=read("ref_skus"), calendar=read("ref_calendar"), promotions=read("ref_promotions"),
                     distances=read("ref_community_distances"), communities=communities)


def _codes(values: pd.Series, known: list[str]) -> np.ndarray:
    """Stable integer codes: the position in the sorted known values (-1 when unknown)."""
    lookup = {v: i for i, v in enumerate(sorted(set(known)))}
    return values.map(lookup).fillna(-1).astype(int).to_numpy()


def static_features(series: pd.DataFrame, ref: Reference) -> pd.DataFrame:
    """Per-series attributes: community, category, product class, shelf life, list price."""
    skus = ref.skus.set_index("sku") if not ref.skus.empty else pd.DataFrame()
    out = series[["unique_id", "community_id", "sku"]].drop_duplicates("unique_id").reset_index(drop=True)
    communities = ref.communities or sorted(out["community_id"].unique())
    out["community_code"] = _codes(out["community_id"], communities)
    category = out["sku"].map(skus["category"]) if "category" in skus else pd.Series("", index=out.index)
    klass = out["sku"].map(skus["product_class"]) if "product_class" in skus else pd.Series("", index=out.index)
    out["category_code"] = _codes(category.fillna(""), list(skus.get("category", pd.Series(dtype=str)).astype(str)) + [""])
    out["class_code"] = _codes(klass.fillna(""), list(skus.get("product_class", pd.Series(dtype=str)).astype(str)) + [""])
    shelf = skus["shelf_life_days"] if "shelf_life_days" in skus else pd.Series(dtype=float)
    out["shelf_life_days"] = out["sku"].map(shelf).astype(float).fillna(-1.0)
    price = skus["unit_price"] if "unit_price" in skus else pd.Series(dtype=float)
    out["list_price"] = out["sku"].map(price).astype(float).fillna(0.0)
    impulse = skus["is_impulse"] if "is_impulse" in skus else pd.Series(dtype=float)
    out["is_impulse"] = out["sku"].map(impulse).astype(float).fillna(0.0)
    return out


def calendar_features(hours: pd.Series, calendar: pd.DataFrame) -> pd.DataFrame:
    """is_holiday, is_workday and the weather class of each (naive local) hour's date."""
    dates = hours.dt.normalize()
    out = pd.DataFrame(index=hours.index)
    weekday = hours.dt.dayofweek < 5
    if calendar.empty:
        out["is_holiday"] = 0
        out["is_workday"] = weekday.astype(int)
        out["weather"] = 0
        return out
    cal = calendar.assign(date=pd.to_datetime(calendar["date"])).drop_duplicates("date").set_index("date")
    out["is_holiday"] = dates.map(cal["is_holiday"].astype(int)).fillna(0).astype(int)
    out["is_workday"] = dates.map(cal["is_workday"].astype(int)).fillna(weekday.astype(int)).astype(int)
    out["weather"] = dates.map(cal["weather"].map(WEATHER_CODES)).fillna(0).astype(int)
    return out


def rhythm_day(weekday: np.ndarray, is_holiday: np.ndarray, is_workday: np.ndarray) -> np.ndarray:
    """The weekday (0 = Monday) whose shopping rhythm each date follows.

    A day off shops like a Saturday (a holiday on a Friday has no Friday-afternoon peak), and a
    调休 workday on a weekend like a Monday; other days follow their own weekday. The model and
    the censoring imputation read rhythms by this day, not by the bare weekday.
    """
    off = (is_holiday == 1) | ((is_workday == 0) & (weekday < 5))
    makeup = (is_workday == 1) & (weekday >= 5)
    return np.where(off, 5, np.where(makeup, 0, weekday)).astype(int)


def _naive_local(values: pd.Series, tz: str) -> pd.Series:
    """ISO timestamps with offsets (or aware datetimes) as naive local times."""
    stamps = pd.to_datetime(values, utc=True, format="ISO8601")
    return stamps.dt.tz_convert(tz).dt.tz_localize(None)


def promotion_features(frame: pd.DataFrame, promotions: pd.DataFrame, tz: str) -> pd.DataFrame:
    """blind_box (the hour is inside a blind-box slot for the series' community) and discount
    (the largest price cut on the series' SKU there), from the announced promotions."""
    out = pd.DataFrame({"blind_box": np.zeros(len(frame), dtype=int), "discount": np.zeros(len(frame))}, index=frame.index)
    if promotions.empty:
        return out
    promos = promotions.copy()
    promos["start"] = _naive_local(promos["starts_at"], tz)
    promos["end"] = _naive_local(promos["ends_at"], tz)
    ds = frame["ds"].to_numpy()
    community = frame["community_id"].to_numpy()
    sku = frame["sku"].to_numpy()
    blind = out["blind_box"].to_numpy().copy()
    discount = out["discount"].to_numpy().copy()
    for p in promos.itertuples(index=False):
        # The hour overlaps the promotion when it starts before the promotion ends and ends after it starts.
        hit = (ds < np.datetime64(p.end)) & (ds + np.timedelta64(1, "h") > np.datetime64(p.start))
        if p.community_id is not None and not (isinstance(p.community_id, float) and np.isnan(p.community_id)):
            hit &= community == p.community_id
        if p.kind == "blind_box":
            blind[hit] = 1
        else:
            if p.sku is not None and not (isinstance(p.sku, float) and np.isnan(p.sku)):
                hit &= sku == p.sku
            discount[hit] = np.maximum(discount[hit], float(p.discount or 0.0))
    out["blind_box"] = blind
    out["discount"] = discount
    return out


def availability(frame: pd.DataFrame, skus: pd.DataFrame) -> np.ndarray:
    """1 when the SKU is on sale that day (launched, and inside its season), else 0."""
    if skus.empty:
        return np.ones(len(frame), dtype=int)
    by_sku = skus.set_index("sku")
    day = frame["ds"].dt.normalize()
    ok = np.ones(len(frame), dtype=bool)
    for column, after in (("launched_on", True), ("available_from", True), ("available_until", False)):
        if column not in by_sku:
            continue
        bound = pd.to_datetime(frame["sku"].map(by_sku[column]), errors="coerce")
        known = bound.notna().to_numpy()
        cmp = (day >= bound) if after else (day <= bound)
        ok &= ~known | cmp.fillna(False).to_numpy()
    return ok.astype(int)


def add_features(frame: pd.DataFrame, ref: Reference, tz: str) -> pd.DataFrame:
    """The frame with every exogenous column (static and hourly) the model reads."""
    out = frame.reset_index(drop=True)
    out = out.join(calendar_features(out["ds"], ref.calendar))
    out["rhythm_day"] = rhythm_day(out["ds"].dt.dayofweek.to_numpy(), out["is_holiday"].to_numpy(), out["is_workday"].to_numpy())
    out["rhythm_hour"] = out["rhythm_day"] * 24 + out["ds"].dt.hour
    out = out.join(promotion_features(out, ref.promotions, tz))
    statics = static_features(out, ref).drop(columns=["community_id", "sku"])
    out = out.merge(statics, on="unique_id", how="left")
    out["price"] = out["list_price"] * (1.0 - out["discount"])
    out["available"] = availability(out, ref.skus)
    return out


def future_hours(series: pd.DataFrame, origin: pd.Timestamp, hours: int) -> pd.DataFrame:
    """The ``hours`` hours from ``origin`` for each series (unique_id, community_id, sku, ds)."""
    ids = series[["unique_id", "community_id", "sku"]].drop_duplicates("unique_id")
    grid = pd.date_range(origin, periods=hours, freq="h")
    out = ids.loc[ids.index.repeat(hours)].reset_index(drop=True)
    out["ds"] = np.tile(grid.to_numpy(), len(ids))
    return out
