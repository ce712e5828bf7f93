"""The baselines every forecast is judged against (statsforecast).

* ``SeasonalNaive``: the same hour last week (season 168): what a buyer does by hand.
* ``AutoETS``: exponential smoothing with a daily season (24), fitted per series: the
  classical statistical forecaster, additive error and season, no trend (``ANA``): hourly
  demand over a few weeks has no trend worth extrapolating 72 hours, multiplicative forms
  break on the zero hours of sparse series, and searching all forms multiplies the fitting
  time; the smoothing parameters are still fitted per series. A weekly season (168) would give ETS 168 seasonal states
  per series to estimate from a few weeks of history.

The backtest feeds them the history the model learns from (sold-out hours' demand imputed),
so a difference in score is a difference in method, not in data.
"""

from __future__ import annotations

import pandas as pd

from lastmile.forecast.model import HORIZON_HOURS

WEEK_HOURS = 168
DAY_HOURS = 24
BASELINES = ("SeasonalNaive", "AutoETS")


def statsforecast(models: tuple[str, ...] = BASELINES) -> object:
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, SeasonalNaive

    made = {"SeasonalNaive": lambda: SeasonalNaive(season_length=WEEK_HOURS),
            "AutoETS": lambda: AutoETS(model="ANA", season_length=DAY_HOURS)}
    return StatsForecast(models=[made[m]() for m in models], freq="h", n_jobs=1)


def cross_validate(frame: pd.DataFrame, windows: int, hours: int = HORIZON_HOURS, step: int = 24,
                   models: tuple[str, ...] = BASELINES) -> pd.DataFrame:
    """Rolling-origin baseline forecasts (fit once, forward each origin): unique_id, ds, cutoff, y, one column per model."""
    sf = statsforecast(models)
    cv = sf.cross_validation(h=hours, df=frame[["unique_id", "ds", "y"]], n_windows=windows, step_size=step, refit=False)
    for model in models:
        cv[model] = cv[model].clip(lower=0.0)
    return cv.reset_index(drop=True) if "unique_id" in cv.columns else cv.reset_index()


def forecast(frame: pd.DataFrame, hours: int = HORIZON_HOURS, models: tuple[str, ...] = BASELINES) -> pd.DataFrame:
    """Baseline forecasts for the ``hours`` after the frame."""
    sf = statsforecast(models)
    out = sf.forecast(df=frame[["unique_id", "ds", "y"]], h=hours)
    for model in models:
        out[model] = out[model].clip(lower=0.0)
    return out.reset_index(drop=True) if "unique_id" in out.columns else out.reset_index()
