"""Interest-drift replay: how many swipes until the feed follows a viewer whose taste just changed.

The synthetic world plants, for some users, a switch of main topic at a known time (``meta.json``
``planted.drift_events``). For each such user the harness starts at the switch with the user's real
history before it and a pool of candidates (a quarter from the new topic, a quarter from the old one,
the rest from elsewhere). At every swipe the runtime reranks the pool (policy off: the model alone),
the top item is shown and removed from the pool, and the viewer reacts as the planted truth says they
now would: an item of the new topic is watched to the end and liked, anything else is skipped after a
second. The measure is the number of swipes until the new topic holds the top 3.

Three arms on the same users and pools:

- ``without_updates``: the history stays as it was at the switch;
- ``with_updates``: each reaction joins the history inputs, as the app's behaviour store does;
- ``with_local_learning``: the same, in a real :class:`~edge_rec.state.UserState` (SQLite, a temporary
  file per viewer), and the phone also trains its personal output adapter (:class:`~edge_rec.local.LocalLearner`):
  once on the history before the switch, then after every ``fit_every`` swipes, each shown item kept by
  ``observe()`` as the model scored it. ``fit()`` keeps an adapter only when it predicts the viewer's
  newest events better than the bundle's, exactly as on a phone; how often it did is reported.

A viewer who never gets there within ``max_swipes`` counts as ``max_swipes``.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_rec.distill.dataset import Dataset
from edge_rec.errors import ConfigError
from edge_rec.policy import PostRankPolicy
from edge_rec.distill.feed import creator_or_none
from edge_rec.runtime import Candidate, Reranker
from edge_rec.state import Event, UserState

ARMS = ("without_updates", "with_updates", "with_local_learning")


def planted_topics(data_dir: str | Path) -> np.ndarray:
    """``item_topic`` [I] from a synthetic world's ``planted.safetensors`` (a DataError elsewhere)."""
    from safetensors.numpy import load_file

    from edge_rec.errors import DataError

    p = Path(data_dir) / "planted.safetensors"
    if not p.is_file():
        raise DataError(f"{p} not found: the drift replay needs a synthetic world (`edge-rec world`), whose "
                        "planted truth says what each viewer now likes.")
    return load_file(str(p))["item_topic"]


def _candidate(ds: Dataset, i: int, now: float, clicks: np.ndarray) -> Candidate:
    it = ds.items
    return Candidate(item_id=int(it["item_id"][i]), creator_id=creator_or_none(it["creator_id"][i]),
                     duration_s=float(it["duration_s"][i]), upload_ts=float(it["upload_ts"][i]),
                     clicks=float(clicks[i]),
                     embeddings={m: ds.embeddings[m][i].astype(np.float32) for m in ds.embeddings if ds.present[m][i]})


def _event(ds: Dataset, i: int, ts: float, liked: bool) -> Event:
    dur_ms = float(ds.items["duration_s"][i]) * 1000.0
    return Event(item_id=int(ds.items["item_id"][i]), ts=ts, watch_ms=dur_ms if liked else min(1000.0, dur_ms),
                 duration_ms=dur_ms, finish=liked, skip=not liked, like=liked,
                 creator_id=creator_or_none(ds.items["creator_id"][i]),
                 embeddings={m: ds.embeddings[m][i].astype(np.float32) for m in ds.embeddings if ds.present[m][i]})


