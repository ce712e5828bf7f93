"""The demand forecast: censoring, cold start, holiday and promotion features, the backtest's
verdict, and idempotent storage, on small synthetic hourly panels with a known demand rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lastmile.forecast import backtest, coldstart, features, frame as frames, metrics, model, store
from lastmile.forecast.features import Reference

TZ = "Asia/Shanghai"
START = pd.Timestamp("2026-09-07")  # a Monday
WEEKS = 5

#: Units an hour wanted, by hour of day: nothing at night, a morning and an evening peak.
DAY_SHAPE = np.array([0, 0, 0, 0, 0, 0, 0.3, 1, 1.5, 1.2, 1, 1, 1.2, 1, 0.8, 0.8, 1, 1.5, 2, 1.8, 1.2, 0.8, 0.4, 0.1])


def _skus() -> pd.DataFrame:
    return pd.DataFrame({"sku": ["SK1", "SK2", "SK3", "SK4"], "category": ["fruit", "fruit", "vegetables", "fruit"],
                         "product_class": ["chilled"] * 4, "unit_price": [10.0, 12.0, 4.0, 11.0],
                         "shelf_life_days": [4.0, 4.0, 2.0, 4.0]})


def _reference(calendar: pd.DataFrame | None = None, promotions: pd.DataFrame | None = None) -> Reference:
    return Reference(skus=_skus(), calendar=calendar if calendar is not None else pd.DataFrame(),
                     promotions=promotions if promotions is not None else pd.DataFrame(),
                     distances=pd.DataFrame({"community_id": ["C01", "C02"], "neighbour_id": ["C02", "C01"], "km": [1.2, 1.2]}),
                     communities=["C01", "C02"])


def _demand(level: float, seed: int) -> tuple[pd.DatetimeIndex, np.ndarray]:
    hours = pd.date_range(START, periods=WEEKS * 168, freq="h")
    rate = level * DAY_SHAPE[hours.hour] * np.where(hours.dayofweek == 4, 1.4, 1.0)
    return hours, np.random.default_rng(seed).poisson(rate).astype(float)


def _panel(stockouts: bool = True) -> tuple[pd.DataFrame, float]:
    """Sales of 3 SKUs × 2 communities; C01/SK1 sells out from 14:00 every day of its last two weeks."""
    rows = []
    levels = {("C01", "SK1"): 3.0, ("C01", "SK2"): 2.0, ("C01", "SK3"): 4.0, ("C02", "SK1"): 2.5, ("C02", "SK2"): 1.5,
              ("C02", "SK3"): 3.0}
    for i, ((community, sku), level) in enumerate(levels.items()):
        hours, units = _demand(level, seed=i)
        censored = np.zeros(len(hours), dtype=bool)
        if (community, sku) == ("C01", "SK1") and stockouts:
            censored = (hours >= hours[-1] - pd.Timedelta(days=14)) & (hours.hour >= 14)
            units = np.where(censored, 0.0, units)
        rows.append(pd.DataFrame({"community_id": community, "sku": sku, "ds": hours, "y": units, "censored": censored}))
    sales = pd.concat(rows, ignore_index=True)
    return sales[(sales["y"] > 0) | sales["censored"]], levels[("C01", "SK1")]


def _featured(sales: pd.DataFrame, ref: Reference | None = None) -> pd.DataFrame:
    return features.add_features(frames.impute_censored(frames.complete_hours(sales)), ref or _reference(), TZ)


@pytest.fixture(scope="module")
def censored_forecast() -> tuple[pd.DataFrame, pd.DataFrame, float]:
    sales, level = _panel()
    history = _featured(sales)
    ignored = _featured(sales.assign(censored=False))  # the same sales, stock-outs read as demand
    ref = _reference()
    origin = history["ds"].max() + pd.Timedelta(hours=1)
    future = features.add_features(features.future_hours(history, origin, 72), ref, TZ)
    _, seen_through = model.fit_predict(history, future)
    _, naive = model.fit_predict(ignored, future)
    return seen_through, naive, level


def _afternoon_units(forecast: pd.DataFrame, series: str) -> float:
    rows = forecast[(forecast["unique_id"] == series) & (forecast["ds"].dt.hour >= 14)]
    return float(rows["mean"].sum())


def test_a_stock_out_hour_is_not_learned_as_low_demand(censored_forecast: tuple[pd.DataFrame, pd.DataFrame, float]) -> None:
    seen_through, naive, level = censored_forecast
    afternoons = pd.date_range(START, periods=72, freq="h")
    true_units = 3 * float(level * DAY_SHAPE[14:].sum()) * (1 + 0.4 / 7)  # three afternoons, Fridays a little busier
    forecast = _afternoon_units(seen_through, "C01/SK1")
    assert len(afternoons) == 72
    assert 0.75 * true_units <= forecast <= 1.3 * true_units, (forecast, true_units)
    # Read as demand, the same sold-out afternoons drag the forecast down.
    assert _afternoon_units(naive, "C01/SK1") < 0.6 * forecast


def test_forecasts_are_ordered_quantiles_for_every_hour(censored_forecast: tuple[pd.DataFrame, pd.DataFrame, float]) -> None:
    seen_through, _, _ = censored_forecast
    assert len(seen_through) == 6 * 72
    assert (seen_through["p90"] >= seen_through["p50"]).all() and (seen_through["p50"] >= 0).all()
    night = seen_through[seen_through["ds"].dt.hour.isin([2, 3])]
    evening = seen_through[seen_through["ds"].dt.hour.isin([18, 19])]
    assert night["mean"].mean() < 0.25 * evening["mean"].mean()


def test_impute_censored_keeps_what_sold_and_lifts_sold_out_hours() -> None:
    sales, _ = _panel()
    imputed = frames.impute_censored(frames.complete_hours(sales))
    sold_out = imputed[imputed["censored"]]
    assert (sold_out["y_sold"] == 0).all()
    # What the sold-out afternoons wanted: the demand drawn for them before the stock-outs hid it.
    hours, units = _demand(3.0, seed=0)
    wanted = units[pd.Index(hours).isin(sold_out["ds"])].sum()
    assert 0.85 * wanted <= sold_out["y"].sum() <= 1.15 * wanted, (sold_out["y"].sum(), wanted)
    clean = imputed[~imputed["censored"]]
    assert (clean["y"] == clean["y_sold"]).all()


def test_sold_out_evenings_of_busy_days_are_imputed_at_their_demand() -> None:
    """The days that sell out are the busy ones, and they sell out in the evening: their evening
    demand is read from every open hour relative to its day (busy mornings, quiet evenings), not
    from the quiet days alone, which would also get the evening's share wrong when the SKU's
    buyers shift to later hours."""
    rng = np.random.default_rng(5)
    hours = pd.date_range(START, periods=WEEKS * 168, freq="h")
    day = (hours - START).days.to_numpy()
    busy = rng.random(day.max() + 1) < 0.5
    evening_share = np.linspace(1.0, 2.0, len(hours))  # later buyers grow week by week
    shape = DAY_SHAPE[hours.hour] * np.where(hours.hour >= 18, evening_share, 1.0)
    rate = 3.0 * shape * np.where(busy[day], 2.0, 1.0)
    wanted = rng.poisson(rate).astype(float)
    censored = busy[day] & (hours.hour >= 18)
    sales = pd.DataFrame({"community_id": "C01", "sku": "SK1", "ds": hours, "y": np.where(censored, 0.0, wanted),
                          "censored": censored})
    imputed = frames.impute_censored(frames.complete_hours(sales[(sales["y"] > 0) | sales["censored"]]))
    sold_out = imputed[imputed["censored"]]
    truth = pd.Series(rate, index=hours)[sold_out["ds"]].sum()
    assert 0.85 * truth <= sold_out["y"].sum() <= 1.15 * truth, (sold_out["y"].sum(), truth)


def test_a_series_sold_out_before_it_ever_sold_is_imputed_without_error() -> None:
    """A SKU whose stock never arrived has censored hours and no sale at all: no level to read a
    profile from, so it falls back on everyone's, and nothing divides by zero."""
    sales, _ = _panel(stockouts=False)
    never = pd.DataFrame({"community_id": "C02", "sku": "SK4", "ds": pd.date_range(START, periods=48, freq="h"), "y": 0.0,
                          "censored": True})
    with np.errstate(all="raise"):
        imputed = frames.impute_censored(frames.complete_hours(pd.concat([sales, never], ignore_index=True)))
    assert np.isfinite(imputed["y"]).all() and (imputed.loc[imputed["unique_id"] == "C02/SK4", "y"] == 0).all()


