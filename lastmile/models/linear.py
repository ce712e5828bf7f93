"""Small numpy/scipy building blocks: L2 logistic regression, AUC, ranking metrics.

Kept here (rather than adding scikit-learn) because the models are small linear ones; the
saved weights are plain lists, so a model file is readable JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
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
        x = np.nan_to_num(np.asarray(x, dtype=np.float64))
        y = np.asarray(y, dtype=np.float64)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-9] = 1.0
        z = (x - mean) / scale
        n, d = z.shape

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            b, beta = theta[0], theta[1:]
            m = z @ beta + b
            p = expit(m)
            eps = 1e-12
            ll = -np.sum(w * (y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))) / w.sum()
            ll += 0.5 * l2 * beta @ beta / n
            g = w * (p - y) / w.sum()
            return ll, np.concatenate([[g.sum()], z.T @ g + l2 * beta / n])

        res = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
        return cls(list(names), mean, scale, res.x[1:], float(res.x[0]))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature contribution to the logit (standardised value x coefficient)."""
        z = (np.nan_to_num(np.asarray(x, dtype=np.float64)) - self.mean) / self.scale
        return z * self.coef

    def decision(self, x: np.ndarray) -> np.ndarray:
        return self.contributions(x).sum(axis=-1) + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        return expit(self.decision(x))

    def to_dict(self) -> dict:
        return {"names": self.names, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> "Logistic":
        return cls(list(d["names"]), np.asarray(d["mean"]), np.asarray(d["scale"]), np.asarray(d["coef"]),
                   float(d["intercept"]))


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged)."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at_k(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & relevant) / len(relevant)


def ndcg_at_k(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    if not relevant:
        return 0.0
    dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return float(dcg / ideal)
