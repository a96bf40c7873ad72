"""The papers' protocol: rank the whole catalogue for each held-out positive.

What the multimodal-recommendation literature reports (MMGCN, LATTICE, MMSSL, BM3): for every user with
a held-out item, score **every item of the catalogue**, remove the items the user interacted with
before (training items, and validation items when testing), and see where the held-out item lands.
Sampled metrics — a positive against a few sampled negatives, what ``evaluate_scores`` measures on
reranking requests — can order models differently (Krichene & Rendle, "On Sampled Metrics for Item
Recommendation", KDD 2020), so this is the headline.

Rows. A row is one held-out positive of one request of the split (``click`` among its logged
candidates). The ranking of a row holds every item except: items the user interacted with before the
request, the request's *other* positives (each row is a single-positive ranking), and — for datasets
with real time — items uploaded after the request. With one positive per row:

    rank  = #{ranked items scoring higher} + #{ranked items scoring *the same*}   (ties pessimistic)
    hit@K = recall@K = [rank < K]          ndcg@K = 1 / log2(rank + 2) if rank < K else 0

A request's value is the mean over its rows, and a metric is the mean over requests (= over users
when each holds one held-out item, as in the MMSSL layout). ``ci95`` is a percentile bootstrap over
requests. ``cold`` rows are those whose positive had no training interaction; ``warm`` the others.

A scorer is a callable ``scores(req_idx [B]) -> [B, n_items]`` float: the model's score of every item
for each request. :func:`neural_scorer` builds one for a teacher or student (PyTorch) and for a bundle
(the runtime's engine on the same features), the baselines module for the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edge_rec.distill.dataset import Dataset
from edge_rec.errors import ConfigError

Scorer = Callable[[np.ndarray], np.ndarray]
KS = (10, 20, 50)
HEADLINE = ("recall@20", "ndcg@20", "recall@50", "hit@20", "cold.recall@20", "warm.recall@20")


@dataclass
class Rows:
    """The held-out rows of a split: ``req`` [P] request index, ``item`` [P] positive item, ``cold`` [P]."""

    split: str
    req: np.ndarray
    item: np.ndarray
    cold: np.ndarray

    @property
    def requests(self) -> np.ndarray:
        return np.unique(self.req)


def heldout_rows(ds: Dataset, split: str, max_requests: int | None = None, seed: int = 0) -> Rows:
    """Every (request, positive) of ``split``; ``max_requests`` keeps a seeded random subset of the
    requests (all their rows), for a quick estimate of a slow model."""
    idx = ds.split_index(split)
    rq = ds.requests
    cand, click = rq["cand"][idx], rq["click"][idx] > 0
    r, j = np.nonzero(click & (cand >= 0))
    req, item = idx[r], cand[r, j]
    if max_requests is not None and len(np.unique(req)) > max_requests:
        keep = np.random.default_rng(seed).choice(np.unique(req), size=max_requests, replace=False)
        m = np.isin(req, keep)
        req, item = req[m], item[m]
    cold = np.asarray(ds.items["cold"]).astype(bool)[item]
    return Rows(split, req, item, cold)


def has_time(ds: Dataset) -> bool:
    """Whether the dataset's clock is real time (False for layouts without timestamps, e.g. MMSSL)."""
    return bool(ds.meta.get("has_timestamps", True))


