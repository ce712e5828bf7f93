"""Data-quality gates with great-expectations: raw tables before the marts, marts after.

What the event contracts already guarantee (types, enums, required fields, value ranges of
single fields) is enforced at ingest and not repeated here. These suites check what a
contract cannot say about one event in isolation:

* **referential** — orders point at known communities, merchants, leaders and compartments;
  pickups, claims and reviews point at orders that exist; packaging goes into known boxes;
* **cross-field and cross-event** — slots end after they start and after the order; a
  pickup comes after its order from the same compartment; a claim does not exceed its order;
* **distributions** — order values, review stars, telemetry cadence and in-range shares
  stay where a working business keeps them;
* **freshness** — every raw table received data recently (``freshness_hours``);
* **marts** — every index inside its range, the credit top tier held at 15–18 % per
  community, RFM consistent, recommendation acceptance NULL while no recommendations exist.

How it runs: each dataset is one SQL query through :func:`lastmile.warehouse.connect` (so it
works on chDB and on a ClickHouse server alike), snapshotted to Parquet under
``$LASTMILE_HOME/quality/snapshots``; a great-expectations file context under
``$LASTMILE_HOME/quality/gx`` reads the snapshots through a pandas filesystem datasource, and
one checkpoint validates every suite and updates the data docs
(``$LASTMILE_HOME/quality/gx/uncommitted/data_docs/local_site/index.html``). A snapshot is
kept so that a failed expectation can be inspected against exactly the rows it judged. GE's
SQL datasource was not used: it needs a SQLAlchemy dialect, and no ClickHouse dialect here
speaks chDB.

The suites are defined below, in code, as the single source of truth; the GE project under
``$LASTMILE_HOME/quality/gx`` is regenerated from them on every run, while its validation
results and data docs accumulate.
"""

from __future__ import annotations

import logging
import time
import warnings
from decimal import Decimal

import numpy as np
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lastmile.config import Settings, settings as current_settings

log = logging.getLogger(__name__)

#: Raw tables must have received data within this many hours.
DEFAULT_FRESHNESS_HOURS = 48.0


@dataclass(frozen=True)
class Dataset:
    """One query and the expectations about its rows."""

    name: str
    layer: str  # raw | mart
    sql: str
    expectations: Callable[[Any, dict[str, Any]], list[Any]]
    requires: tuple[str, ...] = ()


@dataclass
class FailedExpectation:
    suite: str
    expectation: str
    column: str | None
    observed: Any
    kwargs: dict[str, Any]

    def __str__(self) -> str:
        where = f".{self.column}" if self.column else ""
        return f"{self.suite}{where}: {self.expectation} (observed {self.observed})"


@dataclass
class QualityResult:
    """Outcome of one checkpoint run."""

    success: bool
    failed: list[FailedExpectation] = field(default_factory=list)
    evaluated: int = 0
    datasets: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    data_docs: Path | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"success": self.success, "evaluated": self.evaluated, "datasets": self.datasets,
                "missing": self.missing, "failed": [str(f) for f in self.failed],
                "data_docs": str(self.data_docs) if self.data_docs else None, "seconds": round(self.seconds, 2)}


# -- suites ---------------------------------------------------------------------------------


def _known(gx: Any, *columns: str, mostly: float = 1.0) -> list[Any]:
    # Flags are stored as 1/0 (see _snapshot): GE cannot serialise numpy booleans in results.
    return [gx.expectations.ExpectColumnValuesToBeInSet(column=c, value_set=[1], mostly=mostly) for c in columns]


def _orders(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        e.ExpectColumnValuesToBeUnique(column="order_id"),
        *_known(gx, "community_known", "merchant_known", "leader_known", "compartment_known", "building_in_community"),
        *_known(gx, "slot_is_ordered"),
        # Next-day pickup is the rule; slots more than 3 days out or before the order are odd.
        e.ExpectColumnValuesToBeBetween(column="hours_to_slot", min_value=0, max_value=72, mostly=0.99),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="lines_amount", column_B="total_amount", or_equal=True, mostly=0.999),
        e.ExpectColumnMeanToBeBetween(column="total_amount", min_value=10, max_value=1000),
        e.ExpectColumnMedianToBeBetween(column="total_amount", min_value=10, max_value=500),
        e.ExpectColumnValuesToBeBetween(column="total_amount", min_value=0, max_value=5000, mostly=0.99),
        e.ExpectColumnDistinctValuesToBeInSet(column="channel", value_set=["mini_program", "group_chat", "store"]),
        e.ExpectColumnProportionOfNonNullValuesToBeBetween(column="oneid", min_value=p["min_oneid_share"]) if p["has_identity"]
        else e.ExpectColumnToExist(column="oneid"),
    ]


