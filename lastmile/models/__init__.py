"""Models on the feature store: recommendation (ALS + re-ranker) and spending health.

Functions for the CLI (lastmile/cli.py registers them and prints what they return):
:func:`train_models`, :func:`recommend_command`, :func:`serve_command`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lastmile.config import Settings, settings as current_settings


@dataclass
class TrainingReport:
    """What `lastmile train` did: feature-store refresh summaries and each model's metrics.

    ``spending_health`` is None when that model could not be trained (real data has no
    persona truth to label it); ``spending_health_skipped`` then says why.
    """

    recommender: dict[str, Any]
    spending_health: dict[str, Any] | None = None
    spending_health_skipped: str = ""
    feature_store: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The metrics, as ``lastmile train --json`` and ``lastmile run --json`` give them."""
        out: dict[str, Any] = {"recommender": self.recommender}
        if self.spending_health is not None:
            out["spending_health"] = self.spending_health
        return out

    def text(self) -> str:
        """Recall@10 / NDCG@10 against the popularity baseline and the spending-health AUC,
        saying plainly when a model does not beat its baseline."""
        m = self.recommender
        lines = list(self.feature_store)
        lines.append(f"recommender ({m['candidate_backend']} + re-ranker, {m['test_users']} customers, test window "
                     f"{m['test_window'][0]}..{m['test_window'][1]}):")
        lines.append(f"  recall@10 {m['model']['recall@10']:.4f}  NDCG@10 {m['model']['ndcg@10']:.4f}   "
                     f"popularity-in-community baseline: recall@10 {m['baseline']['recall@10']:.4f}  "
                     f"NDCG@10 {m['baseline']['ndcg@10']:.4f}"
                     f"   (ALS alone: {m['als_only']['recall@10']:.4f} / {m['als_only']['ndcg@10']:.4f})")
        lines.append("  " + ("beats the baseline" if m["beats_baseline"] else "DOES NOT beat the baseline: do not serve it"))
        s = self.spending_health
        if s is None:
            lines.append(f"spending health: not trained ({self.spending_health_skipped})")
        else:
            lines.append(f"spending health (logistic, {s['test_customers']} held-out customers, label: {s['label']}):")
            lines.append(f"  AUC {s['auc']:.4f}   baseline ({s['baseline']}): AUC {s['baseline_auc']:.4f}   "
                         f"precision {s['precision_at_threshold']:.3f} recall {s['recall_at_threshold']:.3f} "
                         "at the risk threshold")
            lines.append("  " + ("beats the baseline" if s["beats_baseline"] else "DOES NOT beat the baseline"))
        return "\n".join(lines)


def train_models(cfg: Settings | None = None, refresh_features: bool = True) -> TrainingReport:
    """`lastmile train`: (re)apply and materialize the feature store, train both models.

    The spending-health model needs the simulator's persona truth for its labels; on real
    data it is skipped (said in the report), and the recommender is still trained.
    """
    from lastmile.features.store import apply, materialize
    from lastmile.models.evaluation import NoGroundTruth
    from lastmile.models.recommender import train_recommender
    from lastmile.models.spending import train_spending

    cfg = cfg or current_settings()
    refreshed = [apply(cfg).summary(), materialize(cfg).summary()] if refresh_features else []
    reco = train_recommender(cfg)
    report = TrainingReport({**reco.metrics, "beats_baseline": reco.beats_baseline}, feature_store=refreshed)
    try:
        spend = train_spending(cfg)
    except NoGroundTruth as exc:
        report.spending_health_skipped = str(exc)
    else:
        report.spending_health = {**spend.metrics, "beats_baseline": spend.beats_baseline}
    return report


def recommend_command(oneid: str, limit: int = 10, cfg: Settings | None = None) -> str:
    """`lastmile recommend ONEID [--limit N]`: the API's answer, as JSON."""
    from lastmile.models.service import ModelService

    return json.dumps(ModelService(cfg or current_settings()).recommend(oneid, limit=limit), ensure_ascii=False, indent=1)


class NoApiKeys(ValueError):
    """`lastmile serve` was asked to start with no API key configured."""


def serve_command(host: str = "127.0.0.1", port: int = 8000, cfg: Settings | None = None) -> None:
    """`lastmile serve [--host H] [--port P]`: the marketing-automation API under uvicorn.

    Refuses to start without an active API key: every customer endpoint needs one, so such a
    server would answer nothing but 401, and a deployment should never look up while locked.
    """
    import uvicorn

    from lastmile.api import create_app
    from lastmile.api_auth import active_keys, keys_path

    cfg = cfg or current_settings()
    if not active_keys(cfg):
        raise NoApiKeys(f"no active API key in {keys_path(cfg)}: create one first, e.g. "
                        "`lastmile api-key create --name marketing --scopes marketing:read`")
    uvicorn.run(create_app(cfg, warm=True), host=host, port=port, log_level="info")
