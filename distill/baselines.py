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
from edge_rec.errors import DataError
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


class ContentKNN:
    """Content only: a request's profile is the mean of the (per-modality L2-normalised, concatenated)
    content embeddings of the items its user interacted with before it; an item's score is its cosine
    with that profile. Needs no training interaction for an item, so it scores cold items too."""

    def __init__(self, modalities: list[str] | None = None) -> None:
        self.modalities = modalities
        self.vectors: np.ndarray | None = None

    def fit(self, ds: Dataset) -> "ContentKNN":
        collab = (ds.meta.get("collab") or {}).get("modality")          # not content: ALS factors
        mods = self.modalities or [m for m in ds.embeddings if m != collab]
        parts = []
        for m in mods:
            e = ds.embeddings[m].astype(np.float64) * ds.present[m].astype(np.float64)[:, None]
            parts.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
        v = np.concatenate(parts, axis=1) if parts else np.zeros((ds.n_items, 1))
        self.vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self._ds = ds
        return self

    def request_scores(self, req: np.ndarray) -> np.ndarray:
        ds, v = self._ds, self.vectors
        offsets, it, rq = ds.user_offsets(), ds.interactions, ds.requests
        prof = np.zeros((len(req), v.shape[1]))
        for b, r in enumerate(req):
            seen = it["item"][offsets[rq["user"][r]]:rq["hist_end"][r]]
            if len(seen):
                prof[b] = v[seen].mean(axis=0)
        prof /= np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-12)
        return prof @ v.T

    @property
    def params(self) -> int:
        return 0


@dataclass(frozen=True)
class BPRConfig:
    """BPR hyper-parameters (implicit.bpr.BayesianPersonalizedRanking)."""

    factors: int = 64
    learning_rate: float = 0.05
    regularization: float = 0.01
    iterations: int = 100
    seed: int = 0


class BPR(IdOnly):
    """Bayesian personalised ranking on user/item ids (implicit's BPR), trained on the training split."""

    def __init__(self, config: BPRConfig | None = None) -> None:
        super().__init__()
        self.config = config or BPRConfig()

    def fit(self, ds: Dataset) -> "BPR":
        sp = requires("scipy.sparse")
        bpr_mod = requires("implicit.bpr")
        threadpoolctl = requires("threadpoolctl")
        m = _train_matrix(ds, sp)
        c = self.config
        with threadpoolctl.threadpool_limits(1, "blas"):
            model = bpr_mod.BayesianPersonalizedRanking(factors=c.factors, learning_rate=c.learning_rate,
                                                        regularization=c.regularization, iterations=c.iterations,
                                                        random_state=c.seed, use_gpu=False)
            model.fit(m, show_progress=False)
        # implicit's BPR keeps an item bias as the last factor (the user side holds a 1 there)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float64)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float64)
        return self


def _train_matrix(ds: Dataset, sp: Any) -> Any:
    """The user x item matrix of training-split clicks (1 per clicked pair), CSR float32."""
    tr = ds.train_interaction_mask()
    it = ds.interactions
    keep = tr & (it["click"] > 0)
    m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (it["user"][keep], it["item"][keep])),
                      shape=(ds.n_users, ds.n_items), dtype=np.float32)
    m.data[:] = 1.0
    return m


ALS_GRID = [IdOnlyConfig(factors=f, regularization=r, alpha=a) for f in (32, 64, 128) for r in (0.01, 0.1)
            for a in (1.0, 10.0)]
BPR_GRID = [BPRConfig(factors=f, learning_rate=lr) for f in (32, 64) for lr in (0.01, 0.05)]


def tune_on_validation(ds: Dataset, make: Any, grid: list[Any], *,
                       max_requests: int | None = None) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Fit ``make(config)`` for every config of ``grid`` on the training split and keep the one with
    the best full-catalogue Recall@20 on the validation split (the test split is never read here).
    Returns (the fitted best model, its trial, every trial: {config, val.recall@20})."""
    from edge_rec.distill.protocol import evaluate, heldout_rows

    rows = heldout_rows(ds, "val", max_requests=max_requests)
    if len(rows.req) == 0:
        trial = {"config": asdict(grid[0]), "val.recall@20": None}
        return make(grid[0]).fit(ds), trial, [trial]
    trials, best, best_trial, best_score = [], None, None, -1.0
    for cfg in grid:
        m = make(cfg).fit(ds)
        r20 = evaluate(ds, rows, lambda req, m=m: m.item_scores(ds.requests["user"][req]), n_boot=0)["recall@20"]
        trials.append({"config": asdict(cfg), "val.recall@20": r20})
        if r20 > best_score:
            best, best_trial, best_score = m, trials[-1], r20
    return best, best_trial, trials


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


__all__ = ["BPR", "BPRConfig", "ContentKNN", "IdOnly", "IdOnlyConfig", "Popularity", "run_baselines",
           "tune_on_validation", "SPLITS"]


def add_collab_modality(ds: Dataset, *, name: str = "collab", max_requests: int | None = None) -> tuple[Dataset, dict[str, Any]]:
    """A copy of ``ds`` with one more modality: the item factors of implicit ALS fitted on the training
    split and tuned on the validation split's full-catalogue Recall@20 — the collaborative signal a
    server computes off-device and sends with each candidate like its content embeddings.

    An item with no training interaction has no factor: it lacks the modality (present = 0, the
    model's mask token), so the model must fall back on content for cold items. Factors are scaled
    to unit RMS per item set, stored float16. Returns (dataset, what was fitted)."""
    import copy

    if name in ds.embeddings:
        raise DataError(f"the dataset already has a modality {name!r}; choose another --name.")
    model, best, trials = tune_on_validation(ds, IdOnly, ALS_GRID, max_requests=max_requests)
    vf = np.asarray(model.item_factors, np.float64)
    present = np.abs(vf).sum(axis=1) > 0
    rms = float(np.sqrt((vf[present] ** 2).mean())) if present.any() else 1.0
    emb = (vf / max(rms, 1e-12)).astype(np.float16)
    out = copy.copy(ds)
    out.embeddings = {**ds.embeddings, name: emb}
    out.present = {**ds.present, name: present}
    out.meta = dict(ds.meta)
    info = {"modality": name, "model": "implicit ALS on training clicks", "dim": int(emb.shape[1]),
            "items_with_factor": int(present.sum()), "items": int(ds.n_items), "config": best["config"],
            "val.recall@20": best["val.recall@20"], "trials": trials, "scale": "unit RMS over items with a factor"}
    out.meta["collab"] = {k: v for k, v in info.items() if k != "trials"}
    out.meta["modalities"] = {**ds.modalities, name: int(emb.shape[1])}
    out.validate()
    return out, info