def test_a_sku_with_no_history_gets_its_category_and_neighbours_forecast() -> None:
    hours = pd.date_range("2026-10-12", periods=3, freq="h")
    known = pd.DataFrame({"unique_id": np.repeat(["C01/SK1", "C01/SK2", "C02/SK4", "C02/SK3"], 3), "ds": np.tile(hours, 4),
                          "mean": np.repeat([2.0, 4.0, 6.0, 1.0], 3), "p50": np.repeat([2.0, 4.0, 6.0, 1.0], 3),
                          "p90": np.repeat([4.0, 7.0, 9.0, 2.0], 3)})
    cold = coldstart.cold_series(_skus()[["sku", "category"]], ["C01", "C02"], set(known["unique_id"]))
    assert {"C01/SK4", "C02/SK1", "C01/SK3"} <= set(cold["unique_id"])
    filled = coldstart.cold_start(known, cold, _skus()[["sku", "category"]], _reference().distances).set_index(["unique_id", "ds"])
    # SK4 (fruit) at C01: C01's fruit averages 3.0 an hour, SK4 sells 6.0 at the neighbour C02.
    assert filled.loc[("C01/SK4", hours[0]), "mean"] == pytest.approx((3.0 + 6.0) / 2)
    # SK1 at C02: no other fruit there but SK4 (6.0); SK1 sells 2.0 at C01.
    assert filled.loc[("C02/SK1", hours[1]), "mean"] == pytest.approx((6.0 + 2.0) / 2)
    assert (filled["mean"] > 0).all() and (filled["p90"] >= filled["p50"]).all()


