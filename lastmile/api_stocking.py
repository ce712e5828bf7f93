"""The API's stocking routes: a community's demand forecast and its front warehouse's plan.

Mounted by :func:`lastmile.api.create_app` behind the same keys, rate limits and errors as
the other routes, with the scope of the people who run the communities (``board:read``).
Both answers are read from the warehouse: the forecast from ``demand_forecast`` (what
``lastmile forecast`` last wrote), the plan from ``stocking_plan`` (``lastmile stocking plan``).
Neither carries personal data, so nothing here is written to the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import pandas as pd
from fastapi import FastAPI, Path, Query
from pydantic import BaseModel, Field

from lastmile.api_auth import ApiKey
from lastmile.api_support import WarehouseSource, answer_errors
from lastmile.config import Settings
from lastmile.warehouse import Warehouse

#: The scope of the stocking routes: operations staff, as for the operations board.
SCOPE = "board:read"
#: Longest forecast the API returns, hours (the forecast's horizon).
MAX_HOURS = 72

CommunityId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="The community's id (e.g. c01).")]


class ForecastPoint(BaseModel):
    hour: datetime = Field(description="Start of the local hour (with the business zone's offset).")
    p50: float = Field(description="Median units demanded in the hour.")
    p90: float = Field(description="90th percentile of units demanded in the hour.")


class SkuForecast(BaseModel):
    sku: str
    p50_total: float = Field(description="Sum of the hourly medians over the hours returned.")
    points: list[ForecastPoint]


class CommunityForecast(BaseModel):
    community_id: str
    model_version: str
    made_at: datetime = Field(description="When the forecast was made (UTC).")
    origin: datetime = Field(description="First forecast hour (local).")
    hours: int = Field(description="Hours returned per SKU, from the origin.")
    skus: list[SkuForecast] = Field(description="Ordered by SKU.")


class PlanItem(BaseModel):
    sku: str
    order_qty: int = Field(description="Units to order for the delivery.")
    on_hand: int = Field(description="Units on the shelf when the plan was made.")
    expiring_before_delivery: int
    p50_demand: float = Field(description="Median demand over the selling period.")
    p90_demand: float = Field(description="90th percentile of demand over the selling period.")
    target_qty: int = Field(description="Stock aimed for at the delivery.")
    pool_from: str | None = Field(description="Neighbouring community covering part of the shortfall.")
    pooled_qty: int
    reason: str = Field(description="The decision in a buyer's words.")


class StockingPlan(BaseModel):
    community_id: str
    warehouse_id: str
    delivery_at: datetime = Field(description="When the delivery arrives (local).")
    plan_version: str
    made_at: datetime = Field(description="When the plan was made (UTC).")
    items: list[PlanItem] = Field(description="One per SKU, ordered by SKU.")


class NotPlanned(LookupError):
    """No forecast or plan for this community (404)."""


class StockingUnavailable(RuntimeError):
    """The warehouse cannot answer now (503)."""


class StockingSource(WarehouseSource):
    """The warehouse, opened on first use (``opener``: how to connect)."""

    passes = (NotPlanned, FileNotFoundError)
    unavailable = StockingUnavailable


def _forecast(warehouse: Warehouse, cfg: Settings, community_id: str, hours: int) -> dict[str, Any]:
    from lastmile.stocking.plan import load_forecast

    try:
        forecast = load_forecast(warehouse, cfg.business_tz, community_id)
    except FileNotFoundError as exc:
        raise NotPlanned(f"no forecast for community {community_id}") from exc
    zone = ZoneInfo(cfg.business_tz)
    frame = forecast.frame
    frame = frame[frame["hour"] < frame["hour"].min() + pd.Timedelta(hours=hours)] if not frame.empty else frame
    skus = []
    for sku, group in frame.groupby("sku", sort=True):
        points = [{"hour": h.to_pydatetime().replace(tzinfo=zone), "p50": round(float(a), 3), "p90": round(float(b), 3)}
                  for h, a, b in zip(group["hour"], group["p50"], group["p90"])]
        skus.append({"sku": str(sku), "p50_total": round(float(group["p50"].sum()), 2), "points": points})
    return {"community_id": community_id, "model_version": forecast.model_version, "made_at": forecast.made_at,
            "origin": forecast.origin.replace(tzinfo=zone), "hours": hours, "skus": skus}


def _plan(warehouse: Warehouse, cfg: Settings, community_id: str, delivery: str | None) -> dict[str, Any]:
    from lastmile.stocking.plan import read_plan, warehouse_id

    rows = read_plan(warehouse, cfg.business_tz, community_id, delivery)
    if not rows:
        raise NotPlanned(f"no stocking plan for community {community_id}" + (f" on {delivery}" if delivery else ""))
    first = rows[0]
    items = [{k: r[k] for k in ("sku", "order_qty", "on_hand", "expiring_before_delivery", "p50_demand", "p90_demand",
                                "target_qty", "pool_from", "pooled_qty", "reason")} for r in rows]
    return {"community_id": community_id, "warehouse_id": warehouse_id(community_id), "delivery_at": first["delivery_at"],
            "plan_version": first["plan_version"], "made_at": max(r["made_at"] for r in rows), "items": items}


def mount_stocking(app: FastAPI, cfg: Settings, needs: Callable[[str], Any], errors: dict[int | str, dict[str, Any]],
                   source: StockingSource | None = None) -> StockingSource:
    """Add the forecast and stocking-plan routes to ``app``; ``needs(scope)`` is the API's key dependency."""
    source = source or StockingSource(cfg)
    scoped: dict[str, Any] = {"tags": ["stocking"], "responses": errors, "openapi_extra": {"x-required-scope": SCOPE}}

    answer_errors(app, {NotPlanned: 404, StockingUnavailable: 503})

    @app.get("/communities/{community_id}/forecast", response_model=CommunityForecast, **scoped)
    def community_forecast(community_id: CommunityId,
                           hours: Annotated[int, Query(ge=1, le=MAX_HOURS, description="Hours from the forecast's origin.")] = MAX_HOURS,
                           key: ApiKey = needs(SCOPE)) -> dict[str, Any]:
        """Hourly P50/P90 demand per SKU of the community's newest forecast. Scope board:read."""
        return source.read(lambda w: _forecast(w, cfg, community_id, hours))

    @app.get("/communities/{community_id}/stocking-plan", response_model=StockingPlan, **scoped)
    def stocking_plan(community_id: CommunityId,
                      delivery: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$",
                                                            description="Local date of the delivery (default: the newest planned).")] = None,
                      key: ApiKey = needs(SCOPE)) -> dict[str, Any]:
        """What the community's front warehouse orders for a delivery, SKU by SKU, with the reasons. Scope board:read."""
        return source.read(lambda w: _plan(w, cfg, community_id, delivery))

    app.state.stocking = source
    return source
