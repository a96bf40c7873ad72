"""Real-data loaders into the dataset contract.

* :func:`load_kuairand` — KuaiRand-style impression logs (CSV): ``user_id, video_id, is_click,
  play_time_ms, duration_ms`` required; ``time_ms``, ``author_id``, ``is_like``, ``is_forward``,
  ``is_comment``, ``is_hate`` used when present. Watch ratio = play / duration and long view as
  KuaiRand defines it (play >= duration if duration <= 18 s, else play >= 18 s); rows whose
  duration is 0 get watch ratio 0 and no long view (the length is unknown) and are counted.
* :func:`load_mmssl` — the MMGCN / MMSSL layout: ``train.json``, ``val.json``, ``test.json``
  (``{user: [item, ...]}``) and any subset of ``<modality>_feat.npy`` matrices (row i = item i).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_rec.errors import DataError
from edge_rec.distill.dataset import SPLITS, Dataset
from edge_rec.distill.splits import finalize

KUAIRAND_REQUIRED = ("user_id", "video_id", "is_click", "play_time_ms", "duration_ms")
LONG_VIEW_MS = 18_000.0
SKIP_MS = 3_000.0
MODALITY_ALIASES = {"image": "visual", "v": "visual", "video": "visual", "a": "audio",
                    "acoustic": "audio", "t": "text"}


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if header is None:
        raise DataError(f"{path} is empty; expected a CSV with a header row.")
    return [h.strip() for h in header], rows


def _column(name: str, header: list[str], rows: list[list[str]], path: Path, kind: type) -> np.ndarray:
    j = header.index(name)
    out = np.empty(len(rows), dtype=np.float64 if kind is float else np.int64)
    for i, row in enumerate(rows):
        try:
            v = float(row[j])
        except (ValueError, IndexError) as exc:
            raise DataError(
                f"{path}: row {i + 2}, column '{name}': {row[j] if j < len(row) else '<missing>'!r} "
                f"is not a number. Fix or drop that row."
            ) from exc
        if not np.isfinite(v):
            raise DataError(f"{path}: row {i + 2}, column '{name}' is {v}; values must be finite.")
        if kind is int and v != int(v):
            raise DataError(f"{path}: row {i + 2}, column '{name}' = {v} must be an integer id/flag.")
        out[i] = v
    return out


def load_kuairand(
    src: str | Path, *, n_candidates: int = 32, impressions_per_request: int = 1,
    session_gap_s: float = 1800.0, seed: int = 0,
) -> Dataset:
    """Load a KuaiRand-style CSV (or a folder holding exactly one) into a :class:`Dataset`.

    Requests: with a ``time_ms`` column, a user's impressions split into sessions at gaps longer
    than ``session_gap_s``; without one, row order is time and every ``impressions_per_request``
    consecutive impressions of a user form a request.
    """
    path = Path(src)
    if path.is_dir():
        csvs = sorted(path.glob("*.csv"))
        if len(csvs) != 1:
            raise DataError(f"{path} holds {len(csvs)} CSV files; pass the log file itself.")
        path = csvs[0]
    if not path.is_file():
        raise DataError(f"KuaiRand log {path} does not exist.")
    header, rows = _read_csv(path)
    missing = [c for c in KUAIRAND_REQUIRED if c not in header]
    if missing:
        raise DataError(f"{path} lacks required column(s) {missing}; a KuaiRand log needs {list(KUAIRAND_REQUIRED)}.")
    if not rows:
        raise DataError(f"{path} has a header but no rows.")
    user_raw = _column("user_id", header, rows, path, int)
    video_raw = _column("video_id", header, rows, path, int)
    click = _column("is_click", header, rows, path, int)
    play = _column("play_time_ms", header, rows, path, float)
    dur = _column("duration_ms", header, rows, path, float)
    if (play < 0).any() or (dur < 0).any():
        raise DataError(f"{path}: play_time_ms and duration_ms must be >= 0.")
    opt = {c: _column(c, header, rows, path, int) for c in
           ("is_like", "is_forward", "is_comment", "is_hate", "author_id") if c in header}
    has_time = "time_ms" in header
    ts = _column("time_ms", header, rows, path, float) / 1000.0 if has_time else np.arange(len(rows), dtype=np.float64)

    users, u = np.unique(user_raw, return_inverse=True)
    videos, v = np.unique(video_raw, return_inverse=True)
    zero = dur <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(zero, 0.0, play / np.where(zero, 1.0, dur))
    long_view = np.where(zero, False, np.where(dur <= LONG_VIEW_MS, play >= dur, play >= LONG_VIEW_MS))
    finish = (~zero) & (play >= dur)

    # requests: sessions by time gap, or fixed chunks of a user's rows in file order
    order = np.lexsort((np.arange(len(rows)), ts, u))
    req = np.empty(len(rows), dtype=np.int64)
    uo, to = u[order], ts[order]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = uo[1:] != uo[:-1]
    if has_time:
        new[1:] |= (to[1:] - to[:-1]) > session_gap_s
    else:
        pos = np.arange(len(rows)) - np.maximum.accumulate(np.where(new, np.arange(len(rows)), 0))
        new |= (pos % max(1, impressions_per_request)) == 0
    req[order] = np.cumsum(new) - 1

    n_items = len(videos)
    first_seen = np.full(n_items, np.inf)
    np.minimum.at(first_seen, v, ts)
    item_dur = np.zeros(n_items)
    np.maximum.at(item_dur, v, dur / 1000.0)
    creator = np.full(n_items, -1, dtype=np.int64)
    if "author_id" in opt:
        creator[v] = opt["author_id"]
    comment = np.where(opt.get("is_hate", np.zeros(len(rows))) > 0, -1,
                       np.where(opt.get("is_comment", np.zeros(len(rows))) > 0, 1, 0))
    inter = {
        "user": u.astype(np.int64), "item": v.astype(np.int64), "req": req, "ts": ts,
        "watch_ms": play, "duration_ms": dur, "click": click.astype(np.int8),
        "finish": finish.astype(np.int8), "like": opt.get("is_like", np.zeros(len(rows))).astype(np.int8),
        "share": opt.get("is_forward", np.zeros(len(rows))).astype(np.int8),
        "skip": (play < SKIP_MS).astype(np.int8), "comment": comment.astype(np.int8),
        "watch_ratio": ratio, "long_view": long_view.astype(np.int8),
    }
    meta: dict[str, Any] = {
        "name": path.stem, "source": "kuairand", "source_path": str(path),
        "timestamps": "time_ms" if has_time else "row order (the log has no time column)",
        "signals": ["click", "finish", "skip"] + [c for c in ("like", "share", "comment") if
                                                 {"like": "is_like", "share": "is_forward", "comment": "is_comment"}[c] in opt],
        "zero_duration_rows": int(zero.sum()),
        "derived": {"watch_ratio": "play_time_ms / duration_ms (0 where duration is 0)",
                    "long_view": "play >= duration if duration <= 18 s else play >= 18 s (0 where duration is 0)",
                    "skip": f"play_time_ms < {SKIP_MS:.0f}"},
        "train_end": None,
    }
    ds = finalize(
        meta=meta, users={"user_id": users.astype(np.int64)},
        items={"item_id": videos.astype(np.int64), "creator_id": creator,
               "duration_s": item_dur, "upload_ts": first_seen},
        interactions=inter, embeddings={}, present={},
        n_candidates=min(n_candidates, n_items), seed=seed,
    )
    return ds


def load_mmssl(src: str | Path, *, n_candidates: int = 32, positives_per_request: int = 4, seed: int = 0,
               negatives: str = "uniform") -> Dataset:
    """Load an MMGCN / MMSSL-layout folder into a :class:`Dataset`.

    The given split is kept: every user's training items (in file order) become requests of up to
    ``positives_per_request`` positives each, then one val request and one test request. The
    layout has no timestamps (``meta["has_timestamps"]`` is false): the position in that sequence
    orders a user's history and nothing else; every time-based feature is constant and popularity is
    the training split's. No negative feedback is logged, so candidates are the positives plus
    sampled negatives: ``negatives="uniform"`` (default) draws them uniformly from the catalogue, as
    the full catalogue will be ranked (popularity-weighted negatives taught models that popular means
    negative); ``"popularity"`` weights them by training clicks. No training request depends on the
    validation or test rows.
    """
    if negatives not in ("uniform", "popularity"):
        raise DataError(f"negatives={negatives!r}: choose 'uniform' or 'popularity'.")
    root = Path(src)
    if not root.is_dir():
        raise DataError(f"MMSSL folder {root} does not exist.")
    parts: dict[str, dict[str, list[int]]] = {}
    for split in ("train", "val", "test"):
        p = root / f"{split}.json"
        if not p.is_file():
            raise DataError(f"{root} lacks {split}.json; the MMSSL layout needs train.json, val.json and test.json "
                            f"({{user: [item, ...]}}) plus <modality>_feat.npy files.")
        try:
            raw = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{p} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise DataError(f"{p} must hold an object {{user: [item, ...]}}, got {type(raw).__name__}.")
        clean: dict[str, list[int]] = {}
        for user, its in raw.items():
            if not isinstance(its, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in its):
                raise DataError(f"{p}: user {user!r} must map to a list of non-negative integer item ids.")
            clean[str(user)] = its
        parts[split] = clean

    feats: dict[str, np.ndarray] = {}
    files: dict[str, str] = {}
    for f in sorted(root.glob("*_feat.npy")):
        name = f.name[: -len("_feat.npy")]
        name = MODALITY_ALIASES.get(name, name)
        if name in feats:
            raise DataError(f"{root}: two feature files map to modality {name!r}; keep one.")
        try:
            arr = np.load(f, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{f} could not be read as a numeric .npy matrix ({exc}); re-save it with numpy.save.") from exc
        if arr.ndim != 2 or arr.dtype.kind not in "fiu":
            raise DataError(f"{f}: expected a numeric [n_items, d] matrix, got dtype {arr.dtype} shape {arr.shape}.")
        feats[name] = arr.astype(np.float64)
        files[name] = f.name

    all_items = [i for s in parts.values() for its in s.values() for i in its]
    if not all_items:
        raise DataError(f"{root}: train/val/test hold no interactions.")
    n_items = max(all_items) + 1
    for name, arr in feats.items():
        if arr.shape[0] < n_items:
            raise DataError(f"{files[name]} has {arr.shape[0]} rows but item ids go up to {n_items - 1}; "
                            f"row i must be item i.")
        n_items = max(n_items, arr.shape[0])
    for name, arr in feats.items():
        if arr.shape[0] != n_items:
            raise DataError(f"feature files disagree on the item count ({name}: {arr.shape[0]} rows vs {n_items}).")
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise DataError(f"{files[name]}: {int(bad.sum())} row(s) hold NaN/inf (first: item {int(np.flatnonzero(bad)[0])}). "
                            f"Replace them with zeros if the modality is missing for those items.")

    user_ids = sorted(set().union(*[set(s) for s in parts.values()]), key=lambda x: (len(x), x))
    uidx = {uid: k for k, uid in enumerate(user_ids)}
    cols: dict[str, list[Any]] = {c: [] for c in ("user", "item", "req", "ts", "split")}
    req = 0
    for uid in user_ids:
        t = 0.0
        seq = [("train", parts["train"].get(uid, []))] + [(s, parts[s].get(uid, [])) for s in ("val", "test")]
        for split, its in seq:
            size = positives_per_request if split == "train" else max(1, len(its))
            for c0 in range(0, len(its), size):
                for i in its[c0:c0 + size]:
                    cols["user"].append(uidx[uid]); cols["item"].append(i); cols["req"].append(req)
                    cols["ts"].append(t); cols["split"].append(SPLITS[split])
                    t += 1.0
                req += 1
    m = len(cols["user"])
    inter = {
        "user": np.array(cols["user"], np.int64), "item": np.array(cols["item"], np.int64),
        "req": np.array(cols["req"], np.int64), "ts": np.array(cols["ts"], np.float64),
        "watch_ms": np.zeros(m), "duration_ms": np.zeros(m), "click": np.ones(m, np.int8),
        "finish": np.zeros(m, np.int8), "like": np.zeros(m, np.int8), "share": np.zeros(m, np.int8),
        "skip": np.zeros(m, np.int8), "comment": np.zeros(m, np.int8),
    }
    split_of_row = np.array(cols["split"], np.int8)
    # no timestamps: every item exists from the start (an upload time read off held-out rows would
    # leak them into training features and filters), and freshness is constant
    embeddings, present = {}, {}
    for name, arr in feats.items():
        p = np.abs(arr).sum(axis=1) > 0           # an all-zero row marks a missing modality
        embeddings[name] = arr.astype(np.float16)
        present[name] = p
    meta = {
        "name": root.name, "source": "mmssl", "source_path": str(root),
        "timestamps": "none: the layout has none; 'ts' is each user's position in their own train -> val -> test "
                      "sequence (it orders a user's history and nothing else)",
        "has_timestamps": False,
        "signals": ["click"], "train_end": None,
    }
    return finalize(
        meta=meta, users={"user_id": _user_ids(user_ids)},
        items={"item_id": np.arange(n_items, dtype=np.int64), "creator_id": np.full(n_items, -1, np.int64),
               "duration_s": np.zeros(n_items), "upload_ts": np.zeros(n_items)},
        interactions=inter, embeddings=embeddings, present=present,
        n_candidates=min(n_candidates, n_items), seed=seed, split=split_of_row, heldout_safe=True,
        neg_alpha=0.0 if negatives == "uniform" else 1.0,
    )


def _user_ids(user_ids: list[str]) -> np.ndarray:
    """The layout's user ids as integers when they all are; their index otherwise."""
    try:
        return np.array([int(x) for x in user_ids], np.int64)
    except ValueError:
        return np.arange(len(user_ids), dtype=np.int64)


LOADERS = {"kuairand": load_kuairand, "mmssl": load_mmssl}


def convert(fmt: str, src: str | Path, **kwargs: Any) -> Dataset:
    """Load ``src`` with the loader named ``fmt`` (one of :data:`LOADERS`)."""
    if fmt not in LOADERS:
        raise DataError(f"unknown format {fmt!r}; known formats: {sorted(LOADERS)}.")
    return LOADERS[fmt](src, **kwargs)