def test_holiday_weather_and_promotion_features_mark_the_right_hours() -> None:
    calendar = pd.DataFrame({"date": ["2026-10-01", "2026-10-02", "2026-10-10", "2026-10-14"],
                             "holiday": ["National Day", "National Day", None, None], "is_holiday": [True, True, False, False],
                             "is_workday": [False, False, True, True], "weather": ["clear", "clear", "clear", "typhoon"]})
    promotions = pd.DataFrame({"promotion_id": ["bb-1", "pc-1"], "kind": ["blind_box", "price_cut"], "sku": [None, "SK2"],
                               "community_id": [None, "C01"], "starts_at": ["2026-10-14T14:00:00+08:00", "2026-10-13T00:00:00+08:00"],
                               "ends_at": ["2026-10-14T17:00:00+08:00", "2026-10-15T00:00:00+08:00"], "discount": [0.0, 0.3]})
    hours = pd.date_range("2026-09-28", "2026-10-16", freq="h", inclusive="left")
    rows = pd.DataFrame({"community_id": np.repeat(["C01", "C02"], len(hours)), "sku": "SK2", "ds": np.tile(hours, 2), "y": 1.0,
                         "censored": False})
    featured = _featured(rows, _reference(calendar, promotions)).set_index(["unique_id", "ds"])
    at = lambda uid, stamp: featured.loc[(uid, pd.Timestamp(stamp))]  # noqa: E731
    assert at("C01/SK2", "2026-10-01 10:00")["is_holiday"] == 1 and at("C01/SK2", "2026-10-01 10:00")["is_workday"] == 0
    assert at("C01/SK2", "2026-10-03 10:00")["is_holiday"] == 0
    assert at("C01/SK2", "2026-10-10 10:00")["is_workday"] == 1  # a Saturday made a workday (调休)
    # The rhythm a day shops to: the National Day Friday like a Saturday, the 调休 Saturday like a Monday.
    assert at("C01/SK2", "2026-10-02 16:00")["rhythm_day"] == 5 and at("C01/SK2", "2026-10-02 16:00")["rhythm_hour"] == 5 * 24 + 16
    assert at("C01/SK2", "2026-10-10 10:00")["rhythm_day"] == 0
    assert at("C01/SK2", "2026-10-09 16:00")["rhythm_day"] == 4  # an ordinary Friday
    assert at("C02/SK2", "2026-10-14 09:00")["weather"] == features.WEATHER_CODES["typhoon"]
    # The blind box runs 14:00-17:00 on Wednesday 14 October at every community.
    for uid in ("C01/SK2", "C02/SK2"):
        assert [at(uid, f"2026-10-14 {h:02d}:00")["blind_box"] for h in (13, 14, 16, 17)] == [0, 1, 1, 0]
    # The price cut is on SK2 at C01 only, for 13-14 October.
    assert at("C01/SK2", "2026-10-13 08:00")["discount"] == pytest.approx(0.3)
    assert at("C01/SK2", "2026-10-13 08:00")["price"] == pytest.approx(12.0 * 0.7)
    assert at("C01/SK2", "2026-10-15 08:00")["discount"] == 0 and at("C02/SK2", "2026-10-13 08:00")["discount"] == 0


