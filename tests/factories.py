"""Realistic hand-made events for tests: one valid event per contract, easy to spoil."""

from __future__ import annotations

import copy
import itertools
from typing import Any

_ids = itertools.count(1)

BASE: dict[str, dict[str, Any]] = {
    "locker_telemetry": {
        "source": "locker", "locker_id": "L-C01-1", "compartment_id": "L-C01-1-K01", "community_id": "C01",
        "product_class": "chilled", "temperature_c": 2.8, "humidity_pct": 71.5, "door": "closed", "power": "mains",
    },
    "order": {
        "source": "mini_program", "order_id": "ord-000000001",
        "buyer": {"openid": "oQ7x-9fa2", "unionid": "uW-1a2b3c", "phone": "138 0013 8000"},
        "community_id": "C01", "building_id": "C01-B03", "leader_id": "LD-C01-B03", "merchant_id": "M07",
        "items": [
            {"sku": "SKU-0012", "category": "vegetables", "qty": 2, "unit_price": 6.5, "origin": "Chongming, Shanghai", "batch_id": "B2026-11-18-04"},
            {"sku": "SKU-0203", "category": "tea", "qty": 1, "unit_price": 38.0, "origin": "Anxi, Fujian", "batch_id": "B2026-10-02-01"},
        ],
        "total_amount": 51.0, "delivery_slot_start": "2026-11-20T17:00:00+08:00", "delivery_slot_end": "2026-11-20T19:00:00+08:00",
        "locker_id": "L-C01-1", "compartment_id": "L-C01-1-K01", "channel": "mini_program",
    },
    "pickup": {
        "source": "locker", "order_id": "ord-000000001", "locker_id": "L-C01-1", "compartment_id": "L-C01-1-K01",
        "code_verified": True, "collector_role": "buyer", "collector": {"phone": "+86 13800138000"},
    },
    "return": {
        "source": "mini_program", "kind": "claim", "claimant": {"openid": "oQ7x-9fa2"}, "order_id": "ord-000000001",
        "reason": "temperature", "amount": 12.5, "evidence": ["photo://claims/88/1.jpg"],
    },
    "review": {
        "source": "mini_program", "order_id": "ord-000000001", "reviewer": {"openid": "oQ7x-9fa2"}, "stars": 4,
        "text": "菜很新鲜，团长很热心", "tags": ["fresh", "friendly_leader"],
    },
    "identify": {
        "source": "mini_program", "identifiers": {"openid": "oQ7x-9fa2", "phone": "13800138000"}, "reason": "bind_phone",
    },
    "consent": {
        "source": "mini_program", "subject": {"openid": "oQ7x-9fa2"}, "purpose": "marketing",
        "channel": "mini_program_push", "granted": True,
    },
    "inventory": {
        "source": "front_warehouse", "warehouse_id": "fw-C01", "community_id": "C01", "sku": "SKU-0012",
        "movement": "receipt", "qty": 40, "batch_id": "B2026-11-20-01", "best_before": "2026-11-22T05:00:00+08:00",
        "unit_cost": 3.2, "merchant_id": "M07",
    },
}


def event(event_type: str, occurred_at: str = "2026-11-20T16:05:00+08:00", **overrides: Any) -> dict[str, Any]:
    """A valid event of ``event_type``; keyword arguments replace (or, as None, remove) fields."""
    body = copy.deepcopy(BASE[event_type])
    out: dict[str, Any] = {"event_id": f"ev-test-{next(_ids):08d}", "event_type": event_type, "schema_version": 1,
                           "occurred_at": occurred_at, **body}
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def packaging_return(**overrides: Any) -> dict[str, Any]:
    """A packaging return to a recycling box (the other kind of ``return``)."""
    base = event("return", kind="packaging", order_id=None, reason=None, amount=None, evidence=None,
                 box_id="RB-C01-1", community_id="C01", packaging_items=[{"kind": "crate", "qty": 2}, {"kind": "ice_pack", "qty": 3}])
    base.update(overrides)
    return base


def inventory_movement(movement: str, **overrides: Any) -> dict[str, Any]:
    """An ``inventory`` event of ``movement`` (receipt, write_off or stock_count) with the fields
    that movement carries; keyword arguments replace (or, as None, remove) fields."""
    fields: dict[str, Any] = {"movement": movement}
    if movement == "write_off":
        fields |= {"qty": 3, "reason": "expired", "best_before": None, "unit_cost": None}
    elif movement == "stock_count":
        fields |= {"qty": 0, "batch_id": None, "best_before": None, "unit_cost": None, "merchant_id": None}
    return event("inventory", **{**fields, **overrides})
