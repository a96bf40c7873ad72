"""Teacher, fusion baselines and trainer: I/O contract, determinism, resume, DDP (gloo), real data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edge_rec.distill.configs import TrainConfig
from edge_rec.distill.features import FeatureBuilder, OUTPUT_NAMES, input_names
from edge_rec.distill.loaders import load_kuairand, load_mmssl
from edge_rec.distill.models import build_model, count_params, macs_per_candidate
from edge_rec.distill.teacher_stage import load_teacher, train_teacher
from edge_rec.distill.trainer import predict, train
from edge_rec.errors import ConfigError, DataError

from conftest import FIXTURES

SMALL = dict(d_model=32, num_heads=2, num_layers=1, hist_layers=1, head_hidden=32)


@pytest.fixture(scope="module")
def fb(tiny_world):
    return FeatureBuilder.from_dataset(tiny_world, hist_len=8)


@pytest.mark.parametrize("kind", ["teacher", "early_fusion", "late_fusion"])
def test_io_contract(tiny_world, fb, kind):
    model = build_model(kind, tiny_world.modalities, fb.hist_dim, **(SMALL if kind == "teacher" else {})).eval()
    assert model.input_names == input_names(tiny_world.modalities)
    assert model.output_names == OUTPUT_NAMES
    x = model.example_inputs(n=7, hist_len=8)
    out = model(**x)
    for name in OUTPUT_NAMES:
        assert out[name].shape == (7,), name
    assert ((out["p_click"] > 0) & (out["p_click"] < 1)).all()
    batched = model(**{k: v.unsqueeze(0).repeat(3, *[1] * v.dim()) for k, v in x.items()})
    assert torch.allclose(batched["score"][1], out["score"], atol=1e-5)
    # real features have the contract's shapes
    arrays = fb.build(tiny_world, np.arange(4))
    n = tiny_world.requests["cand"].shape[1]
    assert arrays["cand_visual"].shape == (4, n, 32) and arrays["hist_emb"].shape == (4, 8, fb.hist_dim)
    assert macs_per_candidate(model, n=n, hist_len=8) > 0 and count_params(model) > 0


def test_teacher_is_content_driven_where_history_and_candidates_are_permuted(tiny_world, fb):
    model = build_model("teacher", tiny_world.modalities, fb.hist_dim, **SMALL).eval()
    x = model.example_inputs(n=9, hist_len=8)
    perm = torch.randperm(9)
    a = model(**x)["score"]
    b = model(**{k: (v[perm] if k.startswith("cand_") else v) for k, v in x.items()})["score"]
    assert torch.allclose(a[perm], b, atol=1e-5)          # candidates are scored independently
    x2 = dict(x, hist_weight=torch.zeros(8))                 # empty history is allowed (null slot)
    assert torch.isfinite(model(**x2)["score"]).all()


def test_input_noise_perturbs_content_only_while_training(tiny_world, fb):
    """The anti-memorisation noise touches the content embeddings in training, never the engagement
    columns of the history, and never an evaluation or an export."""
    model = build_model("teacher", tiny_world.modalities, fb.hist_dim, **SMALL, input_noise=0.5)
    x = model.example_inputs(n=5, hist_len=8)
    model.eval()
    a, b = model(**x)["score"], model(**x)["score"]
    assert torch.equal(a, b)                                 # eval: no noise
    model.train()
    h = x["hist_emb"].unsqueeze(0)
    noisy = model._noisy_hist(h)
    assert torch.equal(noisy[..., -3:], h[..., -3:])         # watch ratio, like, skip: exact
    assert (noisy[..., :-3] - h[..., :-3]).abs().mean() > 0.2
    toks = model.modality_tokens({k: v.unsqueeze(0) for k, v in x.items()})
    clean = {m: model.proj[m](x[f"cand_{m}"].unsqueeze(0)) for m in model.modalities}
    assert all(not torch.allclose(toks[m], clean[m]) for m in model.modalities)
    plain = build_model("teacher", tiny_world.modalities, fb.hist_dim, **SMALL).train()
    assert torch.equal(plain._noisy_hist(h), h)               # input_noise=0: untouched
    from edge_rec.distill.configs import StudentConfig
    from edge_rec.distill.student import Student

    st = Student(StudentConfig(modalities=fb.modalities, hist_dim=fb.hist_dim, input_noise=0.5, modality_dropout=0.0))
    xs = st.example_inputs(n=5, hist_len=8)
    st.eval()
    assert torch.equal(st(**xs)["score"], st(**xs)["score"])
    assert torch.allclose(st(**xs)["score"], st.forward_request(**xs)["score"], atol=1e-5)
    st.train()
    torch.manual_seed(1)
    assert not torch.allclose(st(**xs)["score"], st(**xs)["score"])


def test_missing_modality_uses_the_mask_token(tiny_world, fb):
    model = build_model("teacher", tiny_world.modalities, fb.hist_dim, **SMALL).eval()
    x = model.example_inputs(n=5, hist_len=8)
    x["cand_mask_audio"] = torch.tensor([1.0, 0, 1, 0, 1])
    y = dict(x, cand_audio=x["cand_audio"] * 100)            # a masked modality's values do not matter...
    a, b = model(**x)["score"], model(**y)["score"]
    assert torch.allclose(a[[1, 3]], b[[1, 3]], atol=1e-5)
    assert not torch.allclose(a[[0, 2, 4]], b[[0, 2, 4]], atol=1e-3)   # ...a present one does


def _cfg(**kw):
    return TrainConfig(**{**dict(epochs=2, batch_size=32, max_train_requests=320, hist_len=8, patience=5), **kw})


def test_training_is_deterministic_and_resume_continues_the_same_run(tiny_world, fb, tmp_path):
    def run(out, pause=None, resume=False):
        torch.manual_seed(0)
        m = build_model("teacher", tiny_world.modalities, fb.hist_dim, **SMALL)
        train(m, tiny_world, out, _cfg(), fb=fb, progress=False, stop_after_epochs=pause, resume=resume)
        return load_file(str(out / "last" / "model.safetensors"))

    full = run(tmp_path / "a")
    again = run(tmp_path / "b")
    assert all(torch.equal(full[k], again[k]) for k in full)
    half = run(tmp_path / "c", pause=1)
    assert json.loads((tmp_path / "c" / "last" / "state.json").read_text())["epoch"] == 1
    assert not all(torch.equal(full[k], half[k]) for k in full)
    resumed = run(tmp_path / "c", resume=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    log = [json.loads(l) for l in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    with pytest.raises(DataError, match="nothing to resume"):
        train(build_model("teacher", tiny_world.modalities, fb.hist_dim, **SMALL), tiny_world,
              tmp_path / "empty", _cfg(), fb=fb, progress=False, resume=True)


def test_training_improves_ranking(tiny_world, fb, tmp_path):
    torch.manual_seed(0)
    m = build_model("teacher", tiny_world.modalities, fb.hist_dim, **SMALL)
    val = tiny_world.split_index("val")
    from edge_rec.distill.evaluate import evaluate_scores

    before = evaluate_scores(tiny_world, val, predict(m, fb, tiny_world, val))["ndcg@10"]
    res = train(m, tiny_world, tmp_path, _cfg(epochs=3, max_train_requests=0), fb=fb, progress=False)
    assert res["best_val_ndcg@10"] > before + 0.05
    assert res["samples_per_s"] > 0


def test_per_request_ndcg_and_the_paired_bootstrap(tiny_world):
    from edge_rec.distill.evaluate import evaluate_scores, paired_bootstrap, per_request_ndcg

    idx = tiny_world.split_index("test")
    rng = np.random.default_rng(0)
    a = rng.normal(size=tiny_world.requests["cand"][idx].shape)
    ev = evaluate_scores(tiny_world, idx, a)
    # the per-request values average to the report's numbers, overall and on the cold-start view
    assert np.nanmean(per_request_ndcg(tiny_world, idx, a, "all")) == pytest.approx(ev["ndcg@10"], abs=1e-9)
    assert np.nanmean(per_request_ndcg(tiny_world, idx, a, "cold")) == pytest.approx(ev["cold.ndcg@10"], abs=1e-9)
    x = rng.uniform(size=400)
    same = paired_bootstrap(x, x)
    assert same["mean_diff"] == 0 and same["ci95"] == [0.0, 0.0] and same["n_requests"] == 400
    up = paired_bootstrap(x + 0.05 + 0.01 * rng.normal(size=400), x)
    assert 0 < up["ci95"][0] < up["mean_diff"] < up["ci95"][1] and up["share_better"] > 0.9
    noisy = paired_bootstrap(x + rng.normal(0, 0.3, size=400), x)
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1]            # no difference: the interval says so
    assert paired_bootstrap(np.array([np.nan]), np.array([1.0]))["n_requests"] == 0


def test_bad_train_config():
    with pytest.raises(ConfigError):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="device"):
        TrainConfig(device="tpu")


@pytest.mark.slow
def test_ddp_two_cpu_processes_hold_identical_weights(tiny_world_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "edge_rec.cli", "train-teacher",
           "--data", str(tiny_world_dir), "--out", str(out), "--preset", "tiny", "--no-ablation",
           "--no-baselines", "--epochs", "2", "--max-train-requests", "640"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "runs" / "teacher" / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["step"] == ranks[1]["step"] > 0
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # 640 requests shared by 2 ranks with batch 32: 10 steps per epoch, not 20
    assert ranks[0]["step"] == 2 * 10
    rep = json.loads((out / "report.json").read_text())
    assert rep["teacher"]["throughput"]["world_size"] == 2


@pytest.mark.parametrize("loader, src", [(load_mmssl, FIXTURES / "mmssl_small"),
                                         (load_kuairand, FIXTURES / "kuairand_sample" / "kuairand_sample.csv")])
def test_teacher_trains_end_to_end_on_real_layouts(loader, src, tmp_path):
    ds = loader(src, n_candidates=16)
    rep = train_teacher(ds, tmp_path / "t", preset="tiny", train_overrides={"epochs": 2}, progress=False)
    for name in ("teacher", "early_fusion", "late_fusion", "id_only", "popularity"):
        assert name in rep["models"]
    t = rep["models"]["teacher"]
    assert 0 <= t["ndcg@10"] <= 1 and t["params"] > 0
    model, meta = load_teacher(tmp_path / "t")
    assert meta["input_names"] == input_names(ds.modalities)
    fb = FeatureBuilder.from_dataset(ds, meta["hist_len"])
    idx = ds.split_index("test")
    assert np.isfinite(predict(model, fb, ds, idx)).all()
