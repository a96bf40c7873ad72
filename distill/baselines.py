"""Baselines every later model must beat, scored on the same requests.

* ``popularity``: an item's number of clicks in the training period (cold items score 0).
* ``id_only``: collaborative filtering with no content at all: ``implicit``'s alternating least
  squares on the user x item click matrix of the training period. A cold item has no interactions,
  so its factor is zero and it scores 0.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_rec._requires import requires
from edge_rec.distill.dataset import SPLITS, Dataset
from edge_rec.distill.evaluate import evaluate_full_catalogue, evaluate_scores, model_row


@dataclass(frozen=True)
class IdOnlyConfig:
    """ALS hyper-parameters (implicit.als.AlternatingLeastSquares)."""

    factors: int = 32
    regularization: float = 0.05
    iterations: int = 15
    alpha: float = 10.0
    seed: int = 0


class Popularity:
    """Score = training-period click count of the item. Fitted on training requests only."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, ds: Dataset) -> "Popularity":
        tr = ds.train_interaction_mask()
        it = ds.interactions
        self.counts = np.bincount(it["item"][tr], weights=it["click"][tr], minlength=ds.n_items)
        return self

    def item_scores(self, users: np.ndarray) -> np.ndarray:
        assert self.counts is not None, "call fit() first"
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))

    def score(self, ds: Dataset, idx: np.ndarray) -> np.ndarray:
        cand = ds.requests["cand"][idx]
        return np.where(cand >= 0, self.counts[np.maximum(cand, 0)], 0.0)

    @property
    def params(self) -> int:
        return 0 if self.counts is None else len(self.counts)


class IdOnly:
    """Matrix factorisation on user/item ids with implicit's ALS (no content features)."""

    def __init__(self, config: IdOnlyConfig | None = None) -> None:
        self.config = config or IdOnlyConfig()
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None

    def fit(self, ds: Dataset) -> "IdOnly":
        sp = requires("scipy.sparse")
        als_mod = requires("implicit.als")
        threadpoolctl = requires("threadpoolctl")
        tr = ds.train_interaction_mask()
        it = ds.interactions
        w = (it["click"][tr] + it["like"][tr] + it["share"][tr]).astype(np.float32)
        keep = w > 0
        m = sp.csr_matrix((w[keep], (it["user"][tr][keep], it["item"][tr][keep])),
                          shape=(ds.n_users, ds.n_items), dtype=np.float32)
        c = self.config
        # implicit asks for a single-threaded BLAS; its own loops are parallel already.
        with threadpoolctl.threadpool_limits(1, "blas"):
            model = als_mod.AlternatingLeastSquares(
                factors=c.factors, regularization=c.regularization, iterations=c.iterations,
                alpha=c.alpha, random_state=c.seed, use_gpu=False,
            )
            model.fit(m, show_progress=False)
        uf = np.asarray(model.user_factors, dtype=np.float64)
        vf = np.asarray(model.item_factors, dtype=np.float64)
        # An item with no training interaction has no evidence: its factor is defined as zero.
        vf[np.asarray(m.sum(axis=0)).ravel() == 0] = 0.0
        self.user_factors, self.item_factors = uf, vf
        return self

    def item_scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T

    def score(self, ds: Dataset, idx: np.ndarray) -> np.ndarray:
        cand = ds.requests["cand"][idx]
        u = self.user_factors[ds.requests["user"][idx]]                 # [R, f]
        v = self.item_factors[np.maximum(cand, 0)]                       # [R, N, f]
        return np.where(cand >= 0, np.einsum("rf,rnf->rn", u, v), 0.0)

    @property
    def params(self) -> int:
        return 0 if self.user_factors is None else self.user_factors.size + self.item_factors.size


def run_baselines(
    ds: Dataset, *, split: str = "test", id_only: IdOnlyConfig | None = None, full_catalogue: bool = True
) -> dict[str, dict[str, Any]]:
    """Fit both baselines on the training period and evaluate them on ``split``.

    Returns ``{"popularity": row, "id_only": row}`` with the report keys of DESIGN.md plus
    fit time, and (``full_catalogue``) the whole-catalogue NDCG / recall.
    """
    idx = ds.split_index(split)
    rows: dict[str, dict[str, Any]] = {}
    cfg = id_only or IdOnlyConfig()
    for name, model, macs in (("popularity", Popularity(), 0),
                              ("id_only", IdOnly(cfg), cfg.factors)):
        t0 = time.perf_counter()
        model.fit(ds)
        fit_s = time.perf_counter() - t0
        metrics = evaluate_scores(ds, idx, model.score(ds, idx))
        if full_catalogue:
            metrics.update(evaluate_full_catalogue(ds, idx, model.item_scores))
        extra: dict[str, Any] = {"fit_s": round(fit_s, 3)}
        if name == "id_only":
            extra["config"] = asdict(cfg)
        rows[name] = model_row(metrics, model.params, macs, **extra)
    return rows


__all__ = ["IdOnly", "IdOnlyConfig", "Popularity", "run_baselines", "SPLITS"]
