"""Every surface that shows a customer number shows the same one.

One small warehouse (simulate, ingest, ``dbt build``, feature store applied and
materialized); for several people, each metric is read from every place that exposes it -
the OneID 360 (``dim_customer``), the index marts, the feature histories, Feast's online
store as the API's ``/customers/{oneid}/features`` route reads it
(``ModelService.customer_features``), and the live counters fed the same orders - and must
agree.
"""

from __future__ import annotations

import math
from decimal import Decimal
from collections.abc import Iterator
from typing import Any

import pytest

from lastmile.config import Settings
from lastmile.warehouse import connect
from tests.feature_warehouse import build_feature_warehouse
from tests.warehouses import feature_home

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("agree") / "home"
    with feature_home(home):
        cfg, _ = build_feature_warehouse(home, orders=2000, weeks=5, dbt=True)
        yield cfg


def _people(cfg: Settings) -> list[str]:
    """The most active people, a few ordinary ones, and people who ordered on the last day."""
    w = connect(cfg)
    top = [o for (o,) in w.rows("SELECT oneid FROM dim_customer ORDER BY orders DESC, oneid LIMIT 3")]
    some = [o for (o,) in w.rows("SELECT oneid FROM dim_customer ORDER BY cityHash64(oneid) LIMIT 4")]
    last_day = [o for (o,) in w.rows(
        "SELECT DISTINCT oneid FROM int_customer_daily_activity WHERE orders > 0 "
        "AND activity_date = (SELECT as_of_date FROM int_observation_window) ORDER BY oneid LIMIT 3")]
    # whole history inside the last 28 days: their 28-day features cover what the marts cover
    recent = [o for (o,) in w.rows(
        "SELECT oneid FROM feat_customer_profile GROUP BY oneid "
        "HAVING argMax(tenure_days, event_timestamp) <= 28 AND max(orders_total) >= 3 ORDER BY oneid LIMIT 2")]
    people = list(dict.fromkeys(top + some + last_day + recent))
    assert len(people) >= 6
    return people


def _row(cfg: Settings, sql: str, oneid: str) -> dict[str, Any]:
    frame = connect(cfg).client.query_df(sql, parameters={"o": oneid})
    assert len(frame) == 1, (sql, oneid, len(frame))
    row = frame.iloc[0].to_dict()
    return {k: None if isinstance(v, float) and math.isnan(v) else float(v) if isinstance(v, Decimal) else v
            for k, v in row.items()}


class _FeaturesOnly:
    """The API's customer-feature reads (:meth:`ModelService.customer_features`, the same
    online reader over the same views) without the trained models the other routes need."""

    def __init__(self, cfg: Settings) -> None:
        from lastmile.features.online import OnlineReader
        from lastmile.features.store import get_store
        from lastmile.models.service import CUSTOMER_VIEWS, ModelService

        self.store = get_store(cfg)
        self.customer_refs = ModelService._refs(self, CUSTOMER_VIEWS)  # type: ignore[arg-type]
        self.customer_reader = OnlineReader(self.store, self.customer_refs)
        self._read = ModelService.customer_features

    def customer_features(self, oneid: str) -> dict[str, Any]:
        return self._read(self, oneid)  # type: ignore[arg-type]


