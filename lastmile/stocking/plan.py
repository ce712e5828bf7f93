"""The stocking plan: what each front warehouse orders for its next delivery, in the warehouse.

``make_plan`` reads the newest demand forecast (``demand_forecast``), the stock on the shelves
(``raw_inventory``: the last count of each SKU, split into lots by the newest receipts and
their best-before dates, since the shelf sells oldest first), the SKUs' prices and shelf lives
(``ref_skus``) and the distances between communities (``ref_community_distances``), decides
each order with the newsvendor (:mod:`lastmile.stocking.newsvendor`), lets neighbours cover
each other's shortfalls (:mod:`lastmile.stocking.pooling`) and writes ``stocking_plan``.

The table is a ReplacingMergeTree keyed on warehouse, SKU and delivery: planning the same
delivery again replaces its rows (the newest ``made_at`` wins), it never adds a second order.
``plan_version`` names what the plan was made from (the forecast's model version, the cost
settings), so a consumer of the purchase orders can tell a changed plan from a repeated one.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from lastmile.config import Settings
from lastmile.stocking.newsvendor import Decision, Economics, Lot, decide, hour_number
from lastmile.stocking.pooling import neighbours_within, pool
from lastmile.stocking.replay import DELIVERY_HOUR
from lastmile.warehouse import Warehouse

#: Version of the planning method; part of every ``plan_version``.
METHOD = "newsvendor-shelf-life-1"
FORECAST_TABLE = "demand_forecast"
PLAN_TABLE = "stocking_plan"

#: The columns of ``stocking_plan`` in insert order.
PLAN_COLUMNS = ("warehouse_id", "community_id", "sku", "delivery_at", "order_qty", "on_hand", "expiring_before_delivery",
                "expiring_unsold", "p50_demand", "p90_demand", "target_qty", "pooled_qty", "reason", "pool_from", "plan_version", "made_at")


def plan_table_sql(tz: str) -> str:
    """DDL of ``stocking_plan``; times of day are business-local (``tz``)."""
    return f"""CREATE TABLE IF NOT EXISTS {PLAN_TABLE} (
    warehouse_id String COMMENT 'Front warehouse that orders (fw-<community_id>).',
    community_id String COMMENT 'Community the front warehouse serves.',
    sku String COMMENT 'SKU ordered.',
    delivery_at DateTime('{tz}') COMMENT 'When the delivery arrives (local 05:00); the order is placed the evening before.',
    order_qty UInt32 COMMENT 'Units to order from the supplier for this delivery.',
    on_hand UInt32 COMMENT 'Units on the shelf when the plan was made (the last stock count).',
    expiring_before_delivery UInt32 COMMENT 'Units on hand whose best-before passes before the delivery: they count for nothing.',
    expiring_unsold UInt32 COMMENT 'Units on hand expiring during the selling period before the forecast demand can take them.',
    p50_demand Float64 COMMENT 'Median demand over the selling period (delivery to the next delivery, or to expiry if sooner), units.',
    p90_demand Float64 COMMENT '90th percentile of demand over the selling period, units.',
    target_qty UInt32 COMMENT 'Stock the newsvendor aims for at the delivery (lost orders against write-offs over the shelf life).',
    pooled_qty UInt32 COMMENT 'Units a neighbour covers from its surplus (pool_from), ordered less by that much.',
    reason String COMMENT 'The decision in a buyer''s words.',
    pool_from Nullable(String) COMMENT 'Neighbouring community whose surplus covers part of the shortfall; null if none.',
    plan_version String COMMENT 'Planning method, forecast model version and cost settings the plan was made from.',
    made_at DateTime64(3, 'UTC') COMMENT 'When the plan was made; the ReplacingMergeTree version.'
) ENGINE = ReplacingMergeTree(made_at)
ORDER BY (warehouse_id, sku, delivery_at)
COMMENT 'Orders per front warehouse, SKU and delivery (lastmile stocking plan). Planning a delivery again replaces its rows.'"""


def warehouse_id(community_id: str) -> str:
    """The community's front warehouse (one per community)."""
    return f"fw-{community_id}"


def next_delivery(after: datetime) -> datetime:
    """The first delivery (local 05:00) strictly after ``after`` (naive local)."""
    at = after.replace(hour=DELIVERY_HOUR, minute=0, second=0, microsecond=0)
    return at if at > after else at + timedelta(days=1)


@dataclass
class Forecast:
    """The newest forecast: hourly P50/P90 per community and SKU from its origin on."""

    frame: pd.DataFrame  # community_id, sku, hour (naive local), p50, p90 and mean when the forecast has one
    model_version: str
    made_at: datetime
    origin: datetime


