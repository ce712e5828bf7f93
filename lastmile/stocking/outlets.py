"""Where the stocking plan goes: a CSV file for suppliers and farms, and purchase orders on Kafka.

Both carry the rows of one delivery as :func:`lastmile.stocking.plan.read_plan` returns them.

* **CSV** (``lastmile stocking export``): one line per front warehouse and SKU with a
  quantity to order, sorted by warehouse, with the reason so a farm's sales desk can see
  why the number moved. Rows with nothing to order are left out unless asked for.
* **Kafka** (``lastmile stocking export --kafka``): topic ``lastmile.purchase_orders``, one
  message per front warehouse × SKU × delivery, keyed by the warehouse id (one warehouse's
  orders stay in order on one partition). Each message carries ``purchase_order_id``, the
  sha256 of ``warehouse|sku|delivery_at|plan_version``: publishing the same plan twice sends
  the same ids, so a consumer deduplicates by it, and a re-made plan (new forecast or cost
  settings) gets new ids that supersede the old ones for the same warehouse, SKU and delivery.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import IO, Any

#: The Kafka topic of purchase orders (key: the front warehouse id).
PURCHASE_ORDERS_TOPIC = "lastmile.purchase_orders"
#: Columns of the CSV export, in order.
CSV_COLUMNS = ("delivery_at", "warehouse_id", "community_id", "sku", "sku_name", "order_qty", "pool_from", "pooled_qty",
               "on_hand", "p50_demand", "p90_demand", "reason", "purchase_order_id")


def purchase_order_id(row: Mapping[str, Any]) -> str:
    """Deterministic id of one order: the same plan row always gets the same id."""
    text = f"{row['warehouse_id']}|{row['sku']}|{row['delivery_at']}|{row['plan_version']}"
    return hashlib.sha256(text.encode()).hexdigest()


def purchase_order(row: Mapping[str, Any], sku_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One plan row as the purchase-order message a supplier system reads."""
    made_at = row["made_at"]
    return {
        "purchase_order_id": purchase_order_id(row),
        "warehouse_id": row["warehouse_id"],
        "community_id": row["community_id"],
        "sku": row["sku"],
        "sku_name": (sku_names or {}).get(row["sku"], ""),
        "delivery_at": row["delivery_at"],
        "order_qty": int(row["order_qty"]),
        "pool_from": row["pool_from"],
        "pooled_qty": int(row["pooled_qty"]),
        "on_hand": int(row["on_hand"]),
        "p50_demand": float(row["p50_demand"]),
        "p90_demand": float(row["p90_demand"]),
        "reason": row["reason"],
        "plan_version": row["plan_version"],
        "made_at": made_at.isoformat() if isinstance(made_at, datetime) else str(made_at),
    }


def write_csv(rows: Iterable[Mapping[str, Any]], stream: IO[str], sku_names: Mapping[str, str] | None = None,
              include_zero: bool = False) -> int:
    """The plan rows as CSV with a header; returns the lines written (header excluded)."""
    writer = csv.DictWriter(stream, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    written = 0
    for row in rows:
        if not include_zero and int(row["order_qty"]) == 0 and not row.get("pool_from"):
            continue
        message = purchase_order(row, sku_names)
        writer.writerow({k: ("" if message.get(k) is None else message[k]) for k in CSV_COLUMNS})
        written += 1
    return written


def messages(rows: Iterable[Mapping[str, Any]], sku_names: Mapping[str, str] | None = None) -> list[tuple[bytes, bytes, str]]:
    """(key, value, purchase_order_id) of each purchase-order message, in plan order."""
    out = []
    for row in rows:
        order = purchase_order(row, sku_names)
        out.append((str(order["warehouse_id"]).encode(), json.dumps(order, ensure_ascii=False, sort_keys=True).encode(),
                    order["purchase_order_id"]))
    return out


def publish(bootstrap: str, rows: Sequence[Mapping[str, Any]], sku_names: Mapping[str, str] | None = None,
            timeout_s: float = 15.0, topic: str = PURCHASE_ORDERS_TOPIC) -> int:
    """Send one message per plan row to ``topic`` (created if missing); returns the messages sent."""
    batch = messages(rows, sku_names)
    if not batch:
        return 0

    async def send() -> int:
        from aiokafka import AIOKafkaProducer

        from lastmile.audiences.destinations import ensure_topic

        await ensure_topic(bootstrap, topic, timeout_s=timeout_s)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=int(timeout_s * 1000))
        await asyncio.wait_for(producer.start(), timeout_s)
        try:
            sent = [await producer.send(topic, key=key, value=value, headers=[("purchase_order_id", po_id.encode())])
                    for key, value, po_id in batch]
            await asyncio.wait_for(asyncio.gather(*sent), timeout_s)
        finally:
            await producer.stop()
        return len(sent)

    try:
        return asyncio.run(send())
    except Exception as exc:  # a broker failure is one clear error, not a traceback
        raise ConnectionError(f"kafka {bootstrap} topic {topic}: {type(exc).__name__}: {exc}") from None
