"""The demand model: mlforecast over LightGBM, one pooled model per output.

Why this shape:

* **Pooled hourly series** (the M5 approach): a community × SKU sells a few units an hour, too
  few for a model per series; one LightGBM across all series learns the shared daily and
  weekly rhythm, the holiday, weather and promotion effects, and each series' level from its
  own lagged demand.
* **Three models**: ``mean`` (Tweedie objective: over-dispersed counts) is the point forecast the
  squared-error metrics (RMSSE, WRMSSE) judge; ``p50`` and ``p90`` are LightGBM quantile
  regressions (``objective="quantile"``), the distribution the stocking newsvendor reads.
  Quantile regression is fitted directly on the pinball loss, needs no distributional
  assumption for sparse, over-dispersed counts, and is one pass per quantile; mlforecast's
  conformal intervals would need extra refits per calibration window and give symmetric
  intervals around the mean, which for counts near zero put P50 below what ever sells.
* **Lags of 72 hours and more only**: mlforecast forecasts recursively, feeding predictions
  back into short lags. With no lag inside the 72-hour horizon, every feature of every
  forecast hour is observed data, so the P90 model never reads its own P90 (which would
  compound upwards) and one fit serves the whole horizon.
* **Censoring**: sold-out hours get weight 0 as training targets, and their lag values are
  imputed (:func:`lastmile.forecast.frame.impute_censored`): a stock-out is not low demand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lastmile.forecast.features import DYNAMIC_FEATURES, STATIC_FEATURES

#: Forecast horizon in hours, and the quantiles written to demand_forecast.
HORIZON_HOURS = 72
QUANTILES = {"p50": 0.5, "p90": 0.9}

#: Lags (hours) and the rolling statistics over them; all >= the horizon (see module docstring).
LAGS = (72, 96, 120, 144, 168, 336)

#: Hours before the origin whose demand the models learn from (the lags reach further back).
#: Four weeks hold every weekday four times and keep a fit of thousands of series in seconds
#: per model; older weeks add little for a 72-hour horizon and cost fitting time linearly.
TRAIN_HOURS = 28 * 24

#: History the features of the first training hour read: the longest reach of the lags and
#: rolling windows (the two-week seasonal mean at lag 168). Older hours are not featurized.
FEATURE_REACH_HOURS = 168 + 2 * 168


def _lag_transforms() -> dict[int, list[Any]]:
    from mlforecast.lag_transforms import ExpandingMean, RollingMean, SeasonalRollingMean

    return {
        72: [RollingMean(window_size=24), RollingMean(window_size=168), SeasonalRollingMean(season_length=24, window_size=7),
             ExpandingMean()],
        168: [SeasonalRollingMean(season_length=168, window_size=2)],
        240: [RollingMean(window_size=168)],
    }


#: The week's demand as read by the latest lags, and the week before it: their ratio is the
#: series' momentum (a SKU whose buyers grow in number sells more each week).
RECENT_WEEK, WEEK_BEFORE = "rolling_mean_lag72_window_size168", "rolling_mean_lag240_window_size168"


def weekly_rhythm(history: pd.DataFrame) -> pd.Series:
    """Demand in each hour of the week (by :func:`~lastmile.forecast.features.rhythm_day`) as a
    multiple of the average hour, over all series of ``history`` (rhythm_hour, y).

    One number per hour of the week, read from every series at once: a tree reaches the Friday
    16:00 peak, three times an ordinary hour, in one split on it, where from the hour and the
    weekday apart it would need three, each learnt from the few series-hours that are peaks.
    """
    mean = history["y"].mean()
    by_hour = history.groupby("rhythm_hour")["y"].mean()
    return (by_hour / mean if mean > 0 else by_hour * 0.0 + 1.0).reindex(range(7 * 24)).fillna(1.0)


#: LightGBM settings shared by the three models: shallow enough to fit in seconds on a laptop.
LGBM_PARAMS: dict[str, Any] = {"n_estimators": 120, "learning_rate": 0.08, "num_leaves": 31, "min_child_samples": 40,
                               "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "max_bin": 63, "verbosity": -1,
                               "n_jobs": 1, "random_state": 7}


#: Variance power of the mean model's Tweedie objective: between Poisson (1) and gamma (2),
#: because hourly demand is over-dispersed (whole baskets, a SKU's good and bad days); on the
#: default simulation it scores better than Poisson, and 1.5 worse.
TWEEDIE_POWER = 1.3


def regressors() -> dict[str, Any]:
    """The mean model and one quantile model per written quantile."""
    from lightgbm import LGBMRegressor

    models: dict[str, Any] = {"mean": LGBMRegressor(objective="tweedie", tweedie_variance_power=TWEEDIE_POWER, **LGBM_PARAMS)}
    for name, alpha in QUANTILES.items():
        models[name] = LGBMRegressor(objective="quantile", alpha=alpha, **LGBM_PARAMS)
    return models


def model_version() -> str:
    """Names the model's definition: features, lags, parameters and library versions."""
    import lightgbm
    import mlforecast

    transforms = {lag: [repr(t) for t in ts] for lag, ts in sorted(_lag_transforms().items())}
    spec = repr((LAGS, transforms, TRAIN_HOURS, sorted(LGBM_PARAMS.items()), TWEEDIE_POWER, QUANTILES, STATIC_FEATURES,
                 DYNAMIC_FEATURES, DERIVED_FEATURES, MOMENTUM_FLOOR, lightgbm.__version__, mlforecast.__version__))
    return "mlforecast-lgbm-" + hashlib.sha256(spec.encode()).hexdigest()[:10]


