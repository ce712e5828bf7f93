"""Candidate generation: implicit-feedback matrix factorisation behind one small interface.

:class:`CandidateModel` is what the recommender needs: fit on a user x item matrix of
purchase counts, score every item for a user. Two implementations:

* :class:`ImplicitALS` — the ``implicit`` library's ``AlternatingLeastSquares`` (Hu, Koren &
  Volinsky 2008), used whenever ``implicit`` is installed (pin: ``implicit==0.7.2``, which has
  a cp311 manylinux wheel; it needs ``threadpoolctl``).
* :class:`NumpyALS` — the same algorithm in a few lines of numpy (batched exact solves), used
  when ``implicit`` is absent. The catalogue is small (tens to hundreds of SKUs), so the dense
  per-user systems are cheap; it is a stand-in, not a replacement for large catalogues.

:func:`make_candidate_model` picks one; ``LASTMILE_RECO_BACKEND``-style switching is not
needed: the saved model records which backend trained it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import sparse


class CandidateModel(Protocol):
    backend: str

    def fit(self, user_items: sparse.csr_matrix) -> "CandidateModel": ...

    def scores(self, user_index: int) -> np.ndarray: ...

    def state(self) -> dict: ...


@dataclass
class NumpyALS:
    """Implicit ALS with confidence 1 + alpha * count, solved exactly per user/item in batches."""

    factors: int = 16
    regularization: float = 0.1
    alpha: float = 8.0
    iterations: int = 12
    seed: int = 7
    backend: str = "numpy-als"
    user_factors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    item_factors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def _solve(self, fixed: np.ndarray, conf: np.ndarray, pref: np.ndarray) -> np.ndarray:
        f = fixed.shape[1]
        gram = fixed.T @ fixed
        a = gram[None, :, :] + np.einsum("ui,if,ig->ufg", conf - 1.0, fixed, fixed) + self.regularization * np.eye(f)[None]
        b = np.einsum("ui,if->uf", conf * pref, fixed)
        return np.linalg.solve(a, b[..., None])[..., 0]

    def fit(self, user_items: sparse.csr_matrix) -> "NumpyALS":
        counts = np.asarray(user_items.todense(), dtype=np.float64)
        conf = 1.0 + self.alpha * np.log1p(counts)
        pref = (counts > 0).astype(np.float64)
        rng = np.random.default_rng(self.seed)
        n_users, n_items = counts.shape
        self.user_factors = rng.normal(0, 0.01, (n_users, self.factors))
        self.item_factors = rng.normal(0, 0.01, (n_items, self.factors))
        for _ in range(self.iterations):
            self.user_factors = self._solve(self.item_factors, conf, pref)
            self.item_factors = self._solve(self.user_factors, conf.T, pref.T)
        return self

    def scores(self, user_index: int) -> np.ndarray:
        return self.item_factors @ self.user_factors[user_index]

    def state(self) -> dict:
        return {"backend": self.backend, "user_factors": self.user_factors, "item_factors": self.item_factors}


@dataclass
class ImplicitALS:
    """``implicit.als.AlternatingLeastSquares`` with the same confidence weighting."""

    factors: int = 16
    regularization: float = 0.1
    alpha: float = 8.0
    iterations: int = 12
    seed: int = 7
    backend: str = "implicit-als"
    user_factors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    item_factors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def fit(self, user_items: sparse.csr_matrix) -> "ImplicitALS":
        from implicit.als import AlternatingLeastSquares  # type: ignore[import-not-found]
        from threadpoolctl import threadpool_limits

        # implicit parallelises ALS itself; a multi-threaded BLAS underneath only oversubscribes
        # the cores (implicit warns about exactly this).
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                                            iterations=self.iterations, random_state=self.seed, use_gpu=False)
            weighted = user_items.astype(np.float32).copy()
            weighted.data = np.log1p(weighted.data)
            model.fit(weighted, show_progress=False)
        self.user_factors = np.asarray(model.user_factors)
        self.item_factors = np.asarray(model.item_factors)
        return self

    def scores(self, user_index: int) -> np.ndarray:
        return self.item_factors @ self.user_factors[user_index]

    def state(self) -> dict:
        return {"backend": self.backend, "user_factors": self.user_factors, "item_factors": self.item_factors}


def implicit_available() -> bool:
    try:
        import implicit  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def make_candidate_model(prefer: str = "auto", **params: float) -> CandidateModel:
    """``implicit`` ALS when installed (or ``prefer='implicit'``), else the numpy ALS."""
    if prefer == "implicit" or (prefer == "auto" and implicit_available()):
        return ImplicitALS(**params)  # type: ignore[arg-type]
    return NumpyALS(**params)  # type: ignore[arg-type]


@dataclass
class FittedCandidates:
    """A fitted candidate model with its id maps; scores users by OneID."""

    users: dict[str, int]
    items: list[str]
    user_factors: np.ndarray
    item_factors: np.ndarray
    backend: str

    @classmethod
    def fit(cls, pairs: list[tuple[str, str, float]], prefer: str = "auto") -> "FittedCandidates":
        users = sorted({u for u, _, _ in pairs})
        items = sorted({i for _, i, _ in pairs})
        u_ix = {u: k for k, u in enumerate(users)}
        i_ix = {i: k for k, i in enumerate(items)}
        rows = [u_ix[u] for u, _, _ in pairs]
        cols = [i_ix[i] for _, i, _ in pairs]
        vals = [float(v) for _, _, v in pairs]
        matrix = sparse.csr_matrix((vals, (rows, cols)), shape=(len(users), len(items)))
        matrix.sum_duplicates()
        model = make_candidate_model(prefer).fit(matrix)
        st = model.state()
        return cls(u_ix, items, st["user_factors"], st["item_factors"], st["backend"])

    def knows(self, oneid: str) -> bool:
        return oneid in self.users

    def score_all(self, oneid: str) -> dict[str, float]:
        k = self.users.get(oneid)
        if k is None:
            return {}
        s = self.item_factors @ self.user_factors[k]
        return dict(zip(self.items, s.tolist()))
