"""Distillation, modality pruning and structural pruning: the mechanics, on a tiny world."""

import json

import numpy as np
import pytest
import torch

from edge_rec.distill.configs import DistillConfig, StudentConfig
from edge_rec.distill.distill_stage import (cache_teacher, distill, kd_loss, load_student, modality_importance,
                                            structural_prune)
from edge_rec.distill.features import FeatureBuilder, input_names
from edge_rec.distill.models import count_params, macs_per_candidate
from edge_rec.distill.student import Student
from edge_rec.distill.teacher_stage import load_teacher, train_teacher
from edge_rec.distill.trainer import model_inputs, to_tensors
from edge_rec.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def teacher_dir(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(tiny_world, out, preset="tiny", ablation=False, fusion_baselines=False,
                  train_overrides={"epochs": 2}, progress=False)
    return out


def _student(ds, fb, **kw):
    torch.manual_seed(0)
    cfg = dict(d_model=16, num_heads=2, ffn_dim=32, head_hidden=24)
    cfg.update(kw)
    return Student(StudentConfig(modalities=fb.modalities, hist_dim=fb.hist_dim, **cfg))


def test_listwise_kd_is_zero_when_the_student_matches_the_teacher(tiny_world, teacher_dir):
    teacher, meta = load_teacher(teacher_dir)
    fb = FeatureBuilder.from_dataset(tiny_world, meta["hist_len"])
    idx = tiny_world.split_index("train")[:8]
    cache = cache_teacher(teacher, fb, tiny_world, idx)
    n = tiny_world.requests["cand"].shape[1]
    assert cache["logits"].shape == (8, n, 3) and cache["fused"].dtype == np.float16
    t = to_tensors(fb.build(tiny_world, idx), torch.device("cpu"))
    out = teacher(**model_inputs(teacher, t))
    only_list = kd_loss(teacher, cache, DistillConfig(pointwise_weight=0, feature_weight=0))
    assert float(only_list(out, t, idx)) < 1e-6
    other = _student(tiny_world, fb)
    so = other(**model_inputs(other, t))
    full = kd_loss(other, cache, DistillConfig())
    assert float(full(so, t, idx)) > float(only_list(out, t, idx)) + 1e-3


def test_structural_pruning_shrinks_and_round_trips(tiny_world, tmp_path):
    fb = FeatureBuilder.from_dataset(tiny_world, 8)
    s = _student(tiny_world, fb)
    before = count_params(s)
    small, info = structural_prune(s, target_params=int(before * 0.8), cfg=DistillConfig(), n=16, hist_len=8)
    assert info["params_after"] == count_params(small) < before
    assert small.config.ffn_dim < 32 or small.config.head_hidden < 24
    assert small.config.d_model == 16                     # width of the residual stream is kept
    x = small.example_inputs(n=16, hist_len=8)
    y = small.eval()(**x)["score"]
    assert torch.isfinite(y).all()
    assert macs_per_candidate(small, n=16, hist_len=8) < macs_per_candidate(s, n=16, hist_len=8)
    from edge_rec.distill.distill_stage import save_student

    save_student(small, tmp_path, 8, list(fb.modalities), [])
    again, meta = load_student(tmp_path)
    assert torch.allclose(again(**x)["score"], y, atol=1e-6)
    assert meta["input_names"] == input_names(fb.modalities)


@pytest.mark.parametrize("heads", [1, 2])
def test_exported_single_request_forward_equals_the_training_forward(tiny_world, heads):
    """What the exporters trace (``forward_request``: no shape arithmetic) computes exactly what the
    model trains and is verified with — missing modalities, padded history and several heads included."""
    fb = FeatureBuilder.from_dataset(tiny_world, 8)
    s = _student(tiny_world, fb, num_heads=heads, head_dim=8).eval()
    x = s.example_inputs(n=23, hist_len=8)
    m = next(iter(s.modalities))
    x[f"cand_mask_{m}"][::3] = 0
    x[f"cand_{m}"][::3] = 0
    x["hist_weight"][:3] = 0
    x["hist_emb"][:3] = 0
    with torch.no_grad():
        a, b = s(**x), s.forward_request(**x)
    for k in ("score", "p_click", "p_finish", "p_like", "fused"):
        assert a[k].shape == b[k].shape
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_masking_importance_reports_every_modality(tiny_world, teacher_dir):
    teacher, meta = load_teacher(teacher_dir)
    fb = FeatureBuilder.from_dataset(tiny_world, meta["hist_len"])
    imp = modality_importance(teacher, fb, tiny_world, tiny_world.split_index("val"))
    assert set(imp["overall"]) == set(tiny_world.modalities)
    assert all(np.isfinite(v) for v in imp["overall"].values())


def test_bad_distill_config():
    with pytest.raises(ConfigError):
        DistillConfig(temperature=0)
    with pytest.raises(ConfigError):
        DistillConfig(target_params_ratio=0)
    with pytest.raises(ConfigError, match="loo_repeats"):
        DistillConfig(loo_repeats=0)


def test_loo_worth_averages_the_arms_and_reports_the_retraining_spread():
    """The worth is the relative loss of the arms' mean best validation NDCG; with several seeds per
    arm each seed's worth and their spread are reported too."""
    from edge_rec.distill.distill_stage import loo_worth

    one = loo_worth([0.8], {"a": [0.6], "b": [0.84]})
    assert one == {"importance": {"a": pytest.approx(0.25), "b": pytest.approx(-0.05)}}
    three = loo_worth([0.8, 0.7, 0.9], {"a": [0.6, 0.7, 0.81]})
    assert three["importance"]["a"] == pytest.approx(1 - (0.6 + 0.7 + 0.81) / (0.8 + 0.7 + 0.9))
    assert three["importance_by_repeat"]["a"] == pytest.approx([0.25, 0.0, 0.1])
    assert three["retraining_sd"]["a"] == pytest.approx(np.std([0.25, 0.0, 0.1], ddof=1))


def test_loo_uncertainty_intervals_flag_decisions_within_noise(tiny_world):
    """The interval of each leave-one-out worth holds its point estimate; "within noise" is exactly
    "the interval holds the budget"; a student compared with itself has a zero-width interval; no
    validation request with a positive gives no interval rather than NaN."""
    import dataclasses

    from edge_rec.distill.distill_stage import loo_uncertainty
    from edge_rec.distill.evaluate import per_request_ndcg
    from edge_rec.distill.trainer import predict

    fb = FeatureBuilder.from_dataset(tiny_world, 8)
    full = _student(tiny_world, fb).eval()
    fb_wo = FeatureBuilder.from_dataset(tiny_world, 8, modalities=[m for m in fb.modalities if m != "motion"])
    torch.manual_seed(1)
    without = Student(StudentConfig(modalities=fb_wo.modalities, hist_dim=fb_wo.hist_dim, d_model=16, num_heads=2,
                                    ffn_dim=32, head_hidden=24)).eval()
    val = tiny_world.split_index("val")
    a = per_request_ndcg(tiny_world, val, predict(full, fb, tiny_world, val))
    b = per_request_ndcg(tiny_world, val, predict(without, fb_wo, tiny_world, val))
    point = np.nanmean(a - b) / np.nanmean(a)
    u = loo_uncertainty(tiny_world, 8, {"motion": without, "same": full}, full, val, budget=0.005)
    lo, hi = u["importance_ci95"]["motion"]
    assert lo < point < hi and hi - lo > 0.01
    # an arm of several students counts with their mean NDCG per request: two copies change nothing,
    # and the full student against the arm [full, without] is half of the difference request by request
    assert loo_uncertainty(tiny_world, 8, {"motion": [without, without]}, [full, full], val,
                           budget=0.005)["importance_ci95"]["motion"] == pytest.approx([lo, hi])
    half = loo_uncertainty(tiny_world, 8, {"motion": [full, without]}, full, val, budget=0.005)
    assert half["importance_ci95"]["motion"] == pytest.approx([lo / 2, hi / 2], abs=0.004)
    assert u["importance_ci95"]["same"] == [0.0, 0.0] and "same" not in u["within_noise"]
    assert u["validation_requests"] == int(np.isfinite(a).sum()) > 100
    mid = loo_uncertainty(tiny_world, 8, {"motion": without}, full, val, budget=(lo + hi) / 2)
    assert mid["within_noise"] == ["motion"]
    above = loo_uncertainty(tiny_world, 8, {"motion": without}, full, val, budget=hi + 0.01)
    assert above["within_noise"] == []
    silent = dataclasses.replace(tiny_world, requests={**tiny_world.requests,
                                                        "click": np.zeros_like(tiny_world.requests["click"])})
    none = loo_uncertainty(silent, 8, {"motion": without}, full, val, budget=0.005)
    assert none == {"importance_ci95": {}, "within_noise": [], "validation_requests": 0}


@pytest.mark.slow
def test_distill_stage_end_to_end(tiny_world, teacher_dir, tmp_path):
    rep = distill(tiny_world, teacher_dir, tmp_path, preset="tiny", train_overrides={"epochs": 2},
                  config=DistillConfig(finetune_epochs=1, loo_repeats=2), progress=False)
    m = rep["models"]
    for name in ("student_label_only", "student_kd", "student_modality_pruned", "student"):
        assert {"ndcg@10", "cold.ndcg@10", "params", "macs_per_candidate"} <= set(m[name]), name
    mods = rep["modalities"]
    assert set(mods["kept"]) | set(mods["pruned"]) == set(tiny_world.modalities)
    assert set(mods["importance"]) == set(tiny_world.modalities) and mods["kept"]
    # each worth comes with its 95 % interval over the validation requests; the point estimate (from the
    # students' best validation NDCG) lies inside it, and "within noise" means the interval holds the budget
    budget = rep["config"]["modality_budget"]
    assert mods["validation_requests"] > 100 and set(mods["importance_ci95"]) == set(mods["importance"])
    for mod, (lo, hi) in mods["importance_ci95"].items():
        assert lo < mods["importance"][mod] < hi, (mod, lo, hi)
        assert (mod in mods["within_noise"]) == (lo < budget <= hi)
    # two students per arm (seeds 0 and 1): the worth of the arm means lies between the two seeds' worths,
    # whose spread is reported; the extra students are kept under runs/ but not in the model table
    assert mods["loo_repeats"] == 2 and "2 per arm" in mods["measured_on"]
    for mod, per_seed in mods["importance_by_repeat"].items():
        assert len(per_seed) == 2 and min(per_seed) <= mods["importance"][mod] <= max(per_seed)
        assert mods["retraining_sd"][mod] == pytest.approx(abs(per_seed[0] - per_seed[1]) / np.sqrt(2))
    assert (tmp_path / "runs" / "student_kd_r1").is_dir() and (tmp_path / "runs" / "student_without_motion_r1").is_dir()
    assert not any(name.endswith("_r1") or name.startswith("student_without") for name in m)
    assert m["student"]["params"] < m["student_label_only"]["params"] < rep["teacher"]["params"]
    student, meta = load_student(tmp_path)
    assert meta["kept_modalities"] == mods["kept"]
    assert student.input_names == input_names({k: tiny_world.modalities[k] for k in mods["kept"]})
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["modalities"]["pruned"] == mods["pruned"]
    # the keep-one fallback fires exactly when no modality's worth reaches the budget, and then says so
    paid = [mm for mm in mods["importance"] if mods["importance"][mm] >= budget]
    assert mods["fallback"]["fired"] == (not paid)
    if paid:
        assert mods["fallback"] == {"fired": False} and sorted(mods["kept"]) == sorted(paid)
    else:
        assert mods["kept"] == [mods["fallback"]["kept_by_fallback"]]


@pytest.mark.slow
def test_the_modality_pruning_fallback_says_it_fired(tiny_world, teacher_dir, tmp_path):
    """A budget no modality pays: one modality is still kept, and the report (and the CLI) says that was
    the fallback, not a measured decision, with leave-one-out and teacher masking side by side."""
    rep = distill(tiny_world, teacher_dir, tmp_path, preset="tiny", train_overrides={"epochs": 1},
                  config=DistillConfig(finetune_epochs=1, modality_budget=0.99), progress=False)
    mods = rep["modalities"]
    fb = mods["fallback"]
    assert fb["fired"] and mods["kept"] == [fb["kept_by_fallback"]] and "budget 0.99" in fb["why"]
    assert set(fb["side_by_side"]) == set(tiny_world.modalities)
    for v in fb["side_by_side"].values():
        assert v["leave_one_out"] < 0.99 and v["teacher_masking_overall"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modality_pruning_drops_the_planted_noise_and_keeps_visual(seed, tmp_path):
    """Issue #4's bar on three tiny worlds: the presets' teacher and students, leave-one-out worth
    averaged over three students per arm (seeds 0-2).

    ``motion`` is i.i.d. noise (the planted noise modality) and must go; ``visual`` carries the topic,
    the style and the quality and must stay. One student per arm is not enough here: re-training with
    another seed moves a worth by 1.3-3.3 points (sd) on these ~220 validation requests
    (``retraining_sd``), far more than the 0.5 % budget. (``audio`` and ``text`` are pruned too: here
    audio's per-item factors hurt the students and text's signal is too weak, see the README.)"""
    from edge_rec.distill.world import generate_world, world_config

    ds = generate_world(world_config("tiny", seed=seed))
    train_teacher(ds, tmp_path / "t", preset="tiny", ablation=False, fusion_baselines=False, progress=False)
    rep = distill(ds, tmp_path / "t", tmp_path / "s", preset="tiny", progress=False,
                  config=DistillConfig(loo_repeats=3))
    mods = rep["modalities"]
    assert "motion" in mods["pruned"] and "visual" in mods["kept"], mods["importance"]
    assert mods["importance"]["visual"] >= rep["config"]["modality_budget"] > mods["importance"]["motion"]
    assert set(mods["retraining_sd"]) == set(ds.modalities) and mods["loo_repeats"] == 3


# ---- independent models trained side by side (edge_rec.distill.parallel) ------------------------
def test_worker_count_rules(monkeypatch):
    from edge_rec.distill.parallel import auto_workers, cpu_count

    monkeypatch.delenv("EDGE_REC_JOBS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert auto_workers(1, "cpu") == 1                          # nothing to run side by side
    assert auto_workers(4, "cpu") == min(4, cpu_count())
    assert auto_workers(4, "cpu", jobs=3) == 3 and auto_workers(2, "cpu", jobs=8) == 2
    monkeypatch.setenv("EDGE_REC_JOBS", "1")
    assert auto_workers(4, "cpu") == 1
    monkeypatch.setenv("EDGE_REC_JOBS", "two")
    with pytest.raises(ConfigError, match="EDGE_REC_JOBS"):
        auto_workers(4, "cpu")
    monkeypatch.delenv("EDGE_REC_JOBS")
    with pytest.raises(ConfigError, match="jobs=0"):
        auto_workers(4, "cpu", jobs=0)
    monkeypatch.setenv("WORLD_SIZE", "2")                       # under torchrun: DDP does the parallel work
    assert auto_workers(4, "cpu", jobs=2) == 1


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_return_results_in_order_and_errors_typed(tmp_path, start):
    from edge_rec.distill.dataset import Dataset
    from edge_rec.distill.parallel import run_jobs

    jobs = [(np.arange(k),) for k in (5, 1, 3)]
    assert run_jobs(np.sum, jobs, 2, progress=False, start_method=start) == [10, 0, 3]
    with pytest.raises(DataError):
        run_jobs(Dataset.load, [(tmp_path / "missing_a",), (tmp_path / "missing_b",)], 2, progress=False,
                 start_method=start)


@pytest.mark.slow
def test_side_by_side_training_gives_the_same_models(tiny_world, teacher_dir, tmp_path):
    """Workers (1 thread each) and one process train the same teacher-stage and distill-stage models."""
    from safetensors.numpy import load_file

    reps = {}
    for jobs in (1, 2):
        t = train_teacher(tiny_world, tmp_path / f"t{jobs}", preset="tiny", train_overrides={"epochs": 1},
                          progress=False, jobs=jobs)
        d = distill(tiny_world, teacher_dir, tmp_path / f"s{jobs}", preset="tiny", train_overrides={"epochs": 1},
                    config=DistillConfig(finetune_epochs=1), progress=False, jobs=jobs)
        # nothing pruned: the final student starts from student_kd, which a worker trained (jobs=2)
        # and the stage rebuilds from that run's best weights
        k = distill(tiny_world, teacher_dir, tmp_path / f"k{jobs}", preset="tiny", train_overrides={"epochs": 1},
                    config=DistillConfig(finetune_epochs=1, prune_modalities=False), progress=False, jobs=jobs)
        assert k["side_by_side_workers"] == jobs and not k["modalities"]["pruned"]
        reps[jobs] = (t, d)
    (t1, d1), (t2, d2) = reps[1], reps[2]
    assert t1["teacher"]["throughput"]["side_by_side_workers"] == 1 and d1["side_by_side_workers"] == 1
    assert t2["teacher"]["throughput"]["side_by_side_workers"] == 2 and d2["side_by_side_workers"] == 2
    assert set(t1["models"]) == set(t2["models"]) >= {"early_fusion", "late_fusion", "teacher"}
    for a, b in ((t1, t2), (d1, d2)):
        for name in a["models"]:
            assert a["models"][name]["ndcg@10"] == pytest.approx(b["models"][name]["ndcg@10"], rel=1e-6), name
    assert t1["teacher"]["contrastive_ablation"]["ndcg@10_gain"] == pytest.approx(
        t2["teacher"]["contrastive_ablation"]["ndcg@10_gain"], abs=1e-6)
    assert d1["modalities"]["pruned"] == d2["modalities"]["pruned"]
    for sub in ("t", "s", "k"):                                # the saved teachers and final students
        w1, w2 = load_file(str(tmp_path / f"{sub}1" / "model.safetensors")), load_file(str(tmp_path / f"{sub}2" / "model.safetensors"))
        assert w1.keys() == w2.keys()
        for k in w1:
            if k.endswith("attn.k.bias"):
                # a key bias adds the same q.b to every logit of a query: softmax cancels it, its true
                # gradient is 0 and Adam turns the rounding noise (which differs with the thread
                # count) into steps; it cannot change any output (the NDCGs above are equal)
                continue
            np.testing.assert_allclose(w1[k], w2[k], rtol=1e-5, atol=1e-6, err_msg=f"{sub}: {k}")


def test_a_saved_student_from_elsewhere_is_a_clear_error(tmp_path):
    """A student folder another edge-rec version wrote (an unknown setting), a broken config.json or a
    truncated weights file is a DataError naming the file and what to do, never a TypeError."""
    from edge_rec.distill.checkpoint import save_ranker
    from edge_rec.distill.configs import StudentConfig
    from edge_rec.distill.distill_stage import load_student
    from edge_rec.distill.student import Student

    mods = {"visual": 8}
    student = Student(StudentConfig(modalities=mods, hist_dim=8 + 3, d_model=8, ffn_dim=8, head_hidden=8))
    save_ranker(student, tmp_path, "student", 5)
    loaded, meta = load_student(tmp_path)
    assert meta["hist_len"] == 5 and loaded.config == student.config
    cfg = json.loads((tmp_path / "config.json").read_text())
    good = json.dumps(cfg)
    cfg["config"]["signed_profile"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="does not know: signed_profile"):
        load_student(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        load_student(tmp_path)
    (tmp_path / "config.json").write_text(good)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="does not fit"):
        load_student(tmp_path)
