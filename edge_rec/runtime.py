"""The phone-side reranker: a verified bundle + one engine + the local behaviour store.

    rr = Reranker.open("bundle/", backend="auto", threads=1)
    ranked = rr.rerank(candidates, context={"now": ts, "history": events}, k=10, explain=True)

Features are built here from raw feed fields exactly as training built them (the manifest's
``features`` section carries every constant), so a request scored on the phone gets the score the
exported model gave in the parity checks. numpy + one engine; never imports torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edge_rec.bundle import MANIFEST, sha256_file, verify_bundle
from edge_rec.engines import open_manifest_group
from edge_rec.errors import BundleError, ConfigError, DataError, InternalError, MissingDependencyError
from edge_rec.policy import PostRankPolicy, apply_policy, creator_codes
from edge_rec.state import Event, UserState, _check_event, sum_signals
from edge_rec.validate import EMBEDDING_LIMIT_FACTOR, FP16_MAX, checked_id, show, to_flag, to_id, to_number, to_vector

# engine preference for backend="auto": the lightest runtime that needs no torch comes first
AUTO_ORDER = ("ort", "onnx", "tflite", "coreml", "executorch")
MAX_THREADS = 256        # beyond any phone or server CPU; an engine given more fails in its own way


@dataclass
class Candidate:
    """One feed item as the server sends it. ``embeddings``: modality -> float vector (fp16 / fp32), or
    ``{"int8": [...], "scale": s}``, or ``{"fp16_b64": "..."}``; a missing modality is allowed."""

    item_id: int
    creator_id: int | None = None
    duration_s: float = 0.0
    upload_ts: float = 0.0
    clicks: float = 0.0                  # clicks on the item before now (what the server knows)
    embeddings: dict[str, Any] = field(default_factory=dict)
    _decoded: dict[str, np.ndarray | None] | None = field(default=None, repr=False, compare=False)

    def _check_mapping(self) -> None:
        if not isinstance(self.embeddings, Mapping):
            raise DataError(f"candidate {self.item_id}: embeddings must be a mapping {{modality: vector}}, "
                            f"got {show(self.embeddings)}.")

    def array(self, m: str) -> np.ndarray | None:
        """Modality ``m``'s embedding decoded to float32 and checked (None when the candidate lacks it),
        once: a feed is fetched once and reranked at every swipe, so decoding must not be paid again."""
        self._check_mapping()
        if self._decoded is None:
            self._decoded = {}
        if m not in self._decoded:
            v = self.embeddings.get(m)
            self._decoded[m] = None if v is None else decode_embedding(v, f"candidate {self.item_id} modality {m!r}")
        return self._decoded[m]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every embedding the candidate carries, decoded (see :meth:`array`)."""
        self._check_mapping()
        return {m: a for m in self.embeddings if (a := self.array(m)) is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Candidate":
        """A candidate from its JSON object; a field of the wrong type is a :class:`DataError` naming it
        (``null`` stands for a missing optional field)."""
        if not isinstance(d, Mapping):
            raise DataError(f"a candidate must be a JSON object with item_id, creator_id, duration_s, upload_ts, "
                            f"clicks and embeddings; got {show(d)}.")
        if d.get("item_id") is None:
            raise DataError(f"a candidate has no item_id (missing or null; keys: {sorted(d)}).")
        item = to_id(d["item_id"], "a candidate's item_id")
        where = f"candidate {item}"
        embs = d.get("embeddings")
        if embs is not None and not isinstance(embs, Mapping):
            raise DataError(f"{where}: embeddings must be an object {{modality: vector}}, got {show(embs)}.")
        creator = d.get("creator_id")
        return cls(item_id=item, creator_id=None if creator is None else to_id(creator, f"{where}: creator_id"),
                   duration_s=to_number(d.get("duration_s"), f"{where}: duration_s", 0.0),
                   upload_ts=to_number(d.get("upload_ts"), f"{where}: upload_ts", 0.0),
                   clicks=to_number(d.get("clicks"), f"{where}: clicks", 0.0), embeddings=dict(embs or {}))


def decode_embedding(v: Any, where: str, limit: float = FP16_MAX) -> np.ndarray:
    """fp32/fp16 list, ``{"int8": [...], "scale": s}`` or ``{"fp16_b64": str}`` -> float32 vector,
    checked (see :func:`edge_rec.validate.to_vector`: numbers only, finite, within ``±limit``)."""
    return to_vector(v, where, limit)


@dataclass
class Feed:
    """A feed checked and turned into model inputs once (:meth:`Reranker.prepare`).

    A phone fetches a page of candidates and reranks what is left of it at every swipe; only the
    history and the clock change between swipes, so the candidate side is built once here.
    ``inputs``: ``cand_*`` arrays [N, ...] float32 (``cand_dense[:, 1]``, the freshness, is rewritten
    for ``now`` at each rerank); ``upload_ts`` [N] seconds; ``creators`` [N] object array of creator ids
    (int or None) and ``creator_codes`` [N] int64 the same for the policy (``policy.NO_CREATOR`` = None).
    """

    candidates: list[Candidate]
    item_ids: np.ndarray
    creators: np.ndarray
    upload_ts: np.ndarray
    inputs: dict[str, np.ndarray]
    creator_codes: np.ndarray

    def __len__(self) -> int:
        return len(self.candidates)

    def without(self, item_ids: Iterable[int]) -> "Feed":
        """This feed less the given items (the ones the viewer has seen), without rebuilding anything."""
        if isinstance(item_ids, (str, bytes, Mapping)) or not isinstance(item_ids, Iterable):
            raise DataError(f"Feed.without() takes a list of item ids, got {show(item_ids)}.")
        ids = [checked_id(i, "an item id given to Feed.without()") for i in item_ids]
        drop = np.isin(self.item_ids, np.array(ids, dtype=np.int64))
        keep = np.flatnonzero(~drop)
        return Feed([self.candidates[i] for i in keep], self.item_ids[keep], self.creators[keep],
                    self.upload_ts[keep], {k: v[keep] for k, v in self.inputs.items()}, self.creator_codes[keep])


class Ranking(Sequence[dict]):
    """The result of :meth:`Reranker.rerank`: a sequence of row dicts (``rank``, ``item_id``,
    ``creator_id``, ``score``, ``final_score``, ``p_click``, ``p_finish``, ``p_like`` and, when asked,
    ``explanation``), best first, made on access from numpy columns — an app reads the first few rows
    of a 200-item ranking, so the other dicts are never built. ``columns`` holds the arrays ([k] each;
    ``explanation`` {modality: [k]}); ``to_list()`` gives plain rows (JSON-ready)."""

    _KEYS = ("item_id", "creator_id", "score", "final_score", "p_click", "p_finish", "p_like")

    def __init__(self, columns: dict[str, Any]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["item_id"])

    def _row(self, i: int) -> dict[str, Any]:
        c = self.columns
        row: dict[str, Any] = {"rank": i + 1}
        for key in self._KEYS:
            v = c[key][i]
            row[key] = v if v is None or isinstance(v, int) else v.item()
        if "explanation" in c:
            row["explanation"] = {m: float(v[i]) for m, v in c["explanation"].items()}
        return row

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self._row(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"ranking index {i} out of range ({n} items)")
        return self._row(i % n)

    def to_list(self) -> list[dict[str, Any]]:
        return self[:]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ranking):
            other = other.to_list()
        return isinstance(other, list) and self.to_list() == other

    def __repr__(self) -> str:
        return f"Ranking({len(self)} items, top {[r['item_id'] for r in self[:5]]})"


