"""The forecast frame: one row per community × SKU × local hour, with units sold and censoring.

Demand is modelled per series ``unique_id = community_id + "/" + sku`` at the hourly grain the
front warehouse is stocked at (the M5 approach: sparse hourly series pooled into one model).
A series is continuous from its first hour of activity to the end of the data: an hour with
no sale is a real zero, unless the SKU was sold out in it (``censored``), when the sale says
only that demand was at least what sold.

Hours are naive local hours in the business time zone: the calendar, promotions and the
Friday peak are local, and a naive clock has no daylight-saving gaps (Asia/Shanghai has none
anyway) for the hourly frequency of mlforecast and statsforecast.
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
    if has_stock_fact:
        return ("SELECT community_id, sku, toDateTime(hour, {tz:String}) AS hour_local, toFloat64(sum(units_sold)) AS y, "
                "toUInt8(max(censored)) AS censored FROM fct_stock_hourly GROUP BY community_id, sku, hour_local")
    return ("SELECT community_id, sku, toStartOfHour(toDateTime(ordered_at, {tz:String})) AS hour_local, "
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
    sales["ds"] = pd.to_datetime(sales["ds"]).dt.tz_localize(None) if getattr(sales["ds"].dt, "tz", None) else pd.to_datetime(sales["ds"])
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


def impute_censored(frame: pd.DataFrame) -> pd.DataFrame:
    """Replace what a sold-out hour recorded by what the series usually sells at that hour.

    A censored hour's sale is a lower bound on demand. Read as demand it would teach the
    model that the SKU sells little exactly when it sells best, and it would pull the lag and
    rolling-mean features down. The frame keeps ``y_sold`` (what sold) and sets ``y`` to the
    larger of the sale and the series' mean over its uncensored hours of the same hour of day
    and day type (workday or weekend): the lag features read that, and the model gives
    censored hours no weight as targets (:mod:`lastmile.forecast.model`).
    """
    out = frame.copy()
    out["y_sold"] = out["y"]
    if not out["censored"].any():
        return out
    weekend = out["ds"].dt.dayofweek >= 5
    keys = [out["unique_id"], out["ds"].dt.hour, weekend]
    uncensored = out["y"].where(~out["censored"])
    profile = uncensored.groupby(keys).transform("mean")
    fallback = uncensored.groupby(out["unique_id"]).transform("mean")
    typical = profile.fillna(fallback).fillna(0.0)
    out["y"] = np.where(out["censored"], np.maximum(out["y"], typical), out["y"])
    return out
