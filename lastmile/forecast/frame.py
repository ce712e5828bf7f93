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


#: Pseudo-units of the pooled hourly profile mixed into each series' own (shrinks a thin
#: series' profile towards everyone's), and the prior weight, in days, of a series' typical day
#: against what a censored day sold before it sold out.
PROFILE_PRIOR_UNITS = 20.0
DAY_PRIOR = 0.1
#: Rounds of re-estimating a series' typical day over all its days (it settles within a few).
TYPICAL_DAY_ROUNDS = 4
#: Share of the hour a SKU sells out in that is left after the stock-out, on average (the
#: moment is uniform over the hour as far as hourly data can tell).
RUN_OUT_HOUR_LEFT = 0.5


def impute_censored(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Replace what a sold-out hour recorded by an estimate of what was wanted in it.

    A censored hour's sale is a lower bound on demand. Read as demand it would teach the model
    that a SKU sells least exactly when it sells best; dropped, it would leave the model only
    the days that did not sell out, the quiet ones. So the demand of the day is estimated from
    its own uncensored hours: a day that sold 10 units by 14:00, when a usual day has sold half
    its units by 14:00, wanted about 20. The day level is the Poisson-gamma posterior mean
    ``(DAY_PRIOR × typical day + sold before) / (DAY_PRIOR + share of the day uncensored)``,
    where the share comes from the series' hourly profile on days without a stock-out (workdays
    and weekends apart, shrunk towards all series' profile). Each censored hour then gets a
    Poisson draw around level × its share of the day (a draw, not the mean, so the quantile
    models see demand's spread), never less than what it sold; the hour it sold out in keeps
    what it sold plus a draw for the part of the hour left after the stock-out (at least a
    whole hour's draw).

    The frame keeps ``y_sold`` (what sold); ``y`` is the demand the model learns from and its
    lags read.
    """
    out = frame.copy()
    out["y_sold"] = out["y"]
    if not out["censored"].any():
        return out
    hour = out["ds"].dt.hour.to_numpy()
    weekend = (out["ds"].dt.dayofweek >= 5).to_numpy()
    day = out["ds"].dt.floor("D")
    censored_day = out["censored"].groupby([out["unique_id"], day]).transform("any").to_numpy()
    clean = out[~censored_day]
    # Hourly profile: each series' share of its day per hour, shrunk towards the pooled one.
    keys = pd.DataFrame({"unique_id": out["unique_id"], "hour": hour, "weekend": weekend})
    clean_keys = keys[~censored_day]
    pooled = clean["y"].groupby([clean_keys["weekend"], clean_keys["hour"]]).sum()
    pooled = pooled / pooled.groupby(level=0).transform("sum")
    own = clean["y"].groupby([clean_keys["unique_id"], clean_keys["weekend"], clean_keys["hour"]]).sum()
    own_total = own.groupby(level=[0, 1]).transform("sum")
    prior = pooled.reindex(pd.MultiIndex.from_arrays([own.index.get_level_values(1), own.index.get_level_values(2)])).to_numpy()
    share_own = (own + PROFILE_PRIOR_UNITS * prior) / (own_total + PROFILE_PRIOR_UNITS)
    share = pd.Series(share_own.reindex(pd.MultiIndex.from_frame(keys)).to_numpy(), index=out.index)
    share = share.fillna(pd.Series(pooled.reindex(pd.MultiIndex.from_arrays([weekend, hour])).to_numpy(), index=out.index))
    share = share.fillna(1 / 24)
    # Each censored day's level from what it sold in its uncensored hours, shrunk towards the
    # series' typical day. The days that sell out are the busy ones, so a typical day read from
    # the days without a stock-out alone is too low: it starts there and is then re-estimated
    # over all days, the censored ones at their current level, until it settles.
    open_share = share.where(~out["censored"], 0.0).groupby([out["unique_id"], day]).transform("sum")
    sold_open = out["y"].where(~out["censored"], 0.0).groupby([out["unique_id"], day]).transform("sum")
    day_total = out["y"].groupby([out["unique_id"], day]).transform("sum")
    first_hour = ~pd.Series(out["unique_id"].to_numpy() + day.astype(str).to_numpy(), index=out.index).duplicated()
    day_keys = pd.MultiIndex.from_arrays([out["unique_id"], weekend])
    daily = clean.groupby([clean_keys["unique_id"], clean_keys["weekend"], day[~censored_day]])["y"].sum()
    typical = daily.groupby(level=[0, 1]).mean()
    fallback = out.groupby("unique_id")["y"].transform("mean") * 24
    for _ in range(TYPICAL_DAY_ROUNDS):
        typical_row = pd.Series(typical.reindex(day_keys).to_numpy(), index=out.index).fillna(fallback)
        level = (DAY_PRIOR * typical_row + sold_open) / (DAY_PRIOR + open_share)
        day_level = level.where(pd.Series(censored_day, index=out.index), day_total)
        typical = day_level[first_hour].groupby([out["unique_id"][first_hour], weekend[first_hour.to_numpy()]]).mean()
    expected = np.clip((level * share).to_numpy(), 0, None)
    # The hour the SKU sold out in sold what it had and then turned the rest of the hour away:
    # its demand is what sold plus the demand of the part of the hour left (half, on average).
    censored = out["censored"].to_numpy()
    sold_out_in = censored & ~out.groupby("unique_id")["censored"].shift(1, fill_value=False).to_numpy(dtype=bool)
    rng = np.random.default_rng(seed)
    drawn = rng.poisson(expected).astype(float)
    after = rng.poisson(RUN_OUT_HOUR_LEFT * expected).astype(float)
    sold = out["y"].to_numpy()
    wanted = np.maximum(sold, drawn)
    out["y"] = np.where(sold_out_in, np.maximum(sold + after, drawn), np.where(censored, wanted, sold))
    return out
