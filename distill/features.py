"""Model inputs from a dataset: the I/O contract of DESIGN.md, batched over requests.

For a batch of B requests with N candidates and a history of L items (numpy, float32)::

    cand_<m>       [B, N, d_m]  the candidate's modality embedding (zeros where missing)
    cand_mask_<m>  [B, N]       1 = modality present
    cand_dense     [B, N, 3]    log duration, log item age at request (h), log clicks before the request
    hist_emb       [B, L, d_h]  history items: all modality embeddings concatenated + watch ratio, like, skip
    hist_weight    [B, L]       1 = a real history entry, 0 = padding
    hist_age       [B, L]       log1p(hours between the history event and the request)
    context        [B, 3]       log1p(history length), hour of day (sin, cos)

plus, for training and evaluation only: ``valid`` [B, N] and the labels ``click``, ``finish``,
``like`` [B, N]. A deployed model gets the same features for one request (B = 1) from the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_rec.distill.dataset import Dataset
from edge_rec.validate import EMBEDDING_LIMIT_FACTOR, FP16_MAX

N_DENSE = 3
N_CONTEXT = 3
N_ENGAGEMENT = 3


def embedding_limit(emb: np.ndarray) -> float:
    """The largest |element| a runtime accepts for a modality whose catalogue embeddings are ``emb``
    [I, d]: :data:`~edge_rec.validate.EMBEDDING_LIMIT_FACTOR` x the largest seen, within float16 range."""
    seen = float(np.abs(emb).max()) if emb.size else 0.0
    return float(f"{min(FP16_MAX, max(EMBEDDING_LIMIT_FACTOR * seen, 1.0)):.6g}")


@dataclass
class FeatureBuilder:
    """Precomputed per-item tables so that building a batch is a few gathers."""

    modalities: dict[str, int]
    hist_len: int
    item_emb: dict[str, np.ndarray]        # m -> [I, d_m] float32
    item_present: dict[str, np.ndarray]    # m -> [I] float32
    item_concat: np.ndarray                # [I, sum d_m]
    duration: np.ndarray                   # [I] log duration (standardised)
    upload: np.ndarray                     # [I] upload time, s
    click_keys: np.ndarray                 # sorted item * span + (ts - t0) of every click
    span: float
    t0: float
    pop_scale: tuple[float, float]         # mean, std of log1p(clicks so far)
    dur_scale: tuple[float, float]         # mean, std of log1p(duration_s) over the catalogue
    user_offsets: np.ndarray
    inter_item: np.ndarray
    inter_ts: np.ndarray
    inter_eng: np.ndarray                  # [M, 3]
    # datasets without timestamps (meta "has_timestamps": false): popularity is the training split's
    # click count (a training request's own clicks taken out), every time feature is constant
    static_counts: np.ndarray | None = None
    timed: bool = True

    @classmethod
    def from_dataset(cls, ds: Dataset, hist_len: int = 20, modalities: list[str] | None = None) -> "FeatureBuilder":
        """``modalities`` keeps a subset (in the dataset's order); pruned ones vanish from every input."""
        keep = list(ds.embeddings) if modalities is None else [m for m in ds.embeddings if m in modalities]
        emb = {m: ds.embeddings[m].astype(np.float32) for m in keep}
        pres = {m: ds.present[m].astype(np.float32) for m in emb}
        concat = np.concatenate([emb[m] for m in emb], axis=1) if emb else np.zeros((ds.n_items, 0), np.float32)
        dur = np.log1p(np.asarray(ds.items["duration_s"], np.float64))
        dur_scale = (float(dur.mean()), float(dur.std() + 1e-6))
        dur = (dur - dur_scale[0]) / dur_scale[1]
        it = ds.interactions
        # Popularity is causal: clicks on the item strictly before the request (what a server
        # knows then). Counting the training period as a whole would leak each request's own
        # labels into its features, and the model would learn that leak instead of content.
        clicked = it["click"] > 0
        t0 = float(min(it["ts"].min(), np.min(ds.requests["ts"]))) - 1.0
        span = float(max(it["ts"].max(), np.max(ds.requests["ts"])) - t0) + 2.0
        keys = np.sort(it["item"][clicked] * span + (it["ts"][clicked] - t0))
        tr = ds.train_interaction_mask()
        train_counts = np.bincount(it["item"][tr & clicked], minlength=ds.n_items)
        final = np.log1p(train_counts)
        timed = bool(ds.meta.get("has_timestamps", True))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(it["duration_ms"] > 0, it["watch_ms"] / np.maximum(it["duration_ms"], 1e-9), 0.0)
        eng = np.stack([np.clip(ratio, 0, 1.5), it["like"], it["skip"]], axis=1).astype(np.float32)
        return cls(
            modalities={m: ds.modalities[m] for m in keep}, hist_len=hist_len, item_emb=emb, item_present=pres, item_concat=concat,
            duration=dur.astype(np.float32), upload=np.asarray(ds.items["upload_ts"], np.float64),
            click_keys=keys, span=span, t0=t0, pop_scale=(float(final.mean()), float(final.std() + 1e-6)), dur_scale=dur_scale,
            user_offsets=ds.user_offsets(), inter_item=it["item"],
            inter_ts=it["ts"], inter_eng=eng,
            static_counts=None if timed else train_counts.astype(np.float64), timed=timed,
        )

    @property
    def hist_dim(self) -> int:
        return self.item_concat.shape[1] + N_ENGAGEMENT

    def normalisation(self) -> dict[str, Any]:
        """How every input is computed from raw feed fields: what a runtime (Python, JVM, browser) needs
        to rebuild the features of :meth:`build` from a candidate list and the local history."""
        o, layout = 0, {}
        for m, d in self.modalities.items():
            layout[m] = [o, o + d]
            o += d
        return {
            "cand_dense": {
                "columns": ["duration", "freshness", "popularity"],
                "duration": {"formula": "(log1p(duration_s) - mean) / std", "mean": self.dur_scale[0], "std": self.dur_scale[1]},
                "freshness": {"formula": "(log1p(max(request_ts - upload_ts, 0) / 3600) - 4) / 2", "shift": 4.0, "scale": 2.0},
                "popularity": {"formula": "(log1p(clicks before the request) - mean) / std",
                               "mean": self.pop_scale[0], "std": self.pop_scale[1]},
            },
            "cand_modality": {"dtype": "float32", "missing": "zeros with cand_mask_<m> = 0",
                              "limit": {m: embedding_limit(self.item_emb[m]) for m in self.modalities},
                              "limit_rule": f"|element| <= min({FP16_MAX:g}, {EMBEDDING_LIMIT_FACTOR} x the largest "
                                            "|element| of the training catalogue); a runtime rejects a vector beyond it"},
            "hist_emb": {"layout": layout, "engagement": {"offset": o, "columns": ["watch_ratio (clipped to [0, 1.5])", "like", "skip"]},
                         "order": "oldest first, most recent last; left-padded with zeros", "length": self.hist_len},
            "hist_weight": "1 for a real history entry, 0 for padding",
            "hist_age": {"formula": "log1p(hours between the event and the request); 0 for padding"},
            "context": {"columns": ["log1p(history length)", "sin(2*pi*hour_of_day/24)", "cos(2*pi*hour_of_day/24)"]},
            # false for a dataset without timestamps: freshness, history ages and the hour are constant
            # (request_ts = upload_ts, age 0, hour 0) and a runtime must compute them so
            "time_features": self.timed,
        }

    def popularity(self, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Standardised log1p(clicks on each item before ``ts``). items [B, N], ts [B] -> [B, N]."""
        lo = np.searchsorted(self.click_keys, items * self.span)
        hi = np.searchsorted(self.click_keys, items * self.span + (ts[:, None] - self.t0), side="left")
        return (np.log1p(hi - lo) - self.pop_scale[0]) / self.pop_scale[1]

    def build(self, ds: Dataset, idx: np.ndarray, cand: np.ndarray | None = None,
              extra: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """All inputs and labels for requests ``idx`` (see the module docstring for shapes).

        ``cand`` [len(idx), N] item ids (-1 = padding) scores other candidates than the logged ones
        with each request's history and clock (the full-catalogue protocol); labels are then zeros.
        ``extra`` [len(idx), K] appends K negatives (label 0) after the logged candidates: training on the
        catalogue as it will be ranked (see :class:`CatalogueNegatives`). ``labelled`` [B, N(+K)] marks
        the logged candidates, the only ones whose labels are observed outcomes."""
        rq = ds.requests
        own = cand is None
        cand = rq["cand"][idx] if own else np.asarray(cand, np.int64)
        n_own = cand.shape[1]
        if extra is not None:
            cand = np.concatenate([cand, np.asarray(extra, np.int64)], axis=1)
        valid = cand >= 0
        c = np.where(valid, cand, 0)
        ts = rq["ts"][idx]
        out: dict[str, np.ndarray] = {}
        for m in self.item_emb:
            out[f"cand_{m}"] = self.item_emb[m][c] * valid[..., None]
            out[f"cand_mask_{m}"] = self.item_present[m][c] * valid
        age_h = np.maximum(ts[:, None] - self.upload[c], 0.0) / 3600.0 if self.timed else np.zeros(c.shape)
        if self.static_counts is None:
            pop = self.popularity(c, ts)
        else:
            cnt = self.static_counts[c]
            if own:       # a training request's own clicks are its labels: not part of its features
                cnt[:, :n_own] = cnt[:, :n_own] - rq["click"][idx] * (rq["split"][idx] == 0)[:, None]
            pop = (np.log1p(np.maximum(cnt, 0.0)) - self.pop_scale[0]) / self.pop_scale[1]
        out["cand_dense"] = np.stack([self.duration[c], (np.log1p(age_h) - 4.0) / 2.0, pop],
                                     axis=-1).astype(np.float32) * valid[..., None]
        # history: the L interactions before the request
        L = self.hist_len
        start = self.user_offsets[rq["user"][idx]]
        end = rq["hist_end"][idx]
        pos = end[:, None] - L + np.arange(L)[None, :]                     # [B, L]
        real = pos >= start[:, None]
        p = np.where(real, pos, 0)
        items = self.inter_item[p]
        hist = np.concatenate([self.item_concat[items], self.inter_eng[p]], axis=-1)
        out["hist_emb"] = (hist * real[..., None]).astype(np.float32)
        out["hist_weight"] = real.astype(np.float32)
        age = np.maximum(ts[:, None] - self.inter_ts[p], 0.0) / 3600.0 if self.timed else np.zeros(p.shape)
        out["hist_age"] = (np.log1p(age) * real).astype(np.float32)
        hour = (ts % 86400.0) / 86400.0 * 2 * np.pi if self.timed else np.zeros(len(ts))
        out["context"] = np.stack([np.log1p(end - start), np.sin(hour), np.cos(hour)], axis=1).astype(np.float32)
        out["valid"] = valid.astype(np.float32)
        out["labelled"] = out["valid"].copy()
        out["labelled"][:, n_own:] = 0.0
        for lab in ("click", "finish", "like"):
            y = np.zeros(cand.shape, np.float32)
            if own:
                y[:, :n_own] = rq[lab][idx]
            out[lab] = y
        return out


class CatalogueNegatives:
    """Negatives drawn uniformly from the catalogue as the full-catalogue protocol ranks it.

    A logged request pairs its positives with the impressions around them (and, for logs that have
    none, negatives a loader sampled, often by popularity). A model trained only on those learns what
    separates a click from *its neighbours in the feed*; served over the whole catalogue, or over what
    a retrieval stage returns, it meets items it never learnt to push down. Uniform draws need no
    correction (log Q is the same constant for every item): for a request at time ``ts`` they come from
    the items uploaded by then (every item for a dataset without time); a draw that is one of the
    request's own candidates is dropped (-1)."""

    def __init__(self, ds: Dataset) -> None:
        upload = np.asarray(ds.items["upload_ts"], np.float64)
        self.timed = bool(ds.meta.get("has_timestamps", True))
        self.order = np.argsort(upload, kind="stable") if self.timed else np.arange(ds.n_items)
        self.sorted_upload = upload[self.order]
        self.n_items = ds.n_items

    def sample(self, ds: Dataset, idx: np.ndarray, k: int, gen: np.random.Generator) -> np.ndarray:
        """[len(idx), k] item ids (-1 = dropped)."""
        idx = np.asarray(idx)
        if self.timed:
            avail = np.searchsorted(self.sorted_upload, ds.requests["ts"][idx], side="right")
        else:
            avail = np.full(len(idx), self.n_items)
        pos = np.floor(gen.random((len(idx), k)) * np.maximum(avail, 1)[:, None]).astype(np.int64)
        items = self.order[np.minimum(pos, self.n_items - 1)]
        own = ds.requests["cand"][idx]
        clash = (items[:, :, None] == own[:, None, :]).any(-1) | (avail[:, None] <= 0)
        return np.where(clash, -1, items)


LABEL_KEYS = ("valid", "labelled", "click", "finish", "like")
"""Keys of :meth:`FeatureBuilder.build`'s output that are masks and labels, never model inputs."""


def input_names(modalities: dict[str, int]) -> list[str]:
    """The model input names of the I/O contract, in order."""
    names = []
    for m in modalities:
        names += [f"cand_{m}", f"cand_mask_{m}"]
    return names + ["cand_dense", "hist_emb", "hist_weight", "hist_age", "context"]


OUTPUT_NAMES = ["score", "p_click", "p_finish", "p_like"]
