"""A real request in the runtime's feed format (``sample_feed.json``), for ``edge-rec rerank``.

Feed format (JSON)::

    {"now": request time (s, UTC),
     "candidates": [{"item_id", "creator_id", "duration_s", "upload_ts", "clicks",
                     "embeddings": {modality: [floats] | {"int8": [...], "scale": s} | {"fp16_b64": str}}}],
     "history": [{"item_id", "creator_id", "ts", "watch_ms", "duration_ms", "finish", "skip", "like",
                  "share", "embeddings": {...}}],          # oldest first, events before "now"
     "history_total": the viewer's event count before now (the history may be cut to the last few)}

The server sends every modality it has; the runtime ignores those the bundle pruned.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_rec.distill.dataset import Dataset



def creator_or_none(c: int) -> int | None:
    """A dataset's creator id as the feed contract carries it: a negative id (what loaders write when
    the log has no creators, e.g. the MMSSL layout) is unknown, so ``null``: the policy's creator rules
    then skip the item instead of treating every item as one creator's."""
    c = int(c)
    return None if c < 0 else c

def _emb(v: np.ndarray, int8: bool) -> Any:
    if int8:
        scale = float(np.abs(v).max() / 127.0) or 1.0
        return {"int8": np.clip(np.round(v / scale), -127, 127).astype(int).tolist(), "scale": scale}
    return [float(x) for x in np.asarray(v, np.float16).astype(np.float32)]


def item_candidates(ds: Dataset, items_idx: Any, now: float, int8_embeddings: bool = False) -> list[dict[str, Any]]:
    """Items (dataset row indices) as feed candidates at time ``now``: what the server knows of each
    (clicks before ``now``) and every modality it has."""
    it, items = ds.interactions, ds.items
    clicked = it["click"] > 0
    out = []
    for c in np.asarray(items_idx).tolist():
        before = int((clicked & (it["item"] == c) & (it["ts"] < now)).sum())
        embs = {m: _emb(ds.embeddings[m][c], int8_embeddings) for m in ds.embeddings if ds.present[m][c]}
        out.append({"item_id": int(items["item_id"][c]), "creator_id": creator_or_none(items["creator_id"][c]),
                    "duration_s": float(items["duration_s"][c]), "upload_ts": float(items["upload_ts"][c]),
                    "clicks": before, "embeddings": embs})
    return out


def page_feed(ds: Dataset, r: int, n: int, seed: int = 0) -> dict[str, Any]:
    """Request ``r``'s feed grown to ``n`` distinct candidates with items that existed at its time (a
    page as a server would send it; for benchmarks of feeds larger than the logged requests)."""
    feed = request_feed(ds, r)
    now = feed["now"]
    have = {c["item_id"] for c in feed["candidates"]}
    pool = np.flatnonzero((ds.items["upload_ts"] <= now) & ~np.isin(ds.items["item_id"], list(have)))
    extra = np.random.default_rng(seed).choice(pool, size=min(len(pool), max(0, n - len(have))), replace=False)
    feed["candidates"] += item_candidates(ds, np.sort(extra), now)
    return feed


def event_json(ds: Dataset, j: int) -> dict[str, Any]:
    """Interaction row ``j`` as the event JSON an app records (the runtime's history format)."""
    it, items = ds.interactions, ds.items
    i = int(it["item"][j])
    return {"item_id": int(items["item_id"][i]), "creator_id": creator_or_none(items["creator_id"][i]),
            "ts": float(it["ts"][j]), "watch_ms": float(it["watch_ms"][j]),
            "duration_ms": float(it["duration_ms"][j]), "finish": bool(it["finish"][j]),
            "skip": bool(it["skip"][j]), "like": bool(it["like"][j]), "share": bool(it["share"][j]),
            "embeddings": {m: _emb(ds.embeddings[m][i], False) for m in ds.embeddings if ds.present[m][i]}}


def request_feed(ds: Dataset, r: int, history: int = 50, int8_embeddings: bool = False) -> dict[str, Any]:
    """Request ``r`` of ``ds`` as a feed: its valid candidates and the viewer's last ``history`` events."""
    rq, items = ds.requests, ds.items
    now = float(rq["ts"][r])
    cand = rq["cand"][r][rq["cand"][r] >= 0]
    cands = item_candidates(ds, cand, now, int8_embeddings)
    start = int(ds.user_offsets()[rq["user"][r]])
    end = int(rq["hist_end"][r])
    events = [event_json(ds, j) for j in range(max(start, end - history), end)]
    return {"request": int(r), "user": int(rq["user"][r]), "now": now, "candidates": cands, "history": events,
            "history_total": end - start,
            "clicked_item_ids": [int(items["item_id"][c]) for c, y in zip(cand.tolist(), rq["click"][r][rq["cand"][r] >= 0]) if y > 0]}
