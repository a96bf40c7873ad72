"""``edge-rec export``: quantize + export + verify in each format's own runtime + write the edge bundle.

For every (format, precision) asked for:

1. the exporter writes its files (``formats.py``); a conversion failure is recorded with the offending op
   and the reason, and the other formats still export;
2. the files are opened with the runtime engine the phone would use (``edge_rec.engines``: onnxruntime,
   LiteRT, the ExecuTorch runtime; Core ML: spec + MIL checks on Linux, prediction on macOS) and run on
   real validation requests, one ranking list at a time, against PyTorch: max / mean absolute error,
   SQNR, Spearman, Kendall, top-10 overlap, NDCG@10 and AUC (and NDCG@10 retained);
3. padding is proven harmless: the same real candidates score the same (to 1e-5) whatever the padding
   and order;
4. the gates are applied, every failure collected before deciding.

The bundle (folder + ``.zip``) is staged in a temp folder and renamed into place: never half a bundle.
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edge_rec import __version__
from edge_rec import metrics as M
from edge_rec.bundle import MANIFEST, SCHEMA_VERSION, file_entries, schema_errors, verify_bundle, write_zip
from edge_rec.engines import files_size, open_engine, open_group, pad_candidates
from edge_rec.errors import ConfigError, EdgeRecError, ExportError
from edge_rec.distill.dataset import Dataset, replace_dir, write_json
from edge_rec.distill.features import LABEL_KEYS, FeatureBuilder
from edge_rec.export.formats import (EXPORT_OUTPUTS, REGISTRY, Artifact, ExportContext, conversion_error, get_exporter,
                                     weight_bytes)

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = {"static": "NNCF post-training quantization, activation scales fixed from real requests: the default",
              "dynamic": "onnxruntime quantize_dynamic, one activation scale per call: scores depend on the other "
                         "candidates, so the batch-invariance gate fails it"}
"""How the ONNX int8 file is quantized (``--int8-mode``)."""
DEFAULT_BUCKETS = (16, 64, 256)
PAD_TOL = 1e-5
GOLDEN_TOL = {"fp32": 1e-4, "fp16": 5e-2, "int8": 2.5e-1}
"""Absolute tolerance on ``score`` of a golden request against PyTorch fp32, per precision, for a file
that could not be run at export (Core ML on Linux). A file run at export gets its own tolerance:
``GOLDEN_MARGIN`` x the largest error it showed on the golden requests + ``GOLDEN_SLACK``. Other
runtimes also compare the same file's own recorded golden outputs to 1e-5."""
GOLDEN_MARGIN = 1.5
GOLDEN_SLACK = 1e-4


@dataclass
class Gates:
    """Parity and budget bars; every (format, precision) result is checked against all of them."""

    min_spearman: dict[str, float] = field(default_factory=lambda: {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99})
    min_ndcg_retained: dict[str, float] = field(default_factory=lambda: {"fp32": 0.999, "fp16": 0.995, "int8": 0.995})
    max_size_kb: float | None = None

    @classmethod
    def from_cli(cls, min_ndcg_retained: float | None = None, max_size_kb: float | None = None,
                 min_spearman: float | None = None) -> "Gates":
        # an impossible bar (--min-ndcg-retained 1.5, --max-size-kb 1) is the user's to set and fails
        # as a gate (exit 1); a value no result can be compared with is a usage error before any work
        def bad(v: float | None, ok: bool) -> bool:
            return v is not None and not (math.isfinite(v) and ok)

        if bad(max_size_kb, max_size_kb is not None and max_size_kb > 0):
            raise ConfigError(f"--max-size-kb must be a finite size in KB > 0, got {max_size_kb}.")
        if bad(min_ndcg_retained, min_ndcg_retained is not None and min_ndcg_retained > 0):
            raise ConfigError(f"--min-ndcg-retained must be a finite ratio > 0 (e.g. 0.995), got {min_ndcg_retained}.")
        if bad(min_spearman, min_spearman is not None and -1 <= min_spearman <= 1):
            raise ConfigError(f"--min-spearman must be a correlation in [-1, 1] (e.g. 0.99), got {min_spearman}.")
        g = cls(max_size_kb=max_size_kb)
        if min_ndcg_retained is not None:
            g.min_ndcg_retained = {p: float(min_ndcg_retained) for p in PRECISIONS}
        if min_spearman is not None:
            g.min_spearman = {p: float(min_spearman) for p in PRECISIONS}
        return g


# ---- reference requests -------------------------------------------------------------------------
@dataclass
class Requests:
    """Real ranking lists, one dict of contract inputs per request (only its valid candidates)."""

    inputs: list[dict[str, np.ndarray]]
    labels: list[np.ndarray]          # click per candidate
    items: list[np.ndarray]           # item ids per candidate
    request_ids: list[int]


