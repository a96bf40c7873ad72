"""On-device learning: a personal output adapter trained on the phone from the viewer's own events.

The trainable part is a small adapter on the model's outputs, not the model itself::

    personal_score = score * (1 + a) + b + fused · u          u: [d], a, b: scalars; theta = [u, a, b]

``score`` [N] and ``fused`` [N, d] are outputs every exported file already has, so the frozen model
file never changes and any engine (ONNX Runtime, LiteRT, Core ML, ExecuTorch) serves it; theta = 0 is
the frozen ranking exactly. ``u`` is the viewer's taste as a direction in the model's own item space,
``a`` and ``b`` recalibrate the frozen score for this viewer. Why this part and not a low-rank adapter
inside the fusion block: it needs no intermediate tensor the exported files do not expose, and it is
d + 2 numbers (34 on the default student: 136 bytes per federated update; differential-privacy noise
grows with the dimension). A low-rank adapter was not built or measured.

Training is weighted logistic loss on the feed pages the viewer was shown (:meth:`LocalLearner.observe`),
each candidate labelled by the viewer's reaction (:func:`event_label`; none: 0), with an L2 pull toward
the starting weights (the bundle's global adapter, or zero), plain SGD on fixed batches of :data:`BATCH`. :func:`loss_and_grad` is the step written in numpy, so the phone-side
Python runtime trains without torch; the bundle also carries the same step as an ExecuTorch training
program (``local/head_train.pte``, for the C++/Java ExecuTorch ``TrainingModule`` on a phone), and the
tests check that one step of each equals one step of PyTorch's autograd + ``torch.optim.SGD``.

The weights live in the viewer's store (:class:`~edge_rec.state.UserState`), never leave it except
through :mod:`federated updates <edge_rec.distill.federate>` the app opts into, and
:meth:`UserState.forget` deletes them with the events.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from edge_rec.errors import ConfigError, DataError
from edge_rec.state import Event

if TYPE_CHECKING:
    from edge_rec.runtime import Reranker
    from edge_rec.state import UserState

BATCH = 64
"""Examples per training step (fixed: the ExecuTorch program has static shapes; a short batch is padded
with weight 0, which contributes nothing to the loss or the gradient)."""
STORE_KEY = "personal_head"
DEFAULTS = {"epochs": 20, "lr": 0.5, "l2": 0.1}
"""The runtime's training settings (the bundle's ``local_learning`` section may carry others)."""
CHUNK = 32   # events scored per engine call when building examples (history = what preceded the chunk)


@dataclass
class HeadWeights:
    """theta = [u (d), a, b] as float32; see the module docstring for the formula."""

    theta: np.ndarray

    @classmethod
    def zeros(cls, d: int) -> "HeadWeights":
        return cls(np.zeros(d + 2, np.float32))

    @property
    def d(self) -> int:
        return int(self.theta.shape[0]) - 2

    def adjust(self, score: np.ndarray, fused: np.ndarray) -> np.ndarray:
        """score [N], fused [N, d] -> personal score [N] (float64, as the runtime ranks)."""
        t = self.theta.astype(np.float64)
        return np.asarray(score, np.float64) * (1.0 + t[-2]) + t[-1] + np.asarray(fused, np.float64) @ t[:-2]

    def to_json(self) -> dict[str, Any]:
        return {"d": self.d, "theta": [float(x) for x in self.theta]}

    @classmethod
    def from_json(cls, obj: Any, d: int, where: str) -> "HeadWeights":
        try:
            theta = np.asarray(obj["theta"], dtype=np.float32)
            ok = int(obj["d"]) == d and theta.shape == (d + 2,) and bool(np.isfinite(theta).all())
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{where}: the personal adapter is not {d + 2} finite numbers for a model of width {d}; "
                            "it belongs to another bundle or is damaged (UserState.forget() or "
                            "LocalLearner.reset() starts over from the bundle's weights).")
        return cls(theta)


def loss_and_grad(theta: np.ndarray, start: np.ndarray, fused: np.ndarray, score: np.ndarray, label: np.ndarray,
                  weight: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """The training step's loss and gradient, in float32 as the ExecuTorch program computes them.

    theta, start [d+2]; fused [B, d]; score, label, weight [B]. Loss = sum(weight * BCE(z, label)) /
    max(sum(weight), 1) + l2/2 * ||theta - start||^2 with z = score*(1+a) + b + fused·u."""
    f32 = np.float32
    u, a, b = theta[:-2], theta[-2], theta[-1]
    z = score * (f32(1) + a) + b + fused @ u
    # log(1 + e^z) - label*z, computed without overflow; its derivative is sigmoid(z) - label
    bce = np.maximum(z, 0) - z * label + np.log1p(np.exp(-np.abs(z)))
    norm = max(float(weight.sum()), 1.0)
    diff = theta - start
    loss = float((bce * weight).sum() / norm + 0.5 * l2 * float(diff @ diff))
    dz = (weight * (_sigmoid(z) - label) / f32(norm)).astype(f32)
    grad = np.empty_like(theta)
    grad[:-2] = fused.T @ dz
    grad[-2] = score @ dz
    grad[-1] = dz.sum()
    grad += f32(l2) * diff
    return loss, grad.astype(f32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype)


@dataclass
class Examples:
    """What local training learns from: fused [M, d], score [M] (the frozen model's, as the viewer saw
    the item), label [M] (1 engaged, 0 skipped)."""

    fused: np.ndarray
    score: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, idx: np.ndarray) -> "Examples":
        return Examples(self.fused[idx], self.score[idx], self.label[idx])


def event_label(e: Event) -> float:
    """1 for an item the viewer engaged with (watched at least half, finished, liked or shared, and not
    skipped), else 0: the "effective view" short-video logs count as a click.

    Measured on the synthetic world (docs/on-device-learning.md): a label that disagrees with the served
    ranking's target teaches the adapter the wrong thing ("finished, liked or shared against skipped"
    taught it to prefer short items and cost 0.09 NDCG@10 when trained on every viewer's events pooled)."""
    if e.skip:
        return 0.0
    return 1.0 if (e.like or e.share or e.finish or e.watch_ratio >= 0.5) else 0.0


