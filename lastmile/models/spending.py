"""Spending health: a score of over-consumption risk, with the reasons behind it.

A logistic model (scikit-learn; see :mod:`lastmile.models.linear`) over the
``spending_health_v1`` feature service (impulse and healthy spend shares, late-night
ordering, spend velocity, basket growth, category balance, order frequency, today's
real-time counters). Trained on point-in-time features at the end of
the history and evaluated against the simulator's persona ground truth (label: the
"impulse" over-consumer persona) on a held-out third of customers: the AUC is printed by
``lastmile train``. The product never sees personas: it sees the score, a risk flag and,
for each customer, the features that pushed the score up most (the *reasons*).
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lastmile.config import Settings, settings as current_settings
from lastmile.models.linear import Logistic, auc

FEATURE_SERVICE = "spending_health_v1"
MODEL_NAME = "spending_health"

#: Model inputs (from spending_health_v1) and how each reads as a reason.
INPUTS: dict[str, str] = {
    "sh_impulse_share_28d": "impulse items are {v:.0%} of spend in the last 28 days",
    "sh_impulse_share_all": "impulse items are {v:.0%} of all spend",
    "sh_healthy_share_28d": "healthy items are only {v:.0%} of spend",
    "sh_late_night_share_28d": "{v:.0%} of orders placed between 23:00 and 05:00",
    "sh_orders_per_week_28d": "{v:.1f} orders a week",
    "sh_units_per_order_28d": "{v:.1f} units per order",
    "sh_weekly_spend_28d_cny": "spends ¥{v:.0f} a week",
    "sh_spend_velocity": "spending {v:.1f}x their own earlier weekly average",
    "sh_basket_growth": "baskets {v:.1f}x larger than before",
    "sh_category_balance_28d": "category balance {v:.2f} (1 = varied, 0 = one category)",
    "orders_7d": "{v:.0f} orders in the last 7 days",
    "avg_basket_cny": "average basket ¥{v:.0f}",
    "aff_snacks": "snacks are {v:.0%} of spend",
    "aff_ready_meal": "ready meals are {v:.0%} of spend",
    "aff_drinks": "drinks are {v:.0%} of spend",
    "aff_dessert": "desserts are {v:.0%} of spend",
    "aff_vegetables": "vegetables are only {v:.0%} of spend",
    "rt_orders_today": "{v:.0f} orders today",
    "rt_impulse_spend_today_cny": "¥{v:.0f} on impulse items today",
}
RISK_THRESHOLD = 0.5


def inputs_from(row: dict[str, Any]) -> np.ndarray:
    out = []
    for name in INPUTS:
        v = row.get(name)
        try:
            out.append(float(v) if v is not None else 0.0)
        except (TypeError, ValueError):
            out.append(0.0)
    return np.nan_to_num(np.asarray(out))


@dataclass
class SpendingModel:
    logistic: Logistic
    threshold: float = RISK_THRESHOLD
    metrics: dict[str, Any] = field(default_factory=dict)
    feature_service: str = FEATURE_SERVICE
    trained_at: str = ""

    def assess(self, row: dict[str, Any], top: int = 3) -> dict[str, Any]:
        """Score (0-100), risk flag and the top reasons for one customer's features."""
        x = inputs_from(row)
        p = float(self.logistic.predict(x[None])[0])
        contrib = self.logistic.contributions(x[None])[0]
        order = np.argsort(-contrib)
        reasons = []
        for i in order[:top]:
            if contrib[i] <= 0.05:
                break
            name = self.logistic.names[i]
            reasons.append({"feature": name, "value": round(float(x[i]), 4), "contribution": round(float(contrib[i]), 3),
                            "text": INPUTS[name].format(v=float(x[i]))})
        return {"risk_score": round(100 * p, 1), "at_risk": p >= self.threshold, "reasons": reasons}

    @property
    def beats_baseline(self) -> bool:
        m = self.metrics
        return bool(m) and m.get("auc", 0) > m.get("baseline_auc", 0)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.json").write_text(json.dumps({
            "model": MODEL_NAME, "feature_service": self.feature_service, "trained_at": self.trained_at,
            "threshold": self.threshold, "logistic": self.logistic.to_dict(), "metrics": self.metrics,
            "beats_baseline": self.beats_baseline}, indent=1))
        return directory

    @classmethod
    def load(cls, directory: Path) -> "SpendingModel":
        d = json.loads((directory / "model.json").read_text())
        return cls(Logistic.from_dict(d["logistic"]), d["threshold"], d["metrics"], d["feature_service"], d["trained_at"])


def train_spending(cfg: Settings | None = None, save: bool = True) -> SpendingModel:
    """Fit on PIT features at the end of history; AUC on held-out customers vs persona truth.

    Baseline: the single strongest hand-made signal, the 28-day impulse share, used as the
    score on the same held-out customers.
    """
    from lastmile.features.store import historical_features
    from lastmile.models.evaluation import persona_labels
    from lastmile.models.recommender import load_lines, model_dir

    cfg = cfg or current_settings()
    t0 = time.perf_counter()
    labels = persona_labels(cfg)
    lines = load_lines(cfg)
    as_of = max(lines["day"])
    ts = pd.Timestamp(datetime(as_of.year, as_of.month, as_of.day) + timedelta(days=1)).tz_localize(cfg.business_tz).tz_convert("UTC")
    customers = sorted(set(lines["oneid"]) & set(labels))
    entity = pd.DataFrame({"oneid": customers, "event_timestamp": ts})
    feats = historical_features(cfg, FEATURE_SERVICE, entity).replace({np.nan: None})
    recs = feats.to_dict("records")
    x = np.stack([inputs_from(r) for r in recs])
    y = np.array([labels[r["oneid"]] == "impulse" for r in recs], dtype=float)
    test = np.array([zlib.crc32(r["oneid"].encode()) % 3 == 0 for r in recs])
    model = Logistic.fit(x[~test], y[~test], list(INPUTS), l2=1.0)
    p = model.predict(x[test])
    base = x[test][:, list(INPUTS).index("sh_impulse_share_28d")]
    flagged = p >= RISK_THRESHOLD
    metrics = {
        "auc": round(auc(y[test], p), 4), "baseline_auc": round(auc(y[test], base), 4),
        "baseline": "sh_impulse_share_28d alone", "label": "simulator persona == impulse",
        "test_customers": int(test.sum()), "test_positives": int(y[test].sum()),
        "precision_at_threshold": round(float(y[test][flagged].mean()) if flagged.any() else 0.0, 4),
        "recall_at_threshold": round(float(flagged[y[test] == 1].mean()) if y[test].any() else 0.0, 4),
        "as_of": str(ts), "seconds": round(time.perf_counter() - t0, 1),
    }
    out = SpendingModel(model, RISK_THRESHOLD, metrics, FEATURE_SERVICE, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if save:
        out.save(model_dir(cfg, MODEL_NAME))
    return out