def real_requests(ds: Dataset, fb: FeatureBuilder, split: str, limit: int) -> Requests:
    idx = ds.split_index(split)[:limit]
    if len(idx) == 0:
        raise ConfigError(f"the dataset has no {split} requests to verify the exports on.")
    feats = fb.build(ds, idx)
    out = Requests([], [], [], [int(i) for i in idx])
    names = [k for k in feats if k not in LABEL_KEYS]
    for r in range(len(idx)):
        v = feats["valid"][r] > 0
        out.inputs.append({k: (feats[k][r][v] if k.startswith("cand_") else feats[k][r]).astype(np.float32) for k in names})
        out.labels.append(feats["click"][r][v])
        out.items.append(ds.requests["cand"][idx[r]][v])
    return out


def torch_outputs(model: torch.nn.Module, reqs: Requests) -> list[dict[str, np.ndarray]]:
    res = []
    with torch.no_grad():
        for x in reqs.inputs:
            o = model(**{k: torch.from_numpy(v) for k, v in x.items()})
            res.append({k: o[k].numpy().astype(np.float32) for k in EXPORT_OUTPUTS})
    return res


# ---- parity -------------------------------------------------------------------------------------
def _pad_lists(lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    n = max(len(x) for x in lists)
    arr = np.zeros((len(lists), n))
    valid = np.zeros((len(lists), n), bool)
    for i, x in enumerate(lists):
        arr[i, : len(x)] = x
        valid[i, : len(x)] = True
    return arr, valid


def quality(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict[str, float]:
    s, valid = _pad_lists(scores)
    y, _ = _pad_lists(labels)
    rep = M.ranking_report(s, y, valid, ks=(10,))
    return {"ndcg@10": rep["ndcg@10"], "auc": rep["auc"]}


def parity_metrics(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]],
                   labels: list[np.ndarray], ref_quality: dict[str, float]) -> dict[str, Any]:
    """Per-list agreement of ``got`` with ``ref`` on ``score`` (means over lists; min Spearman too)."""
    from scipy.stats import kendalltau, spearmanr

    sp, kt, top, errs = [], [], [], []
    sig = noise = 0.0
    other_err = 0.0
    for r, g in zip(ref, got):
        a, b = r["score"].astype(np.float64), g["score"].astype(np.float64)
        errs.append(np.abs(a - b))
        sig += float((a ** 2).sum())
        noise += float(((a - b) ** 2).sum())
        for k in EXPORT_OUTPUTS[1:]:
            other_err = max(other_err, float(np.abs(r[k] - g[k]).max()))
        if len(a) > 1:
            s = spearmanr(a, b).statistic
            t = kendalltau(a, b).statistic
            sp.append(1.0 if np.isnan(s) and np.allclose(a, b) else float(s))
            kt.append(1.0 if np.isnan(t) and np.allclose(a, b) else float(t))
        k = min(10, len(a))
        top.append(len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k])) / k)
    e = np.concatenate(errs)
    q = quality([g["score"] for g in got], labels)
    return {
        "n_requests": len(ref), "max_abs_err": float(e.max()), "mean_abs_err": float(e.mean()),
        "max_abs_err_other_outputs": other_err,
        "sqnr_db": float(min(200.0, 10 * math.log10(sig / noise))) if noise > 0 else 200.0,
        "spearman": float(np.nanmean(sp)), "spearman_min": float(np.nanmin(sp)),
        "kendall": float(np.nanmean(kt)), "top10_overlap": float(np.mean(top)),
        "ndcg@10": q["ndcg@10"], "auc": q["auc"],
        "ndcg_retained": q["ndcg@10"] / ref_quality["ndcg@10"] if ref_quality["ndcg@10"] > 0 else float("nan"),
    }


def padding_check(engine: Any, x: dict[str, np.ndarray], buckets: Sequence[int] | None) -> dict[str, Any]:
    """Max |score difference| of the same real candidates across paddings and orders (must be ≤ 1e-5).

    Dynamic-N engines: the list alone, padded with 7 extra rows, and reversed. Bucketed engines: padded
    into every bucket that holds it, and reversed."""
    n = int(x["cand_dense"].shape[0])
    base = engine.run(x)["score"][:n]
    runs = []
    rev = {k: (v[::-1].copy() if k.startswith("cand_") else v) for k, v in x.items()}
    if buckets is None:
        runs.append(engine.run(pad_candidates(x, n + 7))["score"][:n])
        runs.append(engine.run(rev)["score"][:n][::-1])
    else:
        for b, eng in engine.engines.items():
            if b >= n:
                runs.append(eng.run(pad_candidates(x, b))["score"][:n])
                runs.append(eng.run(pad_candidates(rev, b))["score"][:n][::-1])
    diff = max(float(np.abs(r - base).max()) for r in runs) if runs else 0.0
    return {"n_real": n, "variants": len(runs), "max_diff": diff, "ok": diff <= PAD_TOL}