def score_page(rr: "Reranker", candidates: Any, now: float, history: Sequence[Event]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A feed page scored by the bundle's frozen model as the viewer met it: item_ids [N], score [N],
    fused [N, d] (one engine call, the request's own history)."""
    feed = candidates if hasattr(candidates, "inputs") else rr.prepare(candidates)
    x = rr.features(feed, now, [e for e in history if e.ts < now][-rr.hist_len:])
    out = rr.engine.run(x)
    n = len(feed)
    score, fused = np.asarray(out["score"], np.float32)[:n], np.asarray(out["fused"], np.float32)[:n]
    if not (np.isfinite(score).all() and np.isfinite(fused).all()):
        raise DataError("the model produced non-finite outputs for this page; its candidates are outside what the "
                        "model can score.")
    return np.asarray(feed.item_ids), score, fused


def examples_from_events(rr: "Reranker", events: Sequence[Event],
                         candidates: Mapping[int, Any] | None = None) -> Examples:
    """Score the items of ``events`` (oldest first) with the bundle's frozen model as the viewer met
    them: in chunks of :data:`CHUNK`, each with the history that preceded the chunk.

    ``candidates`` {item_id: Candidate or its JSON}: the items as the feed sent them (duration, upload
    time, clicks), which the app has when it records an event; an item not there is rebuilt from the
    event (its duration and embeddings) with neutral freshness and popularity."""
    from edge_rec.runtime import Candidate

    evs = list(events)
    d = rr.fused_dim
    if not evs:
        return Examples(np.zeros((0, d), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    cands = dict(candidates or {})
    fresh_h = math.expm1(rr._fresh[0])          # the training mean of log1p(age in hours)
    clicks = math.expm1(rr._pop[0])             # the training mean of log1p(clicks)
    history = sorted(events, key=lambda e: e.ts)
    fused, score, label = [], [], []
    for s in range(0, len(evs), CHUNK):
        chunk = evs[s:s + CHUNK]
        seen: set[int] = set()
        cs = []
        for e in chunk:
            if e.item_id in seen:                 # the same item twice in a chunk: score it once
                continue
            seen.add(e.item_id)
            c = cands.get(e.item_id)
            if c is None:
                c = Candidate(item_id=e.item_id, creator_id=e.creator_id, duration_s=e.duration_ms / 1000.0,
                              upload_ts=e.ts - 3600.0 * fresh_h, clicks=clicks,
                              # as in the history: a vector of another modality or size (an older
                              # bundle's) is treated as missing
                              embeddings={m: v for m, v in e.embeddings.items()
                                          if m in rr.modalities and np.shape(v) == (rr.modalities[m],)})
            cs.append(c)
        now = min(e.ts for e in chunk)
        x = rr.features(cs, now, [e for e in history if e.ts < now][-rr.hist_len:])
        out = rr.engine.run(x)
        row = {c.item_id if hasattr(c, "item_id") else int(c["item_id"]): i for i, c in enumerate(cs)}
        f = np.asarray(out["fused"], np.float32)
        sc = np.asarray(out["score"], np.float32)
        for e in chunk:
            i = row[e.item_id]
            fused.append(f[i])
            score.append(sc[i])
            label.append(event_label(e))
    ex = Examples(np.stack(fused).astype(np.float32), np.asarray(score, np.float32), np.asarray(label, np.float32))
    if not (np.isfinite(ex.fused).all() and np.isfinite(ex.score).all()):
        raise DataError("the model produced non-finite outputs for some of the stored events; their embeddings are "
                        "outside what the model can score (forget() them or check how they were recorded).")
    return ex


def examples_from_store(rr: "Reranker", state: "UserState") -> Examples:
    """The viewer's training examples, oldest first: every candidate of every page :meth:`LocalLearner.observe`
    kept, labelled by the viewer's first event on it after the page was shown (:func:`event_label`; no
    event: 0, a negative from the feed), then the events on items of no kept page, scored from their
    stored embeddings (:func:`examples_from_events`)."""
    events = sorted(state.events(), key=lambda e: e.ts)
    by_item: dict[int, list[Event]] = {}
    for e in events:
        by_item.setdefault(e.item_id, []).append(e)
    rows = state._exposures()
    d = rr.fused_dim
    fused, score, label, covered = [], [], [], set()
    for ts, item, sc, blob in rows:
        f = np.frombuffer(blob, np.float32)
        if f.shape != (d,):
            continue                         # a page scored by another bundle's model
        after = [e for e in by_item.get(item, ()) if e.ts >= ts]
        fused.append(f)
        score.append(sc)
        label.append(event_label(after[0]) if after else 0.0)
        if after:
            covered.add(id(after[0]))
    rest = examples_from_events(rr, [e for e in events if id(e) not in covered])
    if not fused:
        return rest
    page = Examples(np.stack(fused), np.asarray(score, np.float32), np.asarray(label, np.float32))
    return Examples(np.concatenate([page.fused, rest.fused]), np.concatenate([page.score, rest.score]),
                    np.concatenate([page.label, rest.label]))


def train_head(start: HeadWeights, ex: Examples, *, epochs: int = 20, lr: float = 0.5, l2: float = 0.1,
               seed: int = 0) -> tuple[HeadWeights, dict[str, Any]]:
    """SGD from ``start`` on ``ex`` (batches of :data:`BATCH`, shuffled each epoch, the short last one
    padded with weight 0). Returns the new weights and a report (examples, steps, loss before/after,
    ms). Deterministic for a seed."""
    for name, v, lo in (("epochs", epochs, 0),):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be a whole number >= {lo}, got {v!r}.")
    for name, v in (("lr", lr), ("l2", l2)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}.")
    t0 = time.perf_counter()
    theta0 = start.theta.astype(np.float32)
    theta = theta0.copy()
    m = len(ex)
    rng = np.random.default_rng(seed)
    steps = 0
    full = list(_batches(ex, np.arange(m)))
    before = _mean_loss(theta, theta0, full, l2)
    for _ in range(epochs if m else 0):
        for fb, sb, lb, wb in _batches(ex, rng.permutation(m)):
            _, g = loss_and_grad(theta, theta0, fb, sb, lb, wb, l2)
            theta = (theta - np.float32(lr) * g).astype(np.float32)
            steps += 1
    if not np.isfinite(theta).all():
        raise DataError("local training diverged (non-finite weights); lower lr. The previous weights are kept.")
    after = _mean_loss(theta, theta0, full, l2)
    return HeadWeights(theta), {"examples": m, "positives": int(ex.label.sum()) if m else 0, "steps": steps,
                                "epochs": epochs, "lr": lr, "l2": l2, "loss_before": before, "loss_after": after,
                                "ms": (time.perf_counter() - t0) * 1000.0}


def _batches(ex: Examples, order: np.ndarray) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    d = ex.fused.shape[1]
    for s in range(0, len(order), BATCH):
        idx = order[s:s + BATCH]
        k = len(idx)
        f = np.zeros((BATCH, d), np.float32)
        sc, lb, w = np.zeros(BATCH, np.float32), np.zeros(BATCH, np.float32), np.zeros(BATCH, np.float32)
        f[:k], sc[:k], lb[:k], w[:k] = ex.fused[idx], ex.score[idx], ex.label[idx], 1.0
        yield f, sc, lb, w


def _mean_loss(theta: np.ndarray, start: np.ndarray, batches: Iterable[tuple], l2: float) -> float | None:
    tot, n = 0.0, 0
    for fb, sb, lb, wb in batches:
        k = float(wb.sum())
        loss, _ = loss_and_grad(theta, start, fb, sb, lb, wb, 0.0)
        tot += loss * k
        n += int(k)
    if not n:
        return None
    diff = theta - start
    return tot / n + 0.5 * l2 * float(diff @ diff)


def validated_head(start: HeadWeights, ex: Examples, *, epochs: int, lr: float, l2: float,
                   held_out: float = 0.2) -> tuple[HeadWeights | None, dict[str, Any]]:
    """Train on the oldest ``1 - held_out`` of ``ex`` (time order), compare log loss with ``start`` on
    the rest; if lower, retrain on all of ``ex`` and return it, else None. See :meth:`LocalLearner.fit`."""
    m = len(ex)
    cut = max(1, int(round(m * (1 - held_out))))
    if cut >= m:
        return None, {"examples": m, "why": "too few events to hold any out"}
    trial, _ = train_head(start, ex.take(np.arange(cut)), epochs=epochs, lr=lr, l2=l2)
    test = list(_batches(ex.take(np.arange(cut, m)), np.arange(m - cut)))
    base, pers = _mean_loss(start.theta, start.theta, test, 0.0), _mean_loss(trial.theta, start.theta, test, 0.0)
    verdict: dict[str, Any] = {"examples": m, "held_out": m - cut, "held_out_loss": {"bundle": base, "personal": pers}}
    if pers is None or base is None or not pers < base:
        return None, verdict
    head, rep = train_head(start, ex, epochs=epochs, lr=lr, l2=l2)
    return head, {**verdict, **{k: rep[k] for k in ("steps", "ms", "loss_before", "loss_after")}}


class LocalLearner:
    """Train the personal adapter of ``rr``'s bundle from ``state``'s events, keep it in the store, and
    make ``rr.rerank(..., state=state)`` use it.

    >>> learner = LocalLearner(rr, state)
    >>> report = learner.fit()                 # e.g. when the phone is charging
    >>> rr.rerank(feed, state=state)           # ranked with the personal adapter
    """

    def __init__(self, rr: "Reranker", state: "UserState", *, epochs: int | None = None, lr: float | None = None,
                 l2: float | None = None, min_examples: int = 8) -> None:
        self.rr, self.state = rr, state
        conf = {**DEFAULTS, **{k: v for k, v in rr.manifest.get("local_learning", {}).items() if k in DEFAULTS}}
        self.epochs = conf["epochs"] if epochs is None else epochs
        self.lr = conf["lr"] if lr is None else lr
        self.l2 = conf["l2"] if l2 is None else l2
        self.min_examples = int(min_examples)

    def observe(self, candidates: Any, now: float) -> int:
        """Keep a feed page as the model scored it for the viewer at ``now`` (its candidates' scores and
        fused embeddings, in the store): the items the viewer then did not engage with become
        negatives. Call it once per page the viewer was shown (not per swipe). Returns the row count."""
        from edge_rec.runtime import request_time

        t = request_time(now)
        ids, score, fused = score_page(self.rr, candidates, t, self.state.events(self.rr.hist_len, t))
        self.state._record_exposures(t, ids, score, fused)
        return len(ids)

    def fit(self) -> dict[str, Any]:
        """Retrain from the bundle's adapter on what the store holds (the pages kept by :meth:`observe`
        and the events, :func:`examples_from_store`; so that what
        :meth:`UserState.forget` removed is no longer in the weights), and keep the result only if it
        predicts the viewer's newest events better than the bundle's adapter does.

        The check: train on the oldest 80 % of the events, compare the log loss of both adapters on the
        newest 20 % (what the viewer does next is what the ranking serves); if the trained one is not
        better, the store holds no personal adapter and the bundle's is used. If it is better, the
        adapter is retrained on all events and stored. Fewer than ``min_examples`` events: nothing is
        trained. Returns a report: trained, examples, held_out_loss {bundle, personal}, steps, ms."""
        events = self.state.events()
        ex = examples_from_store(self.rr, self.state)
        start = self.rr.global_head
        if len(ex) < self.min_examples:
            self.state._delete_meta(STORE_KEY)
            return {"trained": False, "examples": len(ex), "why": f"fewer than {self.min_examples} events"}
        kept, verdict = validated_head(start, ex, epochs=self.epochs, lr=self.lr, l2=self.l2)
        if kept is None:
            self.state._delete_meta(STORE_KEY)
            return {"trained": False, **verdict, "why": "it did not predict the newest events better than the bundle's"}
        self.state._set_meta(STORE_KEY, json.dumps({**kept.to_json(), "bundle": self.rr.bundle_id,
                                                    "events": len(events), "trained_utc": time.time()}))
        return {"trained": True, **verdict}

    def reset(self) -> None:
        """Drop the personal adapter (the bundle's weights are used again); the events stay."""
        self.state._delete_meta(STORE_KEY)


def stored_head(rr: "Reranker", state: "UserState") -> HeadWeights | None:
    """The personal adapter in ``state`` for ``rr``'s bundle, or None (none trained, or trained for
    another bundle: a new model makes the old adapter meaningless, so it is not used)."""
    raw = state._get_meta(STORE_KEY)
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if not isinstance(obj, dict) or obj.get("bundle") != rr.bundle_id:
        return None
    return HeadWeights.from_json(obj, rr.fused_dim, f"store {state.path}")