def ranks(ds: Dataset, rows: Rows, scorer: Scorer, batch: int = 64, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For every row: (rank of its positive, 0 = first; ties counted against it) and whether it tied
    with at least one ranked item. See the module docstring for what is ranked."""
    rq, it = ds.requests, ds.interactions
    offsets = ds.user_offsets()
    upload = np.asarray(ds.items["upload_ts"], np.float64)
    timed = has_time(ds)
    reqs = rows.requests
    rank = np.zeros(len(rows.req), np.int64)
    tied = np.zeros(len(rows.req), bool)
    row_index = {}
    for i, r in enumerate(rows.req.tolist()):
        row_index.setdefault(r, []).append(i)
    chunks = range(0, len(reqs), batch)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="full catalogue", unit="batch")
    for c0 in chunks:
        chunk = reqs[c0:c0 + batch]
        scores = np.asarray(scorer(chunk), np.float64)
        if scores.shape != (len(chunk), ds.n_items):
            raise ConfigError(f"a scorer returned shape {scores.shape}, expected {(len(chunk), ds.n_items)}.")
        for b, r in enumerate(chunk.tolist()):
            s = scores[b].copy()
            excluded = np.zeros(ds.n_items, bool)
            u = rq["user"][r]
            excluded[it["item"][offsets[u]:rq["hist_end"][r]]] = True
            if timed:
                excluded |= upload > rq["ts"][r]
            excluded[rows.item[row_index[r]]] = True           # the request's positives
            s[excluded] = -np.inf
            finite_bad = ~np.isfinite(scores[b][~excluded])
            if finite_bad.any():
                raise ConfigError(f"a scorer gave {int(finite_bad.sum())} non-finite scores for request {r}.")
            for i in row_index[r]:
                p = scores[b, rows.item[i]]
                higher = int((s > p).sum())
                same = int((s == p).sum())
                rank[i] = higher + same
                tied[i] = same > 0
    return rank, tied


def metrics_from_ranks(rows: Rows, rank: np.ndarray, tied: np.ndarray, ks: tuple[int, ...] = KS,
                       n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Recall / NDCG / Hit @K overall, on warm and cold rows, with 95 % bootstrap intervals over
    requests for the headline metrics; the median rank and the share of tied rows."""
    out: dict[str, Any] = {"n_rows": int(len(rank)), "n_requests": int(len(rows.requests)),
                           "n_cold": int(rows.cold.sum()), "median_rank": float(np.median(rank)) if len(rank) else float("nan"),
                           "tied_rows": float(tied.mean()) if len(rank) else float("nan")}
    per_row = {}
    for k in ks:
        per_row[f"recall@{k}"] = (rank < k).astype(np.float64)
        per_row[f"hit@{k}"] = per_row[f"recall@{k}"]
        per_row[f"ndcg@{k}"] = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    ci: dict[str, list[float]] = {}
    rng = np.random.default_rng(seed)
    for view, mask in (("", np.ones(len(rank), bool)), ("warm.", ~rows.cold), ("cold.", rows.cold)):
        req = rows.req[mask]
        if len(req) == 0:
            for key in per_row:
                out[view + key] = float("nan")
            continue
        u, inv = np.unique(req, return_inverse=True)
        cnt = np.bincount(inv).astype(np.float64)
        boot = rng.integers(0, len(u), size=(n_boot, len(u))) if n_boot else None
        for key, v in per_row.items():
            per_req = np.bincount(inv, weights=v[mask]) / cnt                  # mean over the request's rows
            out[view + key] = float(per_req.mean())
            if boot is not None and view + key in HEADLINE + ("ndcg@20",):
                means = per_req[boot].mean(axis=1)
                ci[view + key] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    out["ci95"] = ci
    return out


def evaluate(ds: Dataset, rows: Rows, scorer: Scorer, **kw: Any) -> dict[str, Any]:
    """:func:`ranks` then :func:`metrics_from_ranks` (keyword arguments go to the latter, except
    ``batch`` and ``progress``)."""
    rk, tied = ranks(ds, rows, scorer, batch=kw.pop("batch", 64), progress=kw.pop("progress", False))
    return metrics_from_ranks(rows, rk, tied, **kw)


# ---- scorers for the project's own models ---------------------------------------------------------------
def neural_scorer(ds: Dataset, model: Any, hist_len: int, modalities: list[str], *, engine: Any = None,
                  item_chunk: int = 4096, candidates_per_call: int = 8192, fb: Any = None,
                  device: Any = None) -> Scorer:
    """Scores of every item for each request by a teacher or student (PyTorch), or — with ``engine``
    (an :mod:`edge_rec.engines` engine, e.g. ``Reranker.open(bundle).engine``) — by an exported file
    in its own runtime. Features are built as training built them, with each request's history and
    clock and the catalogue as its candidates, ``item_chunk`` items per call."""
    from edge_rec.distill.features import FeatureBuilder

    fb = fb or FeatureBuilder.from_dataset(ds, hist_len=hist_len, modalities=modalities)
    names = list(model.input_names) if model is not None else list(engine.input_names)
    all_items = np.arange(ds.n_items, dtype=np.int64)

    def scores(req: np.ndarray) -> np.ndarray:
        out = np.zeros((len(req), ds.n_items), np.float64)
        for c0 in range(0, ds.n_items, item_chunk):
            items = all_items[c0:c0 + item_chunk]
            if engine is not None:
                for b, r in enumerate(req):
                    x = fb.build(ds, np.array([r]), cand=items[None, :])
                    o = engine.run({k: (x[k][0]) for k in names})
                    out[b, c0:c0 + len(items)] = np.asarray(o["score"], np.float64)
            else:
                import torch

                per = max(1, candidates_per_call // len(items))        # bounds the activations' memory
                for b0 in range(0, len(req), per):
                    sub = req[b0:b0 + per]
                    x = fb.build(ds, sub, cand=np.broadcast_to(items, (len(sub), len(items))))
                    with torch.no_grad():
                        o = model(**{k: torch.from_numpy(np.ascontiguousarray(x[k], np.float32)).to(device or "cpu")
                                     for k in names})
                    out[b0:b0 + len(sub), c0:c0 + len(items)] = o["score"].float().cpu().numpy()
        return out

    return scores


BASELINES = ("popularity", "content_knn", "bpr", "als")


def baseline_scorer(ds: Dataset, name: str, *, tune_requests: int | None = None) -> tuple[Scorer, dict[str, Any]]:
    """A fitted baseline's scorer and what it was fitted with. ``als`` and ``bpr`` are tuned on the
    validation split's full-catalogue Recall@20 (grids in :mod:`edge_rec.distill.baselines`)."""
    from edge_rec.distill import baselines as B

    users = ds.requests["user"]
    if name == "popularity":
        m = B.Popularity().fit(ds)
        return (lambda req: np.broadcast_to(m.counts, (len(req), ds.n_items)).astype(np.float64)), {"fit": "training clicks"}
    if name == "content_knn":
        m = B.ContentKNN().fit(ds)
        return m.request_scores, {"modalities": [k for k in ds.embeddings if k != (ds.meta.get("collab") or {}).get("modality")]}
    if name in ("als", "bpr"):
        make, grid = (B.IdOnly, B.ALS_GRID) if name == "als" else (B.BPR, B.BPR_GRID)
        m, best, trials = B.tune_on_validation(ds, make, grid, max_requests=tune_requests)
        return (lambda req: m.item_scores(users[req])), {"tuned_on": "val recall@20 (full catalogue)", "trials": trials,
                                                         "config": best["config"]}
    raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}, or give a teacher, "
                      "student or bundle folder.")


