"""``edge-rec train-teacher``: the teacher, the fusion baselines and the contrastive ablation.

Trained on the same requests and evaluated on the same test requests as ``popularity`` and
``id_only``, so ``report.json["models"]`` compares all of them. Output folder::

    OUT/model.safetensors, OUT/config.json     the teacher (weights + everything needed to rebuild it)
    OUT/report.json                            every model's metrics, throughput, the ablation
    OUT/runs/<model>/{best,last}/              checkpoints (safetensors + JSON), metrics.jsonl

Size presets (``TEACHER_PRESETS``). The CPU ``default`` is what fits the demo's budget on 2 cores
(about 2 minutes for the teacher); ``large`` is the GPU teacher (d=256, 6 layers, 8 heads,
a few million parameters), for ``torchrun`` on one or more GPUs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from edge_rec.distill.baselines import run_baselines
from edge_rec.distill.checkpoint import load_ranker, save_ranker
from edge_rec.distill.configs import preset_configs, without_unlabelled
from edge_rec.distill.dataset import Dataset, write_json
from edge_rec.distill.evaluate import evaluate_scores, model_row, paired_bootstrap, per_request_ndcg
from edge_rec.distill.features import FeatureBuilder
from edge_rec.distill.models import (FusionTransformer, TeacherConfig, build_model, count_params,
                                     macs_per_candidate)
from edge_rec.distill.parallel import auto_workers, run_jobs
from edge_rec.distill.trainer import TrainConfig, load_checkpoint, predict, train

TEACHER_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {"model": dict(d_model=32, num_heads=2, num_layers=1, hist_layers=1, head_hidden=64, input_noise=0.5),
             "train": dict(epochs=3, batch_size=32, catalogue_negatives=16, select_on="full")},
    "default": {"model": dict(d_model=64, num_heads=4, num_layers=2, hist_layers=1, head_hidden=128, input_noise=0.5),
                "train": dict(epochs=3, batch_size=64, max_train_requests=16000, catalogue_negatives=16,
                              select_on="full")},
    "large": {"model": dict(d_model=256, num_heads=8, num_layers=6, hist_layers=2, head_hidden=512, ffn_mult=4,
                            input_noise=0.5),
              "train": dict(epochs=10, batch_size=256, lr=1e-3, catalogue_negatives=128, select_on="full")},
}


def teacher_configs(preset: str, model_overrides: dict[str, Any] | None = None,
                    train_overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], TrainConfig]:
    """Model keyword arguments and the :class:`TrainConfig` of a teacher preset, with overrides."""
    return preset_configs(TEACHER_PRESETS, preset, model_overrides, train_overrides)


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def _fit_and_score(name: str, model, ds: Dataset, fb: FeatureBuilder, out: Path, cfg: TrainConfig,
                   resume: bool, progress: bool, keep: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    run = out / "runs" / name
    can_resume = resume and (run / "last").is_dir()
    fit = train(model, ds, run, cfg, resume=can_resume, progress=progress, fb=fb)
    test = ds.split_index("test")
    scores = predict(model, fb, ds, test)
    if keep is not None:
        keep[name] = scores
    metrics = evaluate_scores(ds, test, scores)
    row = model_row(metrics, count_params(model), macs_per_candidate(model, n=ds.requests["cand"].shape[1],
                                                                      hist_len=fb.hist_len),
                    train={k: v for k, v in fit.items()})
    return row, fit


def _fit_job(name: str, kind: str, model_kw: dict[str, Any], ds: Dataset, fb: FeatureBuilder, out: Path,
             cfg: TrainConfig, resume: bool, progress: bool, in_process: bool) -> tuple[Any, ...]:
    """Build, train and score one model (in this process or a worker; a worker's trained weights
    come back through ``out/runs/<name>/best``). Returns (report row, fit info, test scores, the
    model when ``in_process`` else None)."""
    torch.manual_seed(cfg.seed)
    m = build_model(kind, ds.modalities, fb.hist_dim, **model_kw)
    keep: dict[str, Any] = {}
    row, fit = _fit_and_score(name, m, ds, fb, out, cfg, resume, progress, keep=keep)
    return row, fit, keep[name], (m if in_process else None)


def train_teacher(ds: Dataset, out: str | Path, *, preset: str = "default", model_overrides: dict[str, Any] | None = None,
                  train_overrides: dict[str, Any] | None = None, ablation: bool = True, fusion_baselines: bool = True,
                  resume: bool = False, progress: bool = True, jobs: int | None = None) -> dict[str, Any]:
    """Train the fusion baselines, the teacher and (``ablation``) the teacher without InfoNCE.

    These are independent: on a CPU they train side by side in worker processes (``jobs``, default
    one per core; see :mod:`edge_rec.distill.parallel`), with the same results as one after the other.
    Returns the stage report: ``models`` (report keys of DESIGN.md for popularity, id_only,
    early_fusion, late_fusion, teacher), ``teacher`` (config, throughput, the contrastive ablation).
    """
    out = Path(out)
    model_kw, cfg = without_unlabelled(*teacher_configs(preset, model_overrides, train_overrides), ds)
    if _rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
    fb = FeatureBuilder.from_dataset(ds, cfg.hist_len)
    models: dict[str, dict[str, Any]] = dict(run_baselines(ds, full_catalogue=False))
    plain = dataclasses.replace(cfg, contrastive_weight=0.0)
    do_ablation = ablation and len(ds.modalities) >= 2 and cfg.contrastive_weight > 0
    # (name, architecture, model kwargs, train config), the longest first: with workers they start first
    todo: list[tuple[str, str, dict[str, Any], TrainConfig]] = [("teacher", "teacher", model_kw, cfg)]
    if do_ablation:
        todo.append(("teacher_no_contrastive", "teacher", model_kw, plain))
    if fusion_baselines:
        todo += [(kind, kind, {}, plain) for kind in ("early_fusion", "late_fusion")]
    workers = auto_workers(len(todo), cfg.device, jobs)
    results = run_jobs(_fit_job, [(name, kind, kw, ds, fb, out, c, resume, progress and workers == 1, workers == 1)
                                  for name, kind, kw, c in todo],
                       workers, desc="train-teacher", progress=progress)
    done = {name: r for (name, *_), r in zip(todo, results)}
    test_scores: dict[str, Any] = {}
    for name in ("early_fusion", "late_fusion", "teacher"):
        if name in done:
            models[name], _, test_scores[name], _ = done[name]
    fit, teacher = done["teacher"][1], done["teacher"][3]
    if teacher is None:                        # trained in a worker: the weights its run kept
        teacher = build_model("teacher", ds.modalities, fb.hist_dim, **model_kw)
        load_checkpoint(out / "runs" / "teacher" / "best", teacher)
        teacher.eval()
    # "clearly better" measured: the teacher minus each fusion baseline, request by request on the same
    # test requests, overall and on the cold-start view, with a paired bootstrap 95 % interval
    test = ds.split_index("test")
    per = {name: {view: per_request_ndcg(ds, test, sc, view) for view in ("all", "cold")} for name, sc in test_scores.items()}
    versus = {name: {view: paired_bootstrap(per["teacher"][view], per[name][view]) for view in ("all", "cold")}
              for name in per if name != "teacher"}
    abl: dict[str, Any] = {"contrastive_weight": cfg.contrastive_weight}
    if do_ablation:
        row0 = done["teacher_no_contrastive"][0]
        abl.update({"with": {k: models["teacher"][k] for k in ("ndcg@10", "cold.ndcg@10", "auc")},
                    "without": {k: row0[k] for k in ("ndcg@10", "cold.ndcg@10", "auc")}})
        abl["ndcg@10_gain"] = models["teacher"]["ndcg@10"] - row0["ndcg@10"]
    else:
        abl["skipped"] = "needs >= 2 modalities and contrastive_weight > 0" if ablation else "disabled"
    report = {
        "preset": preset,
        "models": models,
        "teacher": {
            "config": teacher.config.to_dict(), "train_config": cfg.to_dict(), "hist_len": cfg.hist_len,
            "params": count_params(teacher), "macs_per_candidate": models["teacher"]["macs_per_candidate"],
            "throughput": {"samples_per_s": fit["samples_per_s"], "requests_per_s": fit["requests_per_s"],
                           "device": fit["device"], "world_size": fit["world_size"], "train_s": fit["train_s"],
                           "side_by_side_workers": workers},
            "contrastive_ablation": abl,
            "versus": versus,
        },
    }
    if _rank() == 0:
        save_teacher(teacher, out, cfg.hist_len)
        write_json(out / "report.json", report)
    return report


def save_teacher(model: FusionTransformer, out: Path, hist_len: int) -> None:
    """``OUT/model.safetensors`` + ``OUT/config.json``: all that :func:`load_teacher` needs."""
    save_ranker(model, out, "teacher", hist_len)


def load_teacher(path: str | Path) -> tuple[FusionTransformer, dict[str, Any]]:
    """Rebuild the teacher from ``save_teacher``'s folder (weights loaded, eval mode)."""
    return load_ranker(path, "teacher", FusionTransformer, TeacherConfig, "edge-rec train-teacher")
