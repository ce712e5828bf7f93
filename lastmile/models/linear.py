"""The linear model and the ranking metrics the models are judged by, on scikit-learn.

:class:`Logistic` is fitted by scikit-learn (``StandardScaler`` + L2 ``LogisticRegression``)
and kept as plain numbers: feature names, the scaler's means and scales, the coefficients
and the intercept. So a saved model is readable JSON that loads without unpickling (and
without depending on the scikit-learn version that fitted it), and scoring at request time
is one dot product per candidate, with the per-feature contributions to the logit that the
spending-health reasons are made of.

Ranking quality is scikit-learn's ``ndcg_score`` over one relevance matrix for all
customers; recall@k has no scikit-learn counterpart (``top_k_accuracy_score`` asks whether
one true label is in the top k, not what share of a basket is) and is a few lines here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit


@dataclass
class Logistic:
    names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, names: list[str], l2: float = 1.0,
            sample_weight: np.ndarray | None = None) -> "Logistic":
        """L2-regularised logistic regression on standardised inputs.

        The penalty is ``l2 / 2 * |coef|^2`` against the log-loss summed over the rows
        (weights rescaled to sum to the number of rows), i.e. scikit-learn's ``C = 1 / l2``;
        the intercept is not penalised.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x = np.nan_to_num(np.asarray(x, dtype=np.float64))
        y = np.asarray(y, dtype=np.float64)
        if len(np.unique(y)) < 2:
            raise ValueError(f"cannot fit a logistic model: all {len(y)} training labels are {y[0] if len(y) else 'absent'}")
        scaler = StandardScaler().fit(x)
        weight = None
        if sample_weight is not None:
            weight = np.asarray(sample_weight, dtype=np.float64)
            weight = weight * len(weight) / weight.sum()
        model = LogisticRegression(C=1.0 / l2, max_iter=1000, tol=1e-6).fit(scaler.transform(x), y, sample_weight=weight)
        return cls(list(names), scaler.mean_.copy(), scaler.scale_.copy(), model.coef_[0].copy(), float(model.intercept_[0]))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature contribution to the logit (standardised value x coefficient)."""
        z = (np.nan_to_num(np.asarray(x, dtype=np.float64)) - self.mean) / self.scale
        return z * self.coef

    def decision(self, x: np.ndarray) -> np.ndarray:
        return self.contributions(x).sum(axis=-1) + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        return expit(self.decision(x))

    def to_dict(self) -> dict:
        from sklearn import __version__ as sklearn_version

        return {"names": self.names, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept, "fitted_with": f"scikit-learn {sklearn_version}"}

    @classmethod
    def from_dict(cls, d: dict) -> "Logistic":
        return cls(list(d["names"]), np.asarray(d["mean"]), np.asarray(d["scale"]), np.asarray(d["coef"]),
                   float(d["intercept"]))


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when the labels hold one class only (nothing to separate)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, score))


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    """Share of what the customer bought that the first ``k`` recommendations hold."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant) / len(relevant)


def ndcg_at_k(rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]], k: int = 10) -> float:
    """Mean NDCG@k of the rankings against their relevant sets (binary gains), by scikit-learn.

    Every item named anywhere is a column. A ranked item scores above every unranked one;
    ``k`` padding columns that are never relevant sit between the two, so a list shorter
    than ``k`` is not completed by relevant items it did not rank. Relevant items a list
    leaves out still count in the ideal DCG. A customer with nothing relevant scores 0.
    """
    from sklearn.metrics import ndcg_score

    if len(rankings) != len(relevant):
        raise ValueError("one relevant set per ranking")
    if not rankings:
        return float("nan")
    items = sorted({item for ranked in rankings for item in ranked} | {item for rel in relevant for item in rel})
    column = {item: j for j, item in enumerate(items)}
    truth = np.zeros((len(rankings), len(items) + k))
    score = np.full((len(rankings), len(items) + k), -1.0)
    score[:, len(items):] = 0.0
    for row, (ranked, rel) in enumerate(zip(rankings, relevant)):
        for position, item in enumerate(ranked):
            score[row, column[item]] = len(ranked) - position
        for item in rel:
            truth[row, column[item]] = 1.0
    return float(ndcg_score(truth, score, k=k, ignore_ties=True))


def ranking_metrics(rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]], k: int = 10) -> dict[str, float]:
    """Mean recall@k and NDCG@k over customers (rounded to 4 places, as reported)."""
    if not rankings:
        return {f"recall@{k}": float("nan"), f"ndcg@{k}": float("nan")}
    recall = np.mean([recall_at_k(ranked, rel, k) for ranked, rel in zip(rankings, relevant)])
    return {f"recall@{k}": round(float(recall), 4), f"ndcg@{k}": round(ndcg_at_k(rankings, relevant, k), 4)}
