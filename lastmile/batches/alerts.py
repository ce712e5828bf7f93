"""The ``batch_quality_alerts`` table: one row per alerted batch, whoever raised it.

Keyed on the alert id (``batch_quality:<batch_id>``), a ReplacingMergeTree: the stream worker
and the warehouse evaluation of ``lastmile run`` raise the same id for the same batch, so
re-running either, or both, never doubles an alert (the latest write of an id replaces the
earlier one; ``raised_by`` says which process wrote it).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

import orjson

from lastmile.batches.monitor import BatchAlert, epoch_s
from lastmile.warehouse import Warehouse
from lastmile.warehouse.migrations import MIGRATIONS, Migration, register

TABLE = "batch_quality_alerts"
#: Batch-quality migrations use versions 90-94.
MIGRATION_VERSION = 90

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    alert_id String COMMENT 'batch_quality:<batch_id>: one alert per batch, the lastmile.actions message key too.',
    batch_id String COMMENT 'Production or harvest batch (order line batch_id).',
    sku LowCardinality(String),
    origin String COMMENT 'Origin of the batch as the order lines give it.',
    merchants Array(String) COMMENT 'Merchants that sold the batch, most orders first.',
    orders UInt32 COMMENT 'Orders of the batch seen when it alerted.',
    feedback UInt32 COMMENT 'Orders with a review or claim that speak about the batch.',
    bad UInt32 COMMENT 'Of those, orders with a bad signal blamed on the batch.',
    reviews UInt32, bad_reviews UInt32, claims UInt32 COMMENT 'Quality or damage claims blamed on the batch.',
    bad_rate Float64, baseline_rate Float64 COMMENT 'The SKU baseline it was tested against.',
    rate_lower_bound Float64 COMMENT 'Wilson 95 % lower bound of bad / feedback.',
    p_value Float64 COMMENT 'Beta-binomial tail probability of that many bad orders under the baseline.',
    reasons String COMMENT 'JSON object: quality tag, stars<=2 or claim:<reason> -> count.',
    sample_texts Array(String) COMMENT 'First bad review texts of the batch.',
    first_bad_at DateTime64(3, 'UTC') COMMENT 'Event time of the first bad signal blamed on the batch.',
    alert_at DateTime64(3, 'UTC') COMMENT 'Event time of the review or claim that tipped it.',
    event_id String COMMENT 'That review or claim.',
    raised_by LowCardinality(String) COMMENT 'stream or replay (lastmile run).',
    raised_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(raised_at)
ORDER BY alert_id
COMMENT 'Batches whose bad reviews and claims crossed their SKU baseline (batch_quality.yml): what procurement acts on.'
"""

if not any(m.version == MIGRATION_VERSION for m in MIGRATIONS):
    register(Migration(MIGRATION_VERSION, TABLE, lambda: [DDL]))

COLUMNS = ["alert_id", "batch_id", "sku", "origin", "merchants", "orders", "feedback", "bad", "reviews", "bad_reviews",
           "claims", "bad_rate", "baseline_rate", "rate_lower_bound", "p_value", "reasons", "sample_texts",
           "first_bad_at", "alert_at", "event_id", "raised_by"]


def _utc(text: str) -> datetime:
    return datetime.fromtimestamp(epoch_s(text), timezone.utc)


def record(warehouse: Warehouse, alerts: Iterable[BatchAlert], raised_by: str) -> int:
    """Write alerts (a batch alerted before is replaced by the same row, never doubled)."""
    rows = [(a.alert_id, a.batch_id, a.sku, a.origin, a.merchants, a.orders, a.feedback, a.bad, a.reviews,
             a.bad_reviews, a.claims, a.bad_rate, a.baseline_rate, a.rate_lower_bound, a.p_value,
             orjson.dumps(a.reasons).decode(), a.sample_texts, _utc(a.first_bad_at), _utc(a.alert_at), a.event_id,
             raised_by) for a in alerts]
    if not rows:
        return 0
    return warehouse.insert_rows(TABLE, rows, COLUMNS)


def alerted_batches(warehouse: Warehouse) -> set[str]:
    """Batch ids alerted so far (the table must exist: run migrations first)."""
    return {row[0] for row in warehouse.rows(f"SELECT DISTINCT batch_id FROM {TABLE}")}
