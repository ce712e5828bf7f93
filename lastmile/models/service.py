"""Scoring at request time: online features from Feast, the saved models, the policy.

Used by the HTTP API (lastmile/api.py) and by ``lastmile recommend``. Reads only the online
store (never the warehouse) and the model files under ``$LASTMILE_HOME/models``.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timezone
from typing import Any

import numpy as np

from lastmile.config import Settings, settings as current_settings
from lastmile.features.online import OnlineReader
from lastmile.features.tables import CATEGORIES
from lastmile.models.policy import CapLedger, SpendingPolicy
from lastmile.models.recommender import MODEL_NAME as RECO, RecommenderModel, candidate_features, model_dir
from lastmile.models.spending import MODEL_NAME as SPEND, SpendingModel
from lastmile.models.stock_aware import StockSignals, rerank_by_stock

CUSTOMER_VIEWS = ("customer_profile", "customer_credit", "spending_health", "category_affinity",
                  "customer_realtime", "customer_consent")
CANDIDATE_VIEWS = ("next_purchase", "community_bestsellers", "sku_catalog")


class UnknownCustomer(LookupError):
    """No feature of this OneID is in the online store."""


class ModelsMissing(RuntimeError):
    """`lastmile train` has not been run for this data directory."""


class ModelService:
    def __init__(self, cfg: Settings | None = None, policy: SpendingPolicy | None = None,
                 ledger: CapLedger | None = None) -> None:
        from lastmile.features.store import get_store

        self.cfg = cfg or current_settings()
        self.store = get_store(self.cfg)
        try:
            self.reco = RecommenderModel.load(model_dir(self.cfg, RECO))
            self.spend = SpendingModel.load(model_dir(self.cfg, SPEND))
        except FileNotFoundError as exc:
            raise ModelsMissing(f"no trained models under {self.cfg.home / 'models'}: run `lastmile train`") from exc
        self.policy = policy or SpendingPolicy()
        self.ledger = ledger or CapLedger()
        self.customer_refs = self._refs(CUSTOMER_VIEWS)
        self.candidate_refs = self._refs(CANDIDATE_VIEWS)
        # Planned once: each request is then one read of Feast's online store per entity set.
        self.customer_reader = OnlineReader(self.store, self.customer_refs)
        self.candidate_reader = OnlineReader(self.store, self.candidate_refs)
        # The community front warehouse's shelf (sku_forecast): what would expire, what is selling out.
        self.stock = StockSignals(self.store)

    def warm(self) -> None:
        """Run both online reads once, for ids that match nothing: SQLite prepares the statements
        and pages in the tables' index roots before the first real request."""
        self.customer_reader.read([{"oneid": ""}])
        self.candidate_reader.read([{"oneid": "", "community_id": "", "sku": ""}])

    def _refs(self, views: tuple[str, ...]) -> list[str]:
        return [f"{v}:{f.name}" for v in views for f in self.store.get_feature_view(v).features]

    # -- features --------------------------------------------------------------------------

    def customer_features(self, oneid: str) -> dict[str, Any]:
        got = self.customer_reader.read([{"oneid": oneid}])
        row = {k: v[0] for k, v in got.items()}
        if all(row.get(ref.split(":")[1]) is None for ref in self.customer_refs):
            raise UnknownCustomer(oneid)
        return row

    def spending_health(self, oneid: str, features: dict[str, Any] | None = None) -> dict[str, Any]:
        row = features or self.customer_features(oneid)
        result = self.spend.assess(row)
        result.update({"oneid": oneid, "dietary_need_declared": bool(row.get("dietary_need_declared")),
                       "model": {"name": SPEND, "feature_service": self.spend.feature_service,
                                 "trained_at": self.spend.trained_at}})
        return result

    # -- recommendations ------------------------------------------------------------------

    def candidates(self, oneid: str, community: str, ranked_als: list[str] | None = None) -> list[str]:
        """SKUs to re-rank: the ALS top 25 and the community's top 15 best-sellers (all SKUs if none)."""
        if ranked_als is None:
            scores = self.reco.candidates.score_all(oneid)
            ranked_als = sorted(scores, key=lambda s: -scores[s])
        cands = list(dict.fromkeys(ranked_als[:25] + self.reco.popular.get(community, [])[:15]))
        return cands or list(self.reco.candidates.items)

    @staticmethod
    def candidate_rows(oneid: str, community: str, cands: list[str]) -> list[dict[str, str]]:
        """Entity rows of the candidate read: one (customer, community, SKU) per candidate."""
        return [{"oneid": oneid, "community_id": community, "sku": s} for s in cands]

    def _rerank(self, row: dict[str, Any], got: dict[str, list[Any]], cands: list[str], scores: dict[str, float],
                rank: dict[str, int], as_of: float) -> list[dict[str, Any]]:
        """Score every candidate (customer row + its candidate features) with the re-ranker.

        One matrix through the re-ranker, not one numpy call per candidate.
        """
        rows = []
        for i in range(len(cands)):
            cand = dict(row)
            cand.update({k: v[i] for k, v in got.items()})
            rows.append(cand)
        x = np.array([candidate_features(c, scores.get(s, 0.0), rank.get(s, 99), as_of) for c, s in zip(rows, cands)])
        decisions = self.reco.reranker.decision(x).tolist()
        return [{"sku": sku, "score": round(float(score), 4), "category": cand.get("sku_category"),
                 "is_impulse": bool(cand.get("sku_is_impulse")), "is_healthy": bool(cand.get("sku_is_healthy")),
                 "community_rank_28d": cand.get("cb_rank_28d"), "bought_before": int(cand.get("np_purchases") or 0)}
                for sku, cand, score in zip(cands, rows, decisions)]

    @staticmethod
    def business_day(now: datetime) -> date:
        return now.astimezone(current_settings().business_zone).date()

    def recommend(self, oneid: str, limit: int = 10, now: datetime | None = None,
                  features: dict[str, Any] | None = None) -> dict[str, Any]:
        """Recommendations with the policy applied. A read: it counts nothing against the daily
        cap (the send path does, :meth:`record_impressions`)."""
        now = now or datetime.now(timezone.utc)
        today = self.business_day(now)
        row = features or self.customer_features(oneid)
        community = row.get("home_community_id") or ""
        scores = self.reco.candidates.score_all(oneid)
        ranked_als = sorted(scores, key=lambda s: -scores[s])
        rank = {s: i for i, s in enumerate(ranked_als)}
        cands = self.candidates(oneid, community, ranked_als)
        got = self.candidate_reader.read(self.candidate_rows(oneid, community, cands))
        items = self._rerank(row, got, cands, scores, rank, now.timestamp())
        items.sort(key=lambda r: -r["score"])
        items = rerank_by_stock(items, self.stock.read(community, [i["sku"] for i in items]))
        health = self.spend.assess(row)
        exempt = bool(row.get("dietary_need_declared"))
        affinity = {c: float(row.get(f"aff_{c}") or 0.0) for c in CATEGORIES}
        decision = self.policy.apply(oneid, items, health, exempt, affinity, self.ledger, today, limit)
        return {
            "oneid": oneid, "community_id": community, "items": decision.items, "nudges": decision.nudges,
            "policy": {"at_risk": decision.at_risk, "risk_score": health["risk_score"], "capped": decision.capped,
                       "daily_cap": decision.cap, "shown_today": decision.shown_today, "exempt": decision.exempt,
                       "note": decision.note},
            "model": {"name": RECO, "feature_service": self.reco.feature_service, "trained_at": self.reco.trained_at,
                      "candidate_backend": self.reco.candidates.backend, "beats_baseline": self.reco.beats_baseline},
        }

    def record_impressions(self, oneid: str, skus: list[str], now: datetime | None = None,
                           send_id: str | None = None, features: dict[str, Any] | None = None) -> dict[str, Any]:
        """Count the recommendations a send shows ``oneid`` today; a capped customer's beyond the
        cap are refused (not counted: the sender must not show them). A repeated ``send_id``
        counts nothing again."""
        now = now or datetime.now(timezone.utc)
        row = features or self.customer_features(oneid)
        health = self.spend.assess(row)
        exempt = bool(row.get("dietary_need_declared"))
        done = self.policy.record(oneid, skus, health, exempt, self.ledger, self.business_day(now), send_id)
        return {"oneid": oneid, "recorded": done.recorded, "refused": done.refused, "shown_today": done.shown_today,
                "capped": done.capped, "daily_cap": done.cap}