BATCH_TOL = {"fp32": 1e-5, "fp16": 1e-3, "int8": 1e-2}
"""How far a candidate's outputs may move with its neighbours (:func:`batch_invariance`), per
precision. fp32: float reassociation only. int8: with fixed or per-row activation scales the only
movement left is a single quantization step flipped by a kernel's float rounding (ExecuTorch's
XNNPACK int8 on the default student: one candidate of 144 scored alone moved 3.9e-3, the others
< 1e-5); one activation scale per call (onnxruntime's dynamic int8) moves scores by 0.05-0.5. 1e-2
lies between the two regimes and 13x below the median gap between neighbouring scores of a real
list (0.136 on the default student; 5 % of neighbouring pairs are closer than 1e-2, and the report
gives that share per file). fp16: half-precision rounding of the same sums."""


def batch_invariance(engine: Any, reqs: Requests, tolerance: float, n_requests: int = 24, alone: int = 6) -> dict[str, Any]:
    """How much each candidate's outputs depend on the other rows of its call, on real requests.

    For each of the first ``n_requests`` lists, every output (``score``, the heads, ``fused``) of each
    candidate scored (a) in its list is compared with the same candidate scored (b) alone (the first
    ``alone`` of them), (c) in a shuffled list, (d) with the candidates of another request appended
    (another bucket for bucketed engines, other rows that could widen a per-call range), and (e) with
    masked copies of the list appended, as a batched explanation would stack them. Returns the
    largest absolute deviation per variant and overall (``max_dev``), whether it is within
    ``tolerance`` (``ok``), the median gap between neighbouring scores of a list (what a deviation must
    stay far below not to reorder it) and the share of neighbouring pairs closer than ``tolerance``
    (the pairs a deviation within it could swap)."""
    rng = np.random.default_rng(0)
    dev = {"alone": 0.0, "shuffled": 0.0, "with_others": 0.0, "stacked_masked": 0.0}
    gaps: list[np.ndarray] = []
    reqs_n = min(n_requests, len(reqs.inputs))

    def worst(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rows: np.ndarray) -> float:
        return max(float(np.abs(np.asarray(a[k], np.float64)[rows] - np.asarray(b[k], np.float64)).max())
                   for k in EXPORT_OUTPUTS)

    def cand(x: dict[str, np.ndarray], f: Any) -> dict[str, np.ndarray]:
        return {k: (f(v) if k.startswith("cand_") else v) for k, v in x.items()}

    for r in range(reqs_n):
        x = reqs.inputs[r]
        n = int(x["cand_dense"].shape[0])
        base = engine.run(x)
        base = {k: np.asarray(v)[:n] for k, v in base.items()}
        s = np.sort(base["score"].astype(np.float64))
        if n > 1:
            gaps.append(np.diff(s))
        for i in range(min(alone, n)):
            got = engine.run(cand(x, lambda v: v[i:i + 1]))
            dev["alone"] = max(dev["alone"], worst(got, {k: v[i:i + 1] for k, v in base.items()}, np.arange(1)))
        perm = rng.permutation(n)
        got = engine.run(cand(x, lambda v: v[perm]))
        dev["shuffled"] = max(dev["shuffled"], worst(got, {k: v[perm] for k, v in base.items()}, np.arange(n)))
        other = reqs.inputs[(r + 1) % len(reqs.inputs)]
        got = engine.run({k: (np.concatenate([v, other[k]], axis=0) if k.startswith("cand_") else v) for k, v in x.items()})
        dev["with_others"] = max(dev["with_others"], worst(got, base, np.arange(n)))
        masks = [k for k in x if k.startswith("cand_mask_")]
        stacked = {}
        for k, v in x.items():
            if not k.startswith("cand_"):
                stacked[k] = v
                continue
            parts = [v]
            for mk in masks:
                m = mk[len("cand_mask_"):]
                c = v.copy()
                if k in (mk, f"cand_{m}"):
                    c[:] = 0
                parts.append(c)
            stacked[k] = np.concatenate(parts, axis=0)
        got = engine.run(stacked)
        dev["stacked_masked"] = max(dev["stacked_masked"], worst(got, base, np.arange(n)))
    g = np.concatenate(gaps) if gaps else np.zeros(0)
    worst = max(dev.values())
    return {"n_requests": reqs_n, "max_dev": worst, "by_variant": dev, "tolerance": tolerance, "ok": worst <= tolerance,
            "median_score_gap": float(np.median([np.median(x) for x in gaps])) if gaps else None,
            "neighbour_pairs_within_tolerance": float((g < tolerance).mean()) if len(g) else None}


def _open(art: list[Artifact], fmt: str, input_names: list[str]) -> Any:
    return open_group(fmt, [(a.path, a.bucket) for a in art], input_names=input_names, output_names=EXPORT_OUTPUTS)


