"""The forecast frame: one row per community × SKU × local hour, with units sold and censoring.

Demand is modelled per series ``unique_id = community_id + "/" + sku`` at the hourly grain the
front warehouse is stocked at (the M5 approach: sparse hourly series pooled into one model).
A series is continuous from its first hour of activity to the end of the data: an hour with
no sale is a real zero, unless the SKU was sold out in it (``censored``), when the sale says
only that demand was at least what sold.

Hours are naive local hours in the business time zone: the calendar, promotions and the
Friday peak are local, and a naive clock has no daylight-saving gaps (the default business
zone has none anyway) for the hourly frequency of mlforecast and statsforecast.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: Columns every frame carries; exogenous features are added by :mod:`lastmile.forecast.features`.
FRAME_COLUMNS = ("unique_id", "community_id", "sku", "ds", "y", "censored")

SEPARATOR = "/"


def series_id(community_id: str, sku: str) -> str:
    """The forecast series of one SKU in one community."""
    return f"{community_id}{SEPARATOR}{sku}"


def split_series_id(ids: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(community_id, sku) of each series id."""
    parts = ids.str.split(SEPARATOR, n=1, expand=True)
    return parts[0], parts[1]


def hourly_sales_sql(has_stock_fact: bool, tz: str) -> str:
    """Units sold per community, SKU and local hour.

    With ``fct_stock_hourly`` (the inventory fact) the censoring flag comes from the sold-out
    signal; without it (a warehouse built before inventory events) every hour counts as
    uncensored and the sales are read from the order lines.
    """
    # The local hour travels as text: the client hands DateTime values back as naive UTC
    # whatever their zone, which would shift every hour off the local calendar and the truth.
    if has_stock_fact:
        return ("SELECT community_id, sku, toString(toDateTime(hour, {tz:String})) AS hour_local, toFloat64(sum(units_sold)) AS y, "
                "toUInt8(max(censored)) AS censored FROM fct_stock_hourly GROUP BY community_id, sku, hour_local")
    return ("SELECT community_id, sku, toString(toStartOfHour(toDateTime(ordered_at, {tz:String}))) AS hour_local, "
            "toFloat64(sum(qty)) AS y, toUInt8(0) AS censored FROM fct_order_lines GROUP BY community_id, sku, hour_local")


def load_hourly_sales(warehouse: Any, tz: str) -> tuple[pd.DataFrame, str]:
    """Hourly sales from the warehouse and the table they came from."""
    tables = set(warehouse.tables())
    if "fct_order_lines" not in tables and "fct_stock_hourly" not in tables:
        raise FileNotFoundError("no sales in the warehouse (fct_order_lines is missing); run `lastmile run --through transform` first")
    source = "fct_stock_hourly" if "fct_stock_hourly" in tables else "fct_order_lines"
    result = warehouse.query(hourly_sales_sql(source == "fct_stock_hourly", tz), parameters={"tz": tz})
    sales = pd.DataFrame(result.result_rows, columns=["community_id", "sku", "ds", "y", "censored"])
    if sales.empty:
        raise ValueError(f"{source} has no rows: nothing to forecast from")
    sales["ds"] = pd.to_datetime(sales["ds"], format="%Y-%m-%d %H:%M:%S")
    sales["censored"] = sales["censored"].astype(bool)
    return sales, source


def complete_hours(sales: pd.DataFrame, end: pd.Timestamp | None = None, start: pd.Timestamp | None = None) -> pd.DataFrame:
    """Every hour of every series from its first active day to ``end`` (exclusive).

    ``sales`` has community_id, sku, ds (naive local hour), y and censored, only for hours
    with activity. Missing hours become y = 0, uncensored. A series starts at midnight of its
    first active day (or ``start``), so a SKU launched mid-window is not padded with zeros
    from before it existed.
    """
    sales = sales.copy()
    sales["ds"] = pd.to_datetime(sales["ds"]).dt.floor("h")
    sales = sales.groupby(["community_id", "sku", "ds"], as_index=False).agg(y=("y", "sum"), censored=("censored", "max"))
    last = end if end is not None else sales["ds"].max().floor("D") + pd.Timedelta(days=1)
    firsts = sales.groupby(["community_id", "sku"])["ds"].min().dt.floor("D")
    if start is not None:
        firsts = firsts.clip(lower=start)
    pieces = []
    for (community, sku), first in firsts.items():
        hours = pd.date_range(first, last, freq="h", inclusive="left")
        pieces.append(pd.DataFrame({"community_id": community, "sku": sku, "ds": hours}))
    grid = pd.concat(pieces, ignore_index=True)
    frame = grid.merge(sales, on=["community_id", "sku", "ds"], how="left")
    frame["y"] = frame["y"].fillna(0.0).astype(float)
    frame["censored"] = frame["censored"].astype("boolean").fillna(False).astype(bool)
    frame.insert(0, "unique_id", frame["community_id"] + SEPARATOR + frame["sku"])
    return frame.sort_values(["unique_id", "ds"], ignore_index=True)


