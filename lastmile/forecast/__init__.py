"""Demand forecasting: per community × SKU, each hour of the next 72 hours, P50 and P90.

mlforecast + LightGBM over the hourly sales (censored hours seen through), statsforecast
baselines, a rolling-origin backtest, cold start from category and neighbours, and the
warehouse table ``demand_forecast``. See docs/forecasting.md.
"""

from lastmile.forecast.service import ForecastReport, run

__all__ = ["ForecastReport", "run"]
