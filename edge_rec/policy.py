"""Post-ranking policy: what the app adds on top of the model's scores, each part switchable off.

1. **creator penalty**: ``skip_penalty`` per skip and ``negative_penalty`` per negative comment on the
   candidate's creator in the last hour (the viewer said "not this creator now");
2. **freshness boost**: ``freshness_boost * exp(-age_h / freshness_tau_h)``;
3. **diversity**: greedy MMR on the model's fused candidate embeddings —
   ``lambda * relevance - (1 - lambda) * max cosine similarity to what is already above`` with
   relevance = the adjusted score min-max scaled to [0, 1] — and at most ``max_per_creator`` items
   of one creator, both over the top ``window`` positions (what the screen shows next); below them
   the adjusted score decides (so a capped creator's further items follow in score order).

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
    window: int = 20                     # MMR and the creator cap shape the top `window` positions


def apply_policy(policy: PostRankPolicy, score: np.ndarray, fused: np.ndarray | None, creators: Sequence[int | None],
                 ages_h: np.ndarray, signals: Mapping[int, Mapping[str, float]],
                 k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (order of candidate indices [k] int64, best first; adjusted scores [N])."""
    n = len(score)
    k = n if k is None else max(0, min(int(k), n))
    if not policy.enabled:
        return np.argsort(-score, kind="stable")[:k], np.asarray(score, np.float64).copy()
    adj = score.astype(np.float64).copy()
    if signals:                                     # usually empty: no creator was skipped in the last hour
        pen = {int(c): policy.skip_penalty * s.get("skips", 0.0) + policy.negative_penalty * s.get("negative_comments", 0.0)
               for c, s in signals.items()}
        for i, c in enumerate(creators):
            if c is not None and c in pen:
                adj[i] -= pen[c]
    adj += policy.freshness_boost * np.exp(-np.asarray(ages_h, np.float64) / policy.freshness_tau_h)

    lo, hi = adj.min(), adj.max()
    rel = (adj - lo) / (hi - lo) if hi > lo else np.ones(n)
    ranked = np.argsort(-adj, kind="stable")
    # Greedy selection over the top `window` positions only (what the screen shows next), from a
    # shortlist of the best 4 x window by adjusted score: MMR and the creator cap act there, below it the
    # adjusted score decides. Keeps the policy O(N log N) and cheap next to the model for any feed size.
    window = min(k, policy.window)
    short = ranked[: min(n, 4 * window)]
    lam = policy.mmr_lambda
    use_mmr = fused is not None and lam < 1.0
    # MMR value = lam * rel - (1 - lam) * max cosine similarity to what is chosen; kept as `base - pen_max`
    # so that each step costs three vector ops (argmax, maximum, subtract); taken items hold -inf.
    base = (lam if use_mmr else 1.0) * rel[short]
    cur = base.copy()
    if use_mmr:
        f = np.asarray(fused, np.float64)[short]
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        pen = (1.0 - lam) * (f @ f.T)                          # [S, S] weighted cosine similarities
        pen_max = np.zeros(len(short))
    cap = policy.max_per_creator
    creator_list = [creators[j] for j in short.tolist()]
    has_creator = [c is not None for c in creator_list]
    creator_s = np.array([c if c is not None else 0 for c in creator_list], dtype=np.int64)
    per_creator: dict[int, int] = {}
    chosen: list[int] = []
    while len(chosen) < window:
        j = int(cur.argmax())
        if cur[j] == -np.inf:
            break                                  # shortlist exhausted
        cur[j] = base[j] = -np.inf
        chosen.append(int(short[j]))
        if cap is not None and has_creator[j]:
            c = int(creator_s[j])
            per_creator[c] = per_creator.get(c, 0) + 1
            if per_creator[c] >= cap:              # the creator's other items wait below the window
                full = (creator_s == c) & has_creator
                cur[full] = base[full] = -np.inf
        if use_mmr:
            np.maximum(pen_max, pen[j], out=pen_max)
            np.subtract(base, pen_max, out=cur)
    taken = np.zeros(n, bool)
    taken[chosen] = True
    order = np.concatenate([np.asarray(chosen, np.int64), ranked[~taken[ranked]]])[:k]
    return order, adj