def drift_replay(ds: Dataset, bundle: str | Path, item_topic: np.ndarray, *, n_users: int = 40, pool: int = 64,
                 max_swipes: int = 30, swipe_s: float = 20.0, seed: int = 0, local_learning: bool = True,
                 fit_every: int = 1) -> dict[str, Any]:
    """Run the arms (``with_local_learning`` only when ``local_learning``); returns per-arm median / mean
    swipes, the share reaching the top 3, per-user rows, and for local learning how many ``fit()`` calls
    kept a personal adapter and their cost (ms, median)."""
    # a quarter of the pool is the new interest: 12 gives it the 3 items the top 3 needs; the pool
    # loses one item per swipe and must keep 3
    for name, v, lo, hi in (("users", n_users, 1, None), ("pool", pool, 12, None),
                            ("max_swipes", max_swipes, 1, pool - 3 if isinstance(pool, int) else None),
                            ("fit_every", fit_every, 1, None)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise ConfigError(f"drift replay: {name} must be a whole number >= {lo}"
                              + (f" and <= {hi} (the pool of {pool} less the top 3)" if hi is not None else "")
                              + f", got {v!r}.")
    if not (math.isfinite(swipe_s) and swipe_s > 0):
        raise ConfigError(f"drift replay: swipe_s must be a finite number of seconds > 0, got {swipe_s!r}.")
    events = ds.meta.get("planted", {}).get("drift_events", [])
    if not events:
        return {"skipped": "the dataset has no planted drift events"}
    rr = Reranker.open(bundle, policy=PostRankPolicy(enabled=False))
    rng = np.random.default_rng(seed)
    it = ds.interactions
    offsets = ds.user_offsets()
    chosen = [events[j] for j in rng.permutation(len(events))[: n_users]]
    rows = []
    for ev in chosen:
        u, t0, new, old = int(ev["user"]), float(ev["ts"]), int(ev["to_topic"]), int(ev["from_topic"])
        start = int(offsets[u])
        end = int(offsets[u + 1]) if u + 1 < len(offsets) else len(it["item"])
        past = [j for j in range(start, end) if it["ts"][j] < t0][-50:]
        history = [_event(ds, int(it["item"][j]), float(it["ts"][j]), bool(it["click"][j] and not it["skip"][j]))
                   for j in past]
        for e, j in zip(history, past):      # real reactions, not the simulated ones
            e.watch_ms, e.duration_ms = float(it["watch_ms"][j]), float(it["duration_ms"][j])
            e.like, e.skip, e.finish = bool(it["like"][j]), bool(it["skip"][j]), bool(it["finish"][j])
        new_items = np.flatnonzero(item_topic == new)
        old_items = np.flatnonzero(item_topic == old)
        other = np.flatnonzero((item_topic != new) & (item_topic != old))
        q = pool // 4
        pool_items = np.concatenate([rng.choice(new_items, min(q, len(new_items)), replace=False),
                                     rng.choice(old_items, min(q, len(old_items)), replace=False),
                                     rng.choice(other, pool - 2 * q, replace=False)])
        clicks = np.bincount(it["item"][(it["click"] > 0) & (it["ts"] < t0)], minlength=ds.n_items)
        row: dict[str, Any] = {"user": u, "from_topic": old, "to_topic": new}
        cands = {int(i): _candidate(ds, int(i), t0, clicks) for i in pool_items}
        for arm in ARMS if local_learning else ARMS[:2]:
            if arm == "with_local_learning":
                with tempfile.TemporaryDirectory(prefix="edge-rec-drift-") as tmp:
                    row[arm], row["local_learning"] = _replay_learning(
                        rr, ds, cands, history, item_topic, new, t0, max_swipes, swipe_s, fit_every, Path(tmp))
            else:
                row[arm] = _replay(rr, ds, cands, history, item_topic, new, t0, max_swipes, swipe_s,
                                   update=arm == "with_updates")
        rows.append(row)
    out: dict[str, Any] = {"users": len(rows), "pool": pool, "max_swipes": max_swipes,
                           "engine": f"{rr.engine.name} {rr.format}/{rr.precision}"}
    for arm in ARMS:
        if rows and arm in rows[0]:
            v = np.array([r[arm] for r in rows], float)
            out[arm] = {"median_swipes": float(np.median(v)), "mean_swipes": float(v.mean()),
                        "reached_top3": float((v < max_swipes).mean())}
    if rows and "local_learning" in rows[0]:
        fits = [r["local_learning"] for r in rows]
        # paired: the same viewer and pool, with and without the adapter
        diff = np.array([r["with_local_learning"] - r["with_updates"] for r in rows], float)
        out["with_local_learning"].update({
            "fit_every": fit_every,
            "fits": int(sum(f["fits"] for f in fits)), "fits_kept": int(sum(f["kept"] for f in fits)),
            "viewers_with_an_adapter_at_the_end": int(sum(bool(f["kept_at_end"]) for f in fits)),
            "fit_ms_p50": float(np.median([m for f in fits for m in f["fit_ms"]])),
            "swipes_vs_history_updates": {"mean_difference": float(diff.mean()), "fewer": int((diff < 0).sum()),
                                          "more": int((diff > 0).sum()), "same": int((diff == 0).sum())}})
    out["rows"] = rows
    return out


def _replay(rr: Reranker, ds: Dataset, cands: dict[int, Candidate], history: list[Event], item_topic: np.ndarray,
            new: int, t0: float, max_swipes: int, swipe_s: float, *, update: bool) -> int:
    """Swipes until the top 3 are all of topic ``new`` (``max_swipes`` if never), the history passed
    in the request: updated with each reaction when ``update``, else frozen at the switch."""
    hist = list(history)
    # the phone holds the pool as one prepared feed and drops each item it has shown
    feed = rr.prepare(list(cands.values()))
    pos = {c.item_id: i for i, c in cands.items()}
    for s in range(max_swipes + 1):
        now = t0 + s * swipe_s + 1.0
        ranked = rr.rerank(feed, context={"now": now, "history": hist, "history_total": len(hist)}, k=3)
        top = [pos[r["item_id"]] for r in ranked]
        if all(item_topic[i] == new for i in top):
            return s
        shown = top[0]
        feed = feed.without([ranked[0]["item_id"]])
        if update:
            hist.append(_event(ds, shown, now, liked=bool(item_topic[shown] == new)))
    return max_swipes


def _replay_learning(rr: Reranker, ds: Dataset, cands: dict[int, Candidate], history: list[Event],
                     item_topic: np.ndarray, new: int, t0: float, max_swipes: int, swipe_s: float, fit_every: int,
                     tmp: Path) -> tuple[int, dict[str, Any]]:
    """As :func:`_replay` with updates, through a real store and the personal adapter trained on the
    phone (see the module docstring). Returns the swipes and {fits, kept, kept_at_end, fit_ms}."""
    from edge_rec.local import LocalLearner, stored_head

    # the world's log spans more than the store's default 90 days: keep the whole history given
    with UserState(tmp / "viewer.db", durability="normal", max_age_days=36500.0) as state:
        state.record_many(history)
        learner = LocalLearner(rr, state)
        fits: dict[str, Any] = {"fits": 0, "kept": 0, "fit_ms": []}

        def fit() -> None:
            t = time.perf_counter()
            rep = learner.fit()
            fits["fit_ms"].append((time.perf_counter() - t) * 1000.0)
            fits["fits"] += 1
            fits["kept"] += int(bool(rep["trained"]))

        fit()                                    # what the phone learned before the switch (e.g. overnight)
        feed = rr.prepare(list(cands.values()))
        pos = {c.item_id: i for i, c in cands.items()}
        swipes = max_swipes
        for s in range(max_swipes + 1):
            now = t0 + s * swipe_s + 1.0
            ranked = rr.rerank(feed, context={"now": now}, k=3, state=state)
            top = [pos[r["item_id"]] for r in ranked]
            if all(item_topic[i] == new for i in top):
                swipes = s
                break
            shown = top[0]
            learner.observe([cands[shown]], now)      # the item shown, as the model scored it
            state.record(_event(ds, shown, now, liked=bool(item_topic[shown] == new)))
            feed = feed.without([ranked[0]["item_id"]])
            if (s + 1) % fit_every == 0:
                fit()
        fits["kept_at_end"] = stored_head(rr, state) is not None
    return swipes, fits