def model_scorer(ds: Dataset, path: str, *, backend: str = "auto") -> tuple[str, Scorer, dict[str, Any]]:
    """(kind, scorer, info) for a teacher or student folder (PyTorch) or a bundle folder (the runtime's
    default engine: what ``Reranker.open(bundle)`` picks, int8 where it passed its gates)."""
    import json
    from pathlib import Path

    p = Path(path)
    if (p / "manifest.json").is_file():
        from edge_rec.runtime import Reranker

        rr = Reranker.open(p, backend=backend)
        mods = list(rr.modalities)
        missing = [m for m in mods if m not in ds.embeddings]
        if missing:
            raise ConfigError(f"the bundle uses modalities {missing} that the dataset lacks.")
        return "bundle", neural_scorer(ds, None, rr.hist_len, mods, engine=rr.engine), \
            {"format": rr.format, "precision": rr.precision, "engine": rr.engine.name}
    cfg = p / "config.json"
    kind = json.loads(cfg.read_text()).get("kind") if cfg.is_file() else None
    if kind == "teacher":
        from edge_rec.distill.teacher_stage import load_teacher

        model, meta = load_teacher(p)
    elif kind == "student":
        from edge_rec.distill.distill_stage import load_student

        model, meta = load_student(p)
    else:
        raise ConfigError(f"{p} is neither a bundle (manifest.json) nor a teacher or student folder (config.json); "
                          f"or name a baseline: {', '.join(BASELINES)}.")
    mods = list(model.modalities)
    return kind, neural_scorer(ds, model.eval(), int(meta["hist_len"]), mods), {"params": int(sum(t.numel() for t in model.parameters()))}


