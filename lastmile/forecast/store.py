"""The warehouse table ``demand_forecast``: hourly P50 and P90 per community and SKU.

One row per community × SKU × hour: a ``ReplacingMergeTree`` versioned by ``made_at`` and
keyed on (community_id, sku, hour), so for each hour the newest forecast wins and re-running a
forecast for the same origin replaces its rows, never doubles them (read with ``FINAL`` or
``argMax(…, made_at)``). The backtest's forecasts are kept too, each with ``made_at`` = its
origin (the moment it stands for: only the hours before it were known), so
``fct_forecast_accuracy`` can compare them with what sold.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
import pandas as pd

from lastmile.forecast.frame import split_series_id

TABLE = "demand_forecast"


def table_sql(tz: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    community_id String COMMENT 'Community (its front warehouse is fw-<community_id>).',
    sku String COMMENT 'SKU.',
    hour DateTime('{tz}') COMMENT 'Start of the local hour forecast.',
    p50 Float64 COMMENT 'Median demand in units (P50).',
    p90 Float64 COMMENT 'Demand in units exceeded one hour in ten (P90).',
    mean Float64 COMMENT 'Expected demand in units (the point forecast accuracy is measured on).',
    origin DateTime('{tz}') COMMENT 'First hour of the forecast run: only hours before it were known.',
    method LowCardinality(String) COMMENT 'model (mlforecast + LightGBM) or cold_start (category and neighbours).',
    model_version String COMMENT 'The model definition (features, parameters, library versions).',
    made_at DateTime64(3, 'UTC') COMMENT 'When the forecast was made (for a backtest: its origin); the version.'
) ENGINE = ReplacingMergeTree(made_at) ORDER BY (community_id, sku, hour)
COMMENT 'Hourly demand forecast per community and SKU (lastmile forecast); newest made_at per hour wins.'"""


def ensure_table(warehouse: Any, tz: str) -> None:
    warehouse.command(table_sql(tz))


def _local_iso(values: pd.Series, tz: str) -> list[str]:
    return list(pd.to_datetime(values).dt.tz_localize(tz).map(lambda t: t.isoformat()))


def write(warehouse: Any, forecasts: pd.DataFrame, model_version: str, tz: str, made_at: datetime | None = None) -> int:
    """Insert forecasts (unique_id, ds, mean, p50, p90, origin, method); returns rows written.

    ``made_at`` defaults to now; a backtest passes none either and gets each row's origin.
    """
    if forecasts.empty:
        return 0
    ensure_table(warehouse, tz)
    community, sku = split_series_id(forecasts["unique_id"])
    if made_at is None:
        made = [t.astimezone(timezone.utc).isoformat() for t in pd.to_datetime(forecasts["origin"]).dt.tz_localize(tz)]
    else:
        made = [made_at.astimezone(timezone.utc).isoformat()] * len(forecasts)
    hours, origins = _local_iso(forecasts["ds"], tz), _local_iso(forecasts["origin"], tz)
    methods = forecasts["method"] if "method" in forecasts else pd.Series("model", index=forecasts.index)
    lines = [orjson.dumps({"community_id": c, "sku": s, "hour": h, "p50": round(float(p50), 4), "p90": round(float(p90), 4),
                           "mean": round(float(m), 4), "origin": o, "method": meth, "model_version": model_version, "made_at": ma})
             for c, s, h, p50, p90, m, o, meth, ma in zip(community, sku, hours, forecasts["p50"], forecasts["p90"],
                                                            forecasts["mean"], origins, methods, made)]
    written = 0
    for i in range(0, len(lines), 50_000):
        written += warehouse.insert_json_lines(TABLE, lines[i:i + 50_000])
    return written