def test_backtest_scores_against_true_demand_and_beats_seasonal_naive() -> None:
    sales, _ = _panel(stockouts=False)
    history = _featured(sales)
    truth = history[["unique_id", "ds", "y_sold"]].rename(columns={"y_sold": "demanded"})
    result = backtest.run(history, truth, windows=3)
    assert result.target == "true demand" and result.windows == 3 and result.series == 6
    assert set(result.scores) == {"model", "SeasonalNaive", "AutoETS"}
    assert result.beats_seasonal_naive and result.ratio("SeasonalNaive") < 0.85
    assert 0.75 <= result.scores["model"].p90_coverage <= 0.99
    assert "beats seasonal naive" in result.verdict()
    assert backtest.run(history, None, windows=1).target == "sales"


def test_a_model_worse_than_seasonal_naive_is_reported_as_such() -> None:
    worse = backtest.BacktestResult(target="sales", windows=3, first_origin="a", last_origin="b", series=2,
                                    scores={"model": metrics.Scores(1.2, 0.0, 0.5, 0.3, 0.9), "SeasonalNaive": metrics.Scores(1.0, 0.0),
                                            "AutoETS": metrics.Scores(0.9, 0.0)})
    assert not worse.beats_seasonal_naive
    assert "does NOT beat seasonal naive" in worse.text() and worse.as_dict()["beats_seasonal_naive"] is False


def test_wrmsse_weighs_series_by_revenue() -> None:
    history = pd.DataFrame({"unique_id": ["a"] * 4 + ["b"] * 4, "ds": list(pd.date_range("2026-10-01", periods=4, freq="h")) * 2,
                            "y": [0, 2, 0, 2, 0, 1, 0, 1.0]})
    prices = pd.Series({"a": 10.0, "b": 10.0})
    weights = metrics.revenue_weights(history, prices)
    assert weights["a"] == pytest.approx(2 / 3)
    forecasts = pd.DataFrame({"unique_id": ["a", "a", "b", "b"], "ds": list(pd.date_range("2026-10-01 04:00", periods=2, freq="h")) * 2,
                              "cutoff": pd.Timestamp("2026-10-01 03:00"), "actual": [2.0, 0.0, 1.0, 0.0], "f": [2.0, 0.0, 0.0, 1.0]})
    # a is perfect (RMSSE 0); b is off by 1 against one-step changes of 1: RMSSE 1.
    assert metrics.wrmsse(forecasts, "f", history, weights) == pytest.approx(1 / 3)


