"""``lastmile forecast``: read the warehouse, forecast the next 72 hours, backtest, store.

The steps, each in its own module: the hourly frame (:mod:`~lastmile.forecast.frame`), its
features (:mod:`~lastmile.forecast.features`), the model (:mod:`~lastmile.forecast.model`),
cold start for series with no history (:mod:`~lastmile.forecast.coldstart`), the table
(:mod:`~lastmile.forecast.store`) and the backtest against the baselines
(:mod:`~lastmile.forecast.backtest`). When the stocking replay is installed
(:mod:`lastmile.stocking.replay`) and the data directory holds the simulation's true demand,
``replay=True`` replays the plan made from the backtest's forecasts against the default
stocking policy.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from lastmile.config import Settings
from lastmile.forecast import backtest as backtesting
from lastmile.forecast import coldstart, features, frame as frames, model, store

TRUTH_FILE = ("truth", "demand_hourly.jsonl")


@dataclass
class Prepared:
    """The featured hourly frame and what it was built from."""

    frame: pd.DataFrame
    reference: features.Reference
    source: str
    truth: pd.DataFrame | None
    tz: str

    @property
    def origin(self) -> pd.Timestamp:
        """The first hour after the data: where the forecast starts."""
        return self.frame["ds"].max() + pd.Timedelta(hours=1)


def demand_history(hours: pd.DataFrame, ref: features.Reference, tz: str) -> pd.DataFrame:
    """The hourly sales (:func:`~lastmile.forecast.frame.complete_hours`) as the demand the
    model learns from: every feature added (none reads the sales), then sold-out hours imputed
    by the rhythm of their day (the ``rhythm_day`` feature)."""
    featured = features.add_features(hours, ref, tz)
    return frames.impute_censored(featured, day_type=featured["rhythm_day"].to_numpy())


def prepare(cfg: Settings, warehouse: Any) -> Prepared:
    tz = cfg.business_tz
    sales, source = frames.load_hourly_sales(warehouse, tz)
    ref = features.load_reference(warehouse)
    frame = demand_history(frames.complete_hours(sales), ref, tz)
    truth = backtesting.load_truth(cfg.home.joinpath(*TRUTH_FILE), tz)
    return Prepared(frame=frame, reference=ref, source=source, truth=truth, tz=tz)


def forecast_ahead(prepared: Prepared, hours: int = model.HORIZON_HOURS) -> tuple[model.DemandModel, pd.DataFrame]:
    """The next ``hours`` hours of every series with history, and of every SKU on sale at every
    community without history (cold start)."""
    origin = prepared.origin
    ref, tz = prepared.reference, prepared.tz
    history = prepared.frame
    future = features.add_features(features.future_hours(history, origin, hours), ref, tz)
    fitted, ahead = model.fit_predict(history, future)
    ahead["method"] = "model"
    catalogue = ref.skus[["sku", "category"]] if not ref.skus.empty else pd.DataFrame(columns=["sku", "category"])
    if not catalogue.empty:
        probe = pd.DataFrame({"sku": catalogue["sku"], "ds": origin})
        on_sale = features.availability(probe.assign(ds=pd.Timestamp(origin + pd.Timedelta(hours=hours - 1))), ref.skus) | \
            features.availability(probe, ref.skus)
        catalogue = catalogue[on_sale.astype(bool)]
    communities = ref.communities or sorted(history["community_id"].unique())
    cold = coldstart.cold_series(catalogue, communities, set(history["unique_id"]))
    filled = coldstart.cold_start(ahead, cold, ref.skus[["sku", "category"]], ref.distances)
    if not filled.empty:
        filled["method"] = "cold_start"
        ahead = pd.concat([ahead, filled[ahead.columns]], ignore_index=True)
    ahead["origin"] = origin
    return fitted, ahead


@dataclass
class ForecastReport:
    """What one ``lastmile forecast`` did."""

    source: str
    origin: str
    model_version: str
    series: int
    cold_start_series: int
    rows_written: int
    units_next_72h: float
    seconds: dict[str, float] = field(default_factory=dict)
    backtest: backtesting.BacktestResult | None = None
    replay: Any = None
    replay_note: str | None = None
    backtest_note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "origin": self.origin, "model_version": self.model_version, "series": self.series,
                "cold_start_series": self.cold_start_series, "rows_written": self.rows_written,
                "units_next_72h": round(self.units_next_72h, 1), "seconds": self.seconds,
                "backtest": self.backtest.as_dict() if self.backtest else None,
                "replay": self.replay.as_dict() if self.replay is not None else None, "replay_note": self.replay_note,
                "backtest_note": self.backtest_note}

    def text(self) -> str:
        lines = [f"forecast from {self.origin} (history: {self.source}): {self.series} series "
                 f"({self.cold_start_series} by cold start), {self.units_next_72h:,.0f} units expected in the next 72 h; "
                 f"{self.rows_written:,} rows in demand_forecast, model {self.model_version}"]
        if self.backtest:
            lines.append(self.backtest.text())
        elif self.backtest_note:
            lines.append(f"backtest: {self.backtest_note}")
        if self.replay is not None:
            lines.append(self.replay.text())
        elif self.replay_note:
            lines.append(f"replay: {self.replay_note}")
        return "\n".join(lines)


def replay_available() -> bool:
    return importlib.util.find_spec("lastmile.stocking.replay") is not None


def run(cfg: Settings, warehouse: Any, *, backtest: bool = False, windows: int = backtesting.DEFAULT_WINDOWS,
        replay: bool = False, hours: int = model.HORIZON_HOURS, now: datetime | None = None,
        strict: bool = True) -> ForecastReport:
    """Forecast, store, and optionally backtest and replay. Idempotent: a re-run replaces its rows.

    With ``strict`` off (the main job), a history too short for the backtest is reported in
    ``backtest_note`` instead of failing: the forecast itself is still made and stored.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    prepared = prepare(cfg, warehouse)
    seconds["frame"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    fitted, ahead = forecast_ahead(prepared, hours)
    seconds["fit_predict"] = round(time.perf_counter() - start, 2)
    written = store.write(warehouse, ahead, fitted.version, prepared.tz, made_at=now or datetime.now(timezone.utc))
    result, backtest_note = None, None
    if backtest or replay:
        start = time.perf_counter()
        try:
            result = backtesting.run(prepared.frame, prepared.truth, windows=windows, hours=hours)
        except backtesting.HistoryTooShort as exc:
            if strict:
                raise
            backtest_note = f"not run: {exc}"
    if result is not None:
        seconds["backtest"] = round(time.perf_counter() - start, 2)
        kept = result.forecasts.sort_values("cutoff").drop_duplicates(["unique_id", "ds"], keep="last")
        written += store.write(warehouse, kept.assign(origin=kept["cutoff"] + pd.Timedelta(hours=1), method="model"),
                               fitted.version, prepared.tz)
    outcome, note = None, None
    if replay:
        if result is None:
            note = "no backtest to replay"
        elif not replay_available():
            note = "the stocking replay is not installed"
        elif prepared.truth is None:
            note = f"no true demand ({'/'.join(TRUTH_FILE)}) in {cfg.home}: the replay needs a simulation"
        else:
            from lastmile.stocking.replay import replay_simulation

            start = time.perf_counter()
            outcome = replay_simulation(cfg, result.forecasts)
            seconds["replay"] = round(time.perf_counter() - start, 2)
    return ForecastReport(source=prepared.source, origin=str(prepared.origin), model_version=fitted.version,
                          series=int(ahead["unique_id"].nunique()), cold_start_series=int(ahead.loc[ahead["method"] == "cold_start", "unique_id"].nunique()),
                          rows_written=written, units_next_72h=float(ahead["mean"].sum()), seconds=seconds, backtest=result,
                          replay=outcome, replay_note=note, backtest_note=backtest_note)
