"""``edge-rec pipeline``: every stage that exists, end to end, into one report.

Stages run in order and the report says which ran. Today: ``world`` (or a given dataset),
``baselines`` and ``train-teacher`` (teacher, fusion baselines, contrastive ablation); distillation
(#4), export (#5), the drift replay (#6) and a short bench (#7), under the report keys of DESIGN.md.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_rec import __version__
from edge_rec.errors import DataError
from edge_rec.distill.baselines import run_baselines
from edge_rec.distill.dataset import Dataset, inspect, summary_counts, write_json
from edge_rec.distill.world import generate_world, world_config

STAGES = ("world", "baselines", "train-teacher", "distill", "export", "bench")
PENDING: dict[str, str] = {}
FEDERATE_ROUNDS = 10
FEDERATE_VIEWERS = 300
"""On-device learning in the pipeline: a seeded sample of viewers, 10 rounds of 20 clients per epsilon
(`edge-rec federate` runs every viewer)."""
FULL_CATALOGUE_REQUESTS = 300
"""Test requests (a seeded random subset) the pipeline ranks the whole catalogue for, per model: enough
for intervals of about ±0.05 on Recall@20, in a minute or two on 2 cores; `edge-rec evaluate` runs all."""
EXPORT_FORMATS = ("onnx", "tflite", "coreml", "executorch")
EXPORT_PRECISIONS = ("fp32", "int8")


EXPORT_ROW_KEYS = ("ok", "error", "size_bytes", "size_ratio_vs_fp32", "weight_bytes", "graph_bytes", "weight_ratio_vs_fp32",
                   "spearman", "kendall", "top10_overlap", "max_abs_err", "sqnr_db", "ndcg@10", "ndcg_retained",
                   "batch_invariance", "gate_failures", "parity_skipped")


def dataset_summary(ds: Dataset) -> dict[str, Any]:
    """``report.json["dataset"]``: users, items, interactions, modalities, cold items (+ extras)."""
    s = summary_counts(ds)
    return {"name": ds.meta.get("name"), "source": ds.meta.get("source"), **s}


def run_pipeline(
    *, preset: str = "default", seed: int = 0, out: str | Path, data: str | Path | None = None,
    overwrite: bool = False, progress: bool = True, jobs: int | None = None, loo_repeats: int = 1,
) -> dict[str, Any]:
    """Run every available stage; write ``report.json``, ``report.md`` and plots under ``out``.

    ``jobs``: worker processes for the models that train independently (see
    :mod:`edge_rec.distill.parallel`; default one per core on a CPU). ``loo_repeats``: students per
    leave-one-out arm of modality pruning (``DistillConfig.loo_repeats``; raise it on small data).
    With ``data`` an existing dataset folder is used instead of generating the synthetic world.
    Returns the report dictionary.
    """
    from edge_rec.distill.configs import DistillConfig

    dcfg = DistillConfig(loo_repeats=loo_repeats)      # a bad value fails here, before any stage runs
    run = Path(out)
    if run.exists() and any(run.iterdir()) and not overwrite:
        raise DataError(f"{run} exists and is not empty; pass --overwrite to replace its contents or choose another --out.")
    given = Dataset.load(data) if data is not None else None     # a bad --data fails before --out is created
    run.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    stages: dict[str, str] = {}

    t0 = time.perf_counter()
    if given is None:
        cfg = world_config(preset, seed=seed)
        ds = generate_world(cfg, progress=progress)
        ds.save(run / "data", overwrite=True)
        stages["world"] = f"ran: synthetic world preset={preset} seed={seed} -> {run / 'data'}"
    else:
        ds = given
        stages["world"] = f"skipped: dataset given ({data})"
    write_json(run / "data_inspect.json", inspect(ds))
    timings["world"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    models = run_baselines(ds)
    write_json(run / "baselines.json", models)
    timings["baselines"] = time.perf_counter() - t0
    stages["baselines"] = "ran: popularity, id_only (implicit ALS)"

    from edge_rec.distill.teacher_stage import train_teacher  # imports torch

    t0 = time.perf_counter()
    teacher_preset = preset
    stage = train_teacher(ds, run / "teacher", preset=teacher_preset, progress=progress, jobs=jobs)
    models.update({k: v for k, v in stage["models"].items() if k not in models})
    timings["train-teacher"] = time.perf_counter() - t0
    stages["train-teacher"] = (f"ran: early_fusion, late_fusion, teacher (+ contrastive ablation), "
                               f"teacher preset {teacher_preset} -> {run / 'teacher'}")

    from edge_rec.distill.distill_stage import distill

    t0 = time.perf_counter()
    dstage = distill(ds, run / "teacher", run / "student", preset=preset, progress=progress, jobs=jobs,
                     config=dcfg)
    for name in ("student_label_only", "student_kd", "student", "student_modality_pruned"):
        models[name] = dstage["models"][name]
    timings["distill"] = time.perf_counter() - t0
    mods = dstage["modalities"]
    stages["distill"] = (f"ran: student_label_only, student_kd, leave-one-out modality importance, "
                         f"pruned {mods['pruned']}, structural pruning + KD fine-tune -> {run / 'student'}")

    from edge_rec.export.stage import export_bundle

    t0 = time.perf_counter()
    ereport = export_bundle(run / "student", ds, run / "bundle", formats=EXPORT_FORMATS, precisions=EXPORT_PRECISIONS,
                            overwrite=True, progress=progress)
    timings["export"] = time.perf_counter() - t0
    fails = ereport["gate_failures"]
    stages["export"] = (f"ran: {', '.join(EXPORT_FORMATS)} x {', '.join(EXPORT_PRECISIONS)}, verified in each runtime "
                        f"on {ereport['parity_requests']} validation requests -> {run / 'bundle'} (+ .zip); "
                        + (f"{len(fails)} gate failure(s)" if fails else "all gates passed"))
    from edge_rec.distill.protocol import RETRIEVAL, RETRIEVAL_K, full_catalogue_report

    t0 = time.perf_counter()
    # production's two stages: the server's retrieval (ALS + content kNN for cold items), then the
    # reranker on what it retrieved; each model alone over the whole catalogue too, for the record
    full = full_catalogue_report(ds, {"popularity": "popularity", "content_knn": "content_knn", "bpr": "bpr", "als": "als",
                                      "retrieval": RETRIEVAL,
                                      "teacher": f"{RETRIEVAL}>{RETRIEVAL_K}>{run / 'teacher'}",
                                      "student": f"{RETRIEVAL}>{RETRIEVAL_K}>{run / 'student'}",
                                      "student.int8.runtime": f"{RETRIEVAL}>{RETRIEVAL_K}>{run / 'bundle'}",
                                      "teacher.alone": str(run / "teacher"), "student.alone": str(run / "student")},
                                 split="test", max_requests=FULL_CATALOGUE_REQUESTS, seed=seed)
    timings["full_catalogue"] = time.perf_counter() - t0
    stages["full_catalogue"] = (f"ran: the papers' protocol on {full['n_rows']} held-out rows of {full['n_requests']} test "
                                f"requests, {ds.n_items} items ranked per row")
    from edge_rec.distill.feed import request_feed

    test = ds.split_index("test")
    pick = next((int(r) for r in test if ds.requests["click"][r].sum() > 0 and (ds.requests["cand"][r] >= 0).sum() >= 16),
                int(test[0]))
    write_json(run / "sample_feed.json", request_feed(ds, pick))
    drift = None
    if (run / "data" / "planted.safetensors").is_file() and ds.meta.get("planted", {}).get("drift_events"):
        from edge_rec.distill.drift import drift_replay, planted_topics

        t0 = time.perf_counter()
        drift = drift_replay(ds, run / "bundle", planted_topics(run / "data"), n_users=50)
        write_json(run / "drift.json", drift)
        timings["drift"] = time.perf_counter() - t0
        stages["drift"] = (f"ran: {drift['users']} planted interest switches replayed through the bundle, with and "
                           "without on-device history updates and local learning -> "
                           f"{run / 'drift.json'}")
    fed = None
    try:
        import flwr  # noqa: F401
        import opacus  # noqa: F401
    except ImportError:
        stages["federate"] = "skipped: needs the federate extra (pip install -c constraints.txt 'edge-rec[federate]')"
    else:
        from edge_rec.distill.federate import run_federate

        t0 = time.perf_counter()
        fed = run_federate(ds, run / "bundle", run / "federate", rounds=FEDERATE_ROUNDS, clients_per_round=20,
                           max_users=FEDERATE_VIEWERS, seed=seed, progress=progress)
        timings["federate"] = time.perf_counter() - t0
        stages["federate"] = (f"ran: personal adapters for {fed['viewers']} viewers, federated averaging over "
                              f"{FEDERATE_ROUNDS} rounds, central DP under secure aggregation and local DP, epsilon inf/8/2/1 "
                              f"-> {run / 'federate'}")
    from edge_rec import bench as B

    t0 = time.perf_counter()
    brep = B.run_bench(run / "bundle", candidates=(16, 200), threads=(1,), repeats=30, progress=False)
    rat = B.ratios(run / "bundle", teacher=run / "teacher", repeats=50)
    brep["ratios"] = {k: rat.get(k) for k in ("teacher_over_student_p50", "wrapper_overhead", "teacher_over_rerank_p50")}
    brep["quality"] = B.quality_rows(run / "bundle")
    (run / "bench").mkdir(exist_ok=True)
    brep["plots"] = B.plots(brep, brep["quality"], run / "bench")
    write_json(run / "bench" / "bench.json", brep)
    timings["bench"] = time.perf_counter() - t0
    stages["bench"] = (f"ran (short): {len(brep['results'])} rows, candidates 16/200, 1 thread -> {run / 'bench'}; "
                       f"full run: edge-rec bench --bundle {run / 'bundle'} --out DIR")
    stages.update(PENDING)

    planted = ds.meta.get("planted", {})
    report: dict[str, Any] = {
        "sdk_version": __version__,
        "preset": preset if data is None else None,
        "seed": seed,
        "dataset": dataset_summary(ds),
        "full_catalogue": {k: v for k, v in full.items()},
        "models": models,
        "modalities": {"importance": mods["importance"], "kept": mods["kept"], "pruned": mods["pruned"],
                       "planted_noise": planted.get("noise_modality"), "budget": mods["budget"],
                       "measured_on": mods["measured_on"],
                       **{k: mods[k] for k in ("importance_ci95", "within_noise", "validation_requests", "loo_repeats",
                                                "importance_by_repeat", "retraining_sd", "fallback") if k in mods}},
        "student": dstage["student"],
        "exports": {f: {p: {k: row.get(k) for k in EXPORT_ROW_KEYS} for p, row in rows.items()}
                    for f, rows in ereport["exports"].items()},
        "export_gate_failures": ereport["gate_failures"],
        "bench": {k: brep[k] for k in ("schema_version", "machine", "results", "ratios", "roofline", "errors", "plots")},
        "drift": None if drift is None else {k: v for k, v in drift.items() if k != "rows"},
        "federate": None if fed is None else {
            "viewers": fed["viewers"], "frozen": fed["frozen"], "central": fed["central"],
            "personalization": {k: fed["personalization"][k] for k in ("adopted", "overall", "buckets", "ms_per_step_p50")},
            "settings": [{k: v for k, v in st.items() if k != "rounds_detail"} for st in fed["settings"]],
            "report": str(run / "federate" / "federate_report.json")},
        "bundle": {k: ereport["bundle"][k] for k in ("path", "zip", "files", "manifest_sha256")},
        "teacher": stage["teacher"],
        "stages": stages,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    write_json(run / "report.json", report)
    plot = _plot_models(report, run / "models.png")
    (run / "report.md").write_text(render_markdown(report, plot))
    return report


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def render_markdown(report: dict[str, Any], plot: Path | None) -> str:
    """A human-readable ``report.md`` of the JSON report."""
    d = report["dataset"]
    lines = [
        f"# edge-rec run report (sdk {report['sdk_version']})", "",
        f"Preset `{report['preset']}`, seed {report['seed']}.", "",
        "## Dataset", "",
        "| users | items | interactions | cold items | requests (train/val/test) | candidates | sparsity |",
        "|---|---|---|---|---|---|---|",
        f"| {d['users']} | {d['items']} | {d['interactions']} | {d['cold_items']} | "
        f"{d['requests']['train']}/{d['requests']['val']}/{d['requests']['test']} | "
        f"{d['candidates_per_request']} | {d['sparsity']:.4f} |", "",
        "Modalities: " + (", ".join(f"`{m}` ({dim})" for m, dim in d["modalities"].items()) or "none"), "",
    ]
    fc = report.get("full_catalogue")
    if fc:
        lines += ["## Full catalogue (the papers' protocol: the headline)", "",
                  f"Every item ranked for each of {fc['n_rows']} held-out rows ({fc['n_cold']} cold) of "
                  f"{fc['n_requests']} {fc['split']} requests; {fc['protocol']}.", "",
                  "| model | stages | Recall@20 (95 % CI) | NDCG@20 | Recall@50 | warm Recall@20 | cold Recall@20 "
                  "| median rank | ms / request |",
                  "|---|---|---|---|---|---|---|---|---|"]
        ceiling = None
        for name, r in fc["models"].items():
            lo, hi = r["ci95"].get("recall@20", [float("nan")] * 2)
            info = r.get("info") or {}
            rer = info.get("reranker", info)
            if "precision" in rer:                      # a bundle: the file the runtime picked
                name = f"{name} ({rer['format']}/{rer['precision']})"
            ret = info.get("retrieval")
            how = "one" if ret is None else ("retrieval" if "reranker" not in info else f"retrieval {ret['k']} → rerank")
            if ret is not None:
                ceiling = (ret["k"], ret[f"recall@{ret['k']}"], ret.get("k_cold"))
            lines.append(f"| {name} | {how} | {r['recall@20']:.4f} ({lo:.3f}–{hi:.3f}) | {r['ndcg@20']:.4f} | "
                         f"{r['recall@50']:.4f} | {_fmt(r['warm.recall@20'])} | {_fmt(r['cold.recall@20'])} | "
                         f"{r['median_rank']:.0f} | {r.get('ms_per_request', float('nan')):.1f} |")
        lines += ["", "ALS and BPR are tuned on the validation split's full-catalogue Recall@20. `retrieval` is the "
                      "server stage: tuned ALS's top items plus content kNN's top items among those without a training "
                      "click (cold or fresh; how many of the K slots go to them is chosen on validation); `teacher`, `student` and `student.int8.runtime` rerank its list and "
                      "keep its order below it (production's two stages); `*.alone` rank the whole catalogue by "
                      "themselves. `student.int8.runtime` is the bundle's default file run by `edge_rec.runtime` "
                      "(int8 unless its int8 files failed a gate; the file is named in brackets). "
                      "ms / request: ranking one user's feed this way on this machine, retrieval included."]
        if plot is not None:
            lines += ["", f"![full-catalogue Recall@20 per model, with 95 % intervals]({plot.name})"]
        if ceiling:
            lines += ["", f"Retrieval ceiling: {ceiling[1]:.4f} of the held-out items are in the server's "
                          f"{ceiling[0]} (Recall@{ceiling[0]}; {ceiling[2]} slots for cold items); no reranker "
                          "can exceed it."]
        lines.append("")
    lines += ["## Models (sampled: each test request's logged candidates + sampled negatives)", ""]
    cols = ["ndcg@10", "recall@20", "auc", "gauc", "mrr", "cold.ndcg@10", "params", "macs_per_candidate"]
    if isinstance(d.get("candidates_per_request"), int) and d["candidates_per_request"] <= 20:
        cols.remove("recall@20")     # every positive is in a list of <= 20: 1.0 for every model, says nothing
    lines += ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in report["models"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    lines += ["", "NDCG@10 and recall average over random orders of tied scores; MRR and hit rate count "
              "ties against the positive; cold.* ranks only cold-start positives.", ""]
    t = report.get("teacher")
    if t:
        tp, abl, c = t["throughput"], t["contrastive_ablation"], t["config"]
        lines += ["## Teacher", "",
                  f"d_model {c['d_model']}, {c['num_layers']} fusion layers, {c['hist_layers']} history layer(s), "
                  f"{c['num_heads']} heads: {t['params']} parameters, {t['macs_per_candidate']} MACs per candidate.",
                  f"Training throughput: {tp['samples_per_s']:.0f} candidates/s ({tp['requests_per_s']:.0f} requests/s) "
                  f"on {tp['device']} x{tp['world_size']}, {tp['train_s']} s.", ""]
        if "with" in abl:
            lines += [f"Contrastive ablation (InfoNCE weight {abl['contrastive_weight']}): NDCG@10 "
                      f"{abl['with']['ndcg@10']:.4f} with vs {abl['without']['ndcg@10']:.4f} without; cold NDCG@10 "
                      f"{_fmt(abl['with']['cold.ndcg@10'])} vs {_fmt(abl['without']['cold.ndcg@10'])}.", ""]
        if t.get("versus"):
            lines += ["Teacher minus each fusion baseline, NDCG@10 request by request on the same test requests "
                      "(paired bootstrap, 95 % interval):", "",
                      "| baseline | overall | cold-start items |", "|---|---|---|"]
            for name, v in t["versus"].items():
                cells = [f"{v[view]['mean_diff']:+.4f} [{v[view]['ci95'][0]:+.4f}, {v[view]['ci95'][1]:+.4f}]"
                         if v[view]["n_requests"] else "n/a" for view in ("all", "cold")]
                lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
            lines.append("")
    mods = report.get("modalities", {})
    if "importance" in mods:
        ci = mods.get("importance_ci95", {})
        sd = mods.get("retraining_sd")             # only with loo_repeats >= 2
        head = "| modality | relative NDCG@10 lost without it | 95 % interval |"
        lines += ["## Modalities", "", head + (" sd across re-trainings |" if sd else "") + " decision |",
                  "|---|---|---|" + ("---|" if sd else "") + "---|"]
        for m, v in mods["importance"].items():
            band = f"[{_fmt(ci[m][0])}, {_fmt(ci[m][1])}]" if m in ci else "n/a"
            noisy = " (within noise)" if m in mods.get("within_noise", []) else ""
            spread = f" {_fmt(sd.get(m))} |" if sd else ""
            lines.append(f"| {m} | {v:+.4f} | {band} |{spread} {'kept' if m in mods['kept'] else 'pruned'}{noisy} |")
        lines += ["", f"Budget {mods['budget']}; measured on {mods['measured_on']}. Planted noise modality: "
                      f"`{mods['planted_noise']}`. The interval is a paired bootstrap over the "
                      f"{mods.get('validation_requests', 'n/a')} validation requests (it leaves out the students' "
                      "retraining noise); a decision marked *within noise* could flip on another draw of them.", ""]
    if "student" in report:
        sp = report["student"]["structural_pruning"]
        lines += ["## Student", "",
                  f"Structural pruning (torch-pruning, ratio {sp['ratio']:.1f}): FFN {sp['ffn_dim'][0]}→{sp['ffn_dim'][1]}, "
                  f"heads {sp['num_heads'][0]}→{sp['num_heads'][1]}, head MLP {sp['head_hidden'][0]}→{sp['head_hidden'][1]}; "
                  f"{sp['params_before']} → {sp['params_after']} parameters (target {sp['target_params']}, "
                  f"{'reached' if sp['target_reached'] else 'not reached'}).", ""]
    if report.get("exports"):
        lines += ["## Exports (validation requests, each in its own runtime, against PyTorch fp32)", "",
                  "| format | precision | gates | size KB | weights KB | Spearman | Kendall | top-10 overlap | max abs err | "
                  "NDCG@10 retained | batch dev |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for f, rows in report["exports"].items():
            for p, r in rows.items():
                size = f"{r['size_bytes'] / 1024:.1f}" if r.get("size_bytes") else "–"
                weights = f"{r['weight_bytes'] / 1024:.1f}" if r.get("weight_bytes") else "–"
                note = " (parity: macOS only)" if r.get("parity_skipped") else ""
                fails = r.get("gate_failures") or []
                state = ("pass" if not fails else "FAIL: " + "; ".join(fails)[:80]) if r["ok"] else "no: " + str(r["error"])[:60]
                bi = r.get("batch_invariance") or {}
                dev = f"{bi['max_dev']:.1e}" if "max_dev" in bi else "–"
                lines.append(f"| {f} | {p} | {state}{note} | {size} | {weights} | {_fmt(r.get('spearman'))} | "
                             f"{_fmt(r.get('kendall'))} | {_fmt(r.get('top10_overlap'))} | {_fmt(r.get('max_abs_err'))} | "
                             f"{_fmt(r.get('ndcg_retained'))} | {dev} |")
        lines += ["", "Weights KB: the constant tensors of the file (the rest is graph, which int8 does not shrink). "
                      "Batch dev: the largest change of a candidate's outputs when scored alone, shuffled, beside "
                      "other candidates or stacked with masked copies (gate: 1e-5 fp32, 1e-2 int8)."]
        bigger = [f"{f}" for f, rows in report["exports"].items()
                  if (rows.get("int8") or {}).get("size_bytes") and (rows.get("fp32") or {}).get("size_bytes")
                  and rows["int8"]["size_bytes"] > rows["fp32"]["size_bytes"]]
        if bigger:
            lines += ["", f"int8 is larger than fp32 for {', '.join(bigger)}: a student of a few thousand parameters "
                          "is mostly graph, and int8 adds quantize / dequantize operators and their scales, which "
                          "outweigh the weight bytes saved; the size budget is on the int8 ONNX file."]
        fails = report.get("export_gate_failures") or []
        lines += ["", f"Gates: {'all passed' if not fails else '; '.join(fails)}. Bundle: `{report['bundle']['path']}` "
                      f"({report['bundle']['files']} files, manifest sha256 `{report['bundle']['manifest_sha256'][:16]}…`).", ""]
    b = report.get("bench")
    if b:
        from edge_rec.bench import markdown_table

        rf = b["roofline"]
        ra = b["ratios"]
        meaning = {"teacher_over_student_p50": "the teacher's p50 over the student file's, same feed, 1 thread "
                                               "(the default bundle's reference asks >= 5)",
                   "wrapper_overhead": "what `rerank()` adds to the engine call, as a share of it, policy off "
                                       "(the default bundle's reference allows <= 10)",
                   "teacher_over_rerank_p50": "the teacher's p50 over the whole `rerank()` call"}
        lines += ["## Bench (short run; `edge-rec bench` for the full grid)", "", markdown_table(b["results"]), "",
                  "ExecuTorch's `init_ms` and `peak_rss_mb` include importing torch: its Python bindings load "
                  "it on Linux, which a phone's ExecuTorch runtime does not.", "",
                  "Ratios, measured side by side in this run (bounds: `edge_rec/bench_reference.json`, "
                  "`edge-rec bench --check`):", ""]
        lines += [f"- `{k}` {ra[k]:.2f}: {why}" for k, why in meaning.items() if isinstance(ra.get(k), (int, float))]
        if rf.get("achieved_gflops") and rf.get("peak_gflops"):
            lines += [f"- roofline: the student reaches {rf['achieved_gflops']:.3f} of {rf['peak_gflops']:.1f} GFLOP/s "
                      "(single-core peak): at this size the call is overhead, not arithmetic"]
        plots = list(b.get("plots") or [])
        if plots:
            lines += ["", " ".join(f"![{p}](bench/{p})" for p in plots)]
        lines.append("")
    dr = report.get("drift")
    if dr and "with_updates" in dr:
        w, wo = dr["with_updates"], dr["without_updates"]
        lines += ["## Interest drift (on-device history and learning)", "",
                  f"{dr['users']} planted interest switches replayed through the bundle ({dr['engine']}): swipes until "
                  f"the new interest holds the top 3 (cap {dr['max_swipes']}).", "",
                  "| on the phone | median swipes | mean swipes | reached within cap |", "|---|---|---|---|",
                  f"| history frozen at the switch | {wo['median_swipes']:g} | {wo['mean_swipes']:.1f} | {wo['reached_top3']:.0%} |",
                  f"| history updated with each reaction | {w['median_swipes']:g} | {w['mean_swipes']:.1f} | {w['reached_top3']:.0%} |"]
        ll = dr.get("with_local_learning")
        if ll:
            vs = ll["swipes_vs_history_updates"]
            every = "swipe" if ll["fit_every"] == 1 else f"{ll['fit_every']} swipes"
            lines += [f"| … and the personal adapter trained after every {every} | "
                      f"{ll['median_swipes']:g} | {ll['mean_swipes']:.1f} | {ll['reached_top3']:.0%} |", "",
                      f"Local learning: `fit()` kept an adapter in {ll['fits_kept']} of {ll['fits']} calls "
                      f"({ll['fit_ms_p50']:.0f} ms median each); against history updates alone it took fewer swipes for "
                      f"{vs['fewer']} viewers, more for {vs['more']}, the same for {vs['same']} "
                      f"(mean difference {vs['mean_difference']:+.2f})."]
        lines.append("")
    fd = report.get("federate")
    if fd:
        pz = fd["personalization"]
        lines += ["## On-device learning (the output adapter; `federate/federate_report.json`)", "",
                  f"NDCG@10 on each of {fd['viewers']} viewers' test request. The frozen bundle "
                  f"{fd['frozen']['ndcg@10']:.4f}; the adapter trained on every viewer's events pooled on a server "
                  f"{fd['central']['ndcg@10']:.4f}; each viewer's own adapter (kept by {pz['adopted']} viewers whose "
                  f"newest events it predicted better) {pz['overall']['personal.ndcg@10']:.4f}, lift "
                  f"{pz['overall']['lift']:+.4f} (95 % interval {pz['overall']['lift_ci95'][0]:+.4f} .. "
                  f"{pz['overall']['lift_ci95'][1]:+.4f}); a training step {pz['ms_per_step_p50'] or 0:.3f} ms.", "",
                  "Federated averaging: `central` = updates clipped on the phone, summed under Flower's secure "
                  "aggregation (SecAgg+), noise added once to the average (the server is trusted to add it); "
                  "`local` = each phone noises its own update (nobody trusted).", "",
                  "| privacy | epsilon (delta) | noise multiplier | NDCG@10 at the round picked on validation | "
                  "lift vs frozen | last round | bytes per client per round |", "|---|---|---|---|---|---|---|"]
        for st in fd["settings"]:
            eps = "inf (clipping only)" if st["epsilon"] is None else f"{st['epsilon']:g} ({st['delta']:g})"
            lines.append(f"| {st.get('privacy', 'local')} | {eps} | {st['noise_multiplier']:.3g} | "
                         f"{st['ndcg@10']:.4f} (round {st['picked_round']}) | "
                         f"{st['lift_vs_frozen']:+.4f} | {st['last_round.ndcg@10']:.4f} | {st['bytes_per_client_round']} |")
        lines += ["", "![NDCG@10 per round](federate/federate_rounds.png)", ""]
    lines += ["## Stages", ""] + [f"- **{k}**: {v}" for k, v in report["stages"].items()] + [""]
    lines += ["## Timings (s)", ""] + [f"- {k}: {v}" for k, v in report["timings_s"].items()] + [""]
    return "\n".join(lines)


def _plot_models(report: dict[str, Any], path: Path) -> Path | None:
    """``models.png``: the headline, full-catalogue Recall@20 per model with its bootstrap 95 %
    interval, overall and on cold items (what the report's first table says, drawn)."""
    fc = (report.get("full_catalogue") or {}).get("models")
    if not fc:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(fc)[::-1]                       # top to bottom in the table's order
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7.0, 0.42 * len(names) + 1.3))
    for off, key, label, color in ((0.18, "recall@20", "all held-out items", "tab:blue"),
                                   (-0.18, "cold.recall@20", "cold items only", "tab:orange")):
        val = np.array([fc[n].get(key, np.nan) for n in names], dtype=float)
        ci = np.array([fc[n].get("ci95", {}).get(key, [np.nan, np.nan]) for n in names], dtype=float)
        err = np.vstack([val - ci[:, 0], ci[:, 1] - val])
        ok = np.isfinite(val)
        ax.barh(y[ok] + off, val[ok], 0.36, color=color, label=label)
        has = ok & np.isfinite(err).all(axis=0)
        ax.errorbar(val[has], y[has] + off, xerr=err[:, has], fmt="none", ecolor="black", elinewidth=0.9, capsize=2.5)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("Recall@20, whole catalogue ranked (whiskers: bootstrap 95 % interval over requests)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