def _pickups(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="event_id"),
        *_known(gx, "order_known", mostly=0.999),
        e.ExpectColumnValuesToBeBetween(column="minutes_after_order", min_value=0, mostly=0.999),
        *_known(gx, "same_compartment", mostly=0.99),
        e.ExpectColumnProportionOfUniqueValuesToBeBetween(column="order_id", min_value=0.95),
    ]


def _returns(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="event_id"),
        *_known(gx, "kind_fields_consistent"),
        *_known(gx, "order_known", "box_known", mostly=0.999),
        *_known(gx, "amount_within_order", mostly=0.999),
        # Claims are the exception, not the rule: more claims than packaging returns is a signal.
        e.ExpectColumnMeanToBeBetween(column="is_claim", min_value=0.0, max_value=0.6),
    ]


def _reviews(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="event_id"),
        *_known(gx, "order_known", mostly=0.999),
        e.ExpectColumnValuesToBeBetween(column="minutes_after_order", min_value=0, mostly=0.999),
        e.ExpectColumnMeanToBeBetween(column="stars", min_value=3.0, max_value=5.0),
        e.ExpectColumnProportionOfUniqueValuesToBeBetween(column="order_id", min_value=0.95),
    ]


def _telemetry(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        *_known(gx, "compartment_known"),
        # One reading every 5 minutes is 288 a day; edge days of the window are partial.
        e.ExpectColumnMedianToBeBetween(column="readings", min_value=250, max_value=320),
        e.ExpectColumnValuesToBeBetween(column="readings", min_value=1, max_value=400),
        e.ExpectColumnValuesToBeBetween(column="cold_in_range_share", min_value=0.8, max_value=1.0, mostly=0.95),
        e.ExpectColumnMeanToBeBetween(column="chilled_mean_c", min_value=0.0, max_value=6.0),
        e.ExpectColumnMeanToBeBetween(column="frozen_mean_c", min_value=-30.0, max_value=-15.0),
    ]


def _freshness(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeBetween(column="rows", min_value=1),
        e.ExpectColumnValuesToBeBetween(column="hours_since_ingest", max_value=p["freshness_hours"]),
    ]


def _score_columns(gx: Any, columns: Sequence[str], high: float = 100.0) -> list[Any]:
    return [gx.expectations.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=high) for c in columns]


def _sti(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        *_score_columns(gx, ["traceability_score", "cold_chain_score", "punctuality_score", "communication_score",
                             "after_sales_score", "packaging_score", "service_temperature"]),
        e.ExpectColumnValuesToNotBeNull(column="service_temperature"),
        e.ExpectColumnDistinctValuesToEqualSet(column="grain", value_set=["community", "leader", "locker"]),
    ]


def _ahi(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        *_score_columns(gx, ["in_alliance_score", "cross_selling_score", "response_score", "turnover_score",
                             "concentration_score", "retention_score", "alliance_health"]),
        e.ExpectColumnValuesToBeBetween(column="merchant_hhi", min_value=0, max_value=10000),
    ]


def _credit_tiers(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectTableRowCountToBeBetween(min_value=1),
        # Scarcity: the top tier holds 15-18 % of every community big enough to fit the band.
        e.ExpectColumnValuesToBeBetween(column="gold_share", min_value=0.15, max_value=0.18),
        e.ExpectColumnValuesToBeBetween(column="min_score", min_value=0, max_value=1000),
        e.ExpectColumnValuesToBeBetween(column="max_score", min_value=0, max_value=1000),
        # Gold must mean something: its floor is above the community median.
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="gold_floor", column_B="median_score", or_equal=True),
    ]


