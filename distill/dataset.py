"""The dataset contract: what every loader produces and every model reads.

On disk a dataset is a folder::

    meta.json                 name, source, modalities {name: dim}, counts, planted truth (synthetic)
    users.safetensors         user_id [U] (original ids; row u is user index u)
    items.safetensors         item_id, creator_id [I] int64; duration_s, upload_ts [I] float64; cold [I] uint8
    embeddings.safetensors    <modality> [I, d] float16 (row i = item i); <modality>.present [I] uint8
    interactions.safetensors  one row per impression, sorted by (user, ts):
                              user, item, req [M] int64; ts, watch_ms, duration_ms [M] float64;
                              click, finish, like, share, skip, comment [M] int8 (comment: -1/0/+1)
    requests.safetensors      one row per reranking request:
                              user [R] int64, ts [R] float64, split [R] int8 (0 train, 1 val, 2 test),
                              hist_end [R] int64 (history = the user's interactions before this index),
                              cand [R, N] int64 (-1 = padding), click/finish/like [R, N] int8,
                              logged [R, N] uint8 (1 = impression in the log, 0 = sampled negative)
    captions.json             optional: one caption string per item
    planted.safetensors       optional, synthetic worlds only: the planted truth (for tests/reports)

Times are seconds (float64) on the dataset's own clock; ``meta["train_end"]`` separates the training
period from the evaluation period. Only JSON and safetensors are used: no pickle anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_rec._requires import requires
from edge_rec.errors import DataError

SCHEMA = "edge-rec-dataset/1"
SPLITS = {"train": 0, "val": 1, "test": 2}
LABELS = ("click", "finish", "like")

# column -> allowed numpy kinds ("i" int, "u" unsigned, "f" float)
_ITEM_COLS = {"item_id": "iu", "creator_id": "iu", "duration_s": "f", "upload_ts": "f", "cold": "iu"}
_USER_COLS = {"user_id": "iu"}
_INTER_COLS = {
    "user": "iu", "item": "iu", "req": "iu", "ts": "f", "watch_ms": "f", "duration_ms": "f",
    "click": "iu", "finish": "iu", "like": "iu", "share": "iu", "skip": "iu", "comment": "iu",
}
_REQ_COLS = {
    "user": "iu", "ts": "f", "split": "iu", "hist_end": "iu", "cand": "iu",
    "click": "iu", "finish": "iu", "like": "iu", "logged": "iu",
}


@dataclass
class Dataset:
    """An in-memory dataset that obeys the contract above. Build with a loader, then ``save``."""

    meta: dict[str, Any]
    users: dict[str, np.ndarray]
    items: dict[str, np.ndarray]
    interactions: dict[str, np.ndarray]
    requests: dict[str, np.ndarray]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)
    captions: list[str] | None = None
    # planted truth of a synthetic world (never read by models; for tests and reports)
    planted: dict[str, np.ndarray] | None = None

    # ---- sizes and views -------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.users["user_id"])

    @property
    def n_items(self) -> int:
        return len(self.items["item_id"])

    @property
    def modalities(self) -> dict[str, int]:
        """{modality name: embedding dim}, in a stable order."""
        return {m: int(e.shape[1]) for m, e in self.embeddings.items()}

    def split_index(self, split: str) -> np.ndarray:
        """Indices of the requests in ``split`` ('train', 'val' or 'test')."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}.")
        return np.flatnonzero(self.requests["split"] == SPLITS[split])

    def train_interaction_mask(self) -> np.ndarray:
        """[M] bool: interactions that belong to training requests."""
        return self.requests["split"][self.interactions["req"]] == SPLITS["train"]

    def user_offsets(self) -> np.ndarray:
        """[U + 1] start offsets of each user's rows in the (user, ts)-sorted interactions."""
        return np.searchsorted(self.interactions["user"], np.arange(self.n_users + 1))

    # ---- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the whole contract; raise one :class:`DataError` listing every problem found."""
        problems: list[str] = []
        tables = {
            "users": (self.users, _USER_COLS),
            "items": (self.items, _ITEM_COLS),
            "interactions": (self.interactions, _INTER_COLS),
            "requests": (self.requests, _REQ_COLS),
        }
        for tname, (table, cols) in tables.items():
            for col, kinds in cols.items():
                if col not in table:
                    problems.append(f"{tname}: missing column '{col}'")
                    continue
                arr = np.asarray(table[col])
                if arr.dtype.kind not in kinds:
                    problems.append(
                        f"{tname}.{col}: dtype {arr.dtype} not allowed (expected "
                        f"{'integer' if 'i' in kinds else 'float'})"
                    )
                elif arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    problems.append(f"{tname}.{col}: {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")
        if problems:
            raise DataError("dataset breaks the contract:\n  - " + "\n  - ".join(problems))

        n_u, n_i = self.n_users, self.n_items
        for tname, key in (("users", "user_id"), ("items", "item_id")):
            ids = np.asarray(getattr(self, tname)[key])
            uniq, counts = np.unique(ids, return_counts=True)
            if (counts > 1).any():
                dup = uniq[counts > 1][:5].tolist()
                problems.append(f"{tname}.{key}: duplicate ids {dup} (ids must be unique)")
        for col in ("creator_id", "duration_s", "upload_ts", "cold"):
            if len(self.items[col]) != n_i:
                problems.append(f"items.{col}: length {len(self.items[col])} != {n_i} items")
        if (np.asarray(self.items["duration_s"]) < 0).any():
            problems.append("items.duration_s: negative durations")

        it = self.interactions
        m = len(it["user"])
        for col in _INTER_COLS:
            if len(it[col]) != m:
                problems.append(f"interactions.{col}: length {len(it[col])} != {m}")
        if m and problems == []:
            if it["user"].min() < 0 or it["user"].max() >= n_u:
                problems.append("interactions.user: index outside [0, n_users)")
            if it["item"].min() < 0 or it["item"].max() >= n_i:
                problems.append("interactions.item: index outside [0, n_items)")
            du = np.diff(it["user"].astype(np.int64))
            order_ok = np.all((du > 0) | ((du == 0) & (np.diff(it["ts"]) >= 0)))
            if not order_ok:
                problems.append("interactions: rows must be sorted by (user, ts)")

        rq = self.requests
        r = len(rq["user"])
        if rq["cand"].ndim != 2 or rq["cand"].shape[0] != r:
            problems.append(f"requests.cand: expected [R={r}, N], got {rq['cand'].shape}")
        else:
            for col in ("click", "finish", "like", "logged"):
                if rq[col].shape != rq["cand"].shape:
                    problems.append(f"requests.{col}: shape {rq[col].shape} != cand {rq['cand'].shape}")
            c = rq["cand"]
            if ((c < -1) | (c >= n_i)).any():
                problems.append("requests.cand: item index outside [-1, n_items)")
        if m and r and problems == [] and (it["req"].min() < 0 or it["req"].max() >= r):
            problems.append("interactions.req: request index outside [0, n_requests)")
        if not set(np.unique(rq["split"]).tolist()) <= {0, 1, 2}:
            problems.append("requests.split: values must be 0 (train), 1 (val) or 2 (test)")
        if r and not (rq["split"] == SPLITS["test"]).any():
            problems.append(
                "requests: the split has no test requests (no user has two or more requests); "
                "provide more interactions per user or lower impressions_per_request"
            )
        if r and not (rq["split"] == SPLITS["train"]).any():
            problems.append("requests: the split has no training requests")

        for mod, emb in self.embeddings.items():
            if emb.ndim != 2 or emb.shape[0] != n_i:
                problems.append(f"embeddings.{mod}: expected [{n_i}, d], got {emb.shape}")
            elif not np.isfinite(emb).all():
                bad = int((~np.isfinite(emb)).any(axis=1).sum())
                problems.append(
                    f"embeddings.{mod}: {bad} item row(s) hold NaN/inf; mark missing items in the "
                    f"present-mask and zero their rows instead"
                )
            if mod not in self.present or len(self.present[mod]) != n_i:
                problems.append(f"embeddings.{mod}: present-mask missing or not of length {n_i}")
        if self.captions is not None and len(self.captions) != n_i:
            problems.append(f"captions: {len(self.captions)} captions for {n_i} items")
        if problems:
            raise DataError("dataset breaks the contract:\n  - " + "\n  - ".join(problems))

    # ---- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Validate, then write to a temporary folder beside ``path`` and rename it into place.

        A failure at any point leaves no half-written dataset: either the old folder (if any) or
        the complete new one exists afterwards.
        """
        st = requires("safetensors.numpy")
        self.validate()
        out = Path(path)
        if out.exists() and not overwrite:
            raise DataError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it.")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            meta = dict(self.meta)
            meta.update(schema=SCHEMA, **summary_counts(self))
            _write_json(tmp / "meta.json", meta)
            st.save_file(_contig(self.users), str(tmp / "users.safetensors"))
            st.save_file(_contig(self.items), str(tmp / "items.safetensors"))
            st.save_file(_contig(self.interactions), str(tmp / "interactions.safetensors"))
            st.save_file(_contig(self.requests), str(tmp / "requests.safetensors"))
            emb = {m: e.astype(np.float16) for m, e in self.embeddings.items()}
            emb.update({f"{m}.present": p.astype(np.uint8) for m, p in self.present.items()})
            st.save_file(_contig(emb), str(tmp / "embeddings.safetensors"))
            if self.captions is not None:
                _write_json(tmp / "captions.json", self.captions)
            if self.planted is not None:
                st.save_file(_contig(self.planted), str(tmp / "planted.safetensors"))
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Dataset":
        """Read and validate a dataset folder."""
        st = requires("safetensors.numpy")
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"dataset folder {root} does not exist; create one with `edge-rec world` or `edge-rec data convert`.")
        need = ["meta.json", "users.safetensors", "items.safetensors", "interactions.safetensors",
                "requests.safetensors", "embeddings.safetensors"]
        missing = [n for n in need if not (root / n).is_file()]
        if missing:
            raise DataError(f"dataset {root} is missing {missing}; it was not written by edge-rec or is incomplete. Regenerate it.")
        meta = json.loads((root / "meta.json").read_text())
        if meta.get("schema") != SCHEMA:
            raise DataError(f"{root}/meta.json has schema {meta.get('schema')!r}; this edge-rec reads {SCHEMA!r}.")
        try:
            tables = {n: st.load_file(str(root / f"{n}.safetensors")) for n in
                      ("users", "items", "interactions", "requests", "embeddings")}
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise DataError(f"dataset {root}: a safetensors file could not be read ({exc}); regenerate it.") from exc
        emb_all = tables["embeddings"]
        embeddings = {k: v for k, v in emb_all.items() if not k.endswith(".present")}
        order = [m for m in meta.get("modalities", {}) if m in embeddings]
        embeddings = {m: embeddings[m] for m in order + sorted(set(embeddings) - set(order))}
        present = {m: emb_all.get(f"{m}.present", np.zeros(0, np.uint8)).astype(bool) for m in embeddings}
        captions = None
        if (root / "captions.json").is_file():
            captions = json.loads((root / "captions.json").read_text())
        planted = None
        if (root / "planted.safetensors").is_file():
            planted = st.load_file(str(root / "planted.safetensors"))
        ds = cls(meta=meta, users=tables["users"], items=tables["items"],
                 interactions=tables["interactions"], requests=tables["requests"],
                 embeddings=embeddings, present=present, captions=captions, planted=planted)
        ds.validate()
        return ds


def summary_counts(ds: Dataset) -> dict[str, Any]:
    """The dataset summary used by ``meta.json``, ``data inspect`` and ``report.json``."""
    n_inter = int(len(ds.interactions["user"]))
    split_counts = {s: int((ds.requests["split"] == v).sum()) for s, v in SPLITS.items()}
    users_with_test = int(len(np.unique(ds.requests["user"][ds.requests["split"] == SPLITS["test"]])))
    return {
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": n_inter,
        "modalities": ds.modalities,
        "cold_items": int(np.asarray(ds.items["cold"]).astype(bool).sum()),
        "requests": split_counts,
        "test_users": users_with_test,
        "candidates_per_request": int(ds.requests["cand"].shape[1]),
        "sparsity": float(1.0 - n_inter / max(1, ds.n_users * ds.n_items)),
    }


def inspect(ds: Dataset) -> dict[str, Any]:
    """A fuller summary than :func:`summary_counts`: label rates, missing modalities, time span."""
    it = ds.interactions
    info = summary_counts(ds)
    info["name"] = ds.meta.get("name")
    info["source"] = ds.meta.get("source")
    info["label_rates"] = {k: float(np.mean(it[k])) if len(it[k]) else 0.0
                           for k in ("click", "finish", "like", "share", "skip")}
    info["negative_comment_rate"] = float(np.mean(it["comment"] < 0)) if len(it["comment"]) else 0.0
    info["modality_present"] = {m: float(p.mean()) for m, p in ds.present.items()}
    info["time_span_s"] = [float(it["ts"].min()), float(it["ts"].max())] if len(it["ts"]) else [0.0, 0.0]
    info["train_end"] = ds.meta.get("train_end")
    per_user = np.bincount(it["user"], minlength=ds.n_users)
    info["interactions_per_user"] = {"min": int(per_user.min()), "median": float(np.median(per_user)),
                                     "max": int(per_user.max())}
    per_item = np.bincount(it["item"], minlength=ds.n_items)
    top = np.sort(per_item)[::-1]
    info["top1pct_item_share"] = float(top[: max(1, ds.n_items // 100)].sum() / max(1, per_item.sum()))
    return info


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place (with normal permissions: it was staged owner-only); an
    existing ``dst`` is swapped out, then removed."""
    from edge_rec.bundle import normal_permissions

    normal_permissions(src)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _contig(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v) for k, v in d.items()}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default,
                               allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    """NaN / inf become null: reports are strict JSON that any CI tool can parse."""
    if isinstance(obj, float) or isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temp file + rename); numpy scalars allowed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    _write_json(tmp, obj)
    os.replace(tmp, p)
