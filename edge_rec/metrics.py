"""Ranking and classification metrics, vectorised over requests, numpy only.

Every function takes a score matrix ``scores`` of shape ``[R, N]`` (R requests, N candidates each),
a label matrix of the same shape (graded gains >= 0 for NDCG; anything > 0 counts as positive
elsewhere), and an optional boolean ``valid`` mask ``[R, N]`` for padded candidate lists.

Ties are handled so that a model cannot look good by giving many candidates the same score
(an ID model scores every cold item 0, for example):

* NDCG@K and Recall@K are the *expected* value under a uniformly random order of tied candidates
  (the same convention as scikit-learn's ``ndcg_score`` with ``ignore_ties=False``).
* HitRate@K and MRR use the *pessimistic* rank: a positive tied with negatives is ranked after them.
* AUC and GAUC use mid-ranks (a tie counts one half), as scikit-learn's ``roc_auc_score`` does.

Requests without any positive have no defined NDCG / Recall / HitRate / MRR; they are left out of
the means (and counted in ``n_requests`` only when they have a positive).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge_rec.errors import DataError

__all__ = [
    "ndcg_at_k",
    "recall_at_k",
    "hit_rate_at_k",
    "reciprocal_rank",
    "auc",
    "gauc",
    "ranking_report",
]


def _prepare(
    scores: np.ndarray, labels: np.ndarray, valid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise DataError(
            f"scores and labels must both be [R, N] matrices of the same shape; got {scores.shape} "
            f"and {labels.shape}. Stack one row per request (pad short lists and pass valid=mask)."
        )
    valid = np.ones(scores.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != scores.shape:
        raise DataError(f"valid mask has shape {valid.shape}, expected {scores.shape}.")
    bad = valid & ~np.isfinite(scores)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"{int(bad.sum())} valid candidate score(s) are NaN or infinite (first at request {r}, "
            f"candidate {c}). A model produced non-finite output; check its inputs for NaN/inf."
        )
    if (labels[valid] < 0).any():
        raise DataError("labels must be >= 0 (graded gains); found a negative label.")
    # Padded slots sort last and carry no gain.
    scores = np.where(valid, scores, -np.inf)
    labels = np.where(valid, labels, 0.0)
    return scores, labels, valid


def _tie_averaged_gain(scores: np.ndarray, gains: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sum over positions of gain * position weight, averaged over all orders of tied scores.

    scores, gains: [R, N]; weights: [N] (the weight of rank position j, e.g. a DCG discount).
    Returns [R]. Within a tie group the expected gain at each of its positions is the group's
    mean gain, so the group contributes mean_gain * sum(weights of the positions it spans).
    """
    r, n = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    g = np.take_along_axis(gains, order, axis=1)
    new_group = np.ones_like(s, dtype=bool)
    new_group[:, 1:] = s[:, 1:] != s[:, :-1]
    gid = (np.cumsum(new_group, axis=1) - 1) + (np.arange(r) * n)[:, None]
    gid = gid.ravel()
    size = r * n
    count = np.bincount(gid, minlength=size)
    gsum = np.bincount(gid, weights=g.ravel(), minlength=size)
    wsum = np.bincount(gid, weights=np.broadcast_to(weights, (r, n)).ravel(), minlength=size)
    used = count > 0
    contrib = np.zeros(size)
    contrib[used] = gsum[used] * wsum[used] / count[used]
    return contrib.reshape(r, n).sum(axis=1)


def _discounts(n: int, k: int) -> np.ndarray:
    d = 1.0 / np.log2(np.arange(n) + 2.0)
    d[k:] = 0.0
    return d


def ndcg_at_k(
    scores: np.ndarray, labels: np.ndarray, k: int = 10, valid: np.ndarray | None = None
) -> np.ndarray:
    """Per-request NDCG@k with linear gains; NaN for requests with no positive. Returns [R]."""
    scores, labels, _ = _prepare(scores, labels, valid)
    disc = _discounts(scores.shape[1], k)
    dcg = _tie_averaged_gain(scores, labels, disc)
    ideal = np.sort(labels, axis=1)[:, ::-1] @ disc
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / ideal, np.nan)


def recall_at_k(
    scores: np.ndarray, labels: np.ndarray, k: int = 20, valid: np.ndarray | None = None
) -> np.ndarray:
    """Per-request expected share of positives in the top k; NaN without positives. Returns [R]."""
    scores, labels, _ = _prepare(scores, labels, valid)
    pos = (labels > 0).astype(np.float64)
    top = np.zeros(scores.shape[1])
    top[:k] = 1.0
    hits = _tie_averaged_gain(scores, pos, top)
    npos = pos.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(npos > 0, hits / npos, np.nan)


