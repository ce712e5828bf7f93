"""The recommender: ALS candidates, re-ranked with feature-store features, judged on a time split.

Training (:func:`train_recommender`), all on warehouse history, never on the future:

1. Time split by business day: the last ``window_days`` are the **test** window, the
   ``window_days`` before them the **validation** window.
2. Re-ranker fit: ALS on purchases before the validation window; for each customer a
   candidate set (ALS top items, the community's best-sellers, the customer's own past SKUs);
   features for every (customer, community, candidate) from Feast's *point-in-time*
   historical retrieval of ``recommendation_v1`` at the validation cut-off; label = bought in
   the validation window. A logistic re-ranker learns the weights.
3. Evaluation: ALS again on everything before the test window, candidates and PIT features
   at the test cut-off, re-ranked, compared with the **popularity-in-community baseline**
   (the community's most ordered SKUs over the 28 days before the cut-off) on recall@10 and
   NDCG@10 against what each customer actually bought in the test window.
4. The served model: ALS on all history, the re-ranker from step 2. Saved with the feature
   service name and the metrics; ``beats_baseline`` says plainly whether it won.

Serving (:class:`Recommender`) reads the same features online (Feast), computes the same
candidate features (:func:`candidate_features`) and applies the spending-health policy.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lastmile.config import Settings, settings as current_settings
from lastmile.models.candidates import FittedCandidates
from lastmile.models.linear import Logistic, ranking_metrics

FEATURE_SERVICE = "recommendation_v1"
MODEL_NAME = "recommender"

RERANK_FEATURES = [
    "als_score", "als_rank_inv", "cb_share_28d", "cb_units_7d_log", "cb_trend", "category_affinity",
    "purchases_log", "bought_before", "due_closeness", "days_since_sku_log", "same_weekday_share",
    "is_impulse", "is_healthy", "impulse_x_customer_impulse",
]


def _f(v: Any, default: float = 0.0) -> float:
    if v is None:
        return default
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(x) else x


def candidate_features(row: dict[str, Any], als_score: float, als_rank: int, as_of_ts: float) -> list[float]:
    """The re-ranker's inputs for one candidate, from recommendation_v1 values (online or PIT).

    Next-purchase due is derived here, at request (or training) time, from the last purchase
    and the typical interval: ``days_until_due = mean_interval - days_since_last_purchase``.
    """
    purchases = _f(row.get("np_purchases"))
    interval = _f(row.get("np_mean_interval_days"))
    spread = max(_f(row.get("np_interval_std_days")), 2.0)
    last = row.get("np_last_purchase_ts")
    days_since = (as_of_ts - _f(last)) / 86400.0 if last is not None and _f(last) > 0 else None
    due = 0.0
    if days_since is not None and interval > 0:
        due = math.exp(-abs(interval - days_since) / spread)
    category = row.get("sku_category") or ""
    impulse = 1.0 if row.get("sku_is_impulse") else 0.0
    return [
        als_score,
        1.0 / (1.0 + als_rank),
        _f(row.get("cb_share_28d")),
        math.log1p(_f(row.get("cb_units_7d"))),
        _f(row.get("cb_trend"), 1.0),
        _f(row.get(f"aff_{category}")),
        math.log1p(purchases),
        1.0 if purchases > 0 else 0.0,
        due,
        math.log1p(days_since) if days_since is not None else 0.0,
        _f(row.get("np_same_weekday_share")),
        impulse,
        1.0 if row.get("sku_is_healthy") else 0.0,
        impulse * _f(row.get("sh_impulse_share_28d")),
    ]


# -- data -------------------------------------------------------------------------------------


def load_lines(cfg: Settings) -> pd.DataFrame:
    """Order lines with the buyer's OneID (dbt's int_customer_order_lines, which the feature histories read)."""
    from lastmile.warehouse import connect

    df = connect(cfg).client.query_df(
        "SELECT oneid, order_id, order_date AS day, community_id, sku, qty FROM int_customer_order_lines")
    df["day"] = pd.to_datetime(df["day"]).dt.date
    return df


def cutoff_timestamp(day: date) -> pd.Timestamp:
    """Start of business day ``day`` (= close of the day before), in UTC."""
    return pd.Timestamp(datetime(day.year, day.month, day.day)).tz_localize(current_settings().business_tz).tz_convert("UTC")


def community_popularity(lines: pd.DataFrame, before: date, days: int = 28) -> dict[str, list[str]]:
    """Per community, SKUs by orders in the ``days`` before ``before`` (the baseline ranking)."""
    window = lines[(lines["day"] < before) & (lines["day"] >= before - timedelta(days=days))]
    counts = window.groupby(["community_id", "sku"])["order_id"].nunique().reset_index(name="orders")
    counts = counts.sort_values(["community_id", "orders", "sku"], ascending=[True, False, True])
    return {c: g["sku"].tolist() for c, g in counts.groupby("community_id")}


@dataclass
class Split:
    history: pd.DataFrame
    cutoff: date
    truth: dict[str, set[str]]
    community: dict[str, str]


def split_at(lines: pd.DataFrame, cutoff: date, window_days: int) -> Split:
    history = lines[lines["day"] < cutoff]
    future = lines[(lines["day"] >= cutoff) & (lines["day"] < cutoff + timedelta(days=window_days))]
    known = set(history["oneid"])
    truth = {u: set(g["sku"]) for u, g in future.groupby("oneid") if u in known}
    last = history.sort_values("day").groupby("oneid")["community_id"].last().to_dict()
    return Split(history, cutoff, truth, last)


def _candidates(als: FittedCandidates, oneid: str, community: str, popular: dict[str, list[str]],
                own: dict[str, list[str]], n_als: int = 25) -> tuple[list[str], dict[str, float], dict[str, int]]:
    scores = als.score_all(oneid)
    ranked = sorted(scores, key=lambda s: -scores[s])
    rank = {s: i for i, s in enumerate(ranked)}
    cands = list(dict.fromkeys(ranked[:n_als] + popular.get(community, [])[:15] + own.get(oneid, [])[:10]))
    return cands, scores, rank


def _frame(split: Split, als: FittedCandidates, users: list[str]) -> tuple[pd.DataFrame, dict]:
    popular = community_popularity(split.history, split.cutoff)
    own_counts = split.history.groupby(["oneid", "sku"])["order_id"].nunique().reset_index(name="n")
    own = {u: g.sort_values("n", ascending=False)["sku"].tolist() for u, g in own_counts.groupby("oneid")}
    rows = []
    meta = {}
    ts = cutoff_timestamp(split.cutoff)
    for u in users:
        community = split.community[u]
        cands, scores, rank = _candidates(als, u, community, popular, own)
        meta[u] = (scores, rank)
        rows += [{"oneid": u, "community_id": community, "sku": s, "event_timestamp": ts} for s in cands]
    return pd.DataFrame(rows), {"popular": popular, "als": meta}


def _matrix(features: pd.DataFrame, meta: dict, as_of_ts: float) -> np.ndarray:
    recs = features.to_dict("records")
    x = np.zeros((len(recs), len(RERANK_FEATURES)))
    for i, r in enumerate(recs):
        scores, rank = meta["als"][r["oneid"]]
        x[i] = candidate_features(r, scores.get(r["sku"], 0.0), rank.get(r["sku"], 99), as_of_ts)
    return x


def _pit(cfg: Settings, entity_df: pd.DataFrame) -> pd.DataFrame:
    from lastmile.features.store import historical_features

    out = historical_features(cfg, FEATURE_SERVICE, entity_df)
    return out.replace({np.nan: None}) if len(out) else out


# -- the model ----------------------------------------------------------------------------------


@dataclass
class RecommenderModel:
    candidates: FittedCandidates
    reranker: Logistic
    popular: dict[str, list[str]]
    metrics: dict[str, Any] = field(default_factory=dict)
    feature_service: str = FEATURE_SERVICE
    trained_at: str = ""

    @property
    def beats_baseline(self) -> bool:
        m = self.metrics
        return bool(m) and m["model"]["recall@10"] > m["baseline"]["recall@10"] and m["model"]["ndcg@10"] > m["baseline"]["ndcg@10"]

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / "factors.npz", user_factors=self.candidates.user_factors,
                            item_factors=self.candidates.item_factors)
        meta = {"model": MODEL_NAME, "feature_service": self.feature_service, "trained_at": self.trained_at,
                "backend": self.candidates.backend, "users": self.candidates.users, "items": self.candidates.items,
                "reranker": self.reranker.to_dict(), "popular": self.popular, "metrics": self.metrics,
                "beats_baseline": self.beats_baseline}
        (directory / "model.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path) -> "RecommenderModel":
        meta = json.loads((directory / "model.json").read_text())
        arrays = np.load(directory / "factors.npz")
        cand = FittedCandidates(meta["users"], meta["items"], arrays["user_factors"], arrays["item_factors"],
                                meta["backend"])
        return cls(cand, Logistic.from_dict(meta["reranker"]), meta["popular"], meta["metrics"],
                   meta["feature_service"], meta["trained_at"])


def forget_users(directory: Path, oneids: set[str]) -> int:
    """Remove people from a saved recommender (their OneID and factor row); returns how many.

    A forget request must not leave a person's OneID and taste profile in the artefact the API
    serves; the other users' factors, the items and the re-ranker do not depend on the row.
    """
    path = directory / "model.json"
    if not path.is_file():
        return 0
    meta = json.loads(path.read_text())
    users: dict[str, int] = meta["users"]  # OneID -> row of user_factors
    kept = sorted((row, user) for user, row in users.items() if user not in oneids)
    removed = len(users) - len(kept)
    if not removed:
        return 0
    arrays = np.load(directory / "factors.npz")
    keep = [row for row, _ in kept]
    meta["users"] = {user: i for i, (_, user) in enumerate(kept)}
    tmp = directory / "factors.forgetting.npz"
    np.savez_compressed(tmp, user_factors=arrays["user_factors"][keep], item_factors=arrays["item_factors"])
    os.replace(tmp, directory / "factors.npz")
    tmp_meta = directory / "model.json.forgetting"
    tmp_meta.write_text(json.dumps(meta, ensure_ascii=False, indent=1, default=str))
    os.replace(tmp_meta, path)
    return removed


def model_dir(cfg: Settings, name: str) -> Path:
    return cfg.home / "models" / name


def _evaluate(model_scores: dict[str, list[str]], split: Split, popular: dict[str, list[str]], k: int) -> dict:
    """Recall@k and NDCG@k of the rankings and of the community-popularity baseline, on what
    each customer bought in the window."""
    users = list(model_scores)
    relevant = [split.truth[u] for u in users]
    return {"model": ranking_metrics([model_scores[u] for u in users], relevant, k),
            "baseline": ranking_metrics([popular.get(split.community[u], []) for u in users], relevant, k)}


def train_recommender(cfg: Settings | None = None, window_days: int = 7, max_users: int = 1200, k: int = 10,
                      seed: int = 11, save: bool = True) -> RecommenderModel:
    cfg = cfg or current_settings()
    t0 = time.perf_counter()
    lines = load_lines(cfg)
    if len(lines) == 0:
        raise ValueError("no orders in the warehouse to train on; run `lastmile run` or ingest events first")
    as_of = max(lines["day"])
    test_cut = as_of - timedelta(days=window_days - 1)
    val_cut = test_cut - timedelta(days=window_days)
    history = (val_cut - min(lines["day"])).days
    if history < window_days:
        # Training needs history before the validation and test weeks (time split).
        raise ValueError(f"not enough history to train the recommender: {history} days before the validation "
                         f"week; it needs at least {window_days} (simulate 4 weeks or more)")
    rng = np.random.default_rng(seed)

    def pairs(df: pd.DataFrame) -> list[tuple[str, str, float]]:
        g = df.groupby(["oneid", "sku"])["order_id"].nunique().reset_index()
        return list(g.itertuples(index=False, name=None))

    def users_of(split: Split) -> list[str]:
        users = sorted(split.truth)
        if len(users) > max_users:
            users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
        return users

    # 2. fit the re-ranker on the validation window
    val = split_at(lines, val_cut, window_days)
    als_val = FittedCandidates.fit(pairs(val.history))
    val_users = users_of(val)
    entity, meta = _frame(val, als_val, val_users)
    feats = _pit(cfg, entity)
    x = _matrix(feats, meta, cutoff_timestamp(val_cut).timestamp())
    y = np.array([r["sku"] in val.truth[r["oneid"]] for r in feats[["oneid", "sku"]].to_dict("records")], dtype=float)
    reranker = Logistic.fit(x, y, RERANK_FEATURES, l2=1.0)

    # 3. evaluate on the test window against the community-popularity baseline
    test = split_at(lines, test_cut, window_days)
    als_test = FittedCandidates.fit(pairs(test.history))
    test_users = users_of(test)
    entity, meta = _frame(test, als_test, test_users)
    feats = _pit(cfg, entity)
    x = _matrix(feats, meta, cutoff_timestamp(test_cut).timestamp())
    feats = feats.assign(_score=reranker.decision(x))
    ranked = {u: g.sort_values("_score", ascending=False)["sku"].tolist() for u, g in feats.groupby("oneid")}
    als_only = {u: sorted(meta["als"][u][0], key=lambda s: -meta["als"][u][0][s]) for u in ranked}
    metrics = _evaluate(ranked, test, meta["popular"], k)
    metrics["als_only"] = _evaluate(als_only, test, meta["popular"], k)["model"]
    metrics.update({"test_users": len(ranked), "test_window": [str(test_cut), str(as_of)],
                    "validation_window": [str(val_cut), str(test_cut - timedelta(days=1))],
                    "validation_rows": int(len(y)), "validation_positive_share": round(float(y.mean()), 4),
                    "candidate_backend": als_test.backend, "seconds": round(time.perf_counter() - t0, 1)})

    # 4. the served model: candidates from all history
    full = FittedCandidates.fit(pairs(lines))
    model = RecommenderModel(full, reranker, community_popularity(lines, as_of + timedelta(days=1)), metrics,
                             FEATURE_SERVICE, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if save:
        model.save(model_dir(cfg, MODEL_NAME))
    return model