class Reranker:
    """Score and rerank the candidates a phone holds with a verified edge bundle."""

    def __init__(self, root: Path, manifest: dict[str, Any], engine: Any, fmt: str, precision: str,
                 policy: PostRankPolicy | None) -> None:
        self.root, self.manifest, self.engine = root, manifest, engine
        self.format, self.precision = fmt, precision
        self.policy = policy or PostRankPolicy()
        sig = manifest["signature"]
        self.input_names = [t["name"] for t in sig["inputs"]]
        self.modalities: dict[str, int] = dict(manifest["modalities"]["dims"])
        self.pruned = set(manifest["modalities"]["pruned"])
        self.hist_len = int(manifest["model"]["hist_len"])
        f = manifest["features"]
        self._dur = (f["cand_dense"]["duration"]["mean"], f["cand_dense"]["duration"]["std"])
        self._fresh = (f["cand_dense"]["freshness"]["shift"], f["cand_dense"]["freshness"]["scale"])
        self._pop = (f["cand_dense"]["popularity"]["mean"], f["cand_dense"]["popularity"]["std"])
        # a model trained on a log without timestamps saw constant time features: give it the same
        self.time_features = bool(f.get("time_features", True))
        lim = f.get("cand_modality", {}).get("limit", {})
        # bundles written before the limit existed accept what float16 can hold (the store's format)
        self.embedding_limit = {m: float(lim.get(m, FP16_MAX)) for m in self.modalities}
        self.hist_dim = sum(self.modalities.values()) + 3
        self._hist = {"hist_emb": np.zeros((self.hist_len, self.hist_dim), np.float32),
                      "hist_weight": np.zeros(self.hist_len, np.float32),
                      "hist_age": np.zeros(self.hist_len, np.float32), "context": np.zeros(3, np.float32)}
        self._hist_key: list[tuple[Any, ...]] | None = None
        self._checked_events: dict[int, tuple[Event, tuple[Any, ...]]] = {}
        self._hist_ts = np.zeros(0, np.float64)
        outs = {t["name"]: t for t in sig["outputs"]}
        self.fused_dim = int(outs["fused"]["shape"][-1])
        # on-device learning (edge_rec.local): the bundle's global adapter, and the id a personal
        # adapter in a store must carry to be used with this bundle
        self.bundle_id = sha256_file(root / MANIFEST) if (root / MANIFEST).is_file() else ""
        from edge_rec.local import HeadWeights

        g = manifest.get("local_learning", {}).get("global_head")
        self.global_head = (HeadWeights.from_json(g, self.fused_dim, f"{root}/{MANIFEST} local_learning.global_head")
                            if g is not None else HeadWeights.zeros(self.fused_dim))

    # ---- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, bundle: str | Path, backend: str = "auto", threads: int = 1, precision: str | None = None,
             policy: PostRankPolicy | None = None, warmup: bool = True, public_key: Any = None) -> "Reranker":
        """Verify the bundle (schema version, checksums, file list) and open one engine on it.

        ``public_key`` (a PEM file path, PEM bytes or an Ed25519 key): also require the bundle's
        ``manifest.sig`` to verify with it; an unsigned or wrongly signed bundle is a :class:`BundleError`.

        ``backend``: ``auto`` (the first of ort, onnx, tflite, coreml, executorch whose engine is
        installed and whose export passed its gates), or a format name. ``precision``: default int8
        where it passed its gates, else fp32."""
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= MAX_THREADS:
            raise ConfigError(f"threads={threads!r} must be a whole number in [1, {MAX_THREADS}] (the engine's intra-op threads).")
        if precision is not None and precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"precision={precision!r} is not one of fp32, fp16, int8 (or None: int8 where it passed its gates).")
        if not isinstance(backend, str):
            raise ConfigError(f"backend={backend!r} must be 'auto' or a format name ({', '.join(AUTO_ORDER)}).")
        root = Path(bundle)
        manifest = verify_bundle(root)
        if public_key is not None:
            from edge_rec.signing import verify_signature

            verify_signature(root, public_key)
        arts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for a in manifest["artifacts"]:
            arts.setdefault((a["format"], a["precision"]), []).append(a)
        passed = {(f, p) for f, rows in manifest["parity"].items() for p, r in rows.items() if r.get("passed")}
        passed |= {("ort", p) for (f, p) in passed if f == "onnx"}
        order = AUTO_ORDER if backend == "auto" else (backend,)
        if backend != "auto" and not any(f == backend for f, _ in arts):
            have = sorted({f for f, _ in arts})
            raise BundleError(f"the bundle has no {backend!r} model; it has {', '.join(have)}.")
        precs = (precision,) if precision else ("int8", "fp32", "fp16")
        errors = []
        for fmt in order:
            for prec in precs:
                if (fmt, prec) not in arts or (backend == "auto" and (fmt, prec) not in passed):
                    continue
                try:
                    eng = open_manifest_group(root, manifest, arts[(fmt, prec)], threads=threads)
                    _check_engine_io(eng, manifest, f"{fmt}/{prec}")
                    rr = cls(root, manifest, eng, fmt, prec, policy)
                    if warmup:
                        rr._warmup()
                except MissingDependencyError as exc:
                    errors.append(f"{fmt}: {exc}")
                    break
                except Exception as exc:  # a model file its engine rejects: the next engine is tried
                    why = str(exc) if isinstance(exc, BundleError) else \
                        f"{fmt}/{prec}: its engine could not run the model file ({type(exc).__name__}: {str(exc)[:300]})"
                    if backend != "auto":
                        raise BundleError(why) from exc
                    errors.append(why)
                    continue
                return rr
        failed = sorted(f"{f}/{p}" for (f, p) in arts if (f, p) not in passed and (f, p)[0] in order)
        if backend == "auto" and failed:
            errors.append(f"not used by backend='auto' because they failed their export gates: {', '.join(failed)} "
                          "(see export_report.json; pass backend= and precision= to open one anyway)")
        raise BundleError("no engine could open this bundle"
                          + (f" at precision {precision}" if precision else "") + ":\n  " + "\n  ".join(errors or ["no matching model"]))

    def _warmup(self) -> None:
        """One call on 8 blank candidates, so the first real swipe does not pay the engine's set-up."""
        n = 8
        x: dict[str, np.ndarray] = {}
        for m, d in self.modalities.items():
            x[f"cand_{m}"], x[f"cand_mask_{m}"] = np.zeros((n, d), np.float32), np.zeros(n, np.float32)
        x["cand_dense"] = np.zeros((n, 3), np.float32)
        x.update(self._hist)
        self.engine.run({k: x[k] for k in self.input_names})

    # ---- features -------------------------------------------------------------------------------
    def prepare(self, candidates: Iterable[Candidate | Mapping[str, Any]]) -> Feed:
        """Check a feed and build its candidate inputs once (see :class:`Feed`): duplicate ids,
        unknown modalities, wrong dims, NaN/inf and bad numbers raise :class:`DataError` here."""
        if isinstance(candidates, (str, bytes, Mapping)) or not isinstance(candidates, Iterable):
            raise DataError(f"candidates must be a list of candidates (JSON objects or Candidate), got {show(candidates)}.")
        cands = [c if isinstance(c, Candidate) else Candidate.from_dict(c) for c in candidates]
        n = len(cands)
        # ids of Candidate objects built in code are checked here too (from_dict checked the JSON ones)
        ids = np.array([checked_id(c.item_id, "a candidate's item_id") for c in cands], dtype=np.int64)
        creators = np.empty(n, dtype=object)
        creators[:] = [None if c.creator_id is None else checked_id(c.creator_id, f"candidate {c.item_id}: creator_id")
                       for c in cands]
        codes = creator_codes(creators)
        if len(np.unique(ids)) != n:
            u, cnt = np.unique(ids, return_counts=True)
            raise DataError(f"duplicate item ids in the feed: {u[cnt > 1][:10].tolist()}; send each item once.")
        known = self.modalities.keys() | self.pruned
        for c in cands:
            c._check_mapping()
            if not c.embeddings.keys() <= known:
                unknown = [m for m in c.embeddings if m not in known]
                raise DataError(f"candidate {c.item_id}: unknown modality {unknown}; this bundle knows "
                                f"{sorted(self.modalities)} (and ignores pruned {sorted(self.pruned)}).")
        x: dict[str, np.ndarray] = {}
        for m, d in self.modalities.items():                # pruned modalities are never decoded
            emb, mask = np.zeros((n, d), np.float32), np.zeros(n, np.float32)
            for i, c in enumerate(cands):
                a = c.array(m)
                if a is None:
                    continue
                if a.shape[0] != d:
                    raise DataError(f"candidate {cands[i].item_id}: modality {m!r} has {a.shape[0]} dims; "
                                    f"the bundle expects {d}.")
                emb[i] = a
                mask[i] = 1.0
            self._check_range(emb, m, lambda i: f"candidate {cands[i].item_id}")
            x[f"cand_{m}"], x[f"cand_mask_{m}"] = emb, mask
        try:
            raw = np.array([(c.duration_s, c.upload_ts, c.clicks) for c in cands], dtype=np.float64).reshape(n, 3)
        except (TypeError, ValueError) as exc:
            raise DataError(f"candidate duration_s, upload_ts and clicks must be numbers ({exc}).") from exc
        bad = ~np.isfinite(raw).all(axis=1) | (raw[:, 0] < 0) | (raw[:, 2] < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"candidate {cands[i].item_id}: duration_s, upload_ts and clicks must be finite (and "
                            f"duration, clicks >= 0); got {tuple(raw[i])}.")
        dense = np.zeros((n, 3), np.float32)
        dense[:, 0] = (np.log1p(raw[:, 0]) - self._dur[0]) / self._dur[1]
        dense[:, 2] = (np.log1p(raw[:, 2]) - self._pop[0]) / self._pop[1]
        x["cand_dense"] = dense
        return Feed(cands, ids, creators, raw[:, 1].copy(), x, codes)

    def _check_range(self, emb: np.ndarray, m: str, who: Any) -> None:
        """Rows of ``emb`` [n, d_m] beyond the bundle's limit for modality ``m`` are a :class:`DataError`
        naming the first (``who(i)`` says who row i is)."""
        lim = self.embedding_limit[m]
        peak = np.abs(emb).max(axis=1) if emb.size else np.zeros(len(emb))
        if (peak > lim).any():
            i = int(np.flatnonzero(peak > lim)[0])
            raise DataError(f"{who(i)}: modality {m!r} has an element of magnitude {peak[i]:.6g}; this bundle accepts "
                            f"up to {lim:.6g} ({EMBEDDING_LIMIT_FACTOR} x the largest in its training catalogue). "
                            "The vector is broken or was not scaled as the training data were.")

    def _at(self, feed: Feed, now: float) -> dict[str, np.ndarray]:
        """The feed's candidate inputs with the freshness column for ``now`` (written in place)."""
        age_h = np.maximum(now - feed.upload_ts, 0.0) / 3600.0 if self.time_features else 0.0
        feed.inputs["cand_dense"][:, 1] = (np.log1p(age_h) - self._fresh[0]) / self._fresh[1]
        return feed.inputs

    def features(self, candidates: Sequence[Candidate] | Feed, now: float, history: Sequence[Event],
                 history_total: int | None = None) -> dict[str, np.ndarray]:
        """Model inputs for one request, built as training built them (shapes: see the manifest)."""
        feed = candidates if isinstance(candidates, Feed) else self.prepare(candidates)
        x = dict(self._at(feed, now))
        x.update(self.history_inputs(now, history, history_total))
        return {k: x[k] for k in self.input_names}

    def history_inputs(self, now: float, history: Sequence[Event], total: int | None = None) -> dict[str, np.ndarray]:
        """``hist_emb`` [L, d_h] (oldest first, most recent last, left-padded), ``hist_weight``,
        ``hist_age`` (log1p hours) and ``context`` from the events strictly before ``now``.

        The embedding rows are rebuilt only when the last L events change; when they moved on by a
        few events (a swipe adds one), the kept rows are shifted up and only the new ones written. The
        ages and the context follow the clock at every call."""
        past = [e for e in history if e.ts < now]
        total = len(past) if total is None else total
        last = past[-self.hist_len:]
        h = self._hist
        # identity of the rows: everything that feeds them: the event, its engagement (an app may update
        # a like in place) and the bytes of its embeddings (another store, an account switch or a
        # corrected vector gives other rows for the same item and time)
        key = [(e.item_id, e.ts, e.watch_ms, e.duration_ms, e.like, e.skip, _emb_key(e.embeddings, self.modalities))
               for e in last]
        if key != self._hist_key:
            old = self._hist_key or []
            L, n = self.hist_len, len(last)
            # rows are right-aligned (left-padded): if the first n - s new events are the last n - s
            # old ones, their rows move up by s and only the s newest are written
            s = next((s for s in range(1, min(4, n - 1) + 1)
                      if n - s <= len(old) and key[:n - s] == old[len(old) - (n - s):]), 0)
            if s:
                for k in ("hist_emb", "hist_weight"):
                    h[k][L - n:L - s] = h[k][L - n + s:]
                    h[k][:L - n] = 0
                new_rows = range(L - s, L)
            else:
                for k in ("hist_emb", "hist_weight"):
                    h[k][:] = 0
                new_rows = range(L - n, L)
            for j in new_rows:
                e = last[j - (L - n)]
                row = h["hist_emb"][j]
                row[:] = 0
                o = 0
                for m, d in self.modalities.items():
                    v = e.embeddings.get(m)
                    # another size (an older bundle's event) or beyond the limit (a stored vector this
                    # bundle would refuse in a request) is treated as missing
                    if v is not None and len(v) == d and float(np.abs(v).max(initial=0.0)) <= self.embedding_limit[m]:
                        row[o:o + d] = v
                    o += d
                row[o:o + 3] = (min(max(e.watch_ratio, 0.0), 1.5), float(e.like), float(e.skip))
                h["hist_weight"][j] = 1.0
            self._hist_ts = np.array([e.ts for e in last], np.float64)
            self._hist_key = key
        h["hist_age"][:] = 0
        if len(last) and self.time_features:
            h["hist_age"][self.hist_len - len(last):] = np.log1p(np.maximum(now - self._hist_ts, 0.0) / 3600.0)
        hour = (now % 86400.0) / 86400.0 * 2 * math.pi if self.time_features else 0.0
        h["context"][:] = (math.log1p(total), math.sin(hour), math.cos(hour))
        return h

    def parse_history(self, history: Iterable[Event | Mapping[str, Any]]) -> list[Event]:
        """Events from a request (objects as in ``sample_feed.json`` or :class:`Event`), checked the same
        way (types, ranges, finite embeddings within the bundle's limit). An event object's embeddings
        must be of a modality this bundle knows, at its size (a pruned one is ignored). An
        :class:`Event`'s embedding of another modality or size is treated as missing: the store's events
        may come from an older bundle."""
        if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Iterable):
            raise DataError(f"the history must be a list of events (oldest first), got {show(history)}.")
        out = []
        for h in history:
            lenient = isinstance(h, Event)
            if lenient:
                if self._event_seen(h):                  # checked before and unchanged since
                    out.append(h)
                    continue
                _check_event(h)
                e = h
            else:
                e = _event(h)
            where = f"history event for item {e.item_id}"
            for m, v in e.embeddings.items():
                if m in self.pruned or (lenient and len(v) != self.modalities.get(m, -1)):
                    continue
                if m not in self.modalities:
                    raise DataError(f"{where}: unknown modality {m!r}; this bundle knows "
                                    f"{sorted(self.modalities)} (and ignores pruned {sorted(self.pruned)}).")
                if len(v) != self.modalities[m]:
                    raise DataError(f"{where}: modality {m!r} has {len(v)} dims; the bundle expects {self.modalities[m]}.")
                self._check_range(np.asarray(v, np.float32)[None], m, lambda _: where)
            if lenient:
                self._event_passed(e)
            out.append(e)
        return out

    def _fingerprint(self, e: Event) -> tuple[Any, ...] | None:
        """What an :class:`Event`'s check depends on, cheap to compare: its fields and the identity of
        its embedding arrays. None when an array could change in place (writeable), so it is checked
        at every call."""
        embs = e.embeddings
        if type(embs) is not dict:
            return None
        vals = list(embs.values())
        for v in vals:
            if type(v) is not np.ndarray or v.flags.writeable:
                return None
        return (e.item_id, e.ts, e.watch_ms, e.duration_ms, e.finish, e.skip, e.like, e.share, e.creator_id,
                e.sentiment, tuple(embs), tuple(map(id, vals)))

    def _event_seen(self, e: Event) -> bool:
        hit = self._checked_events.get(id(e))
        return hit is not None and hit[0] is e and hit[1] == self._fingerprint(e)

    def _event_passed(self, e: Event) -> None:
        """Remember an Event that passed its checks (its arrays read-only: the store's, or decoded from
        JSON here), so a history handed in again at the next swipe is not checked again. Bounded."""
        fp = self._fingerprint(e)
        if fp is None:
            return
        if len(self._checked_events) >= 4 * max(self.hist_len, 256):
            self._checked_events.clear()
        self._checked_events[id(e)] = (e, fp)

    # ---- scoring --------------------------------------------------------------------------------
    def score(self, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The bare engine call on prepared inputs (what the benchmarks time against ``rerank``)."""
        return self.engine.run(x)

    def _check_outputs(self, out: Mapping[str, Any], feed: Feed, n: int, how: str) -> None:
        """Every output row of the first ``n`` candidates must be finite (``score``, the heads and the fused
        embedding the diversity step compares): a finite score beside a non-finite fused vector would
        let the policy pick items twice. A :class:`DataError` naming the candidates otherwise."""
        bad = np.zeros(n, bool)
        names = []
        for key, v in out.items():
            a = np.asarray(v)[:n]
            fin = np.isfinite(a) if a.ndim == 1 else np.isfinite(a.reshape(n, -1)).all(axis=1)
            if not fin.all():
                bad |= ~fin
                names.append(key)
        if bad.any():
            ids = feed.item_ids[np.flatnonzero(bad)][:10].tolist()
            raise DataError(f"the model produced non-finite {', '.join(names)}{how} for candidate(s) {ids}: their "
                            "inputs are outside what the model can score (check their embeddings and numbers).")

    def rerank(self, candidates: Feed | Iterable[Candidate | Mapping[str, Any]],
               context: Mapping[str, Any] | None = None, k: int | None = None, explain: bool = False,
               state: UserState | None = None) -> Ranking:
        """Rank ``candidates`` (a list, or a :class:`Feed` from :meth:`prepare` to skip rebuilding the
        candidate inputs at every swipe) for now. ``context``: ``now`` (s, default: the clock),
        ``history`` (:class:`Event` objects or their JSON objects, oldest first; see
        :meth:`parse_history`) unless ``state`` supplies them, ``history_total`` (the viewer's event
        count when ``history`` is cut short; optional). A malformed request is a :class:`DataError`
        naming the field. Returns the top ``k`` (default
        all) as a :class:`Ranking` of rows ``rank, item_id, creator_id, score, final_score, p_click,
        p_finish, p_like`` and, with ``explain``, ``explanation`` {modality: score lost when it is masked}."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0):
            raise ConfigError(f"k={k!r} must be a whole number >= 0 (how many ranked items to return), or None for all.")
        if context is not None and not isinstance(context, Mapping):
            raise DataError(f"context must be a mapping with 'now', 'history', 'history_total'; got {show(context)}.")
        if candidates is None:
            raise DataError("candidates is None; pass a list of candidates (an empty list gives an empty ranking).")
        feed = candidates if isinstance(candidates, Feed) else self.prepare(candidates)
        n = len(feed)
        if n == 0:
            return Ranking({key: [] for key in Ranking._KEYS})
        ctx = context or {}
        now = request_time(ctx.get("now"))
        if state is not None:
            history = state._events(self.hist_len, now)              # read-only here: no copies
            total = state.count()
        else:
            history = self.parse_history(ctx.get("history") or ())
            total = ctx.get("history_total")
            if total is not None:
                n_total = to_number(total, "context 'history_total' (the viewer's event count)")
                if not (math.isfinite(n_total) and n_total >= 0 and n_total.is_integer()):
                    raise DataError(f"context 'history_total' must be a whole number >= 0, got {total!r}.")
                total = int(n_total)
        x = self._at(feed, now)
        h = self.history_inputs(now, history, total)
        x = {key: (x[key] if key.startswith("cand_") else h[key]) for key in self.input_names}
        # the request is scored alone, exactly as with explain=False, so asking "why?" never moves a
        # score; the masked copies (one per modality) go in a second, batched call
        out = self.engine.run(x)
        self._check_outputs(out, feed, n, "")
        score = np.asarray(out["score"], np.float64)
        head = self._head(state)
        if head is not None:
            score = head.adjust(score, np.asarray(out["fused"])[:n])
        mods = list(self.modalities) if explain else []
        masked: dict[str, np.ndarray] = {}
        if mods:
            big = {}
            for key, v in x.items():
                if key.startswith("cand_"):
                    parts = []
                    for m in mods:
                        c = v.copy()
                        if key in (f"cand_{m}", f"cand_mask_{m}"):
                            c[:] = 0
                        parts.append(c)
                    big[key] = np.concatenate(parts, axis=0)
                else:
                    big[key] = v
            out_masked = self.engine.run(big)
            for j, m in enumerate(mods):
                part = {key: np.asarray(v)[j * n:(j + 1) * n] for key, v in out_masked.items()}
                self._check_outputs(part, feed, n, f" with {m!r} masked (explain)")
                masked[m] = np.asarray(part["score"], np.float64)
                if head is not None:
                    masked[m] = head.adjust(masked[m], np.asarray(part["fused"])[:n])
        signals = state.creator_signals(now) if state is not None else _creator_signals(history, now)
        ages_h = np.maximum(now - feed.upload_ts, 0.0) / 3600.0
        order, final = apply_policy(self.policy, score, out.get("fused"), feed.creator_codes, ages_h, signals, k)
        o = np.asarray(order, dtype=np.int64)
        want = n if k is None else min(int(k), n)
        if len(o) != want or (want and (o.min() < 0 or o.max() >= n or len(np.unique(o)) != want)):
            raise InternalError(f"the post-ranking policy returned {len(o)} positions for {want} wanted that are not "
                                "distinct candidates; refusing to return a ranking that repeats or drops items. "
                                "Please report this with the feed (PostRankPolicy(enabled=False) avoids it).")
        cols: dict[str, Any] = {"item_id": feed.item_ids[o], "creator_id": feed.creators[o],
                                "score": score[o], "final_score": np.asarray(final, np.float64)[o]}
        for key in ("p_click", "p_finish", "p_like"):
            cols[key] = out[key][o]
        if mods:
            cols["explanation"] = {m: score[o] - masked[m][o] for m in mods}
        return Ranking(cols)


    def _head(self, state: UserState | None) -> Any:
        """The output adapter to rank with (see :mod:`edge_rec.local`): the viewer's own from ``state``
        when one was trained for this bundle, else the bundle's global one; None when that is zero (the
        frozen ranking, with no extra arithmetic)."""
        if state is not None:
            from edge_rec.local import stored_head

            h = stored_head(self, state)
            if h is not None:
                return h
        return self.global_head if self.global_head.theta.any() else None


def _check_engine_io(engine: Any, manifest: Mapping[str, Any], tag: str) -> None:
    """The model file's own input and output names must be the manifest's signature: a file swapped for
    another model (its checksum rewritten) is refused here with a :class:`BundleError`, not a traceback
    from inside the engine at the first swipe."""
    want_in = {t["name"] for t in manifest["signature"]["inputs"]}
    want_out = {t["name"] for t in manifest["signature"]["outputs"]}
    got_in, got_out = set(getattr(engine, "input_names", want_in)), set(getattr(engine, "output_names", want_out))
    if got_in != want_in or not want_out <= got_out:
        raise BundleError(f"{tag}: the model file's inputs {sorted(got_in)} / outputs {sorted(got_out)} do not match the "
                          f"manifest's signature ({sorted(want_in)} / {sorted(want_out)}); the file was replaced or "
                          "the manifest edited. Re-export the bundle.")


def _emb_key(embs: Mapping[str, Any], modalities: Mapping[str, int]) -> tuple[bytes | None, ...]:
    """The bytes of an event's embeddings of the model's modalities (part of a history row's identity)."""
    out = []
    for m in modalities:
        v = embs.get(m)
        out.append(None if v is None else (v.tobytes() if isinstance(v, np.ndarray) else np.asarray(v, np.float32).tobytes()))
    return tuple(out)


def request_time(now: Any) -> float:
    """The request's clock in seconds (``None``: now); a non-number or a non-finite time is a :class:`DataError`."""
    t = time.time() if now is None else to_number(now, "context 'now' (seconds)")
    if not math.isfinite(t):
        raise DataError(f"context 'now' must be a finite time in seconds, got {t}.")
    return t


def _event(d: Mapping[str, Any]) -> Event:
    """A history event from its JSON object (see :class:`~edge_rec.state.Event`), checked as the store
    checks what it records: a missing or mistyped field, a negative or non-finite time is a :class:`DataError`."""
    if not isinstance(d, Mapping):
        raise DataError(f"a history event must be a JSON object with item_id and ts; got {show(d)}.")
    missing = [k for k in ("item_id", "ts") if d.get(k) is None]
    if missing:
        raise DataError(f"a history event lacks {', '.join(map(repr, missing))}; events need item_id and ts.")
    item = to_id(d["item_id"], "a history event's item_id")
    where = f"history event for item {item}"
    embs = d.get("embeddings")
    if embs is not None and not isinstance(embs, Mapping):
        raise DataError(f"{where}: embeddings must be an object {{modality: vector}}, got {show(embs)}.")
    creator, sentiment = d.get("creator_id"), d.get("sentiment")
    e = Event(item_id=item, ts=to_number(d["ts"], f"{where}: ts"),
              watch_ms=to_number(d.get("watch_ms"), f"{where}: watch_ms", 0.0),
              duration_ms=to_number(d.get("duration_ms"), f"{where}: duration_ms", 0.0),
              finish=to_flag(d.get("finish"), f"{where}: finish"), skip=to_flag(d.get("skip"), f"{where}: skip"),
              like=to_flag(d.get("like"), f"{where}: like"), share=to_flag(d.get("share"), f"{where}: share"),
              creator_id=None if creator is None else to_id(creator, f"{where}: creator_id"),
              sentiment=None if sentiment is None else to_number(sentiment, f"{where}: sentiment"),
              embeddings={m: _read_only(decode_embedding(v, f"{where}, modality {m!r}")) for m, v in (embs or {}).items()
                          if v is not None})
    _check_event(e)
    return e


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _creator_signals(history: Sequence[Event], now: float, window_s: float = 3600.0) -> dict[int, dict[str, float]]:
    """As :meth:`UserState.creator_signals`, from a request's history."""
    return sum_signals((e.creator_id, e.skip, e.sentiment) for e in history
                       if e.creator_id is not None and now - window_s <= e.ts <= now
                       and (e.skip or (e.sentiment is not None and e.sentiment < 0)))
