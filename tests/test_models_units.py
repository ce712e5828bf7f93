"""The models' building blocks without a warehouse: the scikit-learn logistic model and its
saved form, the ranking metrics, and the training report the CLI prints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lastmile.models import TrainingReport
from lastmile.models.linear import Logistic, auc, ndcg_at_k, ranking_metrics, recall_at_k
from lastmile.models.spending import INPUTS, SpendingModel


def _customers(n: int = 600, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Impulse share and late-night share drive the label; a constant column carries nothing."""
    rng = np.random.default_rng(seed)
    impulse, night, noise = rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.normal(0, 1, n)
    y = (3 * impulse + 1.5 * night + rng.normal(0, 0.7, n) > 2.4).astype(float)
    return np.column_stack([impulse, night, noise, np.full(n, 7.0)]), y


def test_logistic_separates_and_explains_with_the_informative_inputs() -> None:
    x, y = _customers()
    model = Logistic.fit(x[:400], y[:400], ["impulse", "night", "noise", "constant"])
    assert auc(y[400:], model.predict(x[400:])) > 0.85
    assert model.coef[0] > model.coef[1] > abs(model.coef[2])
    assert model.coef[3] == 0.0 and model.scale[3] == 1.0  # a constant input is harmless
    contrib = model.contributions(x[:5])
    assert np.allclose(contrib.sum(axis=1) + model.intercept, model.decision(x[:5]))


def test_logistic_penalty_shrinks_the_weights() -> None:
    x, y = _customers()
    loose = Logistic.fit(x, y, list("abcd"), l2=0.01)
    tight = Logistic.fit(x, y, list("abcd"), l2=500.0)
    assert np.abs(tight.coef).sum() < 0.5 * np.abs(loose.coef).sum()


def test_logistic_refuses_one_class_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="all 3 training labels"):
        Logistic.fit(np.ones((3, 2)), np.zeros(3), ["a", "b"])


def test_saved_spending_model_reloads_and_older_files_still_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (300, len(INPUTS)))
    y = (x[:, 0] + rng.normal(0, 0.2, 300) > 0.6).astype(float)
    model = SpendingModel(Logistic.fit(x, y, list(INPUTS)), metrics={"auc": 0.9, "baseline_auc": 0.8})
    row = dict(zip(INPUTS, x[0].tolist()))
    loaded = SpendingModel.load(model.save(tmp_path / "now"))
    assert loaded.assess(row) == model.assess(row)
    saved = json.loads((tmp_path / "now" / "model.json").read_text())
    assert saved["logistic"]["fitted_with"].startswith("scikit-learn ")
    # A file written before the fitting library was recorded: the same numbers, no such key.
    del saved["logistic"]["fitted_with"]
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "model.json").write_text(json.dumps(saved))
    assert SpendingModel.load(tmp_path / "older").assess(row) == model.assess(row)


def test_auc_is_nan_when_there_is_one_class() -> None:
    assert math.isnan(auc(np.zeros(4), np.arange(4.0)))
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75


def test_ranking_metrics_on_a_worked_example() -> None:
    ranked, bought = ["a", "b", "c"], {"b", "z"}
    assert recall_at_k(ranked, bought, k=2) == 0.5
    # DCG = 1/log2(3) (b at rank 2); ideal = 1 + 1/log2(3) (two relevant items).
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k([ranked], [bought], k=2) == pytest.approx(expected)
    assert ranking_metrics([ranked, ["z"]], [bought, {"z"}], k=2) == {
        "recall@2": round((0.5 + 1.0) / 2, 4), "ndcg@2": round((expected + 1.0) / 2, 4)}


def test_a_short_list_is_not_completed_by_items_it_did_not_rank() -> None:
    assert ndcg_at_k([["x"]], [{"a"}], k=3) == 0.0
    assert ndcg_at_k([[]], [{"a"}], k=3) == 0.0
    assert ndcg_at_k([["a"]], [set()], k=3) == 0.0  # nothing bought: scores 0, not NaN


RECO = {"candidate_backend": "implicit-als", "test_users": 800, "test_window": ["2026-10-26", "2026-11-01"],
        "model": {"recall@10": 0.31, "ndcg@10": 0.29}, "baseline": {"recall@10": 0.22, "ndcg@10": 0.2},
        "als_only": {"recall@10": 0.25, "ndcg@10": 0.23}, "beats_baseline": True}
SPEND = {"test_customers": 300, "label": "simulator persona == impulse", "auc": 0.93, "baseline": "sh_impulse_share_28d alone",
         "baseline_auc": 0.81, "precision_at_threshold": 0.8, "recall_at_threshold": 0.7, "beats_baseline": False}


def test_training_report_says_what_beat_its_baseline() -> None:
    report = TrainingReport(RECO, SPEND, feature_store=["applied 9 views"])
    text = report.text().splitlines()
    assert text[0] == "applied 9 views"
    assert text[1] == "recommender (implicit-als + re-ranker, 800 customers, test window 2026-10-26..2026-11-01):"
    assert "recall@10 0.3100  NDCG@10 0.2900" in text[2] and "(ALS alone: 0.2500 / 0.2300)" in text[2]
    assert text[3] == "  beats the baseline"
    assert text[-1] == "  DOES NOT beat the baseline"
    assert report.as_dict() == {"recommender": RECO, "spending_health": SPEND}


def test_training_report_without_persona_truth() -> None:
    report = TrainingReport(RECO, spending_health_skipped="no truth/ directory")
    assert report.text().splitlines()[-1] == "spending health: not trained (no truth/ directory)"
    assert report.as_dict() == {"recommender": RECO}