def full_catalogue_report(ds: Dataset, models: dict[str, str], *, split: str = "test", max_requests: int | None = None,
                          progress: bool = False, seed: int = 0) -> dict[str, Any]:
    """``report.json["full_catalogue"]``: every model of ``models`` ({name: baseline name or folder})
    ranked over the whole catalogue on the same rows of ``split``."""
    rows = heldout_rows(ds, split, max_requests=max_requests, seed=seed)
    out: dict[str, Any] = {"split": split, "protocol": "full catalogue; the user's earlier items and the request's other "
                           "positives removed" + ("; items not yet uploaded removed" if has_time(ds) else
                                                 "; no time filter (the dataset has no timestamps)")
                           + "; ties counted against the positive; mean over requests; bootstrap 95 % CI over requests",
                           "n_rows": int(len(rows.req)), "n_requests": int(len(rows.requests)), "n_cold": int(rows.cold.sum()),
                           "max_requests": max_requests, "models": {}}
    fitted: dict[str, tuple[Scorer, dict[str, Any]]] = {}      # each baseline fitted (and tuned) once
    cold_share: dict[int, tuple[int, list[dict[str, float]]]] = {}  # the retrieval's cold slots, per K

    def baseline(name: str) -> tuple[Scorer, dict[str, Any]]:
        if name not in fitted:
            fitted[name] = baseline_scorer(ds, name, tune_requests=max_requests)
        return fitted[name]

    for name, spec in models.items():
        if spec == RETRIEVAL or ">" in spec:              # the server stage, alone or + a reranker
            ret, k_int, rer = parse_two_stage(spec)
            rscore, rinfo = baseline("als" if ret == RETRIEVAL else ret)
            info: dict[str, Any] = {"retrieval": {"model": ret, "k": k_int, **rinfo}}
            cold_score, k_cold = None, 0
            if ret == RETRIEVAL:
                cold_score = baseline("content_knn")[0]
                if k_int not in cold_share:
                    cold_share[k_int] = tune_cold_share(ds, rscore, cold_score, k=k_int, max_requests=max_requests,
                                                        seed=seed)
                k_cold, trials = cold_share[k_int]
                info["retrieval"].update(k_cold=k_cold, cold_model="content_knn", cold_share_trials=trials)
            pscore = None
            if rer is not None:
                pscore, pinfo = baseline(rer) if rer in BASELINES else model_scorer(ds, rer)[1:]
                info["reranker"] = {"model": rer, **pinfo}
            scorer = two_stage_scorer(ds, rscore, pscore, k=k_int, k_cold=k_cold, cold_retrieval=cold_score)
        elif spec in BASELINES:
            scorer, info = baseline(spec)
        else:
            _, scorer, info = model_scorer(ds, spec)
        t0 = time.perf_counter()
        ks = KS if "retrieval" not in info else tuple(sorted(set(KS) | {info["retrieval"]["k"]}))
        res = evaluate(ds, rows, scorer, progress=progress, seed=seed, ks=ks)
        # the cost of ranking one user's feed this way on this machine (retrieval included; fitting not)
        res["ms_per_request"] = 1e3 * (time.perf_counter() - t0) / max(len(rows.requests), 1)
        if "retrieval" in info:   # the retrieved set is ranked first: its recall@K is the stage's ceiling
            info["retrieval"][f"recall@{info['retrieval']['k']}"] = res[f"recall@{info['retrieval']['k']}"]
        res["info"] = info
        out["models"][name] = res
    return out


RETRIEVAL = "retrieval"
"""The server stage of the two-stage models: tuned ALS's top ``K - k_cold`` items plus content kNN's top
``k_cold`` among items without a training click (the cold and fresh items ALS cannot score); ``k_cold``
is chosen on validation (:func:`tune_cold_share`)."""
RETRIEVAL_K = 200
RETRIEVAL_COLD_CHOICES = (10, 20, 50, 100)
"""Cold slots tried per retrieved list (those up to K/2): the one whose list holds most validation
positives (Recall@K) wins. Cold items are how new uploads reach a feed; how many slots pay depends
on the log's share of them."""
RETRIEVAL_MIN_K = 2 * RETRIEVAL_COLD_CHOICES[0]