def _spending(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    out = [
        e.ExpectColumnValuesToBeUnique(column="oneid"),
        *_score_columns(gx, ["impulse_score", "late_night_score", "velocity_score", "balance_score", "spending_health_score"]),
        *_score_columns(gx, ["impulse_share", "late_night_share", "category_balance"], high=1.0),
    ]
    if not p["has_recommendations"]:
        # No recommender yet: acceptance must be absent, never imputed.
        out.append(e.ExpectColumnValuesToBeNull(column="recommendation_acceptance"))
    return out


def _rfm(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="oneid"),
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="t_days", column_B="recency_days", or_equal=True),
        e.ExpectColumnValuesToBeBetween(column="frequency", min_value=0),
        e.ExpectColumnValuesToBeBetween(column="monetary_value_cny", min_value=0),
    ]


def _dim_customer(gx: Any, p: dict[str, Any]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeUnique(column="oneid"),
        e.ExpectColumnValuesToNotBeNull(column="home_community_id"),
        e.ExpectColumnValuesToBeInSet(column="credit_tier", value_set=["gold", "silver", "bronze", "starter"]),
        e.ExpectColumnValuesToBeBetween(column="orders", min_value=1),
    ]


_COMPARTMENTS = "(SELECT c.compartment_id FROM ref_lockers ARRAY JOIN compartments AS c)"

DATASETS: tuple[Dataset, ...] = (
    Dataset("raw_order", "raw", f"""
        SELECT o.order_id AS order_id, o.channel AS channel, toFloat64(o.total_amount) AS total_amount,
               toFloat64(arraySum(x -> x.qty * x.unit_price, o.items)) AS lines_amount,
               o.delivery_slot_end > o.delivery_slot_start AS slot_is_ordered,
               dateDiff('minute', o.occurred_at, o.delivery_slot_start) / 60.0 AS hours_to_slot,
               o.community_id IN (SELECT community_id FROM ref_communities) AS community_known,
               o.merchant_id IN (SELECT merchant_id FROM ref_merchants) AS merchant_known,
               o.leader_id IN (SELECT leader_id FROM ref_leaders) AS leader_known,
               o.compartment_id IN {_COMPARTMENTS} AS compartment_known,
               o.community_id = b.community_id AS building_in_community,
               {{oneid}} AS oneid
        FROM raw_order AS o FINAL
        LEFT JOIN ref_buildings AS b ON b.building_id = o.building_id
        {{oneid_join}}""", _orders, ("raw_order", "ref_communities")),
    Dataset("raw_pickup", "raw", """
        SELECT p.event_id AS event_id, p.order_id AS order_id, o.order_id != '' AS order_known,
               if(o.order_id = '', NULL, dateDiff('minute', o.occurred_at, p.occurred_at)) AS minutes_after_order,
               if(o.order_id = '', NULL, p.compartment_id = o.compartment_id) AS same_compartment
        FROM raw_pickup AS p FINAL
        LEFT JOIN (SELECT order_id, occurred_at, compartment_id FROM raw_order FINAL) AS o ON o.order_id = p.order_id""",
            _pickups, ("raw_pickup", "raw_order")),
    Dataset("raw_return", "raw", """
        SELECT r.event_id AS event_id, r.kind = 'claim' AS is_claim,
               (r.kind = 'claim') = (r.order_id IS NOT NULL AND r.box_id IS NULL) AS kind_fields_consistent,
               r.order_id IS NULL OR o.order_id != '' AS order_known,
               r.box_id IS NULL OR r.box_id IN (SELECT box_id FROM ref_recycling_boxes) AS box_known,
               r.amount IS NULL OR o.order_id = '' OR r.amount <= o.total_amount AS amount_within_order
        FROM raw_return AS r FINAL
        LEFT JOIN (SELECT order_id, total_amount FROM raw_order FINAL) AS o ON o.order_id = r.order_id""",
            _returns, ("raw_return", "raw_order", "ref_recycling_boxes")),
    Dataset("raw_review", "raw", """
        SELECT v.event_id AS event_id, v.order_id AS order_id, v.stars AS stars, o.order_id != '' AS order_known,
               if(o.order_id = '', NULL, dateDiff('minute', o.occurred_at, v.occurred_at)) AS minutes_after_order
        FROM raw_review AS v FINAL
        LEFT JOIN (SELECT order_id, occurred_at FROM raw_order FINAL) AS o ON o.order_id = v.order_id""",
            _reviews, ("raw_review", "raw_order")),
    Dataset("raw_locker_telemetry", "raw", f"""
        SELECT compartment_id, toDate(occurred_at, '{{business_tz}}') AS day, any(product_class) AS compartment_class,
               count() AS readings,
               if(any(product_class) = 'ambient', NULL,
                  countIf(multiIf(product_class = 'chilled', temperature_c BETWEEN 0 AND 4, temperature_c <= -18)) / count()) AS cold_in_range_share,
               if(any(product_class) = 'chilled', avg(temperature_c), NULL) AS chilled_mean_c,
               if(any(product_class) = 'frozen', avg(temperature_c), NULL) AS frozen_mean_c,
               compartment_id IN {_COMPARTMENTS} AS compartment_known
        FROM raw_locker_telemetry FINAL
        GROUP BY compartment_id, day""", _telemetry, ("raw_locker_telemetry", "ref_lockers")),
    Dataset("raw_freshness", "raw", """
        SELECT table, rows, dateDiff('second', newest_ingest, now64(3)) / 3600.0 AS hours_since_ingest
        FROM (
            SELECT 'raw_order' AS table, count() AS rows, max(_ingested_at) AS newest_ingest FROM raw_order
            UNION ALL SELECT 'raw_pickup', count(), max(_ingested_at) FROM raw_pickup
            UNION ALL SELECT 'raw_return', count(), max(_ingested_at) FROM raw_return
            UNION ALL SELECT 'raw_review', count(), max(_ingested_at) FROM raw_review
            UNION ALL SELECT 'raw_identify', count(), max(_ingested_at) FROM raw_identify
            UNION ALL SELECT 'raw_locker_telemetry', count(), max(_ingested_at) FROM raw_locker_telemetry
        )""", _freshness, ("raw_order",)),
    Dataset("service_temperature_index", "mart", "SELECT * FROM service_temperature_index", _sti, ("service_temperature_index",)),
    Dataset("alliance_health_index", "mart", "SELECT * FROM alliance_health_index", _ahi, ("alliance_health_index",)),
    Dataset("neighbor_credit_tiers", "mart", """
        SELECT home_community_id, count() AS members, countIf(credit_tier = 'gold') / count() AS gold_share,
               min(credit_score) AS min_score, max(credit_score) AS max_score,
               minIf(credit_score, credit_tier = 'gold') AS gold_floor, quantileExact(0.5)(credit_score) AS median_score
        FROM neighbor_credit_score
        GROUP BY home_community_id
        HAVING members >= 34""", _credit_tiers, ("neighbor_credit_score",)),
    Dataset("spending_health", "mart", "SELECT * EXCEPT (as_of_date) FROM spending_health", _spending, ("spending_health",)),
    Dataset("customer_rfm", "mart", "SELECT * EXCEPT (as_of_date, first_purchase_date, last_purchase_date) FROM customer_rfm",
            _rfm, ("customer_rfm",)),
    Dataset("dim_customer", "mart", "SELECT oneid, home_community_id, credit_tier, orders FROM dim_customer", _dim_customer,
            ("dim_customer",)),
)