#: Weight, in days of the level it is mixed into, of a coarser hourly profile: each series'
#: profile of a day type leans on all series' profile of that day type, which leans on all
#: series' profile of any day (a thin series' profile leans on everyone's).
PROFILE_PRIOR_DAYS = 0.1
#: Prior weight, in days, of a series' typical day against what a censored day sold before
#: it sold out: small, because the days that sell out are the busy ones (a strong prior pulls
#: them towards an ordinary day and under-states the demand a stock-out turned away), but not
#: nil, because a day that sold out within its first open hours says little by itself.
DAY_PRIOR = 0.1
#: Half-life, in days, of a day's weight in the profiles and the typical day: the hours a
#: SKU's buyers shop in drift (a growing group of late-evening impulse buyers), so recent
#: weeks tell the shape of a sold-out evening better than the first ones.
HALF_LIFE_DAYS = 4.0
#: Smallest level (units a day) a profile's prior weight is taken from.
PRIOR_FLOOR = 1e-6
#: Rounds of the profile / day-level estimation (it settles within a few).
ROUNDS = 8
#: Share of the hour a SKU sells out in that is left after the stock-out, on average (the
#: moment is uniform over the hour as far as hourly data can tell).
RUN_OUT_HOUR_LEFT = 0.5
#: Day types a profile is kept for: the weekday whose rhythm the day follows (0 = Monday).
DAY_TYPES = 7