def test_marts_feature_tables_and_the_api_agree(warehouse: Settings) -> None:
    cfg = warehouse
    service = _FeaturesOnly(cfg)
    late_checked = 0
    for oneid in _people(cfg):
        dim = _row(cfg, "SELECT * FROM dim_customer WHERE oneid = {o:String}", oneid)
        health = _row(cfg, "SELECT * FROM spending_health WHERE oneid = {o:String}", oneid)
        rfm = _row(cfg, "SELECT * FROM customer_rfm WHERE oneid = {o:String}", oneid)
        credit = _row(cfg, "SELECT * FROM neighbor_credit_score WHERE oneid = {o:String}", oneid)
        # The feature histories on the observation end's close: what the marts describe.
        profile = _row(cfg, "SELECT * FROM feat_customer_profile WHERE oneid = {o:String} "
                            "ORDER BY event_timestamp DESC LIMIT 1", oneid)
        sh = _row(cfg, "SELECT * FROM feat_spending_health WHERE oneid = {o:String} ORDER BY event_timestamp DESC LIMIT 1", oneid)
        affinity = _row(cfg, "SELECT * FROM feat_category_affinity WHERE oneid = {o:String} "
                             "ORDER BY event_timestamp DESC LIMIT 1", oneid)
        feat_credit = _row(cfg, "SELECT * FROM feat_customer_credit WHERE oneid = {o:String}", oneid)
        api = service.customer_features(oneid)  # what GET /customers/{oneid}/features answers

        # orders
        assert dim["orders"] == profile["orders_total"] == api["orders_total"], oneid
        assert rfm["total_spend_cny"] == pytest.approx(float(dim["total_spend_cny"]))
        # spend: what the person paid
        assert float(dim["total_spend_cny"]) == pytest.approx(profile["spend_total_cny"], abs=0.005) \
            == pytest.approx(api["spend_total_cny"], abs=0.005)
        # impulse share of basket value, all history
        assert dim["impulse_share"] == health["impulse_share"] == pytest.approx(sh["sh_impulse_share_all"], abs=1e-4)
        assert api["sh_impulse_share_all"] == pytest.approx(sh["sh_impulse_share_all"])
        # late-night share: one window (is_late_night), the OneID 360 shows the mart's value
        assert dim["late_night_share"] == health["late_night_share"]
        if profile["tenure_days"] <= 28:  # the 28-day window holds the whole history
            assert sh["sh_late_night_share_28d"] == pytest.approx(health["late_night_share"], abs=1e-4), oneid
            assert sh["sh_impulse_share_28d"] == pytest.approx(health["impulse_share"], abs=1e-4), oneid
            late_checked += 1
        # recency: days since the last purchase day
        assert dim["days_since_last_purchase"] == rfm["days_since_last_purchase"] == profile["days_since_last_order"] \
            == api["days_since_last_order"]
        # category balance: one formula over the same categories
        assert health["category_balance"] == pytest.approx(affinity["aff_category_balance"], abs=1e-4)
        assert api["aff_category_balance"] == pytest.approx(affinity["aff_category_balance"])
        # spend velocity against the person's own baseline (1 where the mart has none)
        velocity = health["spend_velocity"]
        assert sh["sh_spend_velocity"] == pytest.approx(1.0 if velocity is None else velocity, abs=1e-3)
        # home: the community most of their orders went to
        assert dim["home_community_id"] == profile["home_community_id"] == api["home_community_id"]
        # neighbour credit
        assert dim["credit_score"] == credit["credit_score"] == feat_credit["credit_score"] == api["credit_score"]
        assert dim["credit_tier"] == credit["credit_tier"] == api["credit_tier"]
    assert late_checked >= 1


def test_oneid_360_columns_have_one_definition(warehouse: Settings) -> None:
    """Top category, last pickup, review average, claims and packaging returns in the OneID 360
    equal what the order-level facts say for the same person."""
    w = connect(warehouse)
    for oneid in _people(warehouse):
        dim = _row(warehouse, "SELECT * FROM dim_customer WHERE oneid = {o:String}", oneid)
        (top, last_pickup, stars), = w.rows("""
            SELECT arraySort((c, a) -> (-toFloat64(a), c), s.1, s.2)[1], max_pickup, avg_stars
            FROM (SELECT sumMap(categories, category_amounts_cny) AS s, max(first_picked_up_at) AS max_pickup,
                         avgIf(review_stars, is_reviewed) AS avg_stars
                  FROM int_customer_orders WHERE oneid = {o:String})""", {"o": oneid})
        assert dim["top_category"] == top
        assert (dim["last_pickup_at"] is None and last_pickup is None) or \
            abs(dim["last_pickup_at"].timestamp() - last_pickup.timestamp()) < 0.001
        if dim["avg_review_stars"] is not None:
            assert dim["avg_review_stars"] == pytest.approx(round(stars, 2))
        claims, packaging = w.rows("SELECT sum(claims), sum(packaging_returns) FROM int_customer_monthly_activity "
                                   "WHERE oneid = {o:String}", {"o": oneid})[0]
        assert (dim["claims"], dim["packaging_returns"]) == (claims, packaging)


def _utc_iso(at: Any) -> str:
    """ISO 8601 with an offset, as events carry it (the warehouse returns naive UTC)."""
    return (at.tz_localize("UTC") if at.tzinfo is None else at).isoformat()


