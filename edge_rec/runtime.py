"""The phone-side reranker: a verified bundle + one engine + the local behaviour store.

    rr = Reranker.open("bundle/", backend="auto", threads=1)
    ranked = rr.rerank(candidates, context={"now": ts, "history": events}, k=10, explain=True)

Features are built here from raw feed fields exactly as training built them (the manifest's
``features`` section carries every constant), so a request scored on the phone gets the score the
exported model gave in the parity checks. numpy + one engine; never imports torch.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edge_rec.bundle import verify_bundle
from edge_rec.engines import open_manifest_group
from edge_rec.errors import BundleError, ConfigError, DataError, MissingDependencyError
from edge_rec.policy import PostRankPolicy, apply_policy, creator_codes
from edge_rec.state import Event, UserState, _check_event, sum_signals
from edge_rec.validate import checked_id, show, to_id, to_number

# engine preference for backend="auto": the lightest runtime that needs no torch comes first
AUTO_ORDER = ("ort", "onnx", "tflite", "coreml", "executorch")


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
    _decoded: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def arrays(self) -> dict[str, np.ndarray]:
        """The embeddings decoded to float32 and checked, once: a feed is fetched once and reranked
        at every swipe, so decoding must not be paid again each time."""
        if self._decoded is None:
            self._decoded = {m: decode_embedding(v, f"candidate {self.item_id} modality {m!r}")
                             for m, v in self.embeddings.items() if v is not None}
        return self._decoded

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


def decode_embedding(v: Any, where: str) -> np.ndarray:
    """fp32/fp16 list, ``{"int8": [...], "scale": s}`` or ``{"fp16_b64": str}`` -> float32 vector."""
    if isinstance(v, Mapping):
        if "int8" in v:
            try:
                q = np.asarray(v["int8"], dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{where}: 'int8' must be a list of whole numbers ({exc}).") from exc
            if not (np.isfinite(q).all() and (q == np.round(q)).all() and ((q >= -128) & (q <= 127)).all()):
                raise DataError(f"{where}: 'int8' values must be whole numbers in [-128, 127].")
            scale = to_number(v.get("scale"), f"{where}: 'scale'", 1.0)
            if not (math.isfinite(scale) and scale > 0):
                raise DataError(f"{where}: 'scale' must be a finite number > 0, got {scale}.")
            a = q.astype(np.float32) * np.float32(scale)
        elif "fp16_b64" in v:
            try:
                raw = base64.b64decode(v["fp16_b64"], validate=True)
            except (binascii.Error, TypeError, ValueError) as exc:
                raise DataError(f"{where}: 'fp16_b64' is not valid base64 ({exc}).") from exc
            if len(raw) % 2:
                raise DataError(f"{where}: 'fp16_b64' holds {len(raw)} bytes; float16 values take 2 bytes each.")
            a = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        else:
            raise DataError(f"{where}: an embedding object needs 'int8' + 'scale' or 'fp16_b64' (got keys {sorted(v)}).")
    else:
        try:
            a = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: embedding is not numeric ({exc}).") from exc
    if a.ndim != 1:
        raise DataError(f"{where}: embedding must be a 1-D vector, got shape {a.shape}.")
    if not np.isfinite(a).all():
        raise DataError(f"{where}: embedding holds NaN or inf; the server sent a broken vector.")
    return a


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
        drop = np.isin(self.item_ids, np.fromiter((int(i) for i in item_ids), dtype=np.int64))
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
        self.hist_dim = sum(self.modalities.values()) + 3
        self._hist = {"hist_emb": np.zeros((self.hist_len, self.hist_dim), np.float32),
                      "hist_weight": np.zeros(self.hist_len, np.float32),
                      "hist_age": np.zeros(self.hist_len, np.float32), "context": np.zeros(3, np.float32)}
        self._hist_key: list[tuple[Any, ...]] | None = None
        self._hist_ts = np.zeros(0, np.float64)

    # ---- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, bundle: str | Path, backend: str = "auto", threads: int = 1, precision: str | None = None,
             policy: PostRankPolicy | None = None, warmup: bool = True) -> "Reranker":
        """Verify the bundle (schema version, checksums, file list) and open one engine on it.

        ``backend``: ``auto`` (the first of ort, onnx, tflite, coreml, executorch whose engine is
        installed and whose export passed its gates), or a format name. ``precision``: default int8
        where it passed its gates, else fp32."""
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ConfigError(f"threads={threads!r} must be a whole number >= 1 (the engine's intra-op threads).")
        root = Path(bundle)
        manifest = verify_bundle(root)
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
                except MissingDependencyError as exc:
                    errors.append(f"{fmt}: {exc}")
                    break
                rr = cls(root, manifest, eng, fmt, prec, policy)
                if warmup:
                    rr._warmup()
                return rr
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
            if not c.embeddings.keys() <= known:
                unknown = [m for m in c.embeddings if m not in known]
                raise DataError(f"candidate {c.item_id}: unknown modality {unknown}; this bundle knows "
                                f"{sorted(self.modalities)} (and ignores pruned {sorted(self.pruned)}).")
        x: dict[str, np.ndarray] = {}
        decoded = [c.arrays() for c in cands]
        for m, d in self.modalities.items():
            emb, mask = np.zeros((n, d), np.float32), np.zeros(n, np.float32)
            for i, arr in enumerate(decoded):
                a = arr.get(m)
                if a is None:
                    continue
                if a.shape[0] != d:
                    raise DataError(f"candidate {cands[i].item_id}: modality {m!r} has {a.shape[0]} dims; "
                                    f"the bundle expects {d}.")
                emb[i] = a
                mask[i] = 1.0
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

    def _at(self, feed: Feed, now: float) -> dict[str, np.ndarray]:
        """The feed's candidate inputs with the freshness column for ``now`` (written in place)."""
        age_h = np.maximum(now - feed.upload_ts, 0.0) / 3600.0
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
        # identity of the rows: the event and its engagement (an app may update a like in place)
        key = [(e.item_id, e.ts, e.watch_ms, e.duration_ms, e.like, e.skip) for e in last]
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
                    if v is not None and len(v) == d:
                        row[o:o + d] = v
                    o += d
                row[o:o + 3] = (min(max(e.watch_ratio, 0.0), 1.5), float(e.like), float(e.skip))
                h["hist_weight"][j] = 1.0
            self._hist_ts = np.array([e.ts for e in last], np.float64)
            self._hist_key = key
        h["hist_age"][:] = 0
        if len(last):
            h["hist_age"][self.hist_len - len(last):] = np.log1p(np.maximum(now - self._hist_ts, 0.0) / 3600.0)
        hour = (now % 86400.0) / 86400.0 * 2 * math.pi
        h["context"][:] = (math.log1p(total), math.sin(hour), math.cos(hour))
        return h

    def parse_history(self, history: Iterable[Event | Mapping[str, Any]]) -> list[Event]:
        """Events from a request (objects as in ``sample_feed.json`` or :class:`Event`), checked: an
        event object's embeddings must be of a modality this bundle knows, at its size (a pruned one is
        ignored). :class:`Event` objects pass as they are: the store's events may come from an older
        bundle, and an embedding of another size is then treated as missing."""
        if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Iterable):
            raise DataError(f"the history must be a list of events (oldest first), got {show(history)}.")
        out = []
        for h in history:
            if isinstance(h, Event):
                out.append(h)
                continue
            e = _event(h)
            for m, v in e.embeddings.items():
                if m in self.pruned:
                    continue
                if m not in self.modalities:
                    raise DataError(f"history event for item {e.item_id}: unknown modality {m!r}; this bundle knows "
                                    f"{sorted(self.modalities)} (and ignores pruned {sorted(self.pruned)}).")
                if len(v) != self.modalities[m]:
                    raise DataError(f"history event for item {e.item_id}: modality {m!r} has {len(v)} dims; "
                                    f"the bundle expects {self.modalities[m]}.")
            out.append(e)
        return out

    # ---- scoring --------------------------------------------------------------------------------
    def score(self, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The bare engine call on prepared inputs (what the benchmarks time against ``rerank``)."""
        return self.engine.run(x)

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
        mods = list(self.modalities) if explain else []
        if mods:
            # one batched call: the request, then a copy per modality with that modality masked out
            # (candidates are scored independently, so stacking them along N is exact)
            big = {}
            for key, v in x.items():
                if key.startswith("cand_"):
                    parts = [v]
                    for m in mods:
                        c = v.copy()
                        if key in (f"cand_{m}", f"cand_mask_{m}"):
                            c[:] = 0
                        parts.append(c)
                    big[key] = np.concatenate(parts, axis=0)
                else:
                    big[key] = v
            out_all = self.engine.run(big)
            out = {key: v[:n] for key, v in out_all.items()}
            masked = {m: out_all["score"][(j + 1) * n:(j + 2) * n] for j, m in enumerate(mods)}
        else:
            out = self.engine.run(x)
        score = np.asarray(out["score"], np.float64)
        if not np.isfinite(score).all():
            raise DataError("the model produced non-finite scores for this feed; check the inputs it was given.")
        signals = state.creator_signals(now) if state is not None else _creator_signals(history, now)
        ages_h = np.maximum(now - feed.upload_ts, 0.0) / 3600.0
        order, final = apply_policy(self.policy, score, out.get("fused"), feed.creator_codes, ages_h, signals, k)
        o = np.asarray(order, dtype=np.int64)
        cols: dict[str, Any] = {"item_id": feed.item_ids[o], "creator_id": feed.creators[o],
                                "score": score[o], "final_score": np.asarray(final, np.float64)[o]}
        for key in ("p_click", "p_finish", "p_like"):
            cols[key] = out[key][o]
        if mods:
            cols["explanation"] = {m: score[o] - masked[m][o] for m in mods}
        return Ranking(cols)


def request_time(now: Any) -> float:
    """The request's clock in seconds (``None``: now); a non-number or a non-finite time is a :class:`DataError`."""
    t = time.time() if now is None else to_number(now, "context 'now' (seconds)")
    if not math.isfinite(t):
        raise DataError(f"context 'now' must be a finite time in seconds, got {t}.")
    return t


def _flag(v: Any, what: str) -> bool:
    if v is None or isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)):
        return bool(v)
    raise DataError(f"{what} must be true or false, got {show(v)}.")


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
              finish=_flag(d.get("finish"), f"{where}: finish"), skip=_flag(d.get("skip"), f"{where}: skip"),
              like=_flag(d.get("like"), f"{where}: like"), share=_flag(d.get("share"), f"{where}: share"),
              creator_id=None if creator is None else to_id(creator, f"{where}: creator_id"),
              sentiment=None if sentiment is None else to_number(sentiment, f"{where}: sentiment"),
              embeddings={m: decode_embedding(v, f"{where}, modality {m!r}") for m, v in (embs or {}).items()
                          if v is not None})
    _check_event(e)
    return e


def _creator_signals(history: Sequence[Event], now: float, window_s: float = 3600.0) -> dict[int, dict[str, float]]:
    """As :meth:`UserState.creator_signals`, from a request's history."""
    return sum_signals((e.creator_id, e.skip, e.sentiment) for e in history
                       if e.creator_id is not None and now - window_s <= e.ts <= now
                       and (e.skip or (e.sentiment is not None and e.sentiment < 0)))
