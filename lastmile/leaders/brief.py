"""The group leader's daily brief: what a leader (团长) can act on this morning, for their building.

A leader runs one building (``ref_leaders``). Their **neighbours** are the people whose home
building (``dim_customer.home_building_id``, where most of their orders go) is that building;
someone new since the last dbt build, not yet in ``dim_customer``, counts under the building
their order was for. The brief has these sections:

``due_to_reorder``
    Neighbours whose next purchase of a staple is due this morning: the replenishment rhythm
    of :func:`lastmile.features.replenishment.due_replenishments`, the very rule the stream's
    replenishment nudge uses, evaluated at the morning.
``new_neighbours``
    Neighbours whose first order ever was placed in the :attr:`BriefWindows.new_neighbour_days`
    days before the morning, to welcome.
``quiet_regulars``
    Regulars gone quiet, with what they used to buy: the mart ``leader_brief_quiet_regulars``
    (RFM, as of the last dbt build), less anyone who ordered again since. The leader wins them
    back in person instead of a cold push.
``lockers``
    Orders for the building still in a locker at the morning: ``waiting`` (the slot started,
    not collected) and ``overdue`` (past the end of the slot, not collected: the operations
    board's definition), for slots of the :attr:`BriefWindows.locker_days` days before.
``open_claims``
    Claims filed in the :attr:`BriefWindows.claim_days` days before the morning on orders of
    the building that no claim decision approved yet.
``sales_this_week``
    What sells in the building: the mart ``leader_brief_building_sales`` over the seven
    business days before the morning, by units.
``surplus``
    SKUs of the community's front warehouse with stock beyond the median (P50) of today's
    demand, from the stocking plan of this morning's delivery (``stocking_plan``, made from the
    demand forecast): ``None``, with a note, while no plan exists for it.

**Consent.** Only neighbours with a current consent for the leader's channel
(``wecom_leader``) appear by name, decided by
:func:`lastmile.audiences.contact_rules.consented_oneids_sql`: ``marketing`` to be named at
all, and also ``personalised_recommendation`` in the sections built on their purchase
history (due to reorder, regulars gone quiet), as the replenishment nudge journey's send
(``journeys/replenishment_nudge.yml``) needs (:data:`HISTORY_BASED`). The others are only counted
(``not_consented``). Sales are aggregates and name no one.

**The morning.** A brief is for a business day (``LASTMILE_BUSINESS_TZ``) at the end of the
contact rules' quiet hours (``contact_rules.yml``, 08:00 by default): the first moment the
leader may contact anyone. Everything read is as of that moment; the marts are as of their
last build (``marts_as_of``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from lastmile.audiences.contact_rules import consented_oneids_sql, load_rules
from lastmile.config import Settings
from lastmile.config import settings as current_settings
from lastmile.features.replenishment import Rhythm, due_replenishments
from lastmile.warehouse import Warehouse

#: The channel a leader reaches neighbours on (a consent ``channel``).
LEADER_CHANNEL = "wecom_leader"
#: Purposes a neighbour must have granted on :data:`LEADER_CHANNEL` to be named in a section.
NAMED = ("marketing",)
#: Purposes a neighbour must also have granted to be named in a section built on their purchase history.
HISTORY_BASED = ("marketing", "personalised_recommendation")
#: Claim decisions that settle a claim (the cold-chain job's; ``needs_review`` does not).
SETTLED = ("auto_approved", "matched_customer_claim")
#: The marts the brief reads (built by ``lastmile transform``).
MARTS = ("dim_customer", "leader_brief_quiet_regulars", "leader_brief_building_sales")
DT = "DateTime64(3, 'UTC')"


class UnknownLeader(LookupError):
    """No leader with this id in the reference data."""


class BriefUnavailable(RuntimeError):
    """The warehouse lacks what the brief reads (the message says what to run)."""


@dataclass(frozen=True)
class BriefWindows:
    """How far back each section looks, in days before the morning."""

    new_neighbour_days: int = 7
    locker_days: int = 3
    claim_days: int = 14
    sales_days: int = 7
    top_sellers: int = 10


@dataclass(frozen=True)
class Leader:
    leader_id: str
    building_id: str
    building_name: str
    community_id: str


def morning_of(day: date, cfg: Settings | None = None) -> datetime:
    """The brief's moment on a business day: the end of the quiet hours there, in UTC."""
    cfg = cfg or current_settings()
    local = datetime.combine(day, load_rules().quiet_end, tzinfo=cfg.business_zone)
    return local.astimezone(timezone.utc)