def test_demand_forecast_rows_are_replaced_not_doubled(tmp_path: Path) -> None:
    from tests.warehouses import empty_embedded_warehouse

    rows = pd.DataFrame({"unique_id": ["C01/SK1", "C01/SK1"], "ds": pd.date_range("2026-11-02", periods=2, freq="h"),
                         "mean": [1.0, 2.0], "p50": [1.0, 2.0], "p90": [2.0, 3.0], "origin": pd.Timestamp("2026-11-02"),
                         "method": "model"})
    with empty_embedded_warehouse(tmp_path / "home") as (_, warehouse):
        store.write(warehouse, rows, "v1", TZ, made_at=pd.Timestamp("2026-11-01 14:00", tz="UTC").to_pydatetime())
        store.write(warehouse, rows.assign(p90=[5.0, 6.0]), "v1", TZ, made_at=pd.Timestamp("2026-11-01 14:00", tz="UTC").to_pydatetime())
        assert warehouse.count(store.TABLE) == 2
        assert sorted(r[0] for r in warehouse.rows(f"SELECT p90 FROM {store.TABLE} FINAL")) == [5.0, 6.0]
        hour = warehouse.scalar(f"SELECT formatDateTime(min(hour), '%Y-%m-%d %H:%i', 'Asia/Shanghai') FROM {store.TABLE}")
        assert hour == "2026-11-02 00:00"


def test_forecast_command_on_a_warehouse_without_sales_says_what_to_run(home) -> None:
    from typer.testing import CliRunner

    from lastmile.cli import app

    result = CliRunner().invoke(app, ["forecast", "--backtest"])
    assert result.exit_code == 2
    assert "lastmile run --through transform" in result.output or "lastmile transform" in result.output


def test_wrmsse_over_the_hierarchy_scores_the_sums_of_bottom_forecasts() -> None:
    # One SKU in one category at two communities: the total, category and SKU levels are the
    # sum of both series, the community, community × category and community × SKU levels are
    # the series themselves; so the hierarchy's WRMSSE is (total + bottom) / 2.
    hours = list(pd.date_range("2026-10-01", periods=4, freq="h"))
    history = pd.DataFrame({"unique_id": ["C01/SK1"] * 4 + ["C02/SK1"] * 4, "ds": hours * 2, "y": [0, 2, 0, 2, 1, 0, 1, 0.0]})
    series = pd.DataFrame({"unique_id": ["C01/SK1", "C02/SK1"], "community_id": ["C01", "C02"], "category": "fruit",
                           "sku": "SK1"})
    earned = metrics.revenue(history, pd.Series({"C01/SK1": 10.0, "C02/SK1": 10.0}))
    assert earned.to_dict() == {"C01/SK1": 40.0, "C02/SK1": 20.0}
    forecasts = pd.DataFrame({"unique_id": ["C01/SK1", "C01/SK1", "C02/SK1", "C02/SK1"],
                              "ds": list(pd.date_range("2026-10-01 04:00", periods=2, freq="h")) * 2,
                              "cutoff": pd.Timestamp("2026-10-01 03:00"), "actual": [2.0, 0.0, 0.0, 1.0], "f": [1.0, 1.0, 1.0, 0.0]})
    levels = metrics.wrmsse_by_level(forecasts, ["f"], history, earned, series)["f"]
    assert set(levels) == set(metrics.LEVELS)
    # C01: errors ±1 against one-step changes of 2 (RMSSE 0.5); C02: ±1 against changes of 1 (RMSSE 1);
    # weighted 2/3 and 1/3 by revenue.
    for level in ("community", "community × category", "community × sku"):
        assert levels[level] == pytest.approx(2 / 3)
    # The sum of the two forecasts, 2 then 1, is exactly the total wanted: RMSSE 0 at every aggregate.
    for level in ("total", "category", "sku"):
        assert levels[level] == pytest.approx(0.0)
    scores = metrics.score(forecasts, "f", levels)
    assert scores.wrmsse == pytest.approx(1 / 3) and scores.wrmsse_bottom == pytest.approx(2 / 3)
