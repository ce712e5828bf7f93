"""Models on the default simulation: the recommender beats the popularity-in-community
baseline, the spending-health model separates over-consumers, and the served recommender
honours the cap (at-risk customers) and its medical exception (declared dietary need).

The session's trained warehouse (conftest ``trained_warehouse``): the default simulation
(20,000 orders, 8 weeks), shared with the API tests. Slow.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from lastmile.config import Settings
from lastmile.models.recommender import RecommenderModel, model_dir
from lastmile.models.service import ModelService
from lastmile.models.spending import SpendingModel
from lastmile.warehouse import connect
from tests.warehouses import feature_home

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(trained_warehouse) -> Iterator[tuple[Settings, RecommenderModel, SpendingModel]]:
    home, reco, spend = trained_warehouse
    with feature_home(home) as cfg:
        yield cfg, reco, spend


def test_recommender_beats_the_popularity_baseline(trained) -> None:
    cfg, reco, _ = trained
    m = reco.metrics
    assert m["model"]["recall@10"] > m["baseline"]["recall@10"], m
    assert m["model"]["ndcg@10"] > m["baseline"]["ndcg@10"], m
    assert reco.beats_baseline
    saved = RecommenderModel.load(model_dir(cfg, "recommender"))
    assert saved.feature_service == "recommendation_v1" and saved.metrics == m


def test_spending_health_auc_against_persona_truth(trained) -> None:
    _, _, spend = trained
    assert spend.metrics["auc"] > 0.8, spend.metrics
    assert spend.feature_service == "spending_health_v1"


def test_served_cap_binds_at_risk_but_not_exempt_customers(trained) -> None:
    cfg, _, _ = trained
    service = ModelService(cfg)
    declared = {r[0] for r in connect(cfg).rows("SELECT oneid FROM ref_dietary_declarations FINAL WHERE dietary_need")}
    customers = [r[0] for r in connect(cfg).rows("SELECT DISTINCT oneid FROM feat_customer_profile ORDER BY oneid")]
    at_risk, exempt = None, None
    for oneid in customers:
        health = service.spending_health(oneid)
        if health["at_risk"] and oneid not in declared and at_risk is None:
            at_risk = oneid
        if oneid in declared and exempt is None:
            exempt = oneid
        if at_risk and exempt:
            break
    assert at_risk and exempt
    now = datetime(2026, 11, 2, 3, tzinfo=timezone.utc)
    first = service.recommend(at_risk, limit=10, now=now)
    assert first["policy"]["capped"] and len(first["items"]) <= service.policy.daily_cap
    assert not any(i["is_impulse"] for i in first["items"]) and first["nudges"]
    assert service.recommend(at_risk, limit=10, now=now) == first  # a read counts nothing
    sent = service.record_impressions(at_risk, [i["sku"] for i in first["items"]], now=now)
    assert sent["recorded"] == [i["sku"] for i in first["items"]] and sent["capped"]
    second = service.recommend(at_risk, limit=10, now=now)
    assert second["policy"]["shown_today"] == len(first["items"])
    assert len(first["items"]) + len(second["items"]) <= service.policy.daily_cap
    for _ in range(3):
        r = service.recommend(exempt, limit=10, now=now)
        assert r["policy"]["exempt"] and not r["policy"]["capped"]
        assert len(r["items"]) == 10
        assert service.record_impressions(exempt, [i["sku"] for i in r["items"]], now=now)["refused"] == []