def run_all(engine: Any, reqs: Requests) -> list[dict[str, np.ndarray]]:
    return [engine.run(x) for x in reqs.inputs]


# ---- the stage ----------------------------------------------------------------------------------
def export_bundle(
    student_dir: str | Path, data: str | Path | Dataset, out: str | Path, *,
    formats: Sequence[str] = tuple(REGISTRY), precisions: Sequence[str] = ("fp32", "int8"),
    buckets: Sequence[int] = DEFAULT_BUCKETS, parity_requests: int = 1000, split: str = "val",
    gates: Gates | None = None, int8_mode: str = "static", coreml_flexible: bool = False,
    overwrite: bool = False, progress: bool = True, model: torch.nn.Module | None = None,
    sign_key: str | Path | None = None,
) -> dict[str, Any]:
    """Export the student in ``student_dir`` and write the bundle folder ``out`` and ``out.zip``.

    ``sign_key``: an Ed25519 private key (PEM) that signs the manifest (``manifest.sig``, see
    :mod:`edge_rec.signing`).

    ``model`` exports a network in memory instead of the saved weights (same I/O contract and config as
    the student in ``student_dir``, e.g. a variant being tried before it is saved).

    Returns the export report (also ``out/export_report.json``): ``exports{fmt{precision{...}}}``,
    ``gate_failures`` (empty when every gate passed), ``bundle{path, zip, files, manifest_sha256}``.
    The caller decides what a gate failure means (the CLI exits 1).
    """
    from edge_rec.distill.distill_stage import load_student
    from edge_rec.distill.models import count_params, macs_per_candidate

    gates = gates or Gates()
    formats, precisions = list(formats), list(precisions)
    if not formats:
        raise ConfigError(f"no format to export; choose from {', '.join(REGISTRY)}.")
    if isinstance(parity_requests, bool) or not isinstance(parity_requests, int) or parity_requests < 1:
        raise ConfigError(f"parity_requests must be a whole number >= 1 (validation requests run through each "
                          f"export), got {parity_requests!r}.")
    for f in formats:
        get_exporter(f)                                              # unknown formats fail before any work
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ConfigError(f"unknown precision(s) {bad or precisions}; choose from {', '.join(PRECISIONS)}.")
    int8_mode = {"nncf": "static"}.get(int8_mode, int8_mode)        # the name earlier versions used
    if int8_mode not in INT8_MODES:
        raise ConfigError(f"int8 mode {int8_mode!r} is unknown; choose " + ", ".join(f"{k} ({v})" for k, v in INT8_MODES.items()) + ".")
    buckets = sorted({int(b) for b in buckets})
    if not buckets or buckets[0] < 1:
        raise ConfigError(f"buckets must be positive candidate counts, got {buckets}.")
    if sign_key is not None:
        from edge_rec.signing import _load_private

        _load_private(sign_key)                                      # a bad key fails before any work
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite or choose another --out.")

    loaded, meta = load_student(student_dir)
    model = (model or loaded).eval()
    ds = data if isinstance(data, Dataset) else Dataset.load(data)
    kept = list(meta["kept_modalities"])
    missing = [m for m in kept if m not in ds.modalities]
    if missing:
        raise ConfigError(f"the student uses modalities {missing} that the dataset lacks; export with the dataset it was trained on.")
    fb = FeatureBuilder.from_dataset(ds, hist_len=int(meta["hist_len"]), modalities=kept)
    if fb.hist_dim != model.config.hist_dim:
        raise ConfigError(f"the dataset's history width {fb.hist_dim} differs from the student's {model.config.hist_dim}.")
    reqs = real_requests(ds, fb, split, parity_requests)
    ref = torch_outputs(model, reqs)
    ref_q = quality([r["score"] for r in ref], reqs.labels)
    lean, lean_diff = _lean_forward_agrees(model, reqs, ref)
    input_names = list(model.input_names)
    longest = max(range(len(reqs.inputs)), key=lambda i: len(reqs.labels[i]))

    def example(n: int) -> dict[str, torch.Tensor]:
        """Real inputs of one request, its candidates repeated or cut to ``n``."""
        x = reqs.inputs[longest]
        reps = {k: (np.resize(v, (n,) + v.shape[1:]) if k.startswith("cand_") else v) for k, v in x.items()}
        return {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in reps.items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        models_dir = stage / "models"
        models_dir.mkdir()
        ctx = ExportContext(input_names=input_names, hist_len=int(meta["hist_len"]), buckets=buckets,
                            models_dir=models_dir, example=example, calibration=_calibration(ds, fb, split),
                            int8_mode=int8_mode, coreml_flexible=coreml_flexible, lean=lean)
        exports: dict[str, dict[str, Any]] = {}
        artifacts: list[Artifact] = []
        golden_engines: dict[str, Any] = {}
        jobs = [(f, p) for f in formats for p in precisions]
        bar = _progress(jobs, progress)
        for f, p in bar:
            if hasattr(bar, "set_description"):
                bar.set_description(f"export {f}/{p}")
            exports.setdefault(f, {})[p] = row = _export_one(model, f, p, ctx, reqs, ref, ref_q, input_names, artifacts,
                                                             golden_engines)
            row["gate_failures"] = _gate(f, p, row, gates)
        _size_ratios(exports)
        failures = [msg for f in exports for p in exports[f] for msg in exports[f][p]["gate_failures"]]

        golden, golden_errors = _golden(model, reqs, golden_engines, stage)
        # the bundle must pass its own `edge-rec verify`: a golden request off by more than its
        # artifact's tolerance is a gate failure here, not a surprise for whoever verifies it later
        for key, err in golden_errors.items():
            tol = golden["tolerance_by_artifact"][key]
            if err > tol:
                msg = (f"{key}: a golden request's score is {err:.3g} off PyTorch fp32, over its tolerance "
                       f"{tol:.3g}; `edge-rec verify` would reject the bundle")
                failures.append(msg)
                fmt, prec = key.split("/")
                row = exports.get("onnx" if fmt == "ort" else fmt, {}).get(prec)
                if row is not None:              # so that the runtime does not pick this file by default
                    row["gate_failures"].append(msg)
        from edge_rec.distill.feed import request_feed

        # the first golden request as raw feed fields: what the app receives; a runtime that builds
        # features from it must reproduce golden case 0's inputs (the JVM and browser demos test this)
        write_json(stage / "sample_feed.json", request_feed(ds, reqs.request_ids[0]))
        report = {
            "sdk_version": __version__, "student": str(student_dir), "split": split,
            "parity_requests": len(reqs.inputs), "reference": {"engine": "pytorch fp32", **ref_q},
            "gates": asdict(gates), "buckets": buckets, "int8_mode": int8_mode,
            "traced": {"forward": "forward_request" if lean else "forward", "max_abs_diff_vs_forward": lean_diff},
            "exports": exports, "gate_failures": failures, "ok": not failures,
            "golden": {"max_abs_err_vs_reference": golden_errors, "tolerance": golden["tolerance_by_artifact"]},
        }
        local = None
        if "executorch" in formats:
            from edge_rec.export.training import write_program

            local = write_program(stage, int(model.config.d_model))
            report["local_learning"] = local
            worst = max(local["parity"].values())
            if worst > 1e-5:
                failures.append(f"local/head_train.pte: one training step is {worst:.3g} off PyTorch's (over 1e-5)")
                report["gate_failures"], report["ok"] = failures, False
        write_json(stage / "export_report.json", report)
        manifest = _manifest(model, meta, fb, artifacts, stage, report, golden, count_params(model),
                             macs_per_candidate(model), buckets, _training(Path(student_dir), meta))
        if local is not None:
            manifest["local_learning"] = local
        problems = schema_errors(manifest)
        if problems:
            raise ExportError("internal: the manifest written does not match bundle.schema.json: " + "; ".join(problems))
        write_json(stage / MANIFEST, manifest)
        if sign_key is not None:
            from edge_rec.signing import sign_bundle

            sign_bundle(stage, sign_key)
        verify_bundle(stage)
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    zip_path = write_zip(out, out.with_name(out.name + ".zip"))
    from edge_rec.bundle import sha256_file

    # the copy inside the bundle is checksummed by the manifest, so it cannot hold the manifest's own hash
    report["bundle"] = {"path": str(out), "zip": str(zip_path), "files": len(manifest["files"]),
                        "manifest_sha256": sha256_file(out / MANIFEST), "zip_bytes": zip_path.stat().st_size,
                        "signed": (out / "manifest.sig").is_file()}
    return report


def _calibration(ds: Dataset, fb: FeatureBuilder, split: str, n: int = 128) -> list[dict[str, np.ndarray]]:
    """Real requests for static int8's activation ranges: training requests (never the ones the parity
    checks score), falling back to the verification split when the dataset has no training split."""
    for s in ("train", split):
        if len(ds.split_index(s)):
            return real_requests(ds, fb, s, n).inputs
    return []


def _lean_forward_agrees(model: torch.nn.Module, reqs: Requests, ref: list[dict[str, np.ndarray]],
                         n: int = 16, atol: float = 1e-5) -> tuple[bool, float | None]:
    """Whether the model's ``forward_request`` (what is traced when it agrees) gives its ``forward``
    outputs on the first ``n`` real requests, and the largest difference seen."""
    fn = getattr(model, "forward_request", None)
    if fn is None:
        return False, None
    worst = 0.0
    with torch.no_grad():
        for x, want in zip(reqs.inputs[:n], ref[:n]):
            got = fn(**{k: torch.from_numpy(v) for k, v in x.items()})
            worst = max(worst, max(float(np.abs(got[k].numpy() - want[k]).max()) for k in EXPORT_OUTPUTS))
    return worst <= atol, worst


def _training(student_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The student's config and the distillation settings it was trained with (from its report)."""
    import json

    out: dict[str, Any] = {"student_config": meta.get("config", {})}
    rep = student_dir / "report.json"
    if rep.is_file():
        r = json.loads(rep.read_text())
        out.update({k: r.get(k) for k in ("preset", "config", "train_config")})
        out["distill_config"] = out.pop("config", None)
    return out


def _progress(jobs: list, on: bool):
    if not on:
        return jobs
    try:
        from tqdm import tqdm
    except ImportError:
        return jobs
    return tqdm(jobs, unit="export")


def _export_one(model: torch.nn.Module, fmt: str, prec: str, ctx: ExportContext, reqs: Requests,
                ref: list[dict[str, np.ndarray]], ref_q: dict[str, float], input_names: list[str],
                artifacts: list[Artifact], golden_engines: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"ok": False, "error": None, "size_bytes": None, "spearman": None, "kendall": None,
                           "top10_overlap": None, "max_abs_err": None, "ndcg@10": None, "ndcg_retained": None}
    exporter = get_exporter(fmt)
    if prec not in exporter.precisions:
        row["error"] = f"{fmt} has no {prec} mode here (supported: {', '.join(exporter.precisions)})"
        row["skipped"] = True
        return row
    t0 = time.perf_counter()
    before = set(ctx.models_dir.iterdir())
    try:
        arts, compat = exporter.export(model, prec, ctx)
    except Exception as exc:  # keep the op and reason, drop what it left behind, go on with the others
        for p in set(ctx.models_dir.iterdir()) - before:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        row["error"] = str(exc) if isinstance(exc, EdgeRecError) else str(conversion_error(fmt, prec, exc))
        return row
    row["convert_s"] = round(time.perf_counter() - t0, 2)
    row["compat"] = compat
    main = [a for a in arts if a.format == fmt]
    row["files"] = [a.path.name for a in arts]
    row["size_bytes"] = files_size([a.path for a in main])
    row["weight_note"] = "size_bytes sums every bucket's file" if main[0].bucket else None
    w = [weight_bytes(a.path) for a in main]
    row["weight_bytes"] = sum(w) if all(v is not None for v in w) else None
    row["graph_bytes"] = row["size_bytes"] - row["weight_bytes"] if row["weight_bytes"] is not None else None
    artifacts.extend(arts)
    try:
        if fmt == "coreml" and not _macos():
            row.update({"ok": True, "parity_skipped": "Core ML prediction needs macOS; spec, I/O and MIL ops were checked "
                                                      "on Linux (compat). Run `edge-rec verify BUNDLE` on a Mac for the numbers."})
            return row
        engine = _open(main, fmt, input_names)
        # the file must take exactly the model's inputs, the manifest's signature: the runtime refuses
        # anything else, so an export that does not is a failed row here, not a bundle that cannot open
        file_in = set(getattr(engine, "input_names", input_names))
        if file_in != set(input_names):
            raise ExportError(f"{fmt}/{prec}: the file's inputs {sorted(file_in)} are not the model's "
                              f"{sorted(input_names)}.")
        got = run_all(engine, reqs)
        row.update(parity_metrics(ref, got, reqs.labels, ref_q))
        row["padding"] = padding_check(engine, reqs.inputs[0], [a.bucket for a in main] if main[0].bucket else None)
        row["batch_invariance"] = batch_invariance(engine, reqs, BATCH_TOL[prec])
        golden_engines[f"{fmt}/{prec}"] = (main, engine, row["max_abs_err"])
        for extra in (a for a in arts if a.format != fmt):         # the .ort twin of an .onnx
            eng = open_engine(extra.format, extra.path)
            diff = max(float(np.abs(eng.run(x)["score"] - g["score"]).max()) for x, g in zip(reqs.inputs[:20], got[:20]))
            row[extra.format] = {"file": extra.path.name, "size_bytes": files_size([extra.path]),
                                 "max_abs_diff_vs_onnx": diff, "ok": diff <= PAD_TOL}
            golden_engines[f"{extra.format}/{prec}"] = ([extra], eng, row["max_abs_err"] + diff)
        row["ok"] = True
    except EdgeRecError as exc:
        row["error"] = str(exc)
    except Exception as exc:
        row["error"] = f"{fmt}/{prec}: the exported model failed in its runtime: {type(exc).__name__}: {exc}"
    return row


def _macos() -> bool:
    import platform

    return platform.system() == "Darwin"


def _gate(fmt: str, prec: str, row: dict[str, Any], gates: Gates) -> list[str]:
    """Every bar this result misses, as 'fmt/prec: what (measured vs bar)'."""
    tag = f"{fmt}/{prec}"
    if row.get("skipped"):
        return []
    if not row["ok"]:
        err = str(row["error"])
        return [err if err.startswith(tag) else f"{tag}: {err}"]
    fails = []
    if row.get("spearman") is not None:
        if row["spearman"] < gates.min_spearman[prec]:
            fails.append(f"{tag}: Spearman {row['spearman']:.6f} < {gates.min_spearman[prec]}")
        if not row["ndcg_retained"] >= gates.min_ndcg_retained[prec]:
            fails.append(f"{tag}: NDCG@10 retained {row['ndcg_retained']:.4f} < {gates.min_ndcg_retained[prec]}")
        bi = row.get("batch_invariance")
        if bi and not bi["ok"]:
            fails.append(f"{tag}: a candidate's outputs change with the other candidates of its call by "
                         f"{bi['max_dev']:.2e} > {bi['tolerance']:g} ({', '.join(f'{k} {v:.1e}' for k, v in bi['by_variant'].items())})")
        if not row["padding"]["ok"]:
            fails.append(f"{tag}: padding changes real scores by {row['padding']['max_diff']:.2e} > {PAD_TOL}")
        ort = row.get("ort")
        if ort and not ort["ok"]:
            fails.append(f"{tag}: the .ort file differs from the .onnx by {ort['max_abs_diff_vs_onnx']:.2e}")
    if gates.max_size_kb is not None and row["size_bytes"] / 1024 > gates.max_size_kb:
        fails.append(f"{tag}: size {row['size_bytes'] / 1024:.1f} KB > max {gates.max_size_kb} KB")
    return fails


def _size_ratios(exports: dict[str, dict[str, Any]]) -> None:
    for rows in exports.values():
        base = rows.get("fp32", {}).get("size_bytes")
        wbase = rows.get("fp32", {}).get("weight_bytes")
        for row in rows.values():
            row["size_ratio_vs_fp32"] = row["size_bytes"] / base if base and row.get("size_bytes") else None
            row["weight_ratio_vs_fp32"] = row["weight_bytes"] / wbase if wbase and row.get("weight_bytes") else None


def _tensor(a: np.ndarray) -> dict[str, Any]:
    # 9 significant digits round-trip float32 exactly and keep golden.json small
    return {"shape": list(a.shape), "data": [float(f"{v:.9g}") for v in np.asarray(a, np.float32).ravel().tolist()]}


def _golden(model: torch.nn.Module, reqs: Requests, engines: dict[str, Any],
            stage: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """Write ``golden.json``: a few real requests (a full list, a short one, one with a modality missing
    on every other candidate) with the PyTorch fp32 outputs and each artifact's own outputs, so that
    other runtimes (JVM, browser) test against the exact numbers of the file they load.

    ``engines``: {"format/precision": (artifacts, engine, the largest score error its parity check
    measured)}. Returns the manifest's ``golden`` entry (with each artifact's tolerance against PyTorch,
    see :data:`GOLDEN_TOL`) and {"format/precision": the largest score error on the golden requests}."""
    i, j = 0, 1 % len(reqs.inputs)
    cases = [(f"request_{reqs.request_ids[i]}", reqs.inputs[i], reqs.items[i]),
             (f"request_{reqs.request_ids[j]}_first5", {k: (v[:5] if k.startswith("cand_") else v) for k, v in reqs.inputs[j].items()},
              reqs.items[j][:5])]
    x = {k: v.copy() for k, v in reqs.inputs[i].items()}
    masks = [k for k in x if k.startswith("cand_mask_")]
    if masks:
        m = masks[0][len("cand_mask_"):]
        x[f"cand_mask_{m}"][::2] = 0
        x[f"cand_{m}"][::2] = 0
        cases.append((f"request_{reqs.request_ids[i]}_missing_{m}", x, reqs.items[i]))
    out = []
    worst = {key: 0.0 for key in engines}
    for name, x, items in cases:
        with torch.no_grad():
            o = model(**{k: torch.from_numpy(v) for k, v in x.items()})
        case = {"name": name, "item_ids": [int(v) for v in items], "inputs": {k: _tensor(v) for k, v in x.items()},
                "reference": {k: _tensor(o[k].numpy()) for k in EXPORT_OUTPUTS}, "artifacts": {}}
        for key, (arts, eng, _) in engines.items():
            got = eng.run(x)
            worst[key] = max(worst[key], float(np.abs(np.asarray(got["score"], np.float64) - o["score"].numpy()).max()))
            for a in arts:
                case["artifacts"][a.rel(stage)] = {k: _tensor(got[k]) for k in ("score", "p_click", "p_finish", "p_like")}
        out.append(case)
    write_json(stage / "golden.json", {"about": "inputs are the model inputs of one request (float32, row-major); "
                                       "'reference' = PyTorch fp32; 'artifacts' = each file's outputs in its own runtime "
                                       "(bucketed files: padded by repeating the last candidate, outputs cut to N)",
                                       "cases": out})
    # the golden requests are fixed and every file that passed batch invariance scores a candidate the
    # same in any call, so the error each file shows on them is reproducible: its tolerance is that
    # error with a margin, tight enough that a swapped or corrupted file fails (tested)
    by_artifact = {key: float(f"{GOLDEN_MARGIN * worst[key] + GOLDEN_SLACK:.3g}") for key in engines}
    return ({"path": "golden.json", "reference": "pytorch fp32", "tolerance": dict(GOLDEN_TOL),
             "tolerance_by_artifact": by_artifact, "artifact_tolerance": PAD_TOL, "cases": [c["name"] for c in out]},
            worst)


def _signature(model: torch.nn.Module, hist_len: int, buckets: list[int], d_model: int) -> dict[str, Any]:
    ins = []
    for k in model.input_names:
        if k.startswith("cand_mask_"):
            shape: list[Any] = ["N"]
        elif k.startswith("cand_"):
            shape = ["N", 3 if k == "cand_dense" else model.modalities[k[len("cand_"):]]]
        elif k == "hist_emb":
            shape = [hist_len, model.config.hist_dim]
        elif k == "context":
            shape = [3]
        else:
            shape = [hist_len]
        ins.append({"name": k, "shape": shape, "dtype": "float32"})
    outs = [{"name": k, "shape": ["N"], "dtype": "float32"} for k in EXPORT_OUTPUTS[:-1]]
    outs.append({"name": "fused", "shape": ["N", d_model], "dtype": "float32"})
    return {"inputs": ins, "outputs": outs, "dynamic_axes": {"N": "candidates in the request (fixed to a bucket in bucketed files)"},
            "buckets": buckets}


def _manifest(model: torch.nn.Module, meta: dict[str, Any], fb: FeatureBuilder, artifacts: list[Artifact],
              stage: Path, report: dict[str, Any], golden: dict[str, Any], params: int, macs: int,
              buckets: list[int], training: dict[str, Any]) -> dict[str, Any]:
    files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file() and p.name != MANIFEST)
    parity = {f: {p: {k: row.get(k) for k in ("ok", "spearman", "spearman_min", "kendall", "top10_overlap", "max_abs_err",
                                             "sqnr_db", "ndcg@10", "ndcg_retained", "auc", "size_bytes", "parity_skipped")}
                  | {"passed": not row["gate_failures"]}
                  for p, row in rows.items() if not row.get("skipped")} for f, rows in report["exports"].items()}
    quant = {"fp32": {"method": "none"},
             "fp16": {"onnx": "onnxruntime float16 conversion, float32 I/O", "coreml": "fp16 compute precision"},
             "int8": {"onnx": "onnxruntime quantize_dynamic, int8 per-channel weights, one activation scale per call"
                      if report["int8_mode"] == "dynamic"
                      else "static: NNCF post-training quantization (TRANSFORMER), activation scales calibrated on real training requests",
                      "tflite": "AI Edge Quantizer dynamic_wi8_afp32 (int8 weights, dynamic activations)",
                      "coreml": "coremltools.optimize linear_symmetric int8 weights",
                      "executorch": "PT2E XNNPACK dynamic int8 (per-channel weights)"}}
    return {
        "schema_version": SCHEMA_VERSION,
        "sdk": {"name": "edge-rec", "version": __version__},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"kind": meta.get("kind", "student"), "params": params, "macs_per_candidate": macs,
                  # which heads were trained and how `score` combines their logits (a weight of 0: the
                  # data had no label for that head, so it was not trained and does not vote)
                  "score": {"formula": "sum of weight x logit over the heads",
                            "weights": dict(zip(("click", "finish", "like"), [float(w) for w in model.score_w.tolist()])),
                            "trained_heads": [t for t, w in zip(("click", "finish", "like"), model.score_w.tolist()) if w != 0]},
                  "hist_len": int(meta["hist_len"])},
        "signature": _signature(model, int(meta["hist_len"]), buckets, model.config.d_model),
        "modalities": {"kept": list(meta["kept_modalities"]), "pruned": list(meta.get("pruned_modalities", [])),
                       "dims": {m: int(d) for m, d in model.modalities.items()}},
        "features": fb.normalisation(),
        "artifacts": [{"format": a.format, "precision": a.precision, "engine": a.engine, "path": a.rel(stage),
                       "bucket": a.bucket} for a in artifacts],
        "files": file_entries(stage, files),
        "quantization": quant,
        "parity": parity,
        "quality": {"split": report["split"], "requests": report["parity_requests"], "pytorch_fp32": report["reference"]},
        "training": training,
        "golden": golden,
        "examples": {"feed": "sample_feed.json", "feed_matches_golden_case": golden["cases"][0]},
    }
