"""Rolling-origin backtest of the model against seasonal naive and AutoETS.

The last ``windows`` origins, one a day (step 24 h), each forecasting the next 72 hours; the
model and the baselines are fitted once on the history before the first origin and then
forecast from every origin with the history known by then (mlforecast's and statsforecast's
``cross_validation(refit=False)``), as a forecast retrained weekly would.

The forecasts are scored against the simulation's TRUE demand (``truth/demand_hourly.jsonl``:
what customers wanted, including what a stock-out turned away) when that file is there, and
against sales otherwise; the result says which. A model that does not beat seasonal naive is
reported as such, not hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lastmile.forecast import baselines, metrics, model
from lastmile.forecast.frame import series_id

#: Origins a backtest uses by default: the last two weeks, one a day, each with its 72 hours inside the data.
DEFAULT_WINDOWS = 12
STEP_HOURS = 24


class HistoryTooShort(ValueError):
    """The data does not reach back far enough for the backtest asked for."""


@dataclass
class BacktestResult:
    """Scores per forecaster, the ratios to the baselines, and what they were scored against."""

    target: str  # "true demand" or "sales"
    windows: int
    first_origin: str
    last_origin: str
    series: int
    scores: dict[str, metrics.Scores]
    seconds: dict[str, float] = field(default_factory=dict)
    #: The backtest's forecasts (unique_id, ds, cutoff, mean, p50, p90, baselines, actual): the replay reads them.
    forecasts: pd.DataFrame | None = field(default=None, repr=False)

    def ratio(self, baseline: str) -> float:
        """The model's WRMSSE (over the hierarchy) as a multiple of a baseline's."""
        return self.scores["model"].wrmsse / self.scores[baseline].wrmsse

    def ratio_bottom(self, baseline: str) -> float:
        """The same at the community × SKU level alone."""
        return self.scores["model"].wrmsse_bottom / self.scores[baseline].wrmsse_bottom

    @property
    def beats_seasonal_naive(self) -> bool:
        return self.ratio("SeasonalNaive") < 1.0

    def verdict(self) -> str:
        r_sn, r_ets = self.ratio("SeasonalNaive"), self.ratio("AutoETS")
        if not self.beats_seasonal_naive:
            return (f"the model does NOT beat seasonal naive (WRMSSE {r_sn:.2f}× seasonal naive's): "
                    "stock from last week's same hour until it does")
        return f"the model beats seasonal naive (WRMSSE {r_sn:.2f}×) and AutoETS ({r_ets:.2f}×)" if r_ets < 1 else \
            f"the model beats seasonal naive (WRMSSE {r_sn:.2f}×) but not AutoETS ({r_ets:.2f}×)"

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "windows": self.windows, "first_origin": self.first_origin,
                "last_origin": self.last_origin, "series": self.series,
                "scores": {k: v.as_dict() for k, v in self.scores.items()},
                "wrmsse_ratio_to_seasonal_naive": round(self.ratio("SeasonalNaive"), 4),
                "wrmsse_ratio_to_ets": round(self.ratio("AutoETS"), 4),
                "bottom_wrmsse_ratio_to_seasonal_naive": round(self.ratio_bottom("SeasonalNaive"), 4),
                "bottom_wrmsse_ratio_to_ets": round(self.ratio_bottom("AutoETS"), 4),
                "beats_seasonal_naive": self.beats_seasonal_naive, "verdict": self.verdict(), "seconds": self.seconds}

    def text(self) -> str:
        lines = [f"backtest: {self.windows} origins {self.first_origin} … {self.last_origin}, 72 h each, {self.series} series, "
                 f"scored against {self.target}"]
        for name, s in self.scores.items():
            extra = (f", P50 pinball {s.p50_pinball:.3f}, P90 pinball {s.p90_pinball:.3f}, P90 coverage {s.p90_coverage:.3f}"
                     if s.p90_coverage is not None else "")
            lines.append(f"  {name:<14} WRMSSE {s.wrmsse:.3f} (community × SKU alone {s.wrmsse_bottom:.3f}), "
                         f"bias {s.bias:+.1%}{extra}")
        lines.append(f"  community × SKU alone: {self.ratio_bottom('SeasonalNaive'):.2f}× seasonal naive, "
                     f"{self.ratio_bottom('AutoETS'):.2f}× AutoETS")
        lines.append("  " + self.verdict())
        return "\n".join(lines)


def load_truth(path: Path, tz: str) -> pd.DataFrame | None:
    """True hourly demand per series (unique_id, ds, demanded) from the simulator's truth file, if present."""
    if not path.exists():
        return None
    truth = pd.read_json(path, lines=True, dtype={"community_id": str, "sku": str})
    if truth.empty:
        return None
    stamps = pd.to_datetime(truth["hour"], utc=True, format="ISO8601").dt.tz_convert(tz).dt.tz_localize(None)
    out = pd.DataFrame({"unique_id": [series_id(c, s) for c, s in zip(truth["community_id"], truth["sku"])],
                        "ds": stamps, "demanded": truth["demanded"].astype(float)})
    return out.groupby(["unique_id", "ds"], as_index=False)["demanded"].sum()


