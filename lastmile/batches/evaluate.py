"""Batch-quality alerts over the warehouse, and how they score against the simulator's truth.

:func:`evaluate_warehouse` replays the ingested orders, reviews and claims in event-time
order through the same :class:`~lastmile.batches.monitor.BatchMonitor` the stream worker
runs, so ``lastmile run`` (which has no stream) raises the alerts the worker would have
raised, at the event that tipped each one. :func:`record_alerts` writes them to
``batch_quality_alerts`` (one row per batch, keyed on the alert id the stream uses too).

:func:`score` compares alerts with ``truth/bad_batches.jsonl``:

* **recall**: bad batches alerted / bad batches;
* **false rate**: alerts on good batches / all alerts ("no more than 1 alert in 20 on a good
  batch"); the share of good batches alerted is reported beside it;
* **detection delay**: hours from a bad batch's first bad signal (the truth's
  ``first_bad_signal_at``) to the event that tipped its alert; the median over detected batches.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from lastmile.batches.monitor import BatchAlert, BatchMonitor, epoch_s
from lastmile.batches.rules import BatchRules
from lastmile.warehouse import Warehouse

#: Order, review and claim rows in event-time order: (occurred_at, rank, table, row). At one
#: instant an order goes before the feedback about it.
_EVENTS_SQL = """
SELECT * FROM (
    SELECT occurred_at, 0 AS rank, 'raw_order' AS t, order_id, event_id, merchant_id,
           arrayMap(i -> (i.sku, ifNull(i.category, ''), ifNull(i.origin, ''), ifNull(i.batch_id, '')), items) AS lines,
           toUInt8(0) AS stars, CAST([] AS Array(String)) AS tags, '' AS text, '' AS kind, '' AS reason
    FROM raw_order FINAL {where}
    UNION ALL
    SELECT occurred_at, 1, 'raw_review', order_id, event_id, '', [], stars, tags, ifNull(text, ''), '', ''
    FROM raw_review FINAL {where}
    UNION ALL
    SELECT occurred_at, 1, 'raw_return', ifNull(order_id, ''), event_id, '', [], 0, [], '', kind, ifNull(reason, '')
    FROM raw_return FINAL {where} {and_claim}
)
ORDER BY occurred_at, rank, event_id
"""


def warehouse_rows(warehouse: Warehouse, since: Any = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(raw table, row)`` of the ingested orders, reviews and claims in event-time order
    (``since``: only events at or after that time)."""
    where = "WHERE occurred_at >= {since:DateTime64(3, 'UTC')}" if since is not None else ""
    sql = _EVENTS_SQL.format(where=where, and_claim=("AND" if where else "WHERE") + " kind = 'claim'")
    parameters = {"since": since} if since is not None else None
    for (at, _, table, order_id, event_id, merchant, lines, stars, tags, text, kind,
         reason) in warehouse.rows(sql, parameters):
        if table == "raw_order":
            yield table, {"order_id": order_id, "event_id": event_id, "occurred_at": at, "merchant_id": merchant,
                          "items": [{"sku": s, "category": c, "origin": o, "batch_id": b} for s, c, o, b in lines]}
        elif table == "raw_review":
            yield table, {"order_id": order_id, "event_id": event_id, "occurred_at": at, "stars": stars,
                          "tags": tags, "text": text or None}
        else:
            yield table, {"order_id": order_id, "event_id": event_id, "occurred_at": at, "kind": kind,
                          "reason": reason or None}


def replay(monitor: BatchMonitor, rows: Iterable[tuple[str, dict[str, Any]]]) -> list[BatchAlert]:
    """Feed ``rows`` to ``monitor``; the alerts they raise, in the order raised."""
    alerts: list[BatchAlert] = []
    for table, row in rows:
        alerts += monitor.feed(table, row)
    return alerts


def evaluate_warehouse(warehouse: Warehouse, rules: BatchRules) -> list[BatchAlert]:
    """Every alert the ingested events raise, replayed from the start in event-time order."""
    return replay(BatchMonitor(rules), warehouse_rows(warehouse))


@dataclass(frozen=True)
class Detection:
    """How the alerts did against the injected bad batches."""

    bad_batches: int
    detected: int
    alerts: int
    false_alerts: int
    good_batches: int
    recall: float
    false_rate: float  # alerts on good batches / alerts
    good_batches_alerted: float  # alerts on good batches / good batches
    median_delay_hours: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def text(self) -> str:
        delay = f"{self.median_delay_hours:.1f} h" if self.median_delay_hours is not None else "n/a"
        return (f"batch-quality alerts: {self.alerts} raised; recall {self.recall:.3f} "
                f"({self.detected}/{self.bad_batches} bad batches), false rate {self.false_rate:.3f} "
                f"({self.false_alerts} on good batches, {self.good_batches_alerted:.4f} of {self.good_batches}); "
                f"median detection delay after the first bad signal {delay}")


def read_truth(path: Path) -> list[dict[str, Any]]:
    """Rows of ``truth/bad_batches.jsonl``."""
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def score(alerts: Iterable[BatchAlert], truth: list[dict[str, Any]], batches: int) -> Detection:
    """Alerts against the truth; ``batches``: how many distinct batches were sold (good + bad)."""
    first_bad = {row["batch_id"]: row.get("first_bad_signal_at") for row in truth}
    alerted = {a.batch_id: a for a in alerts}
    detected = [b for b in first_bad if b in alerted]
    false_alerts = len([b for b in alerted if b not in first_bad])
    delays = [(epoch_s(alerted[b].alert_at) - epoch_s(first_bad[b])) / 3600 for b in detected if first_bad[b]]
    good = max(0, batches - len(first_bad))
    return Detection(
        bad_batches=len(first_bad), detected=len(detected), alerts=len(alerted), false_alerts=false_alerts,
        good_batches=good, recall=round(len(detected) / len(first_bad), 4) if first_bad else 1.0,
        false_rate=round(false_alerts / len(alerted), 4) if alerted else 0.0,
        good_batches_alerted=round(false_alerts / good, 5) if good else 0.0,
        median_delay_hours=round(statistics.median(delays), 2) if delays else None)


def sold_batches(warehouse: Warehouse) -> int:
    """Distinct batches on the ingested order lines (good and bad: the false-rate denominator)."""
    return int(warehouse.scalar(
        "SELECT uniqExact(b) FROM (SELECT arrayJoin(arrayMap(i -> ifNull(i.batch_id, ''), items)) AS b FROM raw_order FINAL) WHERE b != ''") or 0)


def alert_and_score(warehouse: Warehouse, rules: BatchRules, truth: Path | None = None,
                    ) -> tuple[list[BatchAlert], Detection | None]:
    """What ``lastmile run`` does: replay the warehouse, record the alerts (``raised_by`` replay)
    and, when ``truth`` (``truth/bad_batches.jsonl``) exists, score them against it."""
    from lastmile.batches.alerts import record

    alerts = evaluate_warehouse(warehouse, rules)
    record(warehouse, alerts, "replay")
    if truth is None or not truth.exists():
        return alerts, None
    return alerts, score(alerts, read_truth(truth), sold_batches(warehouse))