def default_day(warehouse: Warehouse, cfg: Settings | None = None, now: datetime | None = None) -> tuple[date, str]:
    """Today's business day, or the day after the newest order when the data ends earlier
    (a simulated history); and the rule that applied, in words."""
    cfg = cfg or current_settings()
    today = (now or datetime.now(timezone.utc)).astimezone(cfg.business_zone).date()
    newest = warehouse.scalar("SELECT max(occurred_at) FROM raw_order") if "raw_order" in warehouse.tables() else None
    if newest is not None and newest.year >= 2000:
        newest = newest.replace(tzinfo=timezone.utc) if newest.tzinfo is None else newest
        after = newest.astimezone(cfg.business_zone).date() + timedelta(days=1)
        if after < today:
            return after, "the morning after the newest order (the data ends before today)"
    return today, "today"


def find_leader(warehouse: Warehouse, leader_id: str) -> Leader:
    """The leader and their building, from the reference data."""
    if not {"ref_leaders", "ref_buildings"} <= set(warehouse.tables()):
        raise BriefUnavailable("no reference data in the warehouse: run `lastmile transform` (it loads ref_*)")
    rows = warehouse.rows(
        "SELECT l.leader_id, l.building_id, b.name, l.community_id FROM ref_leaders AS l "
        "LEFT JOIN ref_buildings AS b ON b.building_id = l.building_id WHERE l.leader_id = {l:String}",
        {"l": leader_id})
    if not rows:
        raise UnknownLeader(f"unknown leader: {leader_id}")
    return Leader(*(str(v) if v is not None else "" for v in rows[0]))


def _num(value: Any) -> float | None:
    if value is None:
        return None
    return round(float(value), 2) if isinstance(value, Decimal | float) else value


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return value.isoformat()


