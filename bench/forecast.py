"""Benchmark: the demand forecast on 6,000 hourly series (20 communities × 300 SKUs, 12 weeks).

Generates the panel directly (no simulator run, so the figure is the forecast's own): each
series' hourly demand is Poisson around community size × SKU popularity × the daily curve ×
the weekday rhythm (Friday 16:00-18:00 peak, Wednesday afternoon lull), with the National Day
holidays, a Wednesday-afternoon blind box (×3 in its slot), price cuts and rain days in the
reference data the features read. A small operator's stocking cuts sales short: on about one
series-day in eight the SKU sells out at a random hour, and the rest of that day is censored
(its sales are what stock allowed; the true demand is kept for scoring).

Timed, in one process:

* ``fit_predict_s``: the frame's features, the three LightGBM models (mean, P50, P90) fitted
  on the last four weeks, and the 72-hour forecast of every series;
* reference: statsforecast ``SeasonalNaive`` (same hour last week) forecasting the same
  series 72 hours ahead in the same run; ``time_ratio_to_seasonal_naive`` = model / naive.

Then the rolling-origin backtest (``--windows`` origins a day apart, 72 h each) scores the
model, seasonal naive and AutoETS against the true demand: WRMSSE ratios over the
community / category / SKU hierarchy and at the community × SKU level alone, bias and P90
coverage.
With ``--replay`` the stocking replay (when installed) runs the plan from the backtest's
forecasts against the default policy on the same true demand (fill rate, spoilage ratio);
without it those fields are null. ``peak_rss_mb`` is the process's peak resident memory.

    python bench/forecast.py [--communities 20] [--skus 300] [--weeks 12] [--windows 3] [--replay]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lastmile.forecast import backtest, baselines, features, model, service  # noqa: E402
from lastmile.config import settings  # noqa: E402
from lastmile.forecast.features import Reference  # noqa: E402

TZ = settings().business_tz
START = pd.Timestamp("2026-08-10")  # a Monday; 12 weeks cross the National Day week
DAY_CURVE = np.array([0.02, 0.01, 0.01, 0.01, 0.02, 0.05, 0.3, 0.8, 1.2, 1.0, 0.9, 1.0, 1.1, 0.9, 0.7, 0.7, 0.9, 1.3,
                      1.6, 1.5, 1.2, 0.9, 0.5, 0.15])
WEEKDAY = np.array([1.0, 0.95, 0.9, 1.0, 1.15, 1.25, 1.2])
CATEGORIES = ("vegetables", "fruit", "meat", "seafood", "dairy", "bakery", "frozen_food", "snacks", "drinks", "ready_meal")


def reference(communities: list[str], skus: pd.DataFrame, weeks: int) -> Reference:
    days = pd.date_range(START, periods=weeks * 7, freq="D")
    holiday = (days >= "2026-10-01") & (days <= "2026-10-07")
    rng = np.random.default_rng(3)
    weather = np.where(rng.random(len(days)) < 0.12, "rain", "clear")
    calendar = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "holiday": np.where(holiday, "National Day", None),
                             "is_holiday": holiday, "is_workday": (days.dayofweek < 5) & ~holiday, "weather": weather})
    wednesdays = days[days.dayofweek == 2]
    promos = [{"promotion_id": f"bb-{d:%Y%m%d}", "kind": "blind_box", "sku": None, "community_id": None,
               "starts_at": f"{d:%Y-%m-%d}T14:00:00+08:00", "ends_at": f"{d:%Y-%m-%d}T17:00:00+08:00", "discount": 0.0}
              for d in wednesdays]
    for k, sku in enumerate(skus["sku"].iloc[::25]):
        d = days[(7 * k + 10) % len(days)]
        promos.append({"promotion_id": f"pc-{sku}", "kind": "price_cut", "sku": sku, "community_id": None,
                       "starts_at": f"{d:%Y-%m-%d}T00:00:00+08:00", "ends_at": f"{d + pd.Timedelta(days=3):%Y-%m-%d}T00:00:00+08:00",
                       "discount": 0.3})
    return Reference(skus=skus, calendar=calendar, promotions=pd.DataFrame(promos), distances=pd.DataFrame(),
                     communities=communities)


def panel(n_communities: int, n_skus: int, weeks: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, Reference]:
    """(sales frame with censoring, true demand, reference) for every series, hourly."""
    rng = np.random.default_rng(seed)
    communities = [f"C{i + 1:02d}" for i in range(n_communities)]
    skus = pd.DataFrame({"sku": [f"SK{i + 1:04d}" for i in range(n_skus)],
                         "category": [CATEGORIES[i % len(CATEGORIES)] for i in range(n_skus)],
                         "product_class": "chilled", "unit_price": np.round(rng.uniform(3, 60, n_skus), 1),
                         "shelf_life_days": rng.choice([1.5, 3.0, 4.0, 90.0], n_skus)})
    ref = reference(communities, skus, weeks)
    hours = pd.date_range(START, periods=weeks * 168, freq="h")
    shape = DAY_CURVE[hours.hour] * WEEKDAY[hours.dayofweek]
    shape = shape * np.where((hours.dayofweek == 4) & (hours.hour >= 16) & (hours.hour < 18), 1.8, 1.0)
    blind = (hours.dayofweek == 2) & (hours.hour >= 14) & (hours.hour < 17)
    shape = shape * np.where(blind, 3.0, np.where((hours.dayofweek == 2) & (hours.hour >= 13) & (hours.hour < 18), 0.6, 1.0))
    shape = shape * np.where((hours >= "2026-10-01") & (hours < "2026-10-08"), 1.3, 1.0)
    size = rng.lognormal(0, 0.3, n_communities)
    popularity = rng.lognormal(-1.6, 0.9, n_skus)
    rate = (size[:, None, None] * popularity[None, :, None] * shape[None, None, :]).reshape(-1, len(hours))
    demand = rng.poisson(rate).astype(float)
    # Sell-outs: on ~1 series-day in 8 the shelf empties at a random hour; later hours that day sell nothing.
    days = len(hours) // 24
    sold_out = rng.random((rate.shape[0], days)) < 0.125
    from_hour = rng.integers(10, 22, (rate.shape[0], days))
    hour_of_day = np.tile(np.arange(24), days)
    censored = np.repeat(sold_out, 24, axis=1) & (hour_of_day[None, :] >= np.repeat(from_hour, 24, axis=1))
    sold = np.where(censored, 0.0, demand)
    ids = [f"{c}/{s}" for c in communities for s in skus["sku"]]
    frame = pd.DataFrame({"unique_id": np.repeat(ids, len(hours)),
                          "community_id": np.repeat(np.repeat(communities, n_skus), len(hours)),
                          "sku": np.repeat(np.tile(skus["sku"].to_numpy(), n_communities), len(hours)),
                          "ds": np.tile(hours.to_numpy(), len(ids)), "y": sold.ravel(), "censored": censored.ravel()})
    truth = pd.DataFrame({"unique_id": frame["unique_id"], "ds": frame["ds"], "demanded": demand.ravel()})
    return frame, truth, ref


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--communities", type=int, default=20)
    parser.add_argument("--skus", type=int, default=300)
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--replay", action="store_true", help="Also replay the stocking plan against the default policy.")
    args = parser.parse_args()

    raw, truth, ref = panel(args.communities, args.skus, args.weeks, args.seed)
    series = raw["unique_id"].nunique()
    print(f"panel: {series:,} series × {args.weeks} weeks hourly = {len(raw):,} rows, "
          f"{raw['censored'].mean():.1%} of hours censored by sell-outs")

    start = time.perf_counter()
    frame = service.demand_history(raw, ref, TZ)
    origin = frame["ds"].max() + pd.Timedelta(hours=1)
    future = features.add_features(features.future_hours(frame, origin, model.HORIZON_HOURS), ref, TZ)
    _, ahead = model.fit_predict(frame, future)
    fit_predict_s = time.perf_counter() - start
    print(f"model: features + fit (mean, P50, P90 on the last {model.TRAIN_HOURS // 24} days) + 72 h forecast "
          f"of {ahead['unique_id'].nunique():,} series: {fit_predict_s:.1f} s")

    start = time.perf_counter()
    naive = baselines.forecast(frame.assign(y=frame["y_sold"]), models=("SeasonalNaive",))
    naive_s = time.perf_counter() - start
    assert len(naive) == len(ahead), (len(naive), len(ahead))
    print(f"reference: statsforecast SeasonalNaive (168 h) 72 h forecast of the same series: {naive_s:.2f} s; "
          f"time ratio {fit_predict_s / naive_s:.1f}")

    start = time.perf_counter()
    result = backtest.run(frame, truth, windows=args.windows)
    print(result.text())
    print(f"backtest: {time.perf_counter() - start:.1f} s ({result.seconds})")

    fill_rate = spoilage = None
    if args.replay:
        from lastmile.forecast.service import replay_available

        if replay_available():
            from lastmile.config import settings
            from lastmile.stocking.replay import configured_replay, delivery_window

            cfg = settings()
            days = delivery_window(result.forecasts, TZ)
            t = truth.merge(raw[["unique_id", "ds", "y"]], on=["unique_id", "ds"])
            t = t[t["demanded"] > 0]
            parts = t["unique_id"].str.split("/", n=1, expand=True)
            demand = pd.DataFrame({"community_id": parts[0], "sku": parts[1], "hour": t["ds"], "demanded": t["demanded"],
                                   "served": t["y"]})
            outcome = configured_replay(cfg, demand, result.forecasts, ref.skus, *days)
            print(outcome.text())
            fill_rate, spoilage = outcome.plan.fill_rate, outcome.spoilage_ratio
    print(json.dumps({
        "series": series,
        "fit_predict_s": round(fit_predict_s, 2),
        "time_ratio_to_seasonal_naive": round(fit_predict_s / naive_s, 2),
        "wrmsse_ratio_to_seasonal_naive": round(result.ratio("SeasonalNaive"), 4),
        "wrmsse_ratio_to_ets": round(result.ratio("AutoETS"), 4),
        "bottom_wrmsse_ratio_to_seasonal_naive": round(result.ratio_bottom("SeasonalNaive"), 4),
        "bottom_wrmsse_ratio_to_ets": round(result.ratio_bottom("AutoETS"), 4),
        "bias": round(result.scores["model"].bias, 4),
        "p90_coverage": round(result.scores["model"].p90_coverage, 4),
        "fill_rate": None if fill_rate is None else round(fill_rate, 4),
        "spoilage_ratio_to_default_policy": None if spoilage is None else round(spoilage, 4),
        "peak_rss_mb": round(peak_rss_mb()),
    }))


if __name__ == "__main__":
    main()