def impute_censored(frame: pd.DataFrame, day_type: np.ndarray | None = None, seed: int = 0) -> pd.DataFrame:
    """Replace what a sold-out hour recorded by an estimate of what was wanted in it.

    A censored hour's sale is a lower bound on demand. Read as demand it would teach the model
    that a SKU sells least exactly when it sells best; dropped, it would leave the model only
    the days that did not sell out, the quiet ones. So a censored hour's demand is its day's
    level times its hour's share of the day:

    * **The hourly profile** of each series and day type (``day_type``: the weekday whose rhythm
      the date follows, see :func:`lastmile.forecast.features.rhythm_day`; the weekday when not
      given) is estimated from every hour that did not sell out, on every day, relative to that
      day's level: a busy day's morning and a quiet day's evening both count, so the evening
      share is not read from the quiet days alone. Days weigh by recency
      (:data:`HALF_LIFE_DAYS`), and each series' profile is shrunk towards all series' profile
      of the same day type (:data:`PROFILE_PRIOR_DAYS`).
    * **The day's level** is the Poisson-gamma posterior mean ``(DAY_PRIOR × typical day + sold
      while open) / (DAY_PRIOR + the open hours' share)``: a day that sold 10 units by 14:00,
      when that weekday has sold half its units by 14:00, wanted about 20. The typical day is the
      recency-weighted mean level of the series' days of that type.

    Profiles and levels are estimated in turn (EM over the missing hours, :data:`ROUNDS`). Each
    censored hour then gets a Poisson draw around its expected demand (a draw, not the mean, so
    the quantile models see demand's spread), never less than what it sold; the hour it sold
    out in keeps what it sold plus a draw for the part of the hour left after the stock-out (at
    least a whole hour's draw).

    The frame keeps ``y_sold`` (what sold); ``y`` is the demand the model learns from and its
    lags read. Rows must be sorted by series and hour (as :func:`complete_hours` returns them).
    """
    out = frame.copy()
    out["y_sold"] = out["y"]
    if not out["censored"].any():
        return out
    hour = out["ds"].dt.hour.to_numpy()
    kind = out["ds"].dt.dayofweek.to_numpy() if day_type is None else np.asarray(day_type, dtype=int)
    day = out["ds"].dt.floor("D")
    censored = out["censored"].to_numpy(dtype=bool)
    is_open = ~censored
    sold = out["y"].to_numpy(dtype=float)
    age_days = (day.max() - day).dt.days.to_numpy()
    weight = 0.5 ** (age_days / HALF_LIFE_DAYS)
    series = pd.factorize(out["unique_id"])[0]
    series_day = pd.factorize(pd.MultiIndex.from_arrays([series, day]))[0]
    n_series, n_days = series.max() + 1, series_day.max() + 1
    profile_key = (series * DAY_TYPES + kind) * 24 + hour
    pooled_key = kind * 24 + hour
    # Per series-day: its series, day type, weight, what sold while open, and what sold in all.
    of_day = np.zeros(n_days, dtype=int)
    of_day[series_day] = series * DAY_TYPES + kind
    day_series = of_day // DAY_TYPES
    day_weight = np.zeros(n_days)
    day_weight[series_day] = weight
    sold_open = np.bincount(series_day, weights=np.where(is_open, sold, 0.0), minlength=n_days)
    day_sold = np.bincount(series_day, weights=sold, minlength=n_days)
    day_censored = np.bincount(series_day, weights=censored, minlength=n_days) > 0

    def normalised(rate: np.ndarray) -> np.ndarray:
        rate = rate.reshape(-1, 24)
        return (rate / np.maximum(rate.sum(axis=1, keepdims=True), 1e-12)).ravel()

    # Start from the pooled profile of the days that did not sell out: a sold-out day's hours
    # never seen open would otherwise leave its level free to settle too low.
    clean = ~day_censored[series_day]
    start = normalised(np.bincount(pooled_key, weights=np.where(clean, weight * sold, 0.0), minlength=DAY_TYPES * 24)
                       + 1e-9)[pooled_key]
    start_open = np.bincount(series_day, weights=np.where(is_open, start, 0.0), minlength=n_days)
    level = np.where(day_censored, sold_open / np.maximum(start_open, 0.05), day_sold)
    for _ in range(ROUNDS):
        at_level = level[series_day]
        open_weight = np.where(is_open, weight, 0.0)
        weighted_sold, weighted_level = open_weight * sold, open_weight * at_level
        # Three tiers, each shrunk towards the next by PROFILE_PRIOR_DAYS of its own level: the
        # series' profile of the day type, all series' profile of that day type, all series'
        # profile of any day (a day type whose evenings always sold out still gets an evening).
        mean_level = float(np.sum(day_weight * level) / max(np.sum(day_weight), 1e-12))
        any_day = normalised(np.bincount(hour, weights=weighted_sold, minlength=24)
                             / np.maximum(np.bincount(hour, weights=weighted_level, minlength=24), 1e-12))
        # (A floor on the prior's weight: a series or a window with no sales at all still gets
        # the coarser profile rather than a 0/0.)
        prior_weight = PROFILE_PRIOR_DAYS * max(mean_level, PRIOR_FLOOR)
        pooled = normalised((np.bincount(pooled_key, weights=weighted_sold, minlength=DAY_TYPES * 24) + prior_weight * np.tile(any_day, DAY_TYPES))
                            / (np.bincount(pooled_key, weights=weighted_level, minlength=DAY_TYPES * 24) + prior_weight))
        series_level = (np.bincount(day_series, weights=day_weight * level, minlength=n_series)
                        / np.maximum(np.bincount(day_series, weights=day_weight, minlength=n_series), 1e-12))
        own_prior = PROFILE_PRIOR_DAYS * np.repeat(np.maximum(series_level, PRIOR_FLOOR), DAY_TYPES * 24)
        own_sold = np.bincount(profile_key, weights=weighted_sold, minlength=n_series * DAY_TYPES * 24)
        own_level = np.bincount(profile_key, weights=weighted_level, minlength=n_series * DAY_TYPES * 24)
        share = normalised((own_sold + own_prior * np.tile(pooled, n_series)) / (own_level + own_prior))[profile_key]
        open_share = np.bincount(series_day, weights=np.where(is_open, share, 0.0), minlength=n_days)
        # The typical day pools what sold while open over the share of the day that was open
        # (a ratio of sums): averaging each censored day's own estimate instead would let the
        # days that sold out within an hour of opening, whose estimates are the noisiest, pull
        # it up.
        typical = (np.bincount(of_day, weights=day_weight * sold_open, minlength=n_series * DAY_TYPES)
                   / np.maximum(np.bincount(of_day, weights=day_weight * open_share, minlength=n_series * DAY_TYPES), 1e-12))
        estimate = (DAY_PRIOR * typical[of_day] + sold_open) / (DAY_PRIOR + open_share)
        level = np.where(day_censored, estimate, day_sold)
    expected = np.clip(level[series_day] * share, 0, None)
    # The hour the SKU sold out in sold what it had and then turned the rest of the hour away:
    # its demand is what sold plus the demand of the part of the hour left (half, on average).
    same_series = np.r_[False, series[1:] == series[:-1]]
    sold_out_in = censored & ~(np.r_[False, censored[:-1]] & same_series)
    rng = np.random.default_rng(seed)
    drawn = rng.poisson(expected).astype(float)
    after = rng.poisson(RUN_OUT_HOUR_LEFT * expected).astype(float)
    out["y"] = np.where(sold_out_in, np.maximum(sold + after, drawn), np.where(censored, np.maximum(sold, drawn), sold))
    return out
