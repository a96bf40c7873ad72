"""Post-ranking policy: what the app adds on top of the model's scores, each part switchable off.

1. **creator penalty**: ``skip_penalty`` per skip and ``negative_penalty`` per negative comment on the
   candidate's creator in the last hour (the viewer said "not this creator now");
2. **freshness boost**: ``freshness_boost * exp(-age_h / freshness_tau_h)``;
3. **diversity**: greedy MMR on the model's fused candidate embeddings —
   ``lambda * relevance - (1 - lambda) * max cosine similarity to what is already above`` with
   relevance = the adjusted score min-max scaled to [0, 1] — and at most ``max_per_creator`` items
   of one creator in the ranked list (the rest follow, in order, after everything else).

``PostRankPolicy(enabled=False)`` returns the model's order untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass
class PostRankPolicy:
    enabled: bool = True
    mmr_lambda: float = 0.8              # 1.0 = no diversity term
    max_per_creator: int | None = 2
    skip_penalty: float = 0.3
    negative_penalty: float = 0.5
    freshness_boost: float = 0.1
    freshness_tau_h: float = 24.0


def apply_policy(policy: PostRankPolicy, score: np.ndarray, fused: np.ndarray | None, creators: Sequence[int | None],
                 ages_h: np.ndarray, signals: Mapping[int, Mapping[str, float]],
                 k: int | None = None) -> tuple[list[int], np.ndarray]:
    """Return (order of candidate indices, top ``k``; adjusted scores [N])."""
    n = len(score)
    k = n if k is None else max(0, min(int(k), n))
    if not policy.enabled:
        return list(np.argsort(-score, kind="stable")[:k]), score.copy()
    adj = score.astype(np.float64).copy()
    for i, c in enumerate(creators):
        s = signals.get(int(c)) if c is not None else None
        if s:
            adj[i] -= policy.skip_penalty * s.get("skips", 0.0) + policy.negative_penalty * s.get("negative_comments", 0.0)
    adj += policy.freshness_boost * np.exp(-np.asarray(ages_h, np.float64) / policy.freshness_tau_h)

    lo, hi = adj.min(), adj.max()
    rel = (adj - lo) / (hi - lo) if hi > lo else np.ones(n)
    use_mmr = fused is not None and policy.mmr_lambda < 1.0
    if use_mmr:
        f = np.asarray(fused, np.float64)[:n]
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    cap = policy.max_per_creator
    chosen: list[int] = []
    deferred: list[int] = []
    per_creator: dict[int, int] = {}
    remaining = list(np.argsort(-adj, kind="stable"))
    max_sim = np.full(n, -np.inf)
    while remaining and len(chosen) < k:
        if use_mmr and chosen:
            cand = np.array(remaining)
            val = policy.mmr_lambda * rel[cand] - (1 - policy.mmr_lambda) * max_sim[cand]
            j = int(cand[int(np.argmax(val))])
        else:
            j = int(remaining[0])
        remaining.remove(j)
        c = creators[j]
        if cap is not None and c is not None and per_creator.get(c, 0) >= cap:
            deferred.append(j)
            continue
        chosen.append(j)
        if c is not None:
            per_creator[c] = per_creator.get(c, 0) + 1
        if use_mmr:
            max_sim = np.maximum(max_sim, f @ f[j])
    order = (chosen + deferred)[:k]
    return order, adj
