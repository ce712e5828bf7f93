"""Models on the feature store: recommendation (ALS + re-ranker) and spending health.

Functions for the CLI (lastmile/cli.py registers them): :func:`train_command`,
:func:`recommend_command`, :func:`serve_command`.
"""

from __future__ import annotations

import json
from typing import Any

from lastmile.config import Settings, settings as current_settings


def train_command(cfg: Settings | None = None, refresh_features: bool = True) -> dict[str, Any]:
    """`lastmile train`: (re)apply and materialize the feature store, train both models, print metrics.

    Returns the metrics; prints recall@10 / NDCG@10 against the popularity baseline and the
    spending-health AUC, and says plainly when a model does not beat its baseline.
    """
    from lastmile.features.store import apply, materialize
    from lastmile.models.recommender import train_recommender
    from lastmile.models.spending import train_spending

    cfg = cfg or current_settings()
    if refresh_features:
        print(apply(cfg).summary())
        print(materialize(cfg).summary())
    reco = train_recommender(cfg)
    m = reco.metrics
    print(f"recommender ({m['candidate_backend']} + re-ranker, {m['test_users']} customers, test window "
          f"{m['test_window'][0]}..{m['test_window'][1]}):")
    print(f"  recall@10 {m['model']['recall@10']:.4f}  NDCG@10 {m['model']['ndcg@10']:.4f}   "
          f"popularity-in-community baseline: recall@10 {m['baseline']['recall@10']:.4f}  NDCG@10 {m['baseline']['ndcg@10']:.4f}"
          f"   (ALS alone: {m['als_only']['recall@10']:.4f} / {m['als_only']['ndcg@10']:.4f})")
    print("  " + ("beats the baseline" if reco.beats_baseline else "DOES NOT beat the baseline: do not serve it"))
    result: dict[str, Any] = {"recommender": {**m, "beats_baseline": reco.beats_baseline}}
    try:
        spend = train_spending(cfg)
        s = spend.metrics
        print(f"spending health (logistic, {s['test_customers']} held-out customers, label: {s['label']}):")
        print(f"  AUC {s['auc']:.4f}   baseline ({s['baseline']}): AUC {s['baseline_auc']:.4f}   "
              f"precision {s['precision_at_threshold']:.3f} recall {s['recall_at_threshold']:.3f} at the risk threshold")
        print("  " + ("beats the baseline" if spend.beats_baseline else "DOES NOT beat the baseline"))
        result["spending_health"] = {**s, "beats_baseline": spend.beats_baseline}
    except Exception as exc:  # real data has no persona truth
        from lastmile.models.evaluation import NoGroundTruth

        if not isinstance(exc, NoGroundTruth):
            raise
        print(f"spending health: not trained ({exc})")
    return result


def recommend_command(oneid: str, limit: int = 10, cfg: Settings | None = None) -> str:
    """`lastmile recommend ONEID [--limit N]`: the API's answer, as JSON."""
    from lastmile.models.service import ModelService

    return json.dumps(ModelService(cfg or current_settings()).recommend(oneid, limit=limit), ensure_ascii=False, indent=1)


def serve_command(host: str = "127.0.0.1", port: int = 8000, cfg: Settings | None = None) -> None:
    """`lastmile serve [--host H] [--port P]`: the marketing-automation API under uvicorn."""
    import uvicorn

    from lastmile.api import create_app

    uvicorn.run(create_app(cfg or current_settings(), warm=True), host=host, port=port, log_level="info")
