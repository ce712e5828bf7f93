"""The community simulator: a deterministic, realistic stream of lastmile events plus ground truth.

    from lastmile.simulator import SimulationConfig, simulate
    result = simulate(SimulationConfig(seed=42, orders=20_000), Path("out"))

writes, under ``out``:

* ``events/<event_type>.jsonl`` - what the pipeline ingests: one JSON event per line, valid
  against ``schemas/*.json`` except the injected malformed lines; also duplicates and late
  lines, as real producers send them;
* ``truth/`` - ground truth for tests and evaluation, never ingested: persons,
  identifiers (OneID), orders, excursions, door spikes, injected lines, bad batches, the
  unconstrained hourly demand (``demand_hourly``), daily stock movements (``stock_daily``)
  each resident's consent at the window's end (``consent``), the spending-health cap's arms
  and the impulse purchases it suppressed (``spending_health_arms``, ``suppressed_purchases``);
* ``reference/`` - master data: communities, buildings, leaders, lockers, recycling boxes,
  merchants, SKUs, the calendar (holidays, weather), promotions, front warehouses and the
  distances between communities;
* ``manifest.json`` - the config and the counts.

Same config, same bytes: everything is drawn from generators seeded by the config, in a
fixed order, and no wall clock is read.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .aftersales import build_aftersales, excursion_affected
from .calendar import build_calendar, calendar_rows, promotion_rows
from .clock import iso_ms
from .consent import build_consent
from .config import EVENT_TYPES, SimulationConfig
from .identify import build_identify
from .identities import IdentityBook
from .incidents import plan_cold_chain
from .geography import geography_rows
from .orders import build_orders, draw_demand
from .sizing import estimated_events, for_total_events
from .spending_cap import SpendingCap
from .supply import run_supply, unconstrained
from .telemetry import render_telemetry, telemetry_count
from .world import build_world, person_rows, reference_rows
from .writer import EventFileWriter, write_events, write_jsonl

__all__ = ["SimulationConfig", "SimulationResult", "estimated_events", "for_total_events", "simulate"]

Progress = Callable[[str, int, int], None]


@dataclass
class SimulationResult:
    """What a run wrote. ``counts`` are lines per event file, injected lines included."""

    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    injected: dict[str, int] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    #: Wall time of the run (informational; never written to any file).
    seconds: float = 0.0

    @property
    def total_events(self) -> int:
        return sum(self.counts.values())


def simulate(cfg: SimulationConfig, out_dir: Path, progress: Progress | None = None) -> SimulationResult:
    """Simulate the window described by ``cfg`` and write events, truth and reference data.

    ``progress(stage, done, total)`` is called as stages advance (stages: world, telemetry,
    orders, aftersales, identify, write, truth).
    """
    began = time.perf_counter()
    report: Progress = progress or (lambda stage, done, total: None)
    out_dir = Path(out_dir)
    for sub in ("events", "truth", "reference"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    result = SimulationResult(out_dir)

    report("world", 0, 1)
    world = build_world(cfg)
    book = IdentityBook(random.Random(cfg.seed * 1_000_003 + 3), cfg.messy_identifier_share, cfg.junk_identifier_share)
    chain = plan_cold_chain(world, cfg)
    report("world", 1, 1)

    report("orders", 0, cfg.orders)
    cal = build_calendar(cfg, world.skus)
    cap = SpendingCap(world, cfg)
    demand = draw_demand(world, cfg, cal, cap)
    supply = run_supply(world, cfg, world.skus, cal, demand) if cfg.supply else unconstrained(world, cfg, demand)
    orders = build_orders(world, cfg, book, cal, demand, supply)
    report("orders", cfg.orders, cfg.orders)
    report("aftersales", 0, 1)
    affected = excursion_affected(orders, chain)
    returns, reviews, claims, bad_batches = build_aftersales(world, cfg, orders, affected, book)
    report("aftersales", 1, 1)
    report("identify", 0, 1)
    identifies = build_identify(world, cfg, orders, book)
    report("identify", 1, 1)
    first_order: dict[int, int] = {}
    for t, pi in zip(orders.t_ms, orders.person):
        first_order.setdefault(pi, t)
    consents, consent_truth = build_consent(world, cfg, first_order, book) if cfg.consent else ([], [])

    # Events. Telemetry streams block by block; the rest is small enough to sort in memory.
    writers: list[EventFileWriter] = []
    path = out_dir / "events" / "locker_telemetry.jsonl"
    tel = EventFileWriter(path, "locker_telemetry", telemetry_count(world, cfg), cfg)
    for block in render_telemetry(world, cfg, chain, progress=lambda d, t: report("telemetry", d, t)):
        tel.feed(block)
    tel.close()
    writers.append(tel)
    other = {"order": orders.order_events, "pickup": orders.pickup_events, "return": returns,
             "review": reviews, "identify": identifies, "inventory": supply.events, "consent": consents}
    if not cfg.consent:
        del other["consent"]
    for k, event_type in enumerate(t for t in EVENT_TYPES[1:] if t in other):
        report("write", k, len(other))
        writers.append(write_events(out_dir / "events" / f"{event_type}.jsonl", event_type, other[event_type], cfg))
    report("write", len(other), len(other))
    for w in writers:
        result.counts[w.event_type] = w.lines
        result.files[w.event_type] = w.path
        for kind, n in w.counts.items():
            result.injected[kind] = result.injected.get(kind, 0) + n

    # Ground truth and reference data.
    report("truth", 0, 1)
    start = cfg.start
    truth: dict[str, list[dict[str, Any]]] = {
        "persons": person_rows(world),
        "identifiers": book.truth_rows(),
        "orders": _order_truth(world, orders, affected, claims, start),
        "excursions": _incident_rows(chain.excursions, start),
        "door_spikes": _incident_rows(chain.door_spikes, start),
        "injected": [row for w in writers for row in w.truth],
        "demand_hourly": supply.demand_hourly,
        "stock_daily": supply.stock_daily,
        "bad_batches": bad_batches,
        "consent": consent_truth,
        "spending_health_arms": cap.arm_rows(),
        "suppressed_purchases": cap.suppressed_rows(),
    }
    for name, rows in truth.items():
        path = out_dir / "truth" / f"{name}.jsonl"
        write_jsonl(path, rows)
        result.files[f"truth/{name}"] = path
    reference = {**reference_rows(world), "calendar": calendar_rows(cal),
                 "promotions": promotion_rows(cal, world.skus, cfg.start), **geography_rows(world, cfg)}
    for name, rows in reference.items():
        path = out_dir / "reference" / f"{name}.jsonl"
        write_jsonl(path, rows)
        result.files[f"reference/{name}"] = path
    manifest = {"config": cfg.to_dict(), "counts": result.counts, "injected": result.injected,
                "truth_rows": {k: len(v) for k, v in truth.items()},
                "communities": len(world.communities), "persons": len(world.persons),
                "compartments": len(world.compartments), "demanded_orders": cfg.orders,
                "placed_orders": len(orders), "skus": len(world.skus), "supply": supply.figures}
    (out_dir / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    result.files["manifest"] = out_dir / "manifest.json"
    report("truth", 1, 1)
    result.seconds = time.perf_counter() - began
    return result


def _incident_rows(rows: list[dict[str, Any]], start: Any) -> list[dict[str, Any]]:
    """Incidents with ISO times; internal fields (ms, indices) dropped."""
    starts = iso_ms(start, [r["start_ms"] for r in rows])
    ends = iso_ms(start, [r["end_ms"] for r in rows])
    out = []
    for r, s, e in zip(rows, starts, ends):
        row = {k: v for k, v in r.items() if k not in ("start_ms", "end_ms", "compartment_index")}
        row["start"], row["end"] = s, e
        row["minutes_out_of_range"] = round((r["end_ms"] - r["start_ms"]) / 60_000, 2)
        out.append(row)
    return out


def _order_truth(world: Any, orders: Any, affected: Any, claims: list[str | None], start: Any) -> list[dict[str, Any]]:
    """truth/orders.jsonl: the facts behind each order (who really bought, what went wrong)."""
    loaded = iso_ms(start, orders.load_ms)
    picked = iso_ms(start, [t if t >= 0 else 0 for t in orders.pickup_ms])
    left = iso_ms(start, orders.in_locker_until())
    rows = []
    for n in range(len(orders)):
        p = world.persons[orders.person[n]]
        rows.append({
            "order_id": orders.order_id[n], "person_id": p.person_id, "persona": p.persona,
            "channel": orders.channel[n], "leader_placed": orders.leader_placed[n],
            "basket_class": orders.basket_class[n], "compartment_id": world.compartments[orders.compartment[n]].compartment_id,
            "loaded_at": loaded[n], "delivery_late": orders.delivery_late[n],
            "picked_up_at": picked[n] if orders.picked[n] else None, "left_locker_at": left[n],
            "collector_role": orders.collector_role[n],
            "excursion_affected": bool(affected[n]), "claim_reason": claims[n],
        })
    return rows