def new_forecaster() -> Any:
    from mlforecast import MLForecast

    return MLForecast(models=regressors(), freq="h", lags=list(LAGS), lag_transforms=_lag_transforms(),
                      date_features=["hour", "dayofweek"], num_threads=1)


#: Features the model derives itself (:func:`featurize`): the weekly rhythm and the momentum.
DERIVED_FEATURES = ("rhythm_profile", "momentum")

#: Units per hour added to both weeks of the momentum ratio, so a series selling nothing has
#: a momentum of 1, not a division by zero.
MOMENTUM_FLOOR = 0.01

#: Training weight of a censored hour, whose target is imputed demand rather than an observation.
CENSORED_WEIGHT = 1.0


def training_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """What mlforecast reads: id, time, target (imputed), sample weight, features."""
    columns = ["unique_id", "ds", "y", "weight", *STATIC_FEATURES, *DYNAMIC_FEATURES, DERIVED_FEATURES[0]]
    out = frame.assign(weight=np.where(frame["censored"], CENSORED_WEIGHT, 1.0))
    return out[columns]


def tidy(predictions: pd.DataFrame, available: pd.Series | np.ndarray | None = None) -> pd.DataFrame:
    """Non-negative, non-crossing forecasts (p50 <= p90), zero where the SKU is not on sale."""
    out = predictions.copy()
    for column in ("mean", *QUANTILES):
        out[column] = out[column].clip(lower=0.0)
    out["p90"] = np.maximum(out["p90"], out["p50"])
    if available is not None:
        on_sale = np.asarray(available, dtype=float)
        for column in ("mean", *QUANTILES):
            out[column] = out[column] * on_sale
    return out


def featurize(frame: pd.DataFrame, horizon_span: int) -> tuple[Any, pd.DataFrame]:
    """mlforecast's features (lags, rolling means, hour, weekday, exogenous) for every row.

    Future hours may be in ``frame`` (with a placeholder ``y``, as mlforecast refuses nulls):
    with every lag >= the horizon, the features of an hour up to 72 hours past the last
    observation read observed hours only, never a placeholder. ``horizon_span``: hours at the
    end of ``frame`` that are forecast rather than learned from (only the hours the training
    rows and the forecast rows read are featurized, to keep memory to what is used).
    """
    forecaster = new_forecaster()
    end = frame["ds"].max() + pd.Timedelta(hours=1)
    start = end - pd.Timedelta(hours=TRAIN_HOURS + FEATURE_REACH_HOURS + horizon_span)
    frame = frame[frame["ds"] >= start]
    learnt = frame[frame["ds"] < end - pd.Timedelta(hours=horizon_span)]
    frame = frame.assign(rhythm_profile=weekly_rhythm(learnt).reindex(frame["rhythm_hour"]).to_numpy())
    prep = forecaster.preprocess(training_frame(frame), static_features=list(STATIC_FEATURES), dropna=False,
                                 weight_col="weight", validate_data=False)
    prep["momentum"] = (prep[RECENT_WEEK] + MOMENTUM_FLOOR) / (prep[WEEK_BEFORE] + MOMENTUM_FLOOR)
    features = prep.columns.difference(["unique_id", "ds", "y", "weight"])
    prep[features] = prep[features].astype(np.float32)  # LightGBM bins float32 as well; half the memory
    return forecaster, prep.reset_index(drop=True)