class _Brief:
    """One brief being assembled: the warehouse, the leader, the morning and the consent sets."""

    def __init__(self, warehouse: Warehouse, leader: Leader, morning: datetime, windows: BriefWindows, cfg: Settings) -> None:
        self.w = warehouse
        self.leader = leader
        self.morning = morning
        self.windows = windows
        self.cfg = cfg
        self.tables = set(warehouse.tables())
        self.day = morning.astimezone(cfg.business_zone).date()
        self.params = {"building": leader.building_id, "morning": morning.astimezone(timezone.utc).replace(tzinfo=None)}
        self.named = self._consented(NAMED)
        self.history_named = self._consented(HISTORY_BASED)
        self.residents = {str(o) for (o,) in warehouse.rows(
            "SELECT oneid FROM dim_customer WHERE home_building_id = {building:String}", self.params)}

    def _consented(self, purposes: tuple[str, ...]) -> set[str]:
        if not {"raw_consent", "event_oneid"} <= self.tables:
            return set()
        return {str(o) for (o,) in self.w.rows(consented_oneids_sql(LEADER_CHANNEL, purposes))}

    def neighbours(self, candidates: list[tuple[str, str]]) -> set[str]:
        """Of ``(oneid, building of their order)`` pairs, the leader's neighbours: home building
        (dim_customer) the leader's, or, for people new since the last dbt build, the order's."""
        b = self.leader.building_id
        maybe = [o for o, building in candidates if o not in self.residents and building == b]
        unknown: set[str] = set()
        if maybe:
            known = {str(o) for (o,) in self.w.rows("SELECT oneid FROM dim_customer WHERE has({ids:Array(String)}, oneid)",
                                                     {"ids": maybe})}
            unknown = set(maybe) - known
        return {o for o, _ in candidates if o in self.residents or o in unknown}

    def _since(self, days: int) -> datetime:
        return self.morning - timedelta(days=days)

    def _split(self, rows: list[dict[str, Any]], consented: set[str]) -> dict[str, Any]:
        """Named rows (consenting neighbours) and how many neighbours' rows were left out."""
        shown = [r for r in rows if r["oneid"] in consented]
        return {"neighbours": shown, "not_consented": len(rows) - len(shown)}

    def due_to_reorder(self) -> dict[str, Any]:
        names = self._sku_names()
        rows = [{"oneid": d.oneid, "sku": d.sku, "sku_name": names.get(d.sku), "due": d.due.isoformat(),
                 "last_purchase": d.last_purchase.isoformat(), "purchases": d.purchases,
                 "mean_interval_days": d.mean_interval_days}
                for d in due_replenishments(self.w, self.morning, Rhythm()) if d.oneid in self.residents]
        return self._split(rows, self.history_named)

    def new_neighbours(self) -> dict[str, Any]:
        found = self.w.rows(f"""
            SELECT e.oneid, min(o.occurred_at) AS first_order_at, argMin(o.building_id, o.occurred_at),
                   argMin(o.channel, o.occurred_at)
            FROM raw_order AS o FINAL
            INNER JOIN event_oneid AS e ON e.event_id = o.event_id AND e.event_type = 'order'
            WHERE o.occurred_at < {{morning:{DT}}}
              AND e.oneid IN (SELECT e2.oneid FROM raw_order AS o2
                              INNER JOIN event_oneid AS e2 ON e2.event_id = o2.event_id AND e2.event_type = 'order'
                              WHERE o2.occurred_at >= {{since:{DT}}} AND o2.occurred_at < {{morning:{DT}}})
            GROUP BY e.oneid
            HAVING first_order_at >= {{since:{DT}}}
            ORDER BY first_order_at, e.oneid
            """, {**self.params, "since": self._since(self.windows.new_neighbour_days).replace(tzinfo=None)})
        mine = self.neighbours([(str(o), str(building)) for o, _, building, _ in found])
        rows = [{"oneid": str(o), "first_order_at": _iso(at), "channel": str(channel)}
                for o, at, _, channel in found if str(o) in mine]
        return self._split(rows, self.named)

    def quiet_regulars(self) -> dict[str, Any]:
        # ordered again between the mart's observation day and the morning: not quiet any more
        found = self.w.rows(f"""
            SELECT q.oneid, q.purchase_days, q.mean_interval_days, q.last_purchase_date, q.days_since_last_purchase,
                   q.total_spend_cny, q.usual_skus, q.usual_sku_names
            FROM leader_brief_quiet_regulars AS q
            WHERE q.building_id = {{building:String}}
              AND q.oneid NOT IN (
                  SELECT e.oneid FROM raw_order AS o
                  INNER JOIN event_oneid AS e ON e.event_id = o.event_id AND e.event_type = 'order'
                  WHERE o.occurred_at < {{morning:{DT}}}
                    AND toDate(o.occurred_at, {{tz:String}}) > (SELECT max(as_of_date) FROM leader_brief_quiet_regulars))
            ORDER BY q.total_spend_cny DESC, q.oneid
            """, {**self.params, "tz": self.cfg.business_tz})
        rows = [{"oneid": str(o), "purchase_days": int(n), "mean_interval_days": float(gap),
                 "last_purchase": last.isoformat(), "days_since_last_purchase": (self.day - last).days,
                 "total_spend_cny": _num(spend),
                 "used_to_buy": [{"sku": s, "sku_name": name or None} for s, name in zip(skus, names, strict=True)]}
                for o, n, gap, last, _, spend, skus, names in found]
        return self._split(rows, self.history_named)

    def lockers(self) -> dict[str, Any]:
        found = self.w.rows(f"""
            WITH orders AS (
                SELECT order_id, event_id, locker_id, compartment_id, delivery_slot_start AS slot_start,
                       delivery_slot_end AS slot_end
                FROM raw_order
                WHERE building_id = {{building:String}} AND occurred_at < {{morning:{DT}}}
                  AND delivery_slot_start <= {{morning:{DT}}} AND delivery_slot_end >= {{since:{DT}}}
                LIMIT 1 BY order_id
            )
            SELECT o.order_id, e.oneid, o.locker_id, o.compartment_id, o.slot_start, o.slot_end
            FROM orders AS o
            LEFT JOIN (SELECT event_id, oneid FROM event_oneid WHERE event_type = 'order') AS e ON e.event_id = o.event_id
            WHERE o.order_id NOT IN (SELECT order_id FROM raw_pickup WHERE occurred_at < {{morning:{DT}}})
            ORDER BY o.slot_end, o.order_id
            """, {**self.params, "since": self._since(self.windows.locker_days).replace(tzinfo=None)})
        mine = self.neighbours([(str(row[1]), self.leader.building_id) for row in found if row[1]])
        out: dict[str, Any] = {}
        for state in ("waiting", "overdue"):
            rows = []
            for order_id, oneid, locker, compartment, start, end in found:
                end_utc = end.replace(tzinfo=timezone.utc) if end.tzinfo is None else end
                if (end_utc < self.morning) != (state == "overdue") or str(oneid) not in mine:
                    continue
                row = {"oneid": str(oneid), "order_id": order_id, "locker_id": locker, "compartment_id": compartment,
                       "slot_start": _iso(start), "slot_end": _iso(end)}
                if state == "overdue":
                    row["hours_overdue"] = round((self.morning - end_utc).total_seconds() / 3600, 1)
                rows.append(row)
            out[state] = self._split(rows, self.named)
        return out

    def open_claims(self) -> dict[str, Any]:
        settled = ""
        if "claim_decisions" in self.tables:
            settled = ("AND r.order_id NOT IN (SELECT order_id FROM claim_decisions FINAL WHERE decision IN ("
                       + ", ".join(f"'{d}'" for d in SETTLED) + f") AND _loaded_at < {{morning:{DT}}})")
        found = self.w.rows(f"""
            SELECT e.oneid, r.order_id, r.reason, r.amount, r.occurred_at
            FROM raw_return AS r FINAL
            INNER JOIN (SELECT event_id, oneid FROM event_oneid WHERE event_type = 'return') AS e ON e.event_id = r.event_id
            WHERE r.kind = 'claim' AND r.occurred_at >= {{since:{DT}}} AND r.occurred_at < {{morning:{DT}}}
              AND r.order_id IN (SELECT order_id FROM raw_order WHERE building_id = {{building:String}})
              {settled}
            ORDER BY r.occurred_at, r.event_id
            """, {**self.params, "since": self._since(self.windows.claim_days).replace(tzinfo=None)})
        mine = self.neighbours([(str(row[0]), self.leader.building_id) for row in found])
        rows = [{"oneid": str(o), "order_id": order_id, "reason": reason, "amount_cny": _num(amount), "claimed_at": _iso(at)}
                for o, order_id, reason, amount, at in found if str(o) in mine]
        return self._split(rows, self.named)

    def sales_this_week(self) -> dict[str, Any]:
        first = self.day - timedelta(days=self.windows.sales_days)
        found = self.w.rows(f"""
            SELECT sku, any(sku_name), any(category), sum(orders) AS o, sum(units) AS u, sum(amount_cny) AS a
            FROM leader_brief_building_sales
            WHERE building_id = {{building:String}} AND sales_date >= {{first:Date}} AND sales_date < {{day:Date}}
            GROUP BY sku
            ORDER BY u DESC, a DESC, sku
            LIMIT {int(self.windows.top_sellers)}
            """, {**self.params, "first": first, "day": self.day})
        return {"from": first.isoformat(), "to": (self.day - timedelta(days=1)).isoformat(),
                "top": [{"sku": s, "sku_name": name or None, "category": category, "orders": int(o), "units": int(u),
                         "amount_cny": _num(a)} for s, name, category, o, u, a in found]}

    def surplus(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        """SKUs of the community's front warehouse with stock beyond the median of today's demand.

        From the stocking plan of this morning's delivery: the stock after it is what was on
        hand, less what expires before it, plus what was ordered; the surplus is that stock
        beyond the plan's median (P50) demand over the selling period, in whole units.
        """
        from lastmile.stocking.plan import PLAN_TABLE

        if PLAN_TABLE not in self.tables:
            return None, "the demand forecast and stocking plan have not run: surplus is not shown"
        found = self.w.rows(f"""
            SELECT sku, on_hand, expiring_before_delivery, order_qty, p50_demand
            FROM {PLAN_TABLE} FINAL
            WHERE community_id = {{community:String}} AND toDate(delivery_at) = {{day:Date}}
            ORDER BY sku
            """, {"community": self.leader.community_id, "day": self.day})
        if not found:
            return None, (f"no stocking plan for the delivery of {self.day.isoformat()} to {self.leader.community_id}: "
                          "surplus is not shown")
        names = self._sku_names()
        items = []
        for sku, on_hand, expiring, ordered, p50 in found:
            stock = int(on_hand) - int(expiring) + int(ordered)
            extra = math.floor(stock - float(p50))
            if extra >= 1:
                items.append({"sku": sku, "sku_name": names.get(sku), "surplus_units": extra, "stock_units": stock,
                              "p50_demand": round(float(p50), 1)})
        items.sort(key=lambda i: (-i["surplus_units"], i["sku"]))
        return items[: self.windows.top_sellers], None

    def _sku_names(self) -> dict[str, str]:
        if "ref_skus" not in self.tables:
            return {}
        return {str(s): str(n) for s, n in self.w.rows("SELECT sku, name FROM ref_skus")}

    def marts_as_of(self) -> str | None:
        value = self.w.scalar("SELECT max(as_of_date) FROM customer_rfm") if "customer_rfm" in self.tables else None
        return value.isoformat() if value is not None and value.year >= 2000 else None


def assemble(warehouse: Warehouse, leader_id: str, day: date | None = None, windows: BriefWindows = BriefWindows(),
             cfg: Settings | None = None) -> dict[str, Any]:
    """The brief of ``leader_id`` for the morning of ``day`` (default: :func:`default_day`).

    People are keyed by OneID here; :mod:`lastmile.leaders.export` and the API replace it with
    the configured identifier before anything leaves lastmile.
    """
    cfg = cfg or current_settings()
    leader = find_leader(warehouse, leader_id)
    missing = [m for m in MARTS if m not in warehouse.tables()]
    if missing:
        raise BriefUnavailable(f"the warehouse lacks {', '.join(missing)}: run `lastmile transform` first")
    rule = "given"
    if day is None:
        day, rule = default_day(warehouse, cfg)
    morning = morning_of(day, cfg)
    brief = _Brief(warehouse, leader, morning, windows, cfg)
    surplus, surplus_note = brief.surplus()
    notes = [surplus_note] if surplus_note else []
    marts_as_of = brief.marts_as_of()
    if marts_as_of and date.fromisoformat(marts_as_of) >= day:
        notes.append(f"the marts are as of {marts_as_of}, not before this morning: regulars gone quiet may know "
                     "orders placed after it")
    return {
        "leader_id": leader.leader_id, "building_id": leader.building_id, "building_name": leader.building_name,
        "community_id": leader.community_id, "day": day.isoformat(), "day_rule": rule, "as_of": _iso(morning),
        "time_zone": cfg.business_tz, "marts_as_of": marts_as_of,
        "due_to_reorder": brief.due_to_reorder(), "new_neighbours": brief.new_neighbours(),
        "quiet_regulars": brief.quiet_regulars(), "lockers": brief.lockers(), "open_claims": brief.open_claims(),
        "sales_this_week": brief.sales_this_week(), "surplus": surplus, "notes": notes,
    }


__all__ = ["BriefUnavailable", "BriefWindows", "Leader", "UnknownLeader", "assemble", "default_day", "find_leader",
           "morning_of"]