# -- running --------------------------------------------------------------------------------


def _snapshot(warehouse: Any, dataset: Dataset, params: dict[str, Any], folder: Path) -> int:
    sql = dataset.sql.replace("{business_tz}", params["business_tz"])
    if dataset.name == "raw_order":
        if params["has_identity"]:
            sql = sql.replace("{oneid}", "nullIf(e.oneid, '')").replace(
                "{oneid_join}", "LEFT JOIN (SELECT event_id, oneid FROM event_oneid WHERE event_type = 'order') AS e ON e.event_id = o.event_id")
        else:
            sql = sql.replace("{oneid}", "CAST(NULL AS Nullable(String))").replace("{oneid_join}", "")
    frame = warehouse.client.query_df(sql)
    for column in frame.columns:  # Parquet (and GE's metrics) want plain types: decimals become floats
        values = frame[column].dropna()
        if frame[column].dtype == object and len(values) and isinstance(values.iloc[0], Decimal):
            frame[column] = frame[column].astype("float64")
        elif frame[column].dtype == bool or (frame[column].dtype == object and len(values) and isinstance(values.iloc[0], (bool, np.bool_))):
            frame[column] = frame[column].astype("Int64")
    frame.to_parquet(folder / f"{dataset.name}.parquet", index=False)
    return len(frame)


