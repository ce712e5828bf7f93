"""Batch-quality alerts in the stream worker: a handler that feeds each written batch to the
:class:`~lastmile.batches.monitor.BatchMonitor` and publishes what it tips.

An alert goes to ``lastmile.actions`` (action ``batch_quality_alert``, keyed by its alert id)
and then to ``batch_quality_alerts``, within the handling of the batch that holds the tipping
review or claim: well within a minute of the event. Published before it is recorded, so a
crash in between re-sends it with the same id rather than losing it.

At start the worker loads the last ``memory_days`` of orders, reviews and claims from the
warehouse into the monitor (so feedback about orders placed before it started is judged
against their batches); a batch that crosses during that load and has no row yet (its
events came by a file backfill, or the worker stopped between publishing and recording) is
published with the first batch handled.
"""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

from lastmile.batches.alerts import alerted_batches, record
from lastmile.batches.evaluate import replay, warehouse_rows
from lastmile.batches.monitor import BatchAlert, BatchMonitor, epoch_s
from lastmile.batches.rules import BatchRules
from lastmile.warehouse import Warehouse

#: Raw tables the monitor reads, and their order at one instant (an order before its feedback).
TABLES = {"raw_order": 0, "raw_review": 1, "raw_return": 1}


class BatchQualityWatch:
    """The monitor of one worker and the alerts waiting to be published."""

    def __init__(self, warehouse: Warehouse, rules: BatchRules) -> None:
        self.warehouse = warehouse
        self.rules = rules
        self.monitor = BatchMonitor(rules)
        self.pending: list[BatchAlert] = []
        self.raised = 0
        self._forgot_s = 0.0

    def load(self) -> int:
        """Load recent history from the warehouse (hold the warehouse lock). Returns the events read."""
        self.monitor = BatchMonitor(self.rules, alerted_batches(self.warehouse))
        newest = self.warehouse.scalar("SELECT max(occurred_at) FROM raw_order")
        if newest is None or newest.year < 2000:
            return 0
        newest = newest if newest.tzinfo else newest.replace(tzinfo=timezone.utc)
        rows = list(warehouse_rows(self.warehouse, since=newest - timedelta(days=self.rules.memory_days)))
        self.pending = replay(self.monitor, rows)
        return len(rows)

    def observe(self, tables: dict[str, list[dict[str, Any]]]) -> list[BatchAlert]:
        """Feed a batch's rows (raw table -> rows) in event-time order; the alerts they tip."""
        rows = sorted(((epoch_s(row["occurred_at"]), TABLES[table], row.get("event_id") or "", table, row)
                       for table, table_rows in tables.items() if table in TABLES for row in table_rows),
                      key=lambda r: r[:3])
        alerts: list[BatchAlert] = []
        for _, _, _, table, row in rows:
            alerts += self.monitor.feed(table, row)
        newest = self.monitor.newest_s
        if newest - self._forgot_s > 86_400:  # once a day of event time: drop what is older than the memory
            self.monitor.forget_before(newest - self.rules.memory_days * 86_400)
            self._forgot_s = newest
        return alerts

    def handler(self, sink: Any, publish: Any) -> Any:
        """The worker's batch handler: observe, publish to ``lastmile.actions``, then record."""
        from lastmile.streaming.topics import ACTIONS_TOPIC

        async def handle(written: Any) -> None:
            alerts = self.pending + self.observe({t: written.rows(t) for t in TABLES})
            if not alerts:
                return
            actions = [a.action() for a in alerts]
            await publish(ACTIONS_TOPIC, [(a.key(), a.to_json()) for a in actions])
            await sink.run_blocking(record, sink.warehouse, alerts, "stream")
            self.pending = []
            self.raised += len(alerts)

        return handle