def test_live_counters_equal_the_batch_day(warehouse: Settings) -> None:
    """The stream's counters, fed the raw orders of each person's last two business days, give
    the batch definition's numbers for the last one (orders, paid spend, impulse spend) - the
    live day cut and dbt's business_date are the same day."""
    from lastmile.features.realtime import TodayCounters, order_fact

    w = connect(warehouse)
    impulse = frozenset(s for (s,) in w.rows("SELECT sku FROM ref_skus WHERE is_impulse"))
    people = _people(warehouse)
    rows = w.client.query_df("""
        SELECT e.oneid AS buyer, o.event_id AS event_id, o.occurred_at AS occurred_at, toFloat64(o.total_amount) AS total_amount,
               arrayMap(i -> map('sku', i.sku, 'qty', toString(i.qty), 'unit_price', toString(i.unit_price)), o.items) AS items
        FROM raw_order AS o FINAL
        INNER JOIN (SELECT event_id, oneid FROM event_oneid WHERE event_type = 'order') AS e ON e.event_id = o.event_id
        WHERE e.oneid IN {people:Array(String)}
          AND toDate(o.occurred_at, {tz:String}) >= (SELECT as_of_date FROM int_observation_window) - 1""",
                             parameters={"people": people, "tz": warehouse.business_tz})
    counters = TodayCounters(identities={o: (o, False) for o in people})
    facts = [order_fact({"event_id": r.event_id, "occurred_at": _utc_iso(r.occurred_at), "total_amount": r.total_amount,
                         "items": list(r.items), "buyer": r.buyer}, ["buyer"], impulse)
             for r in rows.itertuples()]
    assert facts, "people ordered in the last two days"
    touched = counters.add(facts)
    live = counters.frame(touched).set_index("oneid")
    batch = {oneid: (orders, spend, impulse_cny, day) for oneid, orders, spend, impulse_cny, day in w.rows("""
        SELECT oneid, orders, spend_cny, impulse_cny, activity_date FROM int_customer_daily_activity
        WHERE oneid IN {people:Array(String)} AND orders > 0
        ORDER BY activity_date DESC LIMIT 1 BY oneid""", {"people": list(touched)})}
    checked = 0
    for oneid in touched:
        orders, spend, impulse_cny, day = batch[oneid]
        row = live.loc[oneid]
        last = (row["event_timestamp"].tz_convert(warehouse.business_tz)).date()
        assert last == day, (oneid, last, day)
        assert row["rt_orders_today"] == orders
        assert row["rt_spend_today_cny"] == pytest.approx(spend, abs=0.005)
        assert row["rt_impulse_spend_today_cny"] == pytest.approx(impulse_cny, abs=0.01)
        checked += 1
    assert checked >= 3


def test_a_new_order_reaches_the_oneid_360_through_the_model_itself(warehouse: Settings, tmp_path) -> None:
    """The stream's refresh of the OneID 360 (on its identity thread) runs dim_customer and
    what it reads - the one definition - so a new order shows in it with the same numbers a
    full build gives. Runs last: it adds an order to the warehouse."""
    from concurrent.futures import ThreadPoolExecutor

    import orjson

    from lastmile.identity.profiles import build_profiles
    from pipelines import beam_ingest

    cfg = warehouse
    w = connect(cfg)
    oneid = _people(cfg)[0]
    event_id = w.scalar("SELECT argMax(event_id, ordered_at) FROM int_customer_orders WHERE oneid = {o:String}", {"o": oneid})
    lines = (cfg.events_dir / "order.jsonl").read_bytes().splitlines()  # (with the simulator's malformed ones)
    original = next(e for e in (orjson.loads(line) for line in lines if f'"{event_id}"'.encode() in line)
                    if e.get("event_id") == event_id)
    again = {**original, "event_id": "ev-ord-agree-1", "order_id": "ord-agree-1"}
    before = _row(cfg, "SELECT orders, total_spend_cny FROM dim_customer WHERE oneid = {o:String}", oneid)
    (tmp_path / "order.jsonl").write_bytes(orjson.dumps(again) + b"\n")
    assert beam_ingest.run(tmp_path, cfg=cfg).written == 1
    with ThreadPoolExecutor(max_workers=1) as identity_thread:
        people = identity_thread.submit(build_profiles, cfg).result()
    assert people == w.count("dim_customer", final=False) > 0
    after = _row(cfg, "SELECT orders, total_spend_cny FROM dim_customer WHERE oneid = {o:String}", oneid)
    assert after["orders"] == before["orders"] + 1
    assert after["total_spend_cny"] == pytest.approx(before["total_spend_cny"] + original["total_amount"], abs=0.005)
    assert after["orders"] == w.scalar("SELECT count() FROM int_customer_orders WHERE oneid = {o:String}", {"o": oneid})