def tune_cold_share(ds: Dataset, retrieval: Scorer, cold_retrieval: Scorer, *, k: int = RETRIEVAL_K,
                    max_requests: int | None = None, seed: int = 0) -> tuple[int, list[dict[str, float]]]:
    """The number of the K retrieved slots given to cold items: the choice of
    :data:`RETRIEVAL_COLD_CHOICES` (<= K/2) with the highest validation Recall@K of the retrieved list
    (the ceiling of any reranker after it). Returns (k_cold, [{k_cold, val.recall@K}])."""
    rows = heldout_rows(ds, "val", max_requests=max_requests, seed=seed)
    choices = [c for c in RETRIEVAL_COLD_CHOICES if c <= k // 2]
    if len(rows.req) == 0 or not np.asarray(ds.items["cold"]).any():
        return choices[0], []
    trials = []
    for c in choices:
        r = evaluate(ds, rows, two_stage_scorer(ds, retrieval, None, k=k, k_cold=c, cold_retrieval=cold_retrieval),
                     ks=(k,), n_boot=0)
        trials.append({"k_cold": c, f"val.recall@{k}": r[f"recall@{k}"]})
    best = max(trials, key=lambda t: (t[f"val.recall@{k}"], -t["k_cold"]))     # ties: fewer cold slots
    return int(best["k_cold"]), trials


def parse_two_stage(spec: str) -> tuple[str, int, str | None]:
    """``retrieval`` | ``RETRIEVAL>K`` | ``RETRIEVAL>K>RERANKER`` | ``RETRIEVAL>RERANKER`` -> (retrieval,
    K, reranker or None). RETRIEVAL is ``retrieval`` (ALS + content kNN for cold items) or a baseline."""
    parts = spec.split(">")
    if len(parts) == 2 and not parts[1].isdigit():
        parts = [parts[0], str(RETRIEVAL_K), parts[1]]
    try:
        k = int(parts[1]) if len(parts) > 1 else RETRIEVAL_K
    except ValueError as exc:
        raise ConfigError(f"a two-stage model is RETRIEVAL>K>RERANKER (e.g. retrieval>200>runs/x/student), got {spec!r}.") from exc
    ret, rer = parts[0], (parts[2] if len(parts) > 2 else None)
    if len(parts) > 3 or ret not in BASELINES + (RETRIEVAL,) or k < 1 or (ret == RETRIEVAL and k < RETRIEVAL_MIN_K):
        raise ConfigError(f"{spec!r}: the retrieval stage must be {RETRIEVAL} or one of {', '.join(BASELINES)}, "
                          f"and K >= 1 (>= {RETRIEVAL_MIN_K} for {RETRIEVAL}); form RETRIEVAL>K>RERANKER.")
    return ret, k, rer


def two_stage_scorer(ds: Dataset, retrieval: Scorer, reranker: Scorer | None, *, k: int = 200, k_cold: int = 0,
                     cold_retrieval: Scorer | None = None) -> Scorer:
    """Server retrieval, then the reranker on what it retrieved (how production serves a feed).

    Per request, ``retrieval`` (e.g. tuned ALS) gives its top ``k - k_cold`` items and
    ``cold_retrieval`` (e.g. content kNN) its top ``k_cold`` among items with no training click (cold
    or fresh items a CF model cannot score); the union is ranked by ``reranker``, ahead of every other
    item, which keeps the retrieval order. Without a reranker the union keeps the server's order
    (retrieval's picks by its score, then the cold picks by theirs): the retrieval stage alone.
    Returns scores whose order is that ranking (values are ranks-derived, not calibrated)."""
    cold = np.asarray(ds.items["cold"]).astype(bool)
    k = min(k, ds.n_items)                 # a catalogue smaller than K: everything is retrieved
    k_cold = min(k_cold, k)
    if k_cold and cold_retrieval is None:
        raise ConfigError("k_cold > 0 needs a cold_retrieval scorer.")

    def scores(req: np.ndarray) -> np.ndarray:
        base = np.asarray(retrieval(req), np.float64)
        order = np.argsort(-base, axis=1, kind="stable")
        out = np.empty_like(base)
        rows = np.arange(len(req))[:, None]
        # below the retrieved set: the retrieval order, as negative ranks
        out[rows, order] = -1.0 - np.arange(ds.n_items)[None, :]
        chosen = np.zeros(base.shape, bool)
        # the server's own order of what it retrieved: 0 = first
        server = np.full(base.shape, np.inf)
        if k - k_cold > 0:
            chosen[rows, order[:, : k - k_cold]] = True
            server[rows, order[:, : k - k_cold]] = np.arange(k - k_cold)[None, :]
        if k_cold:
            c = np.where(cold[None, :] & ~chosen, np.asarray(cold_retrieval(req), np.float64), -np.inf)
            top = np.argsort(-c, axis=1, kind="stable")[:, :k_cold]
            ok = np.isfinite(np.take_along_axis(c, top, axis=1))
            r_ok = np.broadcast_to(rows, top.shape)[ok]
            chosen[r_ok, top[ok]] = True
            server[r_ok, top[ok]] = (k - k_cold + np.broadcast_to(np.arange(k_cold), top.shape))[ok]
        rr = -server if reranker is None else np.asarray(reranker(req), np.float64)
        # the reranked set first: its scores shifted above every negative rank
        lo = np.where(chosen, rr, np.inf).min(axis=1, keepdims=True)
        out = np.where(chosen, rr - lo + 1.0, out)
        return out

    return scores