def _xy(prep: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    return prep.drop(columns=["unique_id", "ds", "y"]), prep["y"].to_numpy()


def _learnable(prep: pd.DataFrame, origin: pd.Timestamp) -> pd.Series:
    """The rows the models learn from: the last TRAIN_HOURS before the origin."""
    return (prep["ds"] < origin) & (prep["ds"] >= origin - pd.Timedelta(hours=TRAIN_HOURS))


def _predict(forecaster: Any, prep: pd.DataFrame) -> pd.DataFrame:
    X = prep.drop(columns=["unique_id", "ds", "y", "weight"])
    out = prep[["unique_id", "ds"]].copy()
    for name, fitted in forecaster.models_.items():
        out[name] = fitted.predict(X)
    return out


@dataclass
class DemandModel:
    """A fitted forecaster and what it was fitted on."""

    forecaster: Any
    version: str
    trained_until: pd.Timestamp
    series: list[str] = field(default_factory=list)


def fit_predict(frame: pd.DataFrame, future: pd.DataFrame) -> tuple[DemandModel, pd.DataFrame]:
    """Fit on every observed hour of ``frame`` and forecast the hours of ``future``.

    ``future`` has the frame's columns except y/censored (its features for hours to come);
    it must start right after the frame and span at most the horizon.
    """
    origin = frame["ds"].max() + pd.Timedelta(hours=1)
    if (future["ds"] - origin).max() >= pd.Timedelta(hours=HORIZON_HOURS) or future["ds"].min() < origin:
        raise ValueError(f"forecast hours must lie in the {HORIZON_HOURS} hours after the history")
    whole = pd.concat([frame, future.assign(y=0.0, y_sold=0.0, censored=False)], ignore_index=True)
    forecaster, prep = featurize(whole, len(pd.unique(future["ds"])))
    forecaster.fit_models(*_xy(prep[_learnable(prep, origin)]))
    raw = _predict(forecaster, prep[prep["ds"] >= origin])
    merged = raw.merge(future[["unique_id", "ds", "available"]], on=["unique_id", "ds"], how="left")
    fitted = DemandModel(forecaster=forecaster, version=model_version(), trained_until=origin,
                         series=sorted(frame["unique_id"].unique()))
    return fitted, tidy(merged, merged["available"].fillna(1)).drop(columns=["available"])


def cross_validate(frame: pd.DataFrame, windows: int, hours: int = HORIZON_HOURS, step: int = 24) -> pd.DataFrame:
    """Rolling-origin forecasts: fit once before the first origin, forecast from every origin.

    The same as mlforecast's ``cross_validation(refit=False)``, computed in one pass: with
    every lag >= the horizon, an hour's features are the same from every origin whose 72
    hours include it, so each hour is predicted once and repeated per origin. Returns
    unique_id, ds, cutoff (the last hour known at the origin) and the mean, p50 and p90.
    """
    end = frame["ds"].max() + pd.Timedelta(hours=1)
    first = end - pd.Timedelta(hours=hours + step * (windows - 1))
    forecaster, prep = featurize(frame, hours + step * (windows - 1))
    forecaster.fit_models(*_xy(prep[_learnable(prep, first)]))
    raw = _predict(forecaster, prep[prep["ds"] >= first])
    raw = raw.merge(frame[["unique_id", "ds", "available"]], on=["unique_id", "ds"], how="left")
    raw = tidy(raw, raw["available"].fillna(1)).drop(columns=["available"])
    pieces = []
    for k in range(windows):
        origin = first + pd.Timedelta(hours=step * k)
        window = raw[(raw["ds"] >= origin) & (raw["ds"] < origin + pd.Timedelta(hours=hours))]
        pieces.append(window.assign(cutoff=origin - pd.Timedelta(hours=1)))
    return pd.concat(pieces, ignore_index=True)