@dataclass
class PlanReport:
    """What ``make_plan`` wrote."""

    delivery_at: datetime
    rows: int
    order_units: int
    pooled_units: int
    plan_version: str
    model_version: str
    made_at: datetime
    warehouses: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"delivery_at": self.delivery_at.isoformat(), "rows": self.rows, "order_units": self.order_units,
                "pooled_units": self.pooled_units, "plan_version": self.plan_version, "model_version": self.model_version,
                "made_at": self.made_at.isoformat(), "warehouses": self.warehouses, "notes": list(self.notes)}


def load_forecast(warehouse: Warehouse, tz: str, community_id: str | None = None) -> Forecast:
    """The newest forecast of every series (of one community if given), from the newest run's origin on.

    A series re-forecast for the same hours keeps only its newest values.
    """
    if FORECAST_TABLE not in set(warehouse.tables()):
        raise FileNotFoundError("the warehouse has no demand_forecast: run `lastmile forecast` first")
    where = "WHERE community_id = {c:String}" if community_id else ""
    params: dict[str, Any] = {"tz": tz, **({"c": community_id} if community_id else {})}
    head = warehouse.rows(f"SELECT max(made_at), argMax(model_version, made_at) FROM {FORECAST_TABLE} {where}", params)
    made_at, model_version = head[0] if head else (None, None)
    if made_at is None or model_version is None or (isinstance(made_at, datetime) and made_at.year < 2000):
        raise FileNotFoundError("demand_forecast is empty" + (f" for community {community_id}" if community_id else "")
                                + ": run `lastmile forecast` first")
    origin_text = warehouse.scalar(
        f"SELECT formatDateTime(min(hour), '%Y-%m-%d %H:%i:%S', {{tz:String}}) FROM {FORECAST_TABLE} "
        f"WHERE made_at = (SELECT max(made_at) FROM {FORECAST_TABLE} {where}) {'AND community_id = {c:String}' if community_id else ''}",
        params)
    columns = {c for (c,) in warehouse.rows("SELECT name FROM system.columns WHERE database = currentDatabase() "
                                            "AND table = {t:String}", {"t": FORECAST_TABLE})}
    point = ", toFloat64(argMax(mean, made_at)) AS mean" if "mean" in columns else ""
    result = warehouse.query(
        f"SELECT community_id, sku, formatDateTime(hour, '%Y-%m-%d %H:%i:%S', {{tz:String}}) AS hour_local, "
        f"toFloat64(argMax(p50, made_at)) AS p50, toFloat64(argMax(p90, made_at)) AS p90{point} FROM {FORECAST_TABLE} "
        f"{where} GROUP BY community_id, sku, hour HAVING hour_local >= {{origin:String}} ORDER BY community_id, sku, hour_local",
        {**params, "origin": origin_text})
    frame = pd.DataFrame(result.result_rows, columns=["community_id", "sku", "hour", "p50", "p90"] + (["mean"] if point else []))
    frame["hour"] = pd.to_datetime(frame["hour"])
    return Forecast(frame, str(model_version), made_at if made_at.tzinfo else made_at.replace(tzinfo=timezone.utc),
                    datetime.fromisoformat(origin_text))


