"""The group leader's daily brief on a small hand-made warehouse equals the hand-computed one.

One community, two buildings (C01-B01 run by LD-C01-B01, C01-B02 by LD-C01-B02), a handful of
people with a story each, ingested through the real batch ingest (OneID included), then
`dbt build` of the marts the brief reads. The brief is for the morning of Friday 2026-11-20
(08:00 in Asia/Shanghai, the end of the default quiet hours); every expected value below
is worked out by hand from the events.

* alice (B01, consents to marketing and personalised recommendations on wecom_leader): eggs
  every 7 days (10-23, 10-30, 11-06, 11-13) -> due 11-20; an order collected on 11-19; an order
  whose slot (11-20 07:00-10:00) is open at the morning -> waiting.
* bob (B01, consents to both): tofu on 5 days 4 days apart (09-01 ... 09-17), veg on 2, tea on
  1 -> a regular gone quiet (63 days at the marts' date 11-19 >= max(14, 3 x 4)), used to buy
  tofu, veg, tea.
* carol (B01, granted then withdrew marketing): the same egg rhythm as alice, an overdue order
  and a claim -> never named, only counted.
* erin (B01, marketing only): first order ever on 11-19 (new neighbour), not collected by the
  morning (slot ended 11-19 19:00 -> 13 h overdue), and a claim on it -> named in those.
* dan and frank (B02, consenting): dan on the egg rhythm, frank new -> never in B01's brief.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from lastmile import transform
from lastmile.api import create_app
from lastmile.api_auth import create_key, read_audit
from lastmile.cli import app as cli
from lastmile.config import Settings
from lastmile.leaders.brief import UnknownLeader, assemble
from lastmile.audiences.contact_rules import ContactRules
from lastmile.audiences.exports import ExportRefused, leader_key, pseudonym
from lastmile.leaders.export import present, to_csv, to_markdown
from lastmile.warehouse import Warehouse, connect
from pipelines import beam_ingest
from tests.asgi import call
from tests.factories import event
from tests.warehouses import empty_embedded_warehouse

pytestmark = pytest.mark.slow  # runs dbt

DAY = date(2026, 11, 20)
B01, B02 = "C01-B01", "C01-B02"
SKUS = {"SKU-EGG": ("土鸡蛋", "eggs", 12.0), "SKU-TOFU": ("嫩豆腐", "tofu", 4.5), "SKU-VEG": ("上海青", "vegetables", 3.0),
        "SKU-TEA": ("铁观音", "tea", 38.0)}
REFERENCE = {
    "communities": [{"community_id": "C01", "name": "梅园", "city": "上海", "district": "浦东", "alliance_id": "A1",
                     "building_count": 2, "locker_count": 1}],
    "buildings": [{"building_id": b, "community_id": "C01", "name": f"{i}幢", "leader_id": f"LD-{b}", "households": 40,
                   "residents": 100, "home_locker_id": "L-C01-1", "box_id": "RB-C01-1"} for i, b in ((1, B01), (2, B02))],
    "leaders": [{"leader_id": f"LD-{b}", "community_id": "C01", "building_id": b, "person_id": f"P{i}", "retired_teacher": False,
                 "neighbours": 99} for i, b in ((1, B01), (2, B02))],
    "lockers": [{"locker_id": "L-C01-1", "community_id": "C01", "has_battery": True,
                 "compartments": [{"compartment_id": "L-C01-1-K01", "product_class": "chilled"}]}],
    "recycling_boxes": [{"box_id": "RB-C01-1", "community_id": "C01", "location": "gate", "accepts": ["crate"]}],
    "merchants": [{"merchant_id": "M07", "name": "菜场", "category_focus": "vegetables", "alliance_id": "A1"}],
    "skus": [{"sku": s, "name": n, "name_en": n, "category": c, "origin": "上海", "unit_price": p, "product_class": "chilled",
              "is_impulse": False, "is_healthy": True} for s, (n, c, p) in SKUS.items()],
}

_orders = iter(range(1, 10_000))


def order(who: str, day: str, items: dict[str, int], building: str = B01, slot: tuple[str, str] | None = None,
          at: str = "10:00") -> dict[str, Any]:
    """An order of ``who`` placed on ``day`` (local) with its slot (default that day 17:00-19:00)."""
    start, end = slot or (f"{day}T17:00:00+08:00", f"{day}T19:00:00+08:00")
    lines = [{"sku": s, "category": SKUS[s][1], "qty": q, "unit_price": SKUS[s][2], "origin": "上海", "batch_id": "B1"}
             for s, q in items.items()]
    return event("order", occurred_at=f"{day}T{at}:00+08:00", order_id=f"ord-{who}-{next(_orders):04d}",
                 buyer={"openid": f"o-{who}"}, building_id=building, leader_id=f"LD-{building}", items=lines,
                 total_amount=round(sum(SKUS[s][2] * q for s, q in items.items()), 2),
                 delivery_slot_start=start, delivery_slot_end=end)


def pickup(o: dict[str, Any], at: str) -> dict[str, Any]:
    return event("pickup", occurred_at=at, order_id=o["order_id"], collector={"openid": o["buyer"]["openid"]})


def claim(o: dict[str, Any], at: str, reason: str, amount: float) -> dict[str, Any]:
    return event("return", occurred_at=at, claimant={"openid": o["buyer"]["openid"]}, order_id=o["order_id"],
                 reason=reason, amount=amount)


def consent(who: str, purpose: str, granted: bool = True, at: str = "2026-10-01T09:00:00+08:00") -> dict[str, Any]:
    return event("consent", occurred_at=at, subject={"openid": f"o-{who}"}, purpose=purpose, channel="wecom_leader",
                 granted=granted)


EGG_DAYS = ("2026-10-23", "2026-10-30", "2026-11-06", "2026-11-13")
ALICE_EGGS = [order("alice", d, {"SKU-EGG": 2}) for d in EGG_DAYS]
ALICE_COLLECTED = order("alice", "2026-11-19", {"SKU-TOFU": 1}, at="09:00")
ALICE_WAITING = order("alice", "2026-11-19", {"SKU-VEG": 1}, at="21:00",
                      slot=("2026-11-20T07:00:00+08:00", "2026-11-20T10:00:00+08:00"))
BOB = [order("bob", d, {"SKU-TOFU": 2, **({"SKU-VEG": 1} if i < 2 else {}), **({"SKU-TEA": 3} if i == 4 else {})})
       for i, d in enumerate(("2026-09-01", "2026-09-05", "2026-09-09", "2026-09-13", "2026-09-17"))]
CAROL_EGGS = [order("carol", d, {"SKU-EGG": 1}) for d in EGG_DAYS]
CAROL_OVERDUE = order("carol", "2026-11-18", {"SKU-TOFU": 1})
ERIN_FIRST = order("erin", "2026-11-19", {"SKU-TEA": 1, "SKU-VEG": 2}, at="11:00")
DAN_EGGS = [order("dan", d, {"SKU-EGG": 1}, building=B02) for d in EGG_DAYS]
FRANK_FIRST = order("frank", "2026-11-18", {"SKU-TOFU": 1}, building=B02)

EVENTS = [
    *ALICE_EGGS, ALICE_COLLECTED, ALICE_WAITING, *BOB, *CAROL_EGGS, CAROL_OVERDUE, ERIN_FIRST, *DAN_EGGS, FRANK_FIRST,
    *[pickup(o, f"{o['occurred_at'][:10]}T18:00:00+08:00")
      for o in (*ALICE_EGGS, ALICE_COLLECTED, *BOB, *CAROL_EGGS, *DAN_EGGS, FRANK_FIRST)],
    claim(ERIN_FIRST, "2026-11-19T20:00:00+08:00", "quality", 12.5),
    claim(CAROL_OVERDUE, "2026-11-19T09:00:00+08:00", "missing", 4.5),
    *[consent(who, p) for who in ("alice", "bob", "dan", "frank") for p in ("marketing", "personalised_recommendation")],
    consent("carol", "marketing"), consent("carol", "personalised_recommendation"),
    consent("carol", "marketing", granted=False, at="2026-11-01T09:00:00+08:00"),
    consent("erin", "marketing", at="2026-11-19T11:05:00+08:00"),
]


def _ingest(cfg: Settings, events: list[dict[str, Any]]) -> None:
    folder = cfg.home / "events-brief"
    folder.mkdir(parents=True)
    by_type: dict[str, list[bytes]] = {}
    for e in events:
        by_type.setdefault(e["event_type"], []).append(orjson.dumps(e))
    for event_type, lines in by_type.items():
        (folder / f"{event_type}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    beam_ingest.run(folder, cfg=cfg)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Warehouse]]:
    with empty_embedded_warehouse(tmp_path_factory.mktemp("leaders") / "home") as (cfg, warehouse):
        reference = cfg.home / "reference"
        reference.mkdir(parents=True)
        for name in transform.REFERENCE_TABLES:  # master data the brief does not use: none
            rows = REFERENCE.get(name, [])
            (reference / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        _ingest(cfg, EVENTS)
        # the marts the brief reads and what they are built from (their data tests run in every `dbt build`)
        result = transform.run(cfg, select=["+leader_brief_quiet_regulars", "+leader_brief_building_sales"], quiet=True)
        assert result.success, result.failures
        yield cfg, warehouse


def oneid(warehouse: Warehouse, e: dict[str, Any]) -> str:
    rows = warehouse.rows("SELECT oneid FROM event_oneid WHERE event_id = {e:String}", {"e": e["event_id"]})
    assert rows, e
    return str(rows[0][0])


def expected_b01(w: Warehouse) -> dict[str, Any]:
    alice, bob, erin = oneid(w, ALICE_EGGS[0]), oneid(w, BOB[0]), oneid(w, ERIN_FIRST)
    return {
        "leader_id": "LD-C01-B01", "building_id": B01, "building_name": "1幢", "community_id": "C01", "day": "2026-11-20",
        "day_rule": "given", "as_of": "2026-11-20T00:00:00Z", "time_zone": "Asia/Shanghai", "marts_as_of": "2026-11-19",
        "due_to_reorder": {"neighbours": [
            {"oneid": alice, "sku": "SKU-EGG", "sku_name": "土鸡蛋", "due": "2026-11-20", "last_purchase": "2026-11-13",
             "purchases": 4, "mean_interval_days": 7.0}], "not_consented": 1},  # carol
        "new_neighbours": {"neighbours": [
            {"oneid": erin, "first_order_at": "2026-11-19T03:00:00Z", "channel": "mini_program"}], "not_consented": 0},
        "quiet_regulars": {"neighbours": [
            {"oneid": bob, "purchase_days": 5, "mean_interval_days": 4.0, "last_purchase": "2026-09-17",
             "days_since_last_purchase": 64, "total_spend_cny": 5 * 9.0 + 2 * 3.0 + 3 * 38.0,
             "used_to_buy": [{"sku": "SKU-TOFU", "sku_name": "嫩豆腐"}, {"sku": "SKU-VEG", "sku_name": "上海青"},
                             {"sku": "SKU-TEA", "sku_name": "铁观音"}]}], "not_consented": 0},
        "lockers": {
            "waiting": {"neighbours": [
                {"oneid": alice, "order_id": ALICE_WAITING["order_id"], "locker_id": "L-C01-1", "compartment_id": "L-C01-1-K01",
                 "slot_start": "2026-11-19T23:00:00Z", "slot_end": "2026-11-20T02:00:00Z"}], "not_consented": 0},
            "overdue": {"neighbours": [
                {"oneid": erin, "order_id": ERIN_FIRST["order_id"], "locker_id": "L-C01-1", "compartment_id": "L-C01-1-K01",
                 "slot_start": "2026-11-19T09:00:00Z", "slot_end": "2026-11-19T11:00:00Z", "hours_overdue": 13.0}],
                "not_consented": 1}},  # carol's
        "open_claims": {"neighbours": [
            {"oneid": erin, "order_id": ERIN_FIRST["order_id"], "reason": "quality", "amount_cny": 12.5,
             "claimed_at": "2026-11-19T12:00:00Z"}], "not_consented": 1},  # carol's
        # 11-13 .. 11-19 in B01: eggs 2 (alice) + 1 (carol); tofu 1 (alice) + 1 (carol's overdue);
        # veg 1 (alice) + 2 (erin); tea 1 (erin)
        "sales_this_week": {"from": "2026-11-13", "to": "2026-11-19", "top": [
            {"sku": "SKU-EGG", "sku_name": "土鸡蛋", "category": "eggs", "orders": 2, "units": 3, "amount_cny": 36.0},
            {"sku": "SKU-VEG", "sku_name": "上海青", "category": "vegetables", "orders": 2, "units": 3, "amount_cny": 9.0},
            {"sku": "SKU-TOFU", "sku_name": "嫩豆腐", "category": "tofu", "orders": 2, "units": 2, "amount_cny": 9.0},
            {"sku": "SKU-TEA", "sku_name": "铁观音", "category": "tea", "orders": 1, "units": 1, "amount_cny": 38.0}]},
        "surplus": None,
        "notes": ["the demand forecast and stocking plan have not run: surplus is not shown"],
    }


def test_brief_equals_the_hand_computed_one_section_by_section(built: tuple[Settings, Warehouse]) -> None:
    cfg, w = built
    brief = assemble(w, "LD-C01-B01", DAY, cfg=cfg)
    expected = expected_b01(w)
    for section in expected:
        assert brief[section] == expected[section], section
    assert set(brief) == set(expected)


def test_no_one_without_consent_or_from_another_building_is_named(built: tuple[Settings, Warehouse]) -> None:
    cfg, w = built
    carol, dan, frank = oneid(w, CAROL_EGGS[0]), oneid(w, DAN_EGGS[0]), oneid(w, FRANK_FIRST)
    text = json.dumps(assemble(w, "LD-C01-B01", DAY, cfg=cfg))
    assert carol not in text and dan not in text and frank not in text
    # B02's own brief names its consenting neighbours: the same rules, the other building
    other = assemble(w, "LD-C01-B02", DAY, cfg=cfg)
    assert [r["oneid"] for r in other["due_to_reorder"]["neighbours"]] == [dan]
    assert [r["oneid"] for r in other["new_neighbours"]["neighbours"]] == [frank]
    assert oneid(w, ALICE_EGGS[0]) not in json.dumps(other)
    with pytest.raises(UnknownLeader):
        assemble(w, "LD-NOPE", DAY, cfg=cfg)


def test_exports_name_neighbours_as_the_leader_export_does(built: tuple[Settings, Warehouse]) -> None:
    cfg, w = built
    brief = assemble(w, "LD-C01-B01", DAY, cfg=cfg)
    alice, erin = oneid(w, ALICE_EGGS[0]), oneid(w, ERIN_FIRST)
    shown = present(brief, cfg)
    hashed = pseudonym(leader_key(cfg.hash_key_bytes(), "LD-C01-B01"), erin)  # erin's id in this leader's audience files
    assert erin not in json.dumps(shown) and alice not in json.dumps(shown)
    assert shown["new_neighbours"]["neighbours"][0]["neighbour"] == hashed
    assert shown["new_neighbours"]["neighbours"][0]["id_kind"] == "keyed_hash"
    lines = to_csv(shown).splitlines()
    assert lines[0] == "section,neighbour,sku,name,order_id,locker,when,detail,amount_cny"
    assert f"lockers_overdue,{hashed},,,{ERIN_FIRST['order_id']},L-C01-1/L-C01-1-K01,2026-11-19T11:00:00Z,13 h past the slot," in lines
    assert sum(line.startswith("sales_this_week,") for line in lines) == 4
    md = to_markdown(shown)
    assert "## 老顾客沉默了 / Regulars gone quiet" in md and "嫩豆腐、上海青、铁观音" in md and erin not in md
    assert "另有 1 位邻居" in md  # carol, counted under due to reorder, overdue and claims
    # OneIDs in the clear: only when the contact rules allow it, only for who granted personalised recommendations
    with pytest.raises(ExportRefused):
        present(brief, cfg, identifiers="oneid", warehouse=w, rules=ContactRules())
    clear = present(brief, cfg, identifiers="oneid", warehouse=w, rules=ContactRules(clear_identifiers=True))
    assert clear["due_to_reorder"]["neighbours"][0]["neighbour"] == alice
    assert clear["new_neighbours"]["neighbours"][0]["neighbour"] == hashed  # erin granted marketing only


def test_surplus_from_the_stocking_plan_of_the_morning(built: tuple[Settings, Warehouse]) -> None:
    from zoneinfo import ZoneInfo

    from lastmile.stocking.plan import PLAN_COLUMNS, PLAN_TABLE, ensure_table

    cfg, w = built
    ensure_table(w, cfg.business_tz)
    try:
        assert assemble(w, "LD-C01-B01", DAY, cfg=cfg)["notes"] == [
            "no stocking plan for the delivery of 2026-11-20 to C01: surplus is not shown"]
        today, tomorrow = (datetime(2026, 11, d, 5, 0, tzinfo=ZoneInfo("Asia/Shanghai")) for d in (20, 21))
        plan = [  # sku, community, delivery, on hand, expiring before it, ordered, p50
            ("SKU-EGG", "C01", today, 10, 2, 4, 7.5),   # 12 in stock, 4.5 over the median: 4
            ("SKU-TEA", "C01", today, 3, 0, 0, 1.2),    # 3 in stock: 1
            ("SKU-TOFU", "C01", today, 1, 0, 3, 6.0),   # short, not surplus
            ("SKU-VEG", "C01", today, 5, 0, 0, 4.5),    # 0.5 over: no whole unit
            ("SKU-VEG", "C02", today, 50, 0, 0, 1.0),   # another community
            ("SKU-TOFU", "C01", tomorrow, 40, 0, 0, 1.0),  # tomorrow's delivery
        ]
        w.insert_rows(PLAN_TABLE, [(f"fw-{c}", c, sku, at, qty, on, exp, 0, p50, p50 * 1.5, on + qty, 0, "", None, "v1",
                                    datetime.now(timezone.utc)) for sku, c, at, on, exp, qty, p50 in plan], list(PLAN_COLUMNS))
        brief = assemble(w, "LD-C01-B01", DAY, cfg=cfg)
        assert brief["surplus"] == [
            {"sku": "SKU-EGG", "sku_name": "土鸡蛋", "surplus_units": 4, "stock_units": 12, "p50_demand": 7.5},
            {"sku": "SKU-TEA", "sku_name": "铁观音", "surplus_units": 1, "stock_units": 3, "p50_demand": 1.2}]
        assert brief["notes"] == []
        shown = present(brief, cfg)
        assert "surplus,,SKU-EGG,土鸡蛋,,,,4 units over the median demand (7.5) of 12 in stock," in to_csv(shown).splitlines()
        assert "- 土鸡蛋 · 4 units over the median demand (7.5) of 12 in stock" in to_markdown(shown)
    finally:
        w.command(f"DROP TABLE IF EXISTS {PLAN_TABLE}")


def test_api_contract(built: tuple[Settings, Warehouse]) -> None:
    cfg, w = built
    app = create_app(cfg, service=object())
    path = "/leaders/LD-C01-B01/brief?as_of=2026-11-20"
    status, body, headers = call(app, path)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    status, body, _ = call(app, path, key=create_key(cfg, "m", ["marketing:read"])[1])
    assert status == 403 and b"leaders:read" in body
    reader = create_key(cfg, "wecom", ["leaders:read"])[1]
    status, body, _ = call(app, path, key=reader)
    assert status == 200
    assert json.loads(body) == json.loads(json.dumps(present(assemble(w, "LD-C01-B01", DAY, cfg=cfg), cfg)))
    status, body, headers = call(app, path + "&format=csv", key=reader)
    assert status == 200 and headers["content-type"].startswith("text/csv") and body.startswith(b"section,neighbour,")
    status, body, _ = call(app, path + "&format=md", key=reader)
    assert status == 200 and "团长早报".encode() in body
    assert call(app, "/leaders/LD-NOPE/brief", key=reader)[0] == 404
    spec = json.loads(call(app, "/openapi.json")[1])
    operation = spec["paths"]["/leaders/{leader_id}/brief"]["get"]
    assert operation["x-required-scope"] == "leaders:read" and {"200", "401", "403", "404"} <= set(operation["responses"])
    assert {"due_to_reorder", "quiet_regulars", "surplus"} <= set(spec["components"]["schemas"]["Brief"]["properties"])
    assert call(app, path + "&format=xml", key=reader)[0] == 422
    assert call(app, "/leaders/LD-C01-B01/brief?as_of=yesterday", key=reader)[0] == 422
    # each named neighbour of each answer is audited, under the audit pseudonym
    audited = [e for e in read_audit(cfg) if e["action"] == "GET leader brief"]
    assert len(audited) == 3 * 3  # alice, bob, erin; json, csv and md
    assert oneid(w, ERIN_FIRST) not in cfg.home.joinpath("api", "audit.jsonl").read_text()


def test_cli(built: tuple[Settings, Warehouse]) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["leader", "brief", "LD-C01-B01", "--as-of", "2026-11-20", "--format", "md"])
    assert result.exit_code == 0, result.output
    assert "团长早报" in result.output and "2026-11-20" in result.output
    result = runner.invoke(cli, ["leader", "brief", "LD-NOPE", "--as-of", "2026-11-20"])
    assert result.exit_code == 2 and "unknown leader: LD-NOPE" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["leader", "brief", "LD-C01-B01", "--as-of", "20-11-2026"])
    assert result.exit_code == 2 and "is not a day" in result.output
