"""Forecast accuracy, as the M5 competition defined it, from utilsforecast's losses.

* **RMSSE** per series: the root mean squared error of the forecast divided by the root mean
  squared one-step change of the series' own history (M5's in-sample one-step naive scale;
  scale-free, so a slow and a fast mover count alike); averaged over the backtest's origins.
* **WRMSSE** over the hierarchy (M5's measure): the community × SKU series are summed into
  every level of :data:`LEVELS` (total, per community, per category, community × category,
  per SKU, community × SKU); at each level RMSSE is weighted by each series' share of revenue
  (units × list price) over the last 28 days of history, and WRMSSE is the mean over the
  levels, each level counting equally. A forecaster is scored on an aggregate by the sum of
  its bottom forecasts (M5's bottom-up benchmarks): a forecast that gets the level of a whole
  community or category wrong pays for it even when single hours are mostly noise.
* **bottom-level WRMSSE**: the same at the community × SKU level only.
* **bias**: total forecast minus total actual, as a share of actual (> 0: over-forecasting).
* **pinball loss** of P50 and P90, and **P90 coverage**: the share of hours whose actual
  demand is at or below P90 (0.9 for a calibrated P90).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Days of history whose revenue weighs a series in WRMSSE (M5: the last 28 days).
WEIGHT_DAYS = 28

#: The hierarchy WRMSSE averages over: M5's twelve levels (total, state, store, category,
#: department, item and their crossings) adapted to community / category / SKU. Each level
#: names the attributes whose combinations are its series; the last is the bottom level.
LEVELS: dict[str, tuple[str, ...]] = {
    "total": (), "community": ("community_id",), "category": ("category",),
    "community × category": ("community_id", "category"), "sku": ("sku",), "community × sku": ("community_id", "sku")}
BOTTOM = "community × sku"


@dataclass(frozen=True)
class Scores:
    """The accuracy of one forecaster over a backtest."""

    wrmsse: float  # over the hierarchy (the mean of the levels)
    bias: float
    p50_pinball: float | None = None
    p90_pinball: float | None = None
    p90_coverage: float | None = None
    levels: dict[str, float] = field(default_factory=dict)  # WRMSSE per level of LEVELS

    @property
    def wrmsse_bottom(self) -> float:
        """WRMSSE of the community × SKU series alone."""
        return self.levels.get(BOTTOM, self.wrmsse)

    def as_dict(self) -> dict[str, float | None | dict[str, float]]:
        out: dict[str, float | None | dict[str, float]] = {
            k: (None if v is None else round(float(v), 4)) for k, v in self.__dict__.items() if k != "levels"}
        out["wrmsse_bottom"] = round(self.wrmsse_bottom, 4)
        out["levels"] = {k: round(v, 4) for k, v in self.levels.items()}
        return out


def revenue(history: pd.DataFrame, prices: pd.Series, days: int = WEIGHT_DAYS) -> pd.Series:
    """Each series' revenue (units × list price) over the last ``days`` days of ``history``
    (unique_id, ds, y); ``prices`` is the list price per unique_id."""
    recent = history[history["ds"] >= history["ds"].max() - pd.Timedelta(days=days)]
    units = recent.groupby("unique_id")["y"].sum()
    return units * prices.reindex(units.index).fillna(0.0)


def revenue_weights(history: pd.DataFrame, prices: pd.Series, days: int = WEIGHT_DAYS) -> pd.Series:
    """Each series' share of revenue over the last ``days`` days of ``history`` (unique_id, ds, y);
    ``prices`` is the list price per unique_id."""
    earned = revenue(history, prices, days)
    total = earned.sum()
    return earned / total if total > 0 else earned


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


def level_ids(series: pd.DataFrame, level: str) -> pd.Series:
    """The series of ``level`` each bottom series (``series``: one row per unique_id with the
    attributes of :data:`LEVELS`) adds into, indexed by unique_id."""
    keys = LEVELS[level]
    indexed = series.set_index("unique_id")
    if not keys:
        return pd.Series("total", index=indexed.index)
    ids = indexed[keys[0]].astype(str)
    for key in keys[1:]:
        ids = ids + "/" + indexed[key].astype(str)
    return ids


def wrmsse_by_level(forecasts: pd.DataFrame, models: list[str], history: pd.DataFrame, earned: pd.Series,
                    series: pd.DataFrame, target: str = "actual") -> dict[str, dict[str, float]]:
    """WRMSSE of each of ``models`` at every level of :data:`LEVELS`: {model: {level: value}}.

    ``forecasts`` holds the bottom series' forecasts (unique_id, ds, cutoff, target, models),
    ``history`` their past (unique_id, ds, y: the RMSSE scale), ``earned`` their revenue (the
    weights) and ``series`` their community_id, category and sku. An aggregate's forecast,
    actual, history and revenue are the sums of its bottom series'.
    """
    out: dict[str, dict[str, float]] = {m: {} for m in models}
    for level in LEVELS:
        ids = level_ids(series, level)
        fc = forecasts.assign(unique_id=forecasts["unique_id"].map(ids))
        fc = fc.groupby(["unique_id", "ds", "cutoff"], as_index=False)[[target, *models]].sum()
        hist = history.assign(unique_id=history["unique_id"].map(ids)).groupby(["unique_id", "ds"], as_index=False)["y"].sum()
        level_revenue = earned.groupby(earned.index.map(ids)).sum()
        weights = level_revenue / level_revenue.sum() if level_revenue.sum() > 0 else level_revenue
        for m in models:
            out[m][level] = wrmsse(fc, m, hist, weights, target)
    return out


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


def score(forecasts: pd.DataFrame, model: str, levels: dict[str, float], target: str = "actual",
          quantiles: bool = False) -> Scores:
    """Every metric of one forecaster: ``model`` is its point-forecast column, ``levels`` its
    WRMSSE per level (:func:`wrmsse_by_level`); the hierarchy's WRMSSE is their mean."""
    actual = forecasts[target]
    overall = float(np.mean(list(levels.values())))
    if not quantiles:
        return Scores(wrmsse=overall, bias=relative_bias(actual, forecasts[model]), levels=dict(levels))
    return Scores(wrmsse=overall, bias=relative_bias(actual, forecasts[model]),
                  p50_pinball=pinball(actual, forecasts["p50"], 0.5), p90_pinball=pinball(actual, forecasts["p90"], 0.9),
                  p90_coverage=coverage(actual, forecasts["p90"]), levels=dict(levels))