def _reset_project(gx_dir: Path) -> None:
    """Drop the generated GE configuration (datasource, suites, definitions, checkpoint).

    The suites in this module are the source of truth; the GE project is regenerated from
    them on every run, so it can never drift. Validation results and data docs (under
    ``uncommitted/``) are kept: they are the history analysts browse.
    """
    import shutil

    (gx_dir / "great_expectations.yml").unlink(missing_ok=True)
    for sub in ("expectations", "validation_definitions", "checkpoints"):
        shutil.rmtree(gx_dir / sub, ignore_errors=True)


def check(cfg: Settings | None = None, freshness_hours: float = DEFAULT_FRESHNESS_HOURS, layers: Sequence[str] = ("raw", "mart"),
          min_oneid_share: float = 0.95) -> QualityResult:
    """Run the checkpoint over raw tables and marts; write data docs under $LASTMILE_HOME/quality.

    A dataset whose tables are missing is reported in ``missing`` and fails the check: a gate
    that passes because there was nothing to look at is no gate.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from lastmile.warehouse import connect

    started = time.perf_counter()
    cfg = cfg or current_settings()
    root = cfg.home / "quality"
    snapshots = root / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    warehouse = connect(cfg)
    tables = set(warehouse.tables())
    params = {"freshness_hours": freshness_hours, "business_tz": cfg.business_tz, "has_identity": "event_oneid" in tables,
              "has_recommendations": "recommendation_events" in tables, "min_oneid_share": min_oneid_share}

    result = QualityResult(success=False)
    chosen: list[Dataset] = []
    for dataset in DATASETS:
        if dataset.layer not in layers:
            continue
        absent = [t for t in dataset.requires if t not in tables]
        if absent:
            result.missing.append(f"{dataset.name} (missing {', '.join(absent)})")
            continue
        result.datasets[dataset.name] = _snapshot(warehouse, dataset, params, snapshots)
        chosen.append(dataset)

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    _reset_project(root / "gx")
    with warnings.catch_warnings():  # "config_variables.yml exists": expected, we keep uncommitted/
        warnings.simplefilter("ignore", UserWarning)
        context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm noise in CLI output
    source = context.data_sources.add_pandas_filesystem("lastmile_snapshots", base_directory=str(snapshots))
    definitions = []
    for dataset in chosen:
        batch = source.add_parquet_asset(dataset.name).add_batch_definition_path("latest", path=f"{dataset.name}.parquet")
        suite = context.suites.add(gx.ExpectationSuite(name=f"lastmile.{dataset.layer}.{dataset.name}",
                                                       expectations=dataset.expectations(gx, params)))
        definitions.append(context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate.{dataset.name}", data=batch, suite=suite)))
    if definitions:
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name="lastmile_quality", validation_definitions=definitions,
            actions=[UpdateDataDocsAction(name="update_data_docs")], result_format="SUMMARY"))
        outcome = checkpoint.run()
        for run in outcome.run_results.values():
            suite_name = run.suite_name
            for r in run.results:
                result.evaluated += 1
                if not r.success:
                    cfg_ = r.expectation_config
                    kwargs = dict(cfg_.kwargs)
                    observed = (r.result or {}).get("observed_value",
                                                    (r.result or {}).get("unexpected_percent"))
                    if r.exception_info and r.exception_info.get("raised_exception"):
                        observed = r.exception_info.get("exception_message")
                    result.failed.append(FailedExpectation(suite_name, cfg_.type, kwargs.get("column"), observed, kwargs))
        docs = root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
        result.data_docs = docs if docs.exists() else None
    result.success = bool(definitions) and not result.failed and not result.missing
    result.seconds = time.perf_counter() - started
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lastmile.quality [--layer raw|mart] [--freshness-hours H]``: exit 1 on failure."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m lastmile.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--layer", action="append", choices=["raw", "mart"])
    parser.add_argument("--freshness-hours", type=float, default=DEFAULT_FRESHNESS_HOURS)
    args = parser.parse_args(argv)
    result = check(freshness_hours=args.freshness_hours, layers=args.layer or ("raw", "mart"))
    print(json.dumps(result.as_dict(), ensure_ascii=False, default=str))
    return 0 if result.success else 1


if __name__ == "__main__":
    raise SystemExit(main())
