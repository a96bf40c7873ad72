"""Evaluate any scorer on a dataset's requests, overall and on cold-start items.

A scorer gives a score to every candidate of a set of requests: ``[len(idx), N]`` floats for
``ds.requests["cand"][idx]`` (padding slots, ``cand == -1``, are ignored). Every model in the
report, baselines and neural models alike, is measured by :func:`evaluate_scores` on the same
requests, so their numbers are comparable.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edge_rec import metrics as M
from edge_rec.distill.dataset import Dataset

REPORT_KEYS = ("ndcg@10", "recall@20", "auc", "gauc", "mrr", "cold.ndcg@10", "params", "macs_per_candidate")


def _cold_view(ds: Dataset, cand: np.ndarray, labels: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cold-start view of requests ([R, N] each): (cold positives as 0/1 labels, the slots that
    still count: warm positives removed)."""
    cold = np.asarray(ds.items["cold"]).astype(bool)[np.where(valid, cand, 0)] & valid
    return ((labels > 0) & cold).astype(np.float64), valid & ~((labels > 0) & ~cold)


def evaluate_scores(ds: Dataset, idx: np.ndarray, scores: np.ndarray, label: str = "click") -> dict[str, float]:
    """Metrics of ``scores`` ([len(idx), N]) on requests ``idx`` against ``label``.

    Keys: ``ndcg@10, ndcg@20, recall@10, recall@20, hit@10, hit@20, mrr, auc, gauc, n_requests``
    and the same NDCG / recall on the cold-start view (``cold.*``): in each request that holds a
    cold-start positive, warm positives are removed and only cold positives count, so the score
    says how well the model puts never-seen items above the negatives.
    """
    rq = ds.requests
    cand = rq["cand"][idx]
    labels = rq[label][idx].astype(np.float64)
    valid = cand >= 0
    scores = np.asarray(scores, dtype=np.float64)
    out = M.ranking_report(scores, labels, valid, groups=rq["user"][idx])
    cold_pos, cold_valid = _cold_view(ds, cand, labels, valid)
    keep = cold_pos.any(axis=1)
    if keep.any():
        cold_rep = M.ranking_report(scores[keep], cold_pos[keep], cold_valid[keep], groups=rq["user"][idx][keep])
        for key in ("ndcg@10", "recall@20", "auc", "n_requests"):
            out[f"cold.{key}"] = cold_rep[key]
    else:
        out.update({"cold.ndcg@10": float("nan"), "cold.recall@20": float("nan"),
                    "cold.auc": float("nan"), "cold.n_requests": 0.0})
    return out


def per_request_ndcg(ds: Dataset, idx: np.ndarray, scores: np.ndarray, view: str = "all", k: int = 10,
                     label: str = "click") -> np.ndarray:
    """NDCG@k of each request ([len(idx)], NaN where the view has no positive). ``view``: ``all`` (as
    ``ndcg@10``) or ``cold`` (as ``cold.ndcg@10``: warm positives removed, cold positives count)."""
    rq = ds.requests
    cand = rq["cand"][idx]
    labels = rq[label][idx].astype(np.float64)
    valid = cand >= 0
    if view == "cold":
        labels, valid = _cold_view(ds, cand, labels, valid)
    elif view != "all":
        raise ValueError(f"view must be 'all' or 'cold', got {view!r}")
    return M.ndcg_at_k(np.asarray(scores, np.float64), labels, k, valid)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of ``a - b`` over requests where both are defined, with a 95 % percentile bootstrap
    interval (requests resampled with replacement, the pair kept together), and the share of
    requests where ``a`` is better / worse."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return {"mean_diff": float("nan"), "ci95": [float("nan"), float("nan")], "n_requests": 0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean_diff": float(d.mean()), "ci95": [float(lo), float(hi)], "n_requests": int(len(d)),
            "share_better": float((d > 0).mean()), "share_worse": float((d < 0).mean())}


def evaluate_full_catalogue(
    ds: Dataset, idx: np.ndarray, item_scores: Callable[[np.ndarray], np.ndarray], label: str = "click",
    ks: tuple[int, ...] = (10, 20),
) -> dict[str, float]:
    """Rank the whole catalogue per request instead of the N candidates.

    ``item_scores(users)`` returns ``[len(users), n_items]``. Items not yet uploaded at request
    time and items the user already interacted with before the request are excluded; the request's
    logged positives are the relevant items. Keys ``full.ndcg@K`` and ``full.recall@K``.
    """
    rq, it = ds.requests, ds.interactions
    offsets = ds.user_offsets()
    out: dict[str, list[np.ndarray]] = {f"full.{m}@{k}": [] for k in ks for m in ("ndcg", "recall")}
    upload = np.asarray(ds.items["upload_ts"])
    for c0 in range(0, len(idx), 512):
        chunk = idx[c0:c0 + 512]
        scores = np.asarray(item_scores(rq["user"][chunk]), dtype=np.float64)
        valid = upload[None, :] <= rq["ts"][chunk, None]
        labels = np.zeros(scores.shape)
        for j, r in enumerate(chunk):
            u = rq["user"][r]
            seen = it["item"][offsets[u]:rq["hist_end"][r]]
            valid[j, seen] = False
            c = rq["cand"][r]
            pos = c[(c >= 0) & (rq[label][r] > 0)]
            labels[j, pos] = 1.0
            valid[j, pos] = True
        for k in ks:
            out[f"full.ndcg@{k}"].append(M.ndcg_at_k(scores, labels, k, valid))
            out[f"full.recall@{k}"].append(M.recall_at_k(scores, labels, k, valid))
    res = {}
    for key, parts in out.items():
        x = np.concatenate(parts) if parts else np.array([])
        x = x[~np.isnan(x)]
        res[key] = float(x.mean()) if len(x) else float("nan")
    return res


def model_row(metrics: dict[str, float], params: int, macs_per_candidate: int, **extra: Any) -> dict[str, Any]:
    """One ``report.json["models"][name]`` entry: the stable keys first, then the extras."""
    row: dict[str, Any] = {k: metrics.get(k, float("nan")) for k in REPORT_KEYS[:6]}
    row["params"] = int(params)
    row["macs_per_candidate"] = int(macs_per_candidate)
    for k, v in metrics.items():
        row.setdefault(k, v)
    row.update(extra)
    return row
