"""Post-ranking policy: what the app adds on top of the model's scores, each part switchable off.

1. **creator penalty**: ``skip_penalty`` per skip and ``negative_penalty`` per negative comment on the
   candidate's creator in the last hour (the viewer said "not this creator now");
2. **freshness boost**: ``freshness_boost * exp(-age_h / freshness_tau_h)``;
3. **diversity**: greedy MMR on the model's fused candidate embeddings —
   ``lambda * relevance - (1 - lambda) * max(0, cosine similarity to what is already above)`` with
   relevance = the adjusted score min-max scaled to [0, 1] — and at most ``max_per_creator`` items
   of one creator, both over the top ``window`` positions (what the screen shows next); below them
   the adjusted score decides (so a capped creator's further items follow in score order).

``PostRankPolicy(enabled=False)`` returns the model's order untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from edge_rec.errors import ConfigError


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

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.mmr_lambda, (int, float)) and 0.0 <= self.mmr_lambda <= 1.0):
            problems.append(f"mmr_lambda={self.mmr_lambda!r} must be in [0, 1] (1 = no diversity term)")
        if self.max_per_creator is not None and not (_whole(self.max_per_creator) and self.max_per_creator >= 1):
            problems.append(f"max_per_creator={self.max_per_creator!r} must be a whole number >= 1, or None for no cap")
        for name in ("skip_penalty", "negative_penalty", "freshness_boost"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                problems.append(f"{name}={v!r} must be a finite number")
        if isinstance(self.freshness_tau_h, bool) or not isinstance(self.freshness_tau_h, (int, float)) \
                or not (math.isfinite(self.freshness_tau_h) and self.freshness_tau_h > 0):
            problems.append(f"freshness_tau_h={self.freshness_tau_h!r} must be a finite number of hours > 0")
        if not (_whole(self.window) and self.window >= 0):
            problems.append(f"window={self.window!r} must be a whole number >= 0 (0: no MMR and no creator cap)")
        if problems:
            raise ConfigError("invalid PostRankPolicy: " + "; ".join(problems) + ".")


def _whole(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


NO_CREATOR = np.iinfo(np.int64).min           # creator code of an item whose creator is unknown


def creator_codes(creators: Sequence[int | None] | np.ndarray) -> np.ndarray:
    """[N] int64 creator ids with :data:`NO_CREATOR` for ``None`` (a :class:`~edge_rec.runtime.Feed`
    keeps them, so that a swipe does not rebuild them)."""
    if isinstance(creators, np.ndarray) and creators.dtype == np.int64:
        return creators
    return np.fromiter((NO_CREATOR if c is None else int(c) for c in creators), np.int64, len(creators))


def apply_policy(policy: PostRankPolicy, score: np.ndarray, fused: np.ndarray | None,
                 creators: Sequence[int | None] | np.ndarray, ages_h: np.ndarray,
                 signals: Mapping[int, Mapping[str, float]], k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (order of candidate indices [k] int64, best first; adjusted scores [N] float64).

    ``score`` [N] model scores; ``fused`` [N, d] the model's fused candidate embeddings (None: no MMR);
    ``creators`` [N] creator ids (None = unknown) or their :func:`creator_codes`; ``ages_h`` [N] hours
    since upload; ``signals`` {creator id: {"skips", "negative_comments"}} of the last hour."""
    n = len(score)
    k = n if k is None else max(0, min(int(k), n))
    if not policy.enabled:
        return np.argsort(-score, kind="stable")[:k], np.asarray(score, np.float64).copy()
    codes = creator_codes(creators)
    adj = score.astype(np.float64)                  # a copy
    if signals:
        # one lookup for all penalised creators (a viewer who skips a lot has dozens in the last hour:
        # a mask per creator cost ~3 numpy calls each)
        keys = np.fromiter((int(c) for c in signals), np.int64, len(signals))
        pen = np.fromiter((policy.skip_penalty * s.get("skips", 0.0) + policy.negative_penalty * s.get("negative_comments", 0.0)
                           for s in signals.values()), np.float64, len(signals))
        by = np.argsort(keys)
        keys, pen = keys[by], pen[by]
        pos = np.minimum(np.searchsorted(keys, codes), len(keys) - 1)
        hit = keys[pos] == codes
        adj[hit] -= pen[pos[hit]]
    if policy.freshness_boost:
        adj += policy.freshness_boost * np.exp(np.asarray(ages_h, np.float64) * (-1.0 / policy.freshness_tau_h))
    ranked = np.argsort(-adj, kind="stable")
    window = min(k, policy.window)
    if window == 0 or n == 0:
        return ranked[:k], adj
    # Greedy selection over the top `window` positions only (what the screen shows next), from a
    # shortlist of the best 4 x window by adjusted score: MMR and the creator cap act there, below it the
    # adjusted score decides. Keeps the policy O(N log N) and cheap next to the model for any feed size.
    short = ranked[: min(n, 4 * window)]
    lam = policy.mmr_lambda
    use_mmr = fused is not None and lam < 1.0
    hi, lo = adj[ranked[0]], adj[ranked[-1]]
    # relevance = the adjusted score min-max scaled to [0, 1]; its offset does not change any choice
    base = (adj[short] - lo) * ((lam if use_mmr else 1.0) / (hi - lo) if hi > lo else 0.0)
    if use_mmr:
        # unit vectors scaled by sqrt(1 - lam), so that f @ f.T is the weighted cosine similarity
        # (float32, as the model gives them: a similarity needs no more)
        f = np.asarray(fused)[short].astype(np.float32, copy=False)
        f *= np.sqrt((1.0 - lam) / np.maximum(np.einsum("ij,ij->i", f, f), 1e-30))[:, None]
        # value of i once j is chosen: base[i] - (1 - lam) * cos(i, j); the running value after each
        # choice is the elementwise minimum with that row (starting from base, which also clips a
        # negative similarity to 0), so a step costs one argmax and one minimum
        rows = base - f @ f.T                                           # [S, S] float64, row j: after choosing j
    cur = base.copy()
    cap = policy.max_per_creator
    cs = codes[short]
    cs_list = cs.tolist()
    per_creator: dict[int, int] = {}
    chosen: list[int] = []
    ninf, minimum = -np.inf, np.minimum
    while len(chosen) < window:
        j = int(cur.argmax())
        if cur[j] == ninf:
            break                                  # shortlist exhausted
        chosen.append(j)
        if use_mmr:
            minimum(cur, rows[j], out=cur)
        cur[j] = ninf                              # taken items hold -inf (and keep it under minimum)
        c = cs_list[j]
        if cap is not None and c != NO_CREATOR:
            per_creator[c] = seen = per_creator.get(c, 0) + 1
            if seen >= cap:                        # the creator's other items wait below the window
                cur[cs == c] = ninf
    rest = np.ones(len(short), bool)               # the shortlist's unchosen keep their order, then the others
    rest[chosen] = False
    order = np.concatenate([short[chosen], short[rest], ranked[len(short):]])[:k]
    return order, adj