def attach_actual(cv: pd.DataFrame, frame: pd.DataFrame, truth: pd.DataFrame | None) -> tuple[pd.DataFrame, str]:
    """The backtest forecasts with ``actual``: true demand (0 where the truth file has no row) or units sold."""
    if truth is not None:
        out = cv.merge(truth, on=["unique_id", "ds"], how="left")
        out["actual"] = out["demanded"].fillna(0.0)
        return out.drop(columns=["demanded"]), "true demand"
    sold = frame[["unique_id", "ds", "y_sold"]]
    out = cv.merge(sold, on=["unique_id", "ds"], how="left")
    out["actual"] = out["y_sold"].fillna(0.0)
    return out.drop(columns=["y_sold"]), "sales"


def run(frame: pd.DataFrame, truth: pd.DataFrame | None, windows: int = DEFAULT_WINDOWS,
        hours: int = model.HORIZON_HOURS) -> BacktestResult:
    """Backtest the model and the baselines on a featured, censoring-imputed frame."""
    import time

    needed = hours + STEP_HOURS * (windows - 1) + max(model.LAGS)
    span = int((frame["ds"].max() - frame["ds"].min()) / pd.Timedelta(hours=1)) + 1
    if span < needed:
        raise HistoryTooShort(f"a backtest of {windows} origins needs {needed} hours of history, the data has {span}; "
                         "use fewer --windows or simulate more weeks")
    # Series too young to exist at the first origin have nothing to be scored on: leave them out.
    first_origin = frame["ds"].max() + pd.Timedelta(hours=1) - pd.Timedelta(hours=hours + STEP_HOURS * (windows - 1))
    old = frame.groupby("unique_id")["ds"].min() < first_origin - pd.Timedelta(days=7)
    frame = frame[frame["unique_id"].isin(old[old].index)]
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    cv = model.cross_validate(frame, windows, hours, STEP_HOURS)
    seconds["model"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    # The baselines read the same history as the model: demand, with each sold-out hour's
    # demand imputed (fed the raw sales they would learn stock-outs as low demand and lose on
    # data rather than on method). They fit on the same four weeks the model learns from
    # (AutoETS's fitting time grows with the history).
    recent = frame[frame["ds"] >= first_origin - pd.Timedelta(hours=model.TRAIN_HOURS)]
    base = baselines.cross_validate(recent, windows, hours, STEP_HOURS)
    seconds["baselines"] = round(time.perf_counter() - start, 2)
    both = cv.merge(base.drop(columns=["y"]), on=["unique_id", "ds", "cutoff"], how="inner")
    if len(both) != len(cv):
        raise RuntimeError(f"the model's and the baselines' backtest hours differ ({len(cv)} vs {len(both)} matched)")
    scored, target = attach_actual(both, frame, truth)
    history = frame[frame["ds"] < first_origin]
    series = frame.drop_duplicates("unique_id").rename(columns={"category_code": "category"})
    earned = metrics.revenue(history[["unique_id", "ds", "y_sold"]].rename(columns={"y_sold": "y"}),
                             series.set_index("unique_id")["list_price"])
    levels = metrics.wrmsse_by_level(scored, ["mean", *baselines.BASELINES], history[["unique_id", "ds", "y"]], earned,
                                     series[["unique_id", "community_id", "category", "sku"]])
    scores = {"model": metrics.score(scored, "mean", levels["mean"], quantiles=True)}
    for name in baselines.BASELINES:
        scores[name] = metrics.score(scored, name, levels[name])
    cutoffs = sorted(scored["cutoff"].unique())
    origin = lambda c: (pd.Timestamp(c) + pd.Timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")  # noqa: E731 - cutoff = last hour known
    return BacktestResult(target=target, windows=len(cutoffs), first_origin=origin(cutoffs[0]), last_origin=origin(cutoffs[-1]),
                          series=int(scored["unique_id"].nunique()), scores=scores, seconds=seconds, forecasts=scored)
