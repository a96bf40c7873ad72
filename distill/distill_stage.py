"""``edge-rec distill``: knowledge distillation, modality pruning and structural pruning.

Steps (every model is evaluated on the same test requests as the teacher):

1. cache the teacher's outputs (task logits and fused candidate vectors) on the students' training
   requests, once; every student reads the cache instead of re-running the teacher;
2. ``student_label_only``: the student trained on the true labels alone (the no-KD control);
3. ``student_kd``: the same student trained on labels + pointwise soft labels (temperature T) +
   listwise KL between the teacher's and the student's list softmaxes + feature distillation
   (student fused vector -> teacher's, through a training-only projection);
4. **modality pruning**: each modality's worth is the relative validation NDCG@10 lost by a student
   re-distilled without it (leave-one-out, ``loo_repeats`` students per arm with seeds seed, seed+1,
   ..., averaged; masking it in the teacher is reported alongside); a modality worth less than
   ``modality_budget`` is dropped, and a student whose inputs no longer include it is re-distilled;
5. **structural pruning** of that student with torch-pruning (FFN width, attention heads,
   head-MLP width; ``d_model`` fixed) toward ``target_params_ratio`` x the teacher's parameters,
   then a distillation fine-tune (pruning alone scrambles the ranking): ``student``.

Output: ``OUT/model.safetensors`` + ``OUT/config.json`` (the final student, with kept and pruned
modalities), ``OUT/report.json``, ``OUT/teacher_cache.safetensors``, ``OUT/runs/<model>/``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_rec._requires import requires
from edge_rec.errors import DataError
from edge_rec.distill.checkpoint import load_ranker, save_ranker
from edge_rec.distill.configs import DistillConfig, StudentConfig, TrainConfig, preset_configs, without_unlabelled
from edge_rec.distill.dataset import Dataset, write_json
from edge_rec.distill.evaluate import evaluate_scores, model_row, paired_bootstrap, per_request_ndcg
from edge_rec.distill.features import FeatureBuilder, N_ENGAGEMENT
from edge_rec.distill.models import RankerBase, count_params, macs_per_candidate
from edge_rec.distill.student import Student
from edge_rec.distill.teacher_stage import load_teacher
from edge_rec.distill.parallel import auto_workers, run_jobs
from edge_rec.distill.trainer import load_checkpoint, model_inputs, predict, to_tensors, train

STUDENT_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {"model": dict(d_model=16, num_heads=2, ffn_dim=32, head_hidden=24, input_noise=0.5),
             "train": dict(epochs=4, batch_size=32, lr=3e-3, patience=3, catalogue_negatives=16, select_on="full")},
    "default": {"model": dict(d_model=32, num_heads=2, ffn_dim=64, head_hidden=48, input_noise=0.5),
                "train": dict(epochs=5, batch_size=64, lr=3e-3, max_train_requests=12000, patience=3,
                              catalogue_negatives=64, select_on="full")},
    "large": {"model": dict(d_model=64, num_heads=4, ffn_dim=128, head_hidden=96, input_noise=0.5),
              "train": dict(epochs=8, batch_size=256, lr=2e-3, patience=3, catalogue_negatives=128, select_on="full")},
}


# ---- teacher cache -----------------------------------------------------------------------------
@torch.no_grad()
def cache_teacher(teacher: RankerBase, fb: FeatureBuilder, ds: Dataset, idx: np.ndarray,
                  batch: int = 256) -> dict[str, np.ndarray]:
    """Teacher outputs on requests ``idx``: ``logits`` [R, N, 3] float32, ``fused`` [R, N, d_t] float16."""
    teacher.eval()
    logits, fused = [], []
    for c0 in range(0, len(idx), batch):
        t = to_tensors(fb.build(ds, idx[c0:c0 + batch]), torch.device("cpu"))
        o = teacher(**model_inputs(teacher, t))
        logits.append(o["logits"].float().numpy())
        fused.append(o["fused"].numpy().astype(np.float16))
    return {"idx": np.asarray(idx, np.int64), "logits": np.concatenate(logits), "fused": np.concatenate(fused)}


def kd_loss(student: nn.Module, cache: dict[str, np.ndarray], cfg: DistillConfig) -> Callable:
    """The distillation term for the trainer: pointwise + listwise + feature, from the cache."""
    row = np.full(int(cache["idx"].max()) + 1, -1, dtype=np.int64)
    row[cache["idx"]] = np.arange(len(cache["idx"]))
    T = cfg.temperature
    logits_all = torch.from_numpy(cache["logits"])
    fused_all = torch.from_numpy(cache["fused"])

    def term(out: dict[str, torch.Tensor], t: dict[str, torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        r = torch.from_numpy(row[idx])
        if (r < 0).any():
            raise DataError("a training request has no cached teacher output; rebuild the cache.")
        tl = logits_all[r].to(out["logits"].device)                           # (B, N, 3)
        # the teacher scored the logged candidates only: catalogue negatives (columns N..) are
        # trained by the label loss alone
        n = tl.shape[1]
        valid = t["valid"][:, :n]
        denom = valid.sum().clamp(min=1.0)
        sl = out["logits"][:, :n].float()
        out = {**out, "score": out["score"][:, :n], "fused": out["fused"][:, :n]}
        loss = sl.new_zeros(())
        if cfg.pointwise_weight > 0:
            pw = F.binary_cross_entropy_with_logits(sl / T, torch.sigmoid(tl / T), reduction="none").sum(-1)
            loss = loss + cfg.pointwise_weight * T * T * (pw * valid).sum() / denom
        if cfg.listwise_weight > 0:
            w = student.score_w
            ts = (tl @ w).masked_fill(valid <= 0, -1e4)
            ss = out["score"].float().masked_fill(valid <= 0, -1e4)
            kl = F.kl_div(torch.log_softmax(ss / T, -1), torch.log_softmax(ts / T, -1), log_target=True,
                          reduction="none").sum(-1)
            loss = loss + cfg.listwise_weight * T * T * kl.mean()
        if cfg.feature_weight > 0 and hasattr(student, "kd_proj"):
            tf = fused_all[r].to(sl.device).float()
            diff = ((student.kd_proj(out["fused"]) - tf) ** 2).mean(-1)
            loss = loss + cfg.feature_weight * (diff * valid).sum() / denom
        return loss

    return term


# ---- modality importance -------------------------------------------------------------------------
def _mask_modality(arrays: dict[str, np.ndarray], fb: FeatureBuilder, m: str) -> None:
    arrays[f"cand_mask_{m}"][:] = 0.0
    arrays[f"cand_{m}"][:] = 0.0
    o = 0
    for name, d in fb.modalities.items():
        if name == m:
            arrays["hist_emb"][..., o:o + d] = 0.0
        o += d


@torch.no_grad()
def modality_importance(model: RankerBase, fb: FeatureBuilder, ds: Dataset, idx: np.ndarray,
                        batch: int = 256, min_cold_requests: int = 30) -> dict[str, Any]:
    """Relative NDCG@10 lost when each modality is masked (candidates and history).

    Returns ``{"overall": {m: loss}, "cold": {m: loss} | None, "decision": "cold" | "overall"}``.
    The decision uses the cold-start view when there are enough cold requests: an embedding that
    carries nothing can still act as an item fingerprint that lets a model memorise warm items,
    which says nothing about the content it would bring to the feed's fresh items.
    """
    model.eval()

    def run(masked: str | None) -> dict[str, float]:
        parts = []
        for c0 in range(0, len(idx), batch):
            a = fb.build(ds, idx[c0:c0 + batch])
            if masked:
                _mask_modality(a, fb, masked)
            parts.append(model(**model_inputs(model, to_tensors(a, torch.device("cpu"))))["score"].numpy())
        return evaluate_scores(ds, idx, np.concatenate(parts))

    base = run(None)
    masked = {m: run(m) for m in fb.modalities}
    overall = {m: (base["ndcg@10"] - r["ndcg@10"]) / base["ndcg@10"] for m, r in masked.items()}
    use_cold = base.get("cold.n_requests", 0) >= min_cold_requests and np.isfinite(base["cold.ndcg@10"])
    cold = ({m: (base["cold.ndcg@10"] - r["cold.ndcg@10"]) / base["cold.ndcg@10"] for m, r in masked.items()}
            if use_cold else None)
    return {"overall": overall, "cold": cold, "decision": "cold" if use_cold else "overall",
            "base_ndcg@10": base["ndcg@10"], "base_cold.ndcg@10": base["cold.ndcg@10"],
            "cold_requests": base.get("cold.n_requests", 0)}


def loo_uncertainty(ds: Dataset, hist_len: int, without: Mapping[str, Student | Sequence[Student]],
                    full: Student | Sequence[Student], val: np.ndarray, budget: float,
                    n_boot: int = 2000) -> dict[str, Any]:
    """How far each leave-one-out worth can be trusted: a 95 % paired-bootstrap interval of the relative
    validation NDCG@10 lost without each modality (the validation requests resampled, the two arms'
    NDCG on one request kept together). ``without`` {modality: the student(s) trained without it},
    ``full`` the student(s) with all of them, ``val`` [R] request indices. An arm of several students
    (re-trained with other seeds, ``DistillConfig.loo_repeats``) counts with their mean NDCG per request.

    Returns ``importance_ci95`` {m: [lo, hi]} (relative), ``within_noise`` (the modalities whose
    interval holds the budget: another draw of validation requests could flip their decision) and
    ``validation_requests``. The interval covers the sampling of requests, not the retraining noise
    of the students (see ``retraining_sd`` in the stage's report), so it is a lower bound on the
    uncertainty."""
    def ndcg(arm: Student | Sequence[Student]) -> np.ndarray:
        models = [arm] if isinstance(arm, Student) else list(arm)
        per = []
        for model in models:
            fb = FeatureBuilder.from_dataset(ds, hist_len, modalities=list(model.modalities))
            per.append(per_request_ndcg(ds, val, predict(model, fb, ds, val)))
        return np.mean(per, axis=0)                # NaN where the request has no positive (in every model)

    base = ndcg(full)
    n_val = int(np.isfinite(base).sum())
    base_mean = float(np.nanmean(base)) if n_val else 0.0
    if base_mean <= 0:                             # no validation request with a positive: nothing to resample
        return {"importance_ci95": {}, "within_noise": [], "validation_requests": n_val}
    ci, noisy = {}, []
    for m, arm in without.items():
        b = paired_bootstrap(base, ndcg(arm), n_boot=n_boot)
        ci[m] = [b["ci95"][0] / base_mean, b["ci95"][1] / base_mean]
        if ci[m][0] < budget <= ci[m][1]:
            noisy.append(m)
    return {"importance_ci95": ci, "within_noise": noisy, "validation_requests": n_val}


def loo_worth(full_val: Sequence[float], without_val: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Leave-one-out worth of each modality from the students' best validation NDCG@10.

    ``full_val`` [K] the students with every modality (one per seed), ``without_val`` {m: [K]} the
    students without ``m`` trained with the same seeds. Returns ``importance`` {m: relative NDCG@10
    lost, arm means}, and with K >= 2 ``importance_by_repeat`` {m: [K] the same per seed} and
    ``retraining_sd`` {m: their standard deviation}: how much one re-training moves a worth."""
    full = np.asarray(full_val, np.float64)
    out: dict[str, Any] = {"importance": {m: float((full.mean() - np.mean(w)) / full.mean())
                                          for m, w in without_val.items()}}
    if len(full) >= 2:
        by = {m: ((full - np.asarray(w, np.float64)) / full).tolist() for m, w in without_val.items()}
        out["importance_by_repeat"] = by
        out["retraining_sd"] = {m: float(np.std(v, ddof=1)) for m, v in by.items()}
    return out


# ---- structural pruning --------------------------------------------------------------------------
def _prune_once(model: Student, ratio: float, example: dict[str, torch.Tensor]) -> Student:
    tp = requires("torch_pruning")
    m = copy.deepcopy(model).eval()
    attn = m.attn
    prunable = {m.ffn[0], m.head[0], attn.q, attn.k, attn.v}
    ignored = [mod for mod in m.modules() if isinstance(mod, nn.Linear) and mod not in prunable]
    heads = attn.num_heads
    head_ratio = (heads // 2) / heads if heads > 1 and ratio >= 0.5 else 0.0
    pruner = tp.pruner.MetaPruner(
        m, example_inputs=example, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, pruning_ratio_dict={(attn.q, attn.k, attn.v): 0.0} if head_ratio == 0 else None,
        ignored_layers=ignored, num_heads={attn.q: heads, attn.k: heads, attn.v: heads},
        prune_num_heads=head_ratio > 0, prune_head_dims=False, head_pruning_ratio=head_ratio,
        output_transform=lambda out: out["score"].sum(),
        # the token tables span d_model (dim 1), which stays fixed; named so torch-pruning does not warn
        # about "unwrapped parameters" on every distill (it would pick the same dimension itself)
        unwrapped_parameters=[(m.type_emb, 1), (m.mask_token, 1)],
    )
    pruner.step()
    attn.num_heads = attn.q.out_features // attn.head_dim
    return m


def structural_prune(model: Student, target_params: int, cfg: DistillConfig, n: int,
                     hist_len: int) -> tuple[Student, dict[str, Any]]:
    """Prune FFN width, heads and head-MLP width until params <= ``target_params`` (or the cap)."""
    example = model.example_inputs(n=n, hist_len=hist_len, batch=2)
    before = count_params(model)
    chosen, ratio = model, 0.0
    for r in np.arange(0.1, cfg.max_prune_ratio + 1e-9, 0.1):
        cand = _prune_once(model, float(r), example)
        chosen, ratio = cand, float(r)
        if count_params(cand) <= target_params:
            break
    c = model.config
    new_cfg = dataclasses.replace(c, ffn_dim=chosen.ffn[0].out_features, head_hidden=chosen.head[0].out_features,
                                  num_heads=chosen.attn.num_heads, head_dim=chosen.attn.head_dim)
    chosen.config = new_cfg
    info = {"ratio": ratio, "params_before": before, "params_after": count_params(chosen),
            "target_params": int(target_params), "target_reached": count_params(chosen) <= target_params,
            "ffn_dim": [c.ffn_dim, new_cfg.ffn_dim], "num_heads": [c.num_heads, new_cfg.num_heads],
            "head_hidden": [c.head_hidden, new_cfg.head_hidden]}
    return chosen, info


# ---- training one student (in this process or a worker) ------------------------------------------
@dataclasses.dataclass
class _FitContext:
    """What every student's training shares (picklable: it travels to the workers)."""

    ds: Dataset
    subset: np.ndarray
    cache: dict[str, np.ndarray]
    cfg: DistillConfig
    tcfg: TrainConfig
    skw: dict[str, Any]
    hist_len: int
    d_teacher: int
    out: Path
    test: np.ndarray
    n: int

    def new_student(self, mods: dict[str, int], kd: bool) -> Student:
        return self.with_kd_proj(Student(StudentConfig(modalities=mods, hist_dim=_hist_dim(mods), **self.skw)), kd)

    def with_kd_proj(self, student: Student, kd: bool) -> Student:
        """Attach the training-only projection of feature distillation (student fused -> teacher's)."""
        if kd and self.cfg.feature_weight > 0:
            student.kd_proj = nn.Linear(student.config.d_model, self.d_teacher)
        return student


def _fit_student(ctx: _FitContext, name: str, mods: dict[str, int], kd: bool, model: Student | None,
                 epochs: int | None, progress: bool, in_process: bool,
                 seed: int | None = None) -> tuple[dict[str, Any], Student | None]:
    """Train and score one student; returns (report row, the student when ``in_process``; a worker's
    weights come back through ``OUT/runs/<name>/best``). ``seed``: initialisation and batch order
    (default: the train config's)."""
    c = ctx.tcfg if epochs is None else dataclasses.replace(ctx.tcfg, epochs=epochs)
    if seed is not None:
        c = dataclasses.replace(c, seed=seed)
    torch.manual_seed(c.seed)
    student = ctx.new_student(mods, kd) if model is None else ctx.with_kd_proj(model, kd)
    fb = FeatureBuilder.from_dataset(ctx.ds, ctx.hist_len, modalities=list(mods))
    extra = kd_loss(student, ctx.cache, ctx.cfg) if kd else None
    fit_info = train(student, ctx.ds, ctx.out / "runs" / name, c, fb=fb, progress=progress, extra_loss=extra,
                     label_weight=ctx.cfg.label_weight if kd else 1.0, train_idx=ctx.subset)
    if hasattr(student, "kd_proj"):
        del student.kd_proj
    metrics = evaluate_scores(ctx.ds, ctx.test, predict(student, fb, ctx.ds, ctx.test))
    row = model_row(metrics, count_params(student), macs_per_candidate(student, n=ctx.n, hist_len=ctx.hist_len),
                    modalities=list(mods), train=fit_info)
    return row, (student if in_process else None)


def _load_trained(ctx: _FitContext, name: str, mods: dict[str, int]) -> Student:
    """A KD student a worker trained, from the best weights its run kept (KD projection dropped)."""
    student = ctx.new_student(mods, kd=True)           # the same modules as in training
    load_checkpoint(ctx.out / "runs" / name / "best", student)
    if hasattr(student, "kd_proj"):
        del student.kd_proj
    return student.eval()


# ---- the stage -----------------------------------------------------------------------------------
def student_configs(preset: str, model_overrides: dict[str, Any] | None = None,
                    train_overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], TrainConfig]:
    """Model keyword arguments and the :class:`TrainConfig` of a student preset, with overrides."""
    return preset_configs(STUDENT_PRESETS, preset, model_overrides, train_overrides)


def _hist_dim(mods: dict[str, int]) -> int:
    return sum(mods.values()) + N_ENGAGEMENT


def distill(ds: Dataset, teacher_dir: str | Path, out: str | Path, *, preset: str = "default",
            config: DistillConfig | None = None, model_overrides: dict[str, Any] | None = None,
            train_overrides: dict[str, Any] | None = None, progress: bool = True,
            jobs: int | None = None) -> dict[str, Any]:
    """Run steps 1-5 of the module docstring; returns the stage report (also ``OUT/report.json``).

    ``jobs``: worker processes for the independent students of steps 2-4 (default: one per core on a
    CPU; see :mod:`edge_rec.distill.parallel`)."""
    cfg = config or DistillConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher, tmeta = load_teacher(teacher_dir)
    if tmeta["config"]["modalities"] != ds.modalities:
        raise DataError(f"the teacher in {teacher_dir} was trained on modalities {tmeta['config']['modalities']}, "
                        f"the dataset has {ds.modalities}; train the teacher on this dataset first.")
    hist_len = tmeta["hist_len"]
    skw, tcfg = without_unlabelled(*student_configs(preset, model_overrides, train_overrides), ds)
    tcfg = dataclasses.replace(tcfg, hist_len=hist_len, contrastive_weight=0.0)
    n = ds.requests["cand"].shape[1]
    tfb = FeatureBuilder.from_dataset(ds, hist_len)
    train_all = ds.split_index("train")
    rng = np.random.default_rng(tcfg.seed)
    subset = np.sort(rng.permutation(train_all)[: tcfg.max_train_requests or len(train_all)])
    tcfg = dataclasses.replace(tcfg, max_train_requests=0)
    cache = cache_teacher(teacher, tfb, ds, subset)
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in cache.items()}, str(out / "teacher_cache.safetensors"))
    test = ds.split_index("test")
    val = ds.split_index("val")
    if len(val) == 0:
        val = subset[-min(len(subset), 256):]
    t_params, t_macs = count_params(teacher), macs_per_candidate(teacher, n=n, hist_len=hist_len)
    d_teacher = teacher.config.d_model
    models: dict[str, dict[str, Any]] = {}

    ctx = _FitContext(ds=ds, subset=subset, cache=cache, cfg=cfg, tcfg=tcfg, skw=skw, hist_len=hist_len,
                      d_teacher=d_teacher, out=out, test=test, n=n)

    def fit(name: str, mods: dict[str, int], kd: bool, model: Student | None = None,
            epochs: int | None = None) -> Student:
        row, student = _fit_student(ctx, name, mods, kd, model, epochs, progress, True)
        models[name] = row
        return student

    all_mods = dict(ds.modalities)
    # the students that need nothing but the teacher cache, trained side by side on a CPU
    # (see edge_rec.distill.parallel): the no-KD control, the KD student and, for modality pruning,
    # one student without each modality
    loo = cfg.prune_modalities and len(all_mods) > 1
    reps = range(cfg.loo_repeats if loo else 1)

    def rep_name(base: str, r: int) -> str:
        return base if r == 0 else f"{base}_r{r}"

    # each leave-one-out arm: loo_repeats students (seeds seed, seed+1, ...); repeat 0 of the full arm
    # is student_kd, and repeat 0 of "without m" is re-used when only m is pruned
    full_names = [rep_name("student_kd", r) for r in reps]
    loo_names = {m: [rep_name(f"student_without_{m}", r) for r in reps] for m in all_mods} if loo else {}
    seed0 = tcfg.seed
    todo = [("student_label_only", all_mods, False, seed0)]
    todo += [(name, all_mods, True, seed0 + r) for r, name in enumerate(full_names)]
    todo += [(name, {k: v for k, v in all_mods.items() if k != m}, True, seed0 + r)
             for m, names in loo_names.items() for r, name in enumerate(names)]
    workers = auto_workers(len(todo), tcfg.device, jobs)
    results = run_jobs(_fit_student, [(ctx, name, mods, kd, None, None, progress and workers == 1, workers == 1, seed)
                                      for name, mods, kd, seed in todo], workers, desc="distill", progress=progress)
    trained: dict[str, Student | None] = {}
    for (name, mods, kd, _), (row, student) in zip(todo, results):
        models[name], trained[name] = row, student

    def student_of(name: str) -> Student:
        """A student trained above (rebuilt from its run's best weights when a worker trained it)."""
        if trained[name] is None:
            mods = {m: all_mods[m] for m in models[name]["modalities"]}
            trained[name] = _load_trained(ctx, name, mods)
        return trained[name]

    def best_val(name: str) -> float:
        # modality worth stays the sampled validation NDCG@10 of each arm's selected epoch: the measure
        # the budget and loo_uncertainty's per-request intervals are defined on
        return models[name]["train"]["best_val_ndcg@10"]

    # Modality worth: leave one modality out, re-distil, and measure the validation NDCG@10 lost.
    # (Masking a modality in a trained model under-states it, because every embedding also
    # fingerprints the item, and a model can recover a masked item from the others.)
    masking = modality_importance(teacher, tfb, ds, val)
    fallback: dict[str, Any] = {"fired": False}
    importance: dict[str, float] = {}
    uncertainty: dict[str, Any] = {}
    if loo_names:
        worth = loo_worth([best_val(n) for n in full_names], {m: [best_val(n) for n in names]
                                                               for m, names in loo_names.items()})
        importance = worth.pop("importance")
        uncertainty = loo_uncertainty(ds, hist_len, {m: [student_of(n) for n in names] for m, names in loo_names.items()},
                                      [student_of(n) for n in full_names], val, cfg.modality_budget)
        uncertainty.update(worth, loo_repeats=len(reps))
        kept = [m for m in all_mods if importance[m] >= cfg.modality_budget]
        if not kept:
            # never prune everything: keep the most useful one by leave-one-out. That is not a measured
            # decision that it pays, so the report says so, with the teacher's masking measure beside
            # the leave-one-out one (they can disagree: on a clicks-only log leave-one-out said every
            # modality hurt while masking said visual carried 4 % overall and 17 % on cold items)
            best = max(importance, key=importance.get)
            kept = [best]
            fallback = {"fired": True,
                        "why": f"no modality's leave-one-out worth reached the budget {cfg.modality_budget} "
                               f"(best: {best}, {importance[best]:+.4f}); {best} is kept so that the student has an input",
                        "kept_by_fallback": best,
                        "side_by_side": {m: {"leave_one_out": importance[m],
                                             "teacher_masking_overall": masking["overall"].get(m),
                                             "teacher_masking_cold": (masking["cold"] or {}).get(m)} for m in all_mods}}
    else:
        kept = list(all_mods)
    pruned = [m for m in all_mods if m not in kept]
    kept_mods = {m: all_mods[m] for m in kept}
    if not pruned:
        unpruned = student_of("student_kd")
        models["student_modality_pruned"] = dict(models["student_kd"])
    elif len(pruned) == 1:   # that student was trained already: re-use it
        unpruned = student_of(loo_names[pruned[0]][0])
        models["student_modality_pruned"] = dict(models[loo_names[pruned[0]][0]])
    else:
        unpruned = fit("student_modality_pruned", kept_mods, kd=True)
    for names in [full_names[1:], *loo_names.values()]:   # the arms' students are in the worth, not the table
        for name in names:
            models.pop(name, None)

    target = int(cfg.target_params_ratio * t_params)
    small, sinfo = structural_prune(unpruned, target, cfg, n, hist_len)
    final = fit("student", kept_mods, kd=True, model=small, epochs=cfg.finetune_epochs)
    models["student"]["structural_pruning"] = sinfo

    for name in models:
        models[name]["params_ratio_to_teacher"] = models[name]["params"] / t_params
        models[name]["macs_ratio_to_teacher"] = models[name]["macs_per_candidate"] / t_macs
    planted = ds.meta.get("planted", {}).get("noise_modality")
    report = {
        "preset": preset, "config": cfg.to_dict(), "train_config": tcfg.to_dict(), "side_by_side_workers": workers,
        "models": models,
        "modalities": {"importance": importance, "kept": kept, "pruned": pruned, "planted_noise": planted,
                       "budget": cfg.modality_budget,
                       "measured_on": (f"leave-one-out re-distilled students ({len(reps)} per arm, averaged), validation NDCG@10"
                                       if len(reps) > 1 else "leave-one-out re-distilled students, validation NDCG@10"),
                       **uncertainty,
                       "teacher_masking": masking, "fallback": fallback},
        "teacher": {"params": t_params, "macs_per_candidate": t_macs, "dir": str(teacher_dir)},
        "student": {"config": final.config.to_dict(), "structural_pruning": sinfo},
    }
    save_student(final, out, hist_len, kept, pruned)
    write_json(out / "report.json", report)
    return report


def save_student(model: Student, out: Path, hist_len: int, kept: list[str], pruned: list[str]) -> None:
    save_ranker(model, out, "student", hist_len, kept_modalities=kept, pruned_modalities=pruned)


def load_student(path: str | Path) -> tuple[Student, dict[str, Any]]:
    """Rebuild the final student from ``save_student``'s folder (weights loaded, eval mode)."""
    return load_ranker(path, "student", Student, StudentConfig, "edge-rec distill")