def load_lots(warehouse: Warehouse, at: datetime, tz: str) -> tuple[dict[tuple[str, str], list[Lot]], dict[str, float]]:
    """Lots on the shelf at ``at`` (naive local) per (community, SKU), and the newest unit cost per SKU.

    The last stock count at or before ``at`` says how many units there are; they are the
    newest receipts still in date (the shelf sells oldest first), each keeping its
    best-before. Units a count shows beyond the receipts on record are given the newest
    receipt's best-before. Without inventory data the shelves are empty.
    """
    if "raw_inventory" not in set(warehouse.tables()):
        return {}, {}
    at_utc = at.replace(tzinfo=ZoneInfo(tz)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    params = {"at": at_utc, "tz": tz}
    counts = warehouse.rows(
        "SELECT community_id, sku, argMax(qty, occurred_at) FROM raw_inventory FINAL "
        "WHERE movement = 'stock_count' AND occurred_at <= toDateTime64({at:String}, 3, 'UTC') GROUP BY community_id, sku", params)
    receipts = warehouse.rows(
        "SELECT community_id, sku, qty, formatDateTime(best_before, '%Y-%m-%d %H:%i:%S', {tz:String}), unit_cost "
        "FROM raw_inventory FINAL WHERE movement = 'receipt' AND occurred_at <= toDateTime64({at:String}, 3, 'UTC') "
        "AND best_before > toDateTime64({at:String}, 3, 'UTC') ORDER BY occurred_at", params)
    by_series: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    costs: dict[str, float] = {}
    for community, sku, qty, best_before, unit_cost in receipts:
        by_series[(str(community), str(sku))].append((hour_number(datetime.fromisoformat(best_before)), int(qty)))
        if unit_cost is not None and unit_cost > 0:
            costs[str(sku)] = float(unit_cost)
    lots: dict[tuple[str, str], list[Lot]] = {}
    for community, sku, counted in counts:
        key = (str(community), str(sku))
        left = int(counted)
        found: list[Lot] = []
        for best_before, qty in sorted(by_series.get(key, []), reverse=True):
            if left <= 0:
                break
            take = min(left, qty)
            found.append(Lot(take, best_before))
            left -= take
        if left > 0:
            newest = max((b for b, _ in by_series.get(key, [])), default=hour_number(at) + 24)
            found.append(Lot(left, newest))
        lots[key] = found
    return lots, costs


def sku_economics(skus: pd.DataFrame, cfg: Settings, costs: dict[str, float] | None = None) -> dict[str, Economics]:
    """Each SKU's costs from its price, shelf life and the configured shares (a receipt's unit cost if known)."""
    missing = {"sku", "unit_price", "shelf_life_days"} - set(skus.columns)
    if missing:
        raise ValueError(f"ref_skus lacks {', '.join(sorted(missing))}: re-run `lastmile simulate` and `lastmile transform` "
                         "(the SKU list needs prices and shelf lives)")
    costs = costs or {}
    return {str(s): Economics.of(float(p), float(life), cfg.stocking_cost_share, cfg.stocking_goodwill_share, costs.get(str(s)),
                                 cfg.stocking_holding_share)
            for s, p, life in zip(skus["sku"], skus["unit_price"], skus["shelf_life_days"])}


def plan_version(model_version: str, cfg: Settings) -> str:
    """Names the method, the forecast model and the cost settings a plan was made with."""
    spec = (f"{METHOD}|{model_version}|{cfg.stocking_cost_share}|{cfg.stocking_goodwill_share}|{cfg.stocking_holding_share}|"
            f"{cfg.pool_km}|{cfg.pool_unit_cost}")
    return f"{METHOD}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


def build_plan(forecast: pd.DataFrame, economics: dict[str, Economics], lots: dict[tuple[str, str], list[Lot]],
               order_at: datetime, delivery_at: datetime, neighbours: dict[str, list[tuple[float, str]]] | None = None,
               names: dict[str, str] | None = None, handling: float = 0.0) -> tuple[list[Decision], list[str]]:
    """One decision per community × SKU of the forecast for ``delivery_at``, pooled between neighbours
    (``handling``: CNY to move a unit between them, see :func:`lastmile.stocking.pooling.pool`).

    Returns the decisions and notes on what could not be planned (SKUs without price or shelf
    life, series whose forecast does not reach the end of the selling period): those are
    listed, never silently dropped.
    """
    decisions: list[Decision] = []
    notes: list[str] = []
    names = names or {}
    unknown: set[str] = set()
    short: list[str] = []
    for (community, sku), group in forecast.groupby(["community_id", "sku"], sort=True):
        econ = economics.get(str(sku))
        if econ is None:
            unknown.add(str(sku))
            continue
        try:
            d = decide(str(community), str(sku), econ, order_at, delivery_at, [h.to_pydatetime() for h in group["hour"]],
                       group["p50"].to_numpy(), group["p90"].to_numpy(), lots.get((str(community), str(sku)), []),
                       sku_name=names.get(str(sku), ""), point=group["mean"].to_numpy() if "mean" in group.columns else None)
        except ValueError as exc:
            short.append(str(exc))
            continue
        decisions.append(d)
    if unknown:
        notes.append(f"{len(unknown)} SKU(s) in the forecast are not in ref_skus and were not planned: {', '.join(sorted(unknown)[:5])}")
    if short:
        notes.append(f"{len(short)} series were not planned (forecast incomplete): {'; '.join(short[:3])}")
    pool(decisions, neighbours or {}, {sku: e.unit_cost for sku, e in economics.items()}, handling)
    return decisions, notes


def ensure_table(warehouse: Warehouse, tz: str) -> None:
    warehouse.command(plan_table_sql(tz))


def write_plan(warehouse: Warehouse, decisions: Sequence[Decision], version: str, made_at: datetime, tz: str) -> int:
    """Insert the decisions (replacing any earlier plan of the same deliveries)."""
    ensure_table(warehouse, tz)
    zone = ZoneInfo(tz)
    rows = [(warehouse_id(d.community_id), d.community_id, d.sku, d.delivery_at.replace(tzinfo=zone), d.order_qty, d.on_hand,
             d.expiring_before_delivery, d.expiring_unsold, d.p50_demand, d.p90_demand, d.target, d.pooled_qty, d.reason, d.pool_from, version,
             made_at) for d in decisions]
    if rows:
        warehouse.insert_rows(PLAN_TABLE, rows, PLAN_COLUMNS)
    return len(rows)


def _frame(warehouse: Warehouse, table: str) -> pd.DataFrame:
    if table not in set(warehouse.tables()):
        return pd.DataFrame()
    result = warehouse.query(f"SELECT * FROM {table}")
    return pd.DataFrame(result.result_rows, columns=list(result.column_names))


def make_plan(cfg: Settings, warehouse: Warehouse, now: datetime | None = None) -> PlanReport:
    """Plan the next delivery after the newest forecast's origin and write it to ``stocking_plan``."""
    tz = cfg.business_tz
    forecast = load_forecast(warehouse, tz)
    order_at = forecast.origin
    delivery_at = next_delivery(order_at)
    skus = _frame(warehouse, "ref_skus")
    if skus.empty:
        raise FileNotFoundError("ref_skus is missing: run `lastmile transform` to load the reference data")
    lots, costs = load_lots(warehouse, order_at, tz)
    economics = sku_economics(skus, cfg, costs)
    distances = _frame(warehouse, "ref_community_distances")
    neighbours = neighbours_within(distances.to_dict("records"), cfg.pool_km) if not distances.empty else {}
    names = dict(zip(skus["sku"].astype(str), skus["name"].astype(str))) if "name" in skus.columns else {}
    decisions, notes = build_plan(forecast.frame, economics, lots, order_at, delivery_at, neighbours, names,
                                  cfg.pool_unit_cost)
    if not lots:
        notes.append("no stock counts in raw_inventory: every shelf is taken as empty")
    version = plan_version(forecast.model_version, cfg)
    made_at = now or datetime.now(timezone.utc)
    rows = write_plan(warehouse, decisions, version, made_at, tz)
    return PlanReport(delivery_at=delivery_at, rows=rows, order_units=int(sum(d.order_qty for d in decisions)),
                      pooled_units=int(sum(d.pooled_qty for d in decisions)), plan_version=version,
                      model_version=forecast.model_version, made_at=made_at,
                      warehouses=len({d.community_id for d in decisions}), notes=notes)


def read_plan(warehouse: Warehouse, tz: str, community_id: str | None = None, delivery: str | None = None) -> list[dict[str, Any]]:
    """Rows of the plan for one delivery (default: the newest planned), of one community if given.

    ``delivery``: a local date (``YYYY-MM-DD``). Times come back as local ISO text with offset.
    """
    if PLAN_TABLE not in set(warehouse.tables()):
        return []
    where = ["1"]
    params: dict[str, Any] = {"tz": tz}
    if community_id:
        where.append("community_id = {c:String}")
        params["c"] = community_id
    scope = " AND ".join(where)
    if delivery:
        day_filter = "toDate(delivery_at, {tz:String}) = toDate({d:String})"
        params["d"] = delivery
    else:
        day_filter = f"delivery_at = (SELECT max(delivery_at) FROM {PLAN_TABLE} WHERE {scope})"
    result = warehouse.query(
        f"SELECT warehouse_id, community_id, sku, formatDateTime(delivery_at, '%Y-%m-%dT%H:%i:%S', {{tz:String}}) AS delivery_local, "
        f"order_qty, on_hand, expiring_before_delivery, expiring_unsold, p50_demand, p90_demand, target_qty, pooled_qty, reason, pool_from, "
        f"plan_version, made_at FROM {PLAN_TABLE} FINAL WHERE {scope} AND {day_filter} ORDER BY warehouse_id, sku", params)
    zone = ZoneInfo(tz)
    out = []
    for row in result.result_rows:
        item = dict(zip(result.column_names, row))
        item["delivery_at"] = datetime.fromisoformat(item.pop("delivery_local")).replace(tzinfo=zone).isoformat()
        out.append(item)
    return out


__all__ = ["PLAN_COLUMNS", "PLAN_TABLE", "Forecast", "PlanReport", "build_plan", "load_forecast", "load_lots", "make_plan",
           "next_delivery", "plan_table_sql", "plan_version", "read_plan", "sku_economics", "warehouse_id", "write_plan"]
