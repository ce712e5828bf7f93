"""From this run's excursions and silences to incidents and claim decisions, in the warehouse.

Runs in the driver after the Flink output is staged. Volumes here are small (an excursion
touches a handful of orders), so the judgement is plain Python (``linkage``, ``policy``)
over rows the warehouse selects: orders and pickups of the compartments involved, and the
customers' own temperature claims on those orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from lastmile.coldchain import linkage, policy
from lastmile.coldchain.config import ColdChainConfig
from lastmile.warehouse import Warehouse


@dataclass
class Outcome:
    incidents: int = 0
    auto_approved: int = 0
    matched: int = 0
    review: int = 0


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _stays(warehouse: Warehouse, compartments: list[str], since: datetime, until: datetime,
           cfg: ColdChainConfig) -> list[linkage.OrderStay]:
    """Orders that could have been in these compartments between ``since`` and ``until``."""
    if not compartments:
        return []
    rows = warehouse.rows(
        """
        SELECT o.order_id, o.compartment_id, o.occurred_at, o.delivery_slot_start, o.delivery_slot_end,
               toFloat64(o.total_amount), p.picked_up_at
        FROM (SELECT * FROM raw_order FINAL
              WHERE compartment_id IN {c:Array(String)}
                AND delivery_slot_start <= {until:DateTime64(3, 'UTC')} + toIntervalMinute({lead:UInt32})
                AND delivery_slot_end >= {since:DateTime64(3, 'UTC')} - toIntervalHour({cleared:UInt32})) AS o
        LEFT JOIN (SELECT order_id, min(occurred_at) AS picked_up_at FROM raw_pickup FINAL
                   WHERE compartment_id IN {c:Array(String)} GROUP BY order_id) AS p
          ON p.order_id = o.order_id
        SETTINGS join_use_nulls = 1
        """,
        {"c": compartments, "since": since, "until": until, "lead": cfg.loading_lead_minutes,
         "cleared": cfg.uncollected_cleared_after_hours},
    )
    return [
        linkage.OrderStay(order_id=r[0], compartment_id=r[1], placed_at=_utc(r[2]), slot_start=_utc(r[3]),
                          slot_end=_utc(r[4]), total_cny=float(r[5]), picked_up_at=_utc(r[6]))
        for r in rows
    ]


def _claims(warehouse: Warehouse, order_ids: list[str]) -> dict[str, policy.CustomerClaim]:
    """The earliest temperature claim of each order, if any."""
    if not order_ids:
        return {}
    rows = warehouse.rows(
        """
        SELECT order_id, argMin(event_id, (occurred_at, event_id)), argMin(amount, (occurred_at, event_id))
        FROM raw_return FINAL
        WHERE kind = 'claim' AND reason = 'temperature' AND order_id IN {o:Array(String)}
        GROUP BY order_id
        """,
        {"o": order_ids},
    )
    return {r[0]: policy.CustomerClaim(event_id=r[1], order_id=r[0], amount_cny=Decimal(str(r[2]))) for r in rows}


def build(warehouse: Warehouse, cfg: ColdChainConfig) -> Outcome:
    """Incidents and claim decisions for the excursions and silences staged by this run."""
    excursions = warehouse.rows(
        "SELECT compartment_id, start_s, last_out_s, end_s, locker_id, community_id, product_class, "
        "temperature_min, temperature_max FROM _stage_excursions ORDER BY compartment_id, start_s")
    silences = warehouse.rows(
        "SELECT compartment_id, silent_from_s, silent_until_s, silence_s, locker_id, community_id, product_class "
        "FROM _stage_silences ORDER BY compartment_id, silent_from_s")
    if not excursions and not silences:
        return Outcome()

    def ts(seconds: int | None) -> datetime | None:
        return None if seconds is None else datetime.fromtimestamp(int(seconds), tz=timezone.utc)

    spans: list[linkage.Span] = []
    rows: list[list] = []
    judged: dict[str, policy.Excursion] = {}
    for comp, start_s, last_out_s, end_s, locker, community, cls, t_min, t_max in excursions:
        incident_id = f"EXC-{comp}-{ts(start_s):%Y%m%dT%H%M%SZ}"
        exc = policy.Excursion(incident_id, cls, int(last_out_s - start_s), float(t_min), float(t_max))
        judged[incident_id] = exc
        spans.append(linkage.Span(incident_id, comp, ts(start_s), ts(end_s)))
        level = policy.severity(exc, cfg)
        deviation = policy.deviation_c(exc, cfg)
        rows.append([incident_id, "excursion", comp, locker, community, cls, ts(start_s), ts(end_s),
                     int(last_out_s - start_s), level, policy.peak_c(exc, cfg), deviation])
    for comp, from_s, until_s, silence_s, locker, community, cls in silences:
        incident_id = f"SIL-{comp}-{ts(from_s):%Y%m%dT%H%M%SZ}"
        spans.append(linkage.Span(incident_id, comp, ts(from_s), ts(until_s)))
        rows.append([incident_id, "silence", comp, locker, community, cls, ts(from_s), ts(until_s),
                     int(silence_s), "unknown", None, None])

    since = min(s.started_at for s in spans)
    until = max((s.ended_at or s.started_at) for s in spans)
    stays = _stays(warehouse, sorted({s.compartment_id for s in spans}), since, until, cfg)
    hits = linkage.link(spans, stays, cfg)

    for row in rows:
        incident_id, kind = row[0], row[1]
        orders = [s.order_id for s in hits[incident_id]]
        row.append(orders)
        duration_min = round(row[8] / 60)
        if kind == "excursion":
            row.append(f"{row[5]} compartment {row[2]} out of range for {duration_min} min "
                       f"(peak {row[10]:g} °C, {row[11]:g} °C beyond range, {row[9]}); {len(orders)} order(s) inside.")
        else:
            still = "still silent" if row[7] is None else f"silent for {duration_min} min"
            row.append(f"Compartment {row[2]} {still}: temperature unknown; {len(orders)} order(s) inside need a person's check.")
    warehouse.insert_rows("cold_chain_incidents", rows, [
        "incident_id", "kind", "compartment_id", "locker_id", "community_id", "product_class", "started_at",
        "ended_at", "duration_s", "severity", "temperature_peak", "deviation_c", "affected_orders", "summary"])

    per_order: dict[str, list[policy.Decision]] = {}
    totals = {s.order_id: Decimal(str(s.total_cny)).quantize(Decimal("0.01")) for s in stays}
    affected_ids = sorted({s.order_id for incident, found in hits.items() if incident in judged for s in found})
    claims = _claims(warehouse, affected_ids)
    for incident_id, found in hits.items():
        if incident_id not in judged:
            continue  # silences are for people, not automatic payouts
        for stay in found:
            decision = policy.decide(stay.order_id, totals[stay.order_id], judged[incident_id], cfg,
                                     claims.get(stay.order_id))
            per_order.setdefault(stay.order_id, []).append(decision)
    decisions = [policy.worst(found) for _, found in sorted(per_order.items())]
    warehouse.insert_rows("claim_decisions", [
        [d.order_id, d.incident_id, d.decision, d.compensation_cny, d.order_total_cny, d.customer_claim_event_id,
         d.customer_claimed_cny, d.severity, d.reason] for d in decisions
    ], ["order_id", "incident_id", "decision", "compensation_cny", "order_total_cny", "customer_claim_event_id",
        "customer_claimed_cny", "severity", "reason"])
    return Outcome(
        incidents=len(rows),
        auto_approved=sum(d.decision == policy.AUTO_APPROVED for d in decisions),
        matched=sum(d.decision == policy.MATCHED for d in decisions),
        review=sum(d.decision == policy.NEEDS_REVIEW for d in decisions),
    )


def trailing_silences(warehouse: Warehouse, cfg: ColdChainConfig) -> int:
    """Stage silences still open at the end of the input: a compartment whose last reading is
    older than the silence threshold, measured against the newest reading of the run."""
    warehouse.command(f"""
        INSERT INTO _stage_silences (compartment_id, locker_id, community_id, product_class,
                                     silent_from_s, silent_until_s, silence_s)
        SELECT compartment_id, any(locker_id), any(community_id), any(product_class), max(last_reading_s), NULL,
               (SELECT max(last_reading_s) FROM _stage_windows) - max(last_reading_s)
        FROM _stage_windows WHERE window_minutes = 1
        GROUP BY compartment_id
        HAVING (SELECT max(last_reading_s) FROM _stage_windows) - max(last_reading_s) > {int(cfg.silence_after_s)}""")
    return int(warehouse.scalar("SELECT countIf(silent_until_s IS NULL) FROM _stage_silences"))

