"""Temporal splits and reranking requests, shared by every loader.

A *request* is what the phone holds when it reranks: the N candidates a retrieval stage handed it.
Here that is the request's logged impressions (with their real feedback) plus negatives sampled in
proportion to item popularity from the items that existed at request time, so that popularity alone
cannot separate positives from negatives. Splits are temporal per user: each user's latest request
is ``test`` and the one before it ``val`` (users with fewer than three requests give up ``val``
first, then ``test``), everything earlier is ``train``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_rec.errors import DataError
from edge_rec.distill.dataset import SPLITS, Dataset


def assign_splits(req_user: np.ndarray, req_ts: np.ndarray) -> np.ndarray:
    """[R] int8 split per request: per user, last -> test, second last -> val (if >= 3 requests)."""
    r = len(req_user)
    split = np.zeros(r, dtype=np.int8)
    if r == 0:
        return split
    order = np.lexsort((np.arange(r), req_ts, req_user))
    u = req_user[order]
    run_end = np.ones(r, dtype=bool)
    run_end[:-1] = u[1:] != u[:-1]
    ends = np.flatnonzero(run_end)
    lengths = np.diff(np.concatenate([[-1], ends]))
    run_of = np.repeat(np.arange(len(ends)), lengths)
    from_end = ends[run_of] - np.arange(r)
    count = lengths[run_of]
    s = np.zeros(r, dtype=np.int8)
    s[(from_end == 0) & (count >= 2)] = SPLITS["test"]
    s[(from_end == 1) & (count >= 3)] = SPLITS["val"]
    split[order] = s
    return split


def finalize(
    *,
    meta: dict[str, Any],
    users: dict[str, np.ndarray],
    items: dict[str, np.ndarray],
    interactions: dict[str, np.ndarray],
    embeddings: dict[str, np.ndarray],
    present: dict[str, np.ndarray],
    n_candidates: int,
    seed: int,
    captions: list[str] | None = None,
    neg_alpha: float = 1.0,
    progress: bool = False,
    split: np.ndarray | None = None,
    heldout_safe: bool = False,
) -> Dataset:
    """Sort interactions, build requests, splits, candidate lists and cold flags; validate.

    ``interactions["req"]`` must group each user's impressions into requests (sessions); any ids
    will do, they are renumbered in (user, time) order. ``split`` ([M], per interaction) keeps a
    split the source already defines; without it the split is temporal per user. ``items["upload_ts"]`` bounds which items
    can be sampled as negatives for a request at time t (only items with upload_ts <= t).

    ``heldout_safe`` (for a source-defined split, e.g. the MMSSL layout): no training request may
    depend on the validation or test rows. Negative-sampling weights then count training interactions
    only, and each request draws from its own random stream keyed by (seed, user, the request's place
    among the user's requests), so changing held-out rows changes no training candidate (tested).
    ``neg_alpha`` = 0 samples negatives uniformly from the catalogue.
    """
    if n_candidates < 2:
        raise DataError(f"n_candidates must be >= 2, got {n_candidates}.")
    it = {k: np.asarray(v) for k, v in interactions.items()}
    if len(it["user"]) == 0:
        raise DataError("no interactions: the source holds no user-item events.")
    order = np.lexsort((it["req"], it["ts"], it["user"]))
    it = {k: v[order] for k, v in it.items()}
    if split is not None:
        split = np.asarray(split, dtype=np.int8)[order]
    # renumber requests in sorted order; each request must be one contiguous run
    change = np.ones(len(order), dtype=bool)
    change[1:] = (it["req"][1:] != it["req"][:-1]) | (it["user"][1:] != it["user"][:-1])
    new_req = np.cumsum(change) - 1
    starts = np.flatnonzero(change)
    pairs = np.stack([it["user"][starts].astype(np.int64), it["req"][starts].astype(np.int64)], axis=1)
    if len(np.unique(pairs, axis=0)) != len(starts):
        raise DataError("a request's impressions are interleaved in time with another request of the same user; "
                        "give each session its own time range.")
    it["req"] = new_req.astype(np.int64)
    n_req = len(starts)
    req_user = it["user"][starts].astype(np.int64)
    req_ts = it["ts"][starts].astype(np.float64)
    split = assign_splits(req_user, req_ts) if split is None else split[starts]

    n_items = len(items["item_id"])
    if heldout_safe:
        counts = np.bincount(it["item"][split[it["req"]] == SPLITS["train"]], minlength=n_items).astype(np.float64)
    else:
        counts = np.bincount(it["item"], minlength=n_items).astype(np.float64)
    logw = neg_alpha * np.log(counts + 1.0)
    upload = np.asarray(items["upload_ts"], dtype=np.float64)
    rng = np.random.default_rng(seed)

    ends = np.concatenate([starts[1:], [len(order)]])
    n = n_candidates
    cand = np.full((n_req, n), -1, dtype=np.int64)
    labels = {k: np.zeros((n_req, n), dtype=np.int8) for k in ("click", "finish", "like")}
    logged = np.zeros((n_req, n), dtype=np.uint8)
    chunk = max(1, min(n_req, 4_000_000 // max(1, n_items)))
    iterator = range(0, n_req, chunk)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="requests", unit="chunk", total=(n_req + chunk - 1) // chunk)
    for c0 in iterator:
        c1 = min(n_req, c0 + chunk)
        key = np.broadcast_to(logw, (c1 - c0, n_items)).copy()
        key[upload[None, :] > req_ts[c0:c1, None]] = -np.inf
        for r in range(c0, c1):
            key[r - c0, it["item"][starts[r]:ends[r]]] = -np.inf
        if heldout_safe:
            nth = np.arange(c0, c1) - np.searchsorted(req_user, req_user[c0:c1])      # place among the user's requests
            gens = [np.random.default_rng([seed, int(req_user[r]), int(nth[r - c0])]) for r in range(c0, c1)]
            for r in range(c0, c1):
                key[r - c0] += gens[r - c0].gumbel(size=n_items)
        else:
            key += rng.gumbel(size=key.shape)
        top = np.argsort(-key, axis=1)[:, :n]
        for r in range(c0, c1):
            g = gens[r - c0] if heldout_safe else rng
            rows = np.arange(starts[r], ends[r])
            if len(rows) > n:  # keep every positive we can, then random others
                pri = it["click"][rows].astype(np.float64) + g.random(len(rows))
                rows = rows[np.argsort(-pri)[:n]]
            _, first = np.unique(it["item"][rows], return_index=True)  # a repeated impression counts once
            rows = rows[np.sort(first)]
            k_neg = n - len(rows)
            negs = top[r - c0, :k_neg]
            negs = negs[np.isfinite(key[r - c0, negs])]
            items_r = np.concatenate([it["item"][rows], negs])
            perm = g.permutation(len(items_r))
            m = len(items_r)
            cand[r, :m] = items_r[perm]
            for lab in labels:
                vals = np.concatenate([it[lab][rows], np.zeros(len(negs), np.int8)])
                labels[lab][r, :m] = vals[perm]
            logged[r, :m] = np.concatenate([np.ones(len(rows)), np.zeros(len(negs))])[perm]

    train_items = np.zeros(n_items, dtype=bool)
    train_items[it["item"][split[it["req"]] == SPLITS["train"]]] = True
    items = dict(items)
    items["cold"] = (~train_items).astype(np.uint8)
    requests = {
        "user": req_user, "ts": req_ts, "split": split, "hist_end": starts.astype(np.int64),
        "cand": cand, "logged": logged, **labels,
    }
    meta = dict(meta)
    meta["n_candidates"] = n
    meta["split_seed"] = seed
    meta["negatives"] = ("uniform over the catalogue" if neg_alpha == 0 else
                         f"popularity-weighted, weight = (count{' in training' if heldout_safe else ''} + 1) ** {neg_alpha}") \
        + ", items uploaded before the request"
    ds = Dataset(meta=meta, users=users, items=items, interactions=it, requests=requests,
                 embeddings=embeddings, present=present, captions=captions)
    ds.validate()
    return ds