def _pessimistic_best_rank(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """1-based rank of the best-scored positive, ties with negatives counted against it. [R]."""
    pos = labels > 0
    best = np.where(pos, scores, -np.inf).max(axis=1, initial=-np.inf)
    higher = (valid & (scores > best[:, None])).sum(axis=1)
    tied_neg = (valid & ~pos & (scores == best[:, None])).sum(axis=1)
    rank = (higher + tied_neg + 1).astype(np.float64)
    return np.where(pos.any(axis=1), rank, np.nan)


def hit_rate_at_k(
    scores: np.ndarray, labels: np.ndarray, k: int = 10, valid: np.ndarray | None = None
) -> np.ndarray:
    """Per-request 1 if a positive is in the top k (pessimistic ties), NaN without positives."""
    scores, labels, valid = _prepare(scores, labels, valid)
    rank = _pessimistic_best_rank(scores, labels, valid)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(rank), np.nan, (rank <= k).astype(np.float64))


def reciprocal_rank(
    scores: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """Per-request 1 / rank of the first positive (pessimistic ties); NaN without positives."""
    scores, labels, valid = _prepare(scores, labels, valid)
    return 1.0 / _pessimistic_best_rank(scores, labels, valid)


def _grouped_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mann-Whitney AUC per group with mid-ranks. 1-D inputs. Returns (auc [G], weight [G]).

    Groups with only one class get weight 0 (AUC undefined there).
    """
    _, g = np.unique(groups, return_inverse=True)
    order = np.lexsort((scores, g))
    s, y, gg = scores[order], labels[order], g[order]
    n = len(s)
    ng = int(gg.max()) + 1 if n else 0
    group_start = np.searchsorted(gg, np.arange(ng))
    pos_in_group = np.arange(n) - group_start[gg] + 1.0
    # tie runs: same group and same score
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (gg[1:] != gg[:-1]) | (s[1:] != s[:-1])
    run = np.cumsum(new_run) - 1
    run_mean = np.bincount(run, weights=pos_in_group) / np.bincount(run)
    ranks = run_mean[run]
    n_pos = np.bincount(gg, weights=y, minlength=ng)
    n_all = np.bincount(gg, minlength=ng).astype(np.float64)
    n_neg = n_all - n_pos
    rank_pos = np.bincount(gg, weights=ranks * y, minlength=ng)
    ok = (n_pos > 0) & (n_neg > 0)
    out = np.full(ng, np.nan)
    out[ok] = (rank_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return out, np.where(ok, n_all, 0.0)


def auc(scores: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Global ROC AUC over all valid candidates (mid-ranks for ties); NaN if one class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if valid is not None:
        m = np.asarray(valid, dtype=bool)
        s, y = s[m], y[m]
    s, y = s.ravel(), (y.ravel() > 0).astype(np.float64)
    if not np.isfinite(s).all():
        raise DataError("auc: scores contain NaN or infinite values; check the model's inputs.")
    a, _ = _grouped_auc(s, y, np.zeros(len(s), dtype=np.int64))
    return float(a[0]) if len(a) else float("nan")


def gauc(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, valid: np.ndarray | None = None
) -> float:
    """Group AUC: per-group (e.g. per-user) AUC weighted by the group's candidate count.

    Groups whose candidates are all positive or all negative are skipped. ``groups`` has the
    same shape as ``scores`` or is one id per request ([R]) broadcast over candidates.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    g = np.asarray(groups)
    if g.ndim == 1 and s.ndim == 2:
        g = np.broadcast_to(g[:, None], s.shape)
    if valid is not None:
        m = np.asarray(valid, dtype=bool)
        s, y, g = s[m], y[m], g[m]
    s, y, g = s.ravel(), (y.ravel() > 0).astype(np.float64), g.ravel()
    if not np.isfinite(s).all():
        raise DataError("gauc: scores contain NaN or infinite values; check the model's inputs.")
    a, w = _grouped_auc(s, y, g)
    if w.sum() == 0:
        return float("nan")
    return float(np.nansum(a * w) / w.sum())


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def ranking_report(
    scores: np.ndarray,
    labels: np.ndarray,
    valid: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    ks: Sequence[int] = (10, 20),
) -> dict[str, float]:
    """All metrics for a batch of requests, as the report keys use them.

    Returns ``{"ndcg@K", "recall@K", "hit@K" for K in ks, "mrr", "auc", "gauc", "n_requests"}``.
    ``groups`` ([R] or [R, N]) defaults to one group per request.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if groups is None:
        groups = np.arange(scores.shape[0])
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = _nanmean(ndcg_at_k(scores, labels, k, valid))
        out[f"recall@{k}"] = _nanmean(recall_at_k(scores, labels, k, valid))
        out[f"hit@{k}"] = _nanmean(hit_rate_at_k(scores, labels, k, valid))
    out["mrr"] = _nanmean(reciprocal_rank(scores, labels, valid))
    out["auc"] = auc(scores, labels, valid)
    out["gauc"] = gauc(scores, labels, groups, valid)
    lab = np.asarray(labels)
    v = np.ones(lab.shape, bool) if valid is None else np.asarray(valid, bool)
    out["n_requests"] = float(((lab > 0) & v).any(axis=1).sum())
    return out
