"""Forecast accuracy, as the M5 competition defined it, from utilsforecast's losses.

* **RMSSE** per series: the root mean squared error of the forecast divided by the root mean
  squared one-step change of the series' own history (scale-free, so a slow and a fast
  mover count alike); averaged over the backtest's origins.
* **WRMSSE**: RMSSE weighted by each series' share of revenue (units × list price) over the
  last 28 days of history: the series that carry the business count most.
* **bias**: total forecast minus total actual, as a share of actual (> 0: over-forecasting).
* **pinball loss** of P50 and P90, and **P90 coverage**: the share of hours whose actual
  demand is at or below P90 (0.9 for a calibrated P90).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Days of history whose revenue weighs a series in WRMSSE (M5: the last 28 days).
WEIGHT_DAYS = 28


@dataclass(frozen=True)
class Scores:
    """The accuracy of one forecaster over a backtest."""

    wrmsse: float
    bias: float
    p50_pinball: float | None = None
    p90_pinball: float | None = None
    p90_coverage: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {k: (None if v is None else round(float(v), 4)) for k, v in self.__dict__.items()}


def revenue_weights(history: pd.DataFrame, prices: pd.Series, days: int = WEIGHT_DAYS) -> pd.Series:
    """Each series' share of revenue over the last ``days`` days of ``history`` (unique_id, ds, y);
    ``prices`` is the list price per unique_id."""
    recent = history[history["ds"] >= history["ds"].max() - pd.Timedelta(days=days)]
    units = recent.groupby("unique_id")["y"].sum()
    revenue = units * prices.reindex(units.index).fillna(0.0)
    total = revenue.sum()
    return revenue / total if total > 0 else revenue


def rmsse_per_series(forecasts: pd.DataFrame, model: str, history: pd.DataFrame, target: str = "actual") -> pd.Series:
    """RMSSE of ``model`` per series, averaged over cutoffs (utilsforecast.losses.rmsse)."""
    from utilsforecast.losses import rmsse

    frame = forecasts[["unique_id", "ds", "cutoff", target, model]].rename(columns={target: "y"})
    scored = rmsse(frame, models=[model], seasonality=1, train_df=history[["unique_id", "ds", "y"]], cutoff_col="cutoff")
    values = scored.replace([np.inf, -np.inf], np.nan).dropna(subset=[model])
    return values.groupby("unique_id")[model].mean()


def wrmsse(forecasts: pd.DataFrame, model: str, history: pd.DataFrame, weights: pd.Series, target: str = "actual") -> float:
    """Revenue-weighted RMSSE over the series that have a scale (a history that ever changed)."""
    per_series = rmsse_per_series(forecasts, model, history, target)
    w = weights.reindex(per_series.index).fillna(0.0)
    return float((per_series * w).sum() / w.sum()) if w.sum() > 0 else float(per_series.mean())


def pinball(actual: pd.Series, predicted: pd.Series, q: float) -> float:
    """Mean pinball (quantile) loss of one quantile forecast (utilsforecast.losses.quantile_loss)."""
    from utilsforecast.losses import quantile_loss

    frame = pd.DataFrame({"unique_id": 0, "y": actual.to_numpy(), "f": predicted.to_numpy()})
    return float(quantile_loss(frame, models={"f": "f"}, q=q)["f"].iloc[0])


def relative_bias(actual: pd.Series, predicted: pd.Series) -> float:
    total = float(actual.sum())
    return float((predicted.sum() - total) / total) if total > 0 else float("nan")


def coverage(actual: pd.Series, upper: pd.Series) -> float:
    """Share of hours whose actual value is at or below the upper quantile."""
    return float((actual.to_numpy() <= upper.to_numpy() + 1e-9).mean())


def score(forecasts: pd.DataFrame, model: str, history: pd.DataFrame, weights: pd.Series, target: str = "actual",
          quantiles: bool = False) -> Scores:
    """Every metric of one forecaster: ``model`` is its point-forecast column."""
    actual = forecasts[target]
    if not quantiles:
        return Scores(wrmsse=wrmsse(forecasts, model, history, weights, target), bias=relative_bias(actual, forecasts[model]))
    return Scores(wrmsse=wrmsse(forecasts, model, history, weights, target), bias=relative_bias(actual, forecasts[model]),
                  p50_pinball=pinball(actual, forecasts["p50"], 0.5), p90_pinball=pinball(actual, forecasts["p90"], 0.9),
                  p90_coverage=coverage(actual, forecasts["p90"]))
