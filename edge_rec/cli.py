"""The ``edge-rec`` command line: one subcommand per step, each importing its library lazily.

Exit codes: 0 ok, 1 a quality / parity / budget gate failed, 2 usage or input error, 3 crash.
Every step writes a JSON report next to its output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import traceback
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from edge_rec.errors import EdgeRecError


def _config_options(parser: argparse.ArgumentParser, cls: type, prefix: str, exclude: Sequence[str] = ()) -> None:
    """Add ``--field-name`` options for the scalar fields of a config dataclass (default: unset,
    i.e. the preset's value), so the CLI and the Python API share one source of truth."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} overrides (default: the preset's value)")
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if f.name in exclude or typ not in (int, float, str, bool):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if typ is bool:
            group.add_argument(flag, dest=f"{prefix}__{f.name}", action=argparse.BooleanOptionalAction, default=None)
        else:
            group.add_argument(flag, dest=f"{prefix}__{f.name}", type=typ, default=None, metavar=typ.__name__.upper())


def _overrides(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    head = f"{prefix}__"
    return {k[len(head):]: v for k, v in vars(args).items() if k.startswith(head) and v is not None}


def _print(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---- subcommands --------------------------------------------------------------------------------
def cmd_world(args: argparse.Namespace) -> int:
    from edge_rec.distill.dataset import inspect, write_json
    from edge_rec.distill.world import generate_world, world_config

    cfg = world_config(args.preset, seed=args.seed, **_overrides(args, "world"))
    ds = generate_world(cfg, progress=True)
    out = ds.save(args.out, overwrite=args.overwrite)
    info = inspect(ds)
    info["planted_noise_modality"] = ds.meta["planted"]["noise_modality"]
    info["drift_events"] = len(ds.meta["planted"]["drift_events"])
    write_json(out / "report.json", info)
    print(f"wrote {out} ({info['users']} users, {info['items']} items, {info['interactions']} interactions); "
          f"report: {out / 'report.json'}")
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from edge_rec.distill.dataset import inspect, write_json
    from edge_rec.distill.loaders import convert
    from edge_rec.errors import ConfigError

    kwargs: dict[str, Any] = {"n_candidates": args.n_candidates, "seed": args.seed}
    if args.format == "kuairand":
        kwargs["impressions_per_request"] = args.impressions_per_request
    else:
        if args.positives_per_request < 1:
            raise ConfigError(f"--positives-per-request must be >= 1, got {args.positives_per_request}.")
        kwargs["positives_per_request"] = args.positives_per_request
        kwargs["negatives"] = args.negatives
    ds = convert(args.format, args.src, **kwargs)
    joined = None
    if args.items:
        from edge_rec.distill.featurize import attach_items

        ds, joined = attach_items(ds, args.items)
    out = ds.save(args.out, overwrite=args.overwrite)
    info = inspect(ds)
    if joined is not None:
        info["featurized_items"] = joined
    write_json(out / "report.json", info)
    print(f"wrote {out} ({info['users']} users, {info['items']} items, {info['interactions']} interactions); "
          f"report: {out / 'report.json'}")
    return 0


def cmd_featurize(args: argparse.Namespace) -> int:
    from edge_rec.distill.featurize import featurize, parse_dims

    rep = featurize(args.videos, args.out, args.captions, dims=parse_dims(args.dims), pca=args.pca,
                    frames=args.frames, batch_frames=args.batch_frames, pack=args.pack, overwrite=args.overwrite,
                    progress=not args.no_progress, threads=args.threads)
    t = rep["timing"]
    print(f"featurized {rep['featurized']} of {rep['videos']} videos into {args.out} ({t['videos_per_s']:.2f} videos/s; "
          + ", ".join(f"{k} {v:.0%}" for k, v in t["share"].items()) + ")")
    for f in rep["failures"]:
        print(f"  skipped {f['file']} ({f['stage']}): {f['error']}")
    print(f"report: {Path(args.out) / 'featurize_report.json'}")
    return 0


def cmd_data_collab(args: argparse.Namespace) -> int:
    from edge_rec.distill.baselines import add_collab_modality
    from edge_rec.distill.dataset import Dataset, write_json

    ds, info = add_collab_modality(Dataset.load(args.dir), name=args.name)
    out = ds.save(args.out, overwrite=args.overwrite)
    write_json(out / "collab_report.json", info)
    print(f"wrote {out}: modality {info['modality']!r} ({info['dim']} dims) for {info['items_with_factor']} of "
          f"{info['items']} items (the rest are cold: no factor); ALS {info['config']} chosen on validation "
          f"Recall@20 {info['val.recall@20']:.4f}; report: {out / 'collab_report.json'}")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from edge_rec.distill.dataset import Dataset, inspect, write_json

    info = inspect(Dataset.load(args.dir))
    path = Path(args.json) if args.json else Path(args.dir) / "inspect.json"
    write_json(path, info)
    mods = ", ".join(f"{m}={d}" for m, d in info["modalities"].items()) or "none"
    print(f"dataset   {info['name']} ({info['source']})")
    print(f"users     {info['users']}")
    print(f"items     {info['items']}  (cold-start: {info['cold_items']})")
    print(f"interactions {info['interactions']}  sparsity {info['sparsity']:.4f}")
    print(f"modalities {mods}")
    r = info["requests"]
    print(f"requests  train {r['train']}  val {r['val']}  test {r['test']}  "
          f"({info['candidates_per_request']} candidates each)")
    print("labels    " + "  ".join(f"{k} {v:.3f}" for k, v in info["label_rates"].items()))
    print(f"json      {path}")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from edge_rec.distill.baselines import run_baselines
    from edge_rec.distill.dataset import Dataset, write_json

    rows = run_baselines(Dataset.load(args.data), split=args.split)
    out = Path(args.out)
    write_json(out / "baselines.json", rows)
    for name, row in rows.items():
        print(f"{name:12s} ndcg@10 {row['ndcg@10']:.4f}  auc {row['auc']:.4f}  cold.ndcg@10 "
              f"{row['cold.ndcg@10'] if row['cold.ndcg@10'] is not None else float('nan'):.4f}")
    print(f"report: {out / 'baselines.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from edge_rec.distill.dataset import Dataset, write_json
    from edge_rec.distill.protocol import BASELINES, RETRIEVAL, full_catalogue_report, parse_two_stage
    from edge_rec.errors import ConfigError

    if args.max_requests is not None and args.max_requests < 1:
        raise ConfigError(f"--max-requests must be >= 1, got {args.max_requests}.")
    models: dict[str, str] = {}
    for spec in args.model:
        name, _, target = spec.partition("=")
        if not target:
            name, target = (spec, spec) if spec in BASELINES + (RETRIEVAL,) else (Path(spec).name, spec)
        if target == RETRIEVAL or ">" in target:
            rer = parse_two_stage(target)[2]               # a malformed spec fails here, before any work
            if rer is not None and rer not in BASELINES and not Path(rer).exists():
                raise ConfigError(f"--model {spec}: the reranker {rer} is not a baseline nor an existing folder.")
        elif target not in BASELINES and not Path(target).exists():
            raise ConfigError(f"--model {spec}: {target} is not a baseline ({', '.join(BASELINES)}), "
                              f"{RETRIEVAL}, nor an existing folder.")
        models[name] = target
    ds = Dataset.load(args.data)
    rep = full_catalogue_report(ds, models, split=args.split, max_requests=args.max_requests, progress=True)
    rep["data"] = str(args.data)
    write_json(args.out, rep)
    print(f"{rep['split']}: {rep['n_rows']} held-out rows ({rep['n_cold']} cold) in {rep['n_requests']} requests")
    print(f"{'model':<24}{'R@20':>8}{'95% CI':>18}{'N@20':>8}{'R@50':>8}{'warm R@20':>11}{'cold R@20':>11}{'median rank':>13}")
    for name, r in rep["models"].items():
        lo, hi = r["ci95"].get("recall@20", [float("nan")] * 2)
        print(f"{name:<24}{r['recall@20']:>8.4f}{f'[{lo:.3f}, {hi:.3f}]':>18}{r['ndcg@20']:>8.4f}{r['recall@50']:>8.4f}"
              f"{r['warm.recall@20']:>11.4f}{r['cold.recall@20']:>11.4f}{r['median_rank']:>13.0f}")
    print(f"report: {args.out}")
    return 0


def cmd_train_teacher(args: argparse.Namespace) -> int:
    from edge_rec.distill.dataset import Dataset
    from edge_rec.distill.teacher_stage import train_teacher

    rep = train_teacher(Dataset.load(args.data), args.out, preset=args.preset,
                        model_overrides=_overrides(args, "model"), train_overrides=_overrides(args, "train"),
                        ablation=not args.no_ablation, fusion_baselines=not args.no_baselines, resume=args.resume,
                        jobs=args.jobs)
    if int(__import__("os").environ.get("RANK", 0)) == 0:
        for name, row in rep["models"].items():
            print(f"{name:14s} ndcg@10 {_num(row['ndcg@10'])}  cold.ndcg@10 {_num(row['cold.ndcg@10'])}  "
                  f"params {row['params']}")
        tp = rep["teacher"]["throughput"]
        print(f"teacher throughput: {tp['samples_per_s']:.0f} candidates/s on {tp['device']} x{tp['world_size']}")
        print(f"report: {Path(args.out) / 'report.json'}  teacher: {Path(args.out) / 'model.safetensors'}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from edge_rec.distill.configs import DistillConfig
    from edge_rec.distill.dataset import Dataset
    from edge_rec.distill.distill_stage import distill

    rep = distill(Dataset.load(args.data), args.teacher, args.out, preset=args.preset,
                  config=DistillConfig(**_overrides(args, "kd")), model_overrides=_overrides(args, "student"),
                  train_overrides=_overrides(args, "train"), jobs=args.jobs)
    for name, row in rep["models"].items():
        print(f"{name:24s} ndcg@10 {_num(row['ndcg@10'])}  params {row['params']:>7d} "
              f"({row['params_ratio_to_teacher']:.3f} of teacher)  MACs/cand {row['macs_per_candidate']:>8d} "
              f"({row['macs_ratio_to_teacher']:.3f})")
    mods = rep["modalities"]
    ci = mods.get("importance_ci95", {})
    print("modality importance (relative val NDCG@10 lost without it, 95 % interval over the validation requests): "
          + ", ".join(f"{m} {v:+.4f}" + (f" [{ci[m][0]:+.4f}, {ci[m][1]:+.4f}]" if m in ci else "")
                      for m, v in mods["importance"].items()))
    if mods.get("retraining_sd"):
        print(f"spread of each worth across {mods['loo_repeats']} re-trainings (sd): "
              + ", ".join(f"{m} {v:.4f}" for m, v in mods["retraining_sd"].items()))
    if mods.get("within_noise"):
        print(f"within the measurement noise (the interval holds the budget {mods['budget']}): {mods['within_noise']}")
    print(f"kept {mods['kept']}  pruned {mods['pruned']}  (planted noise: {mods['planted_noise']})")
    fb = mods.get("fallback") or {}
    if fb.get("fired"):
        print(f"note: modality pruning fell back: {fb['why']}. Both measures, per modality "
              "(leave-one-out worth / teacher masking overall / on cold items):")
        for m, v in fb["side_by_side"].items():
            print(f"  {m:<10} {v['leave_one_out']:+.4f} / {_num(v['teacher_masking_overall'])} / {_num(v['teacher_masking_cold'])}")
    print(f"report: {Path(args.out) / 'report.json'}  student: {Path(args.out) / 'model.safetensors'}")
    return 0


def _num(v: Any) -> str:
    return "   –  " if v is None or v != v else f"{v:.4f}"


def cmd_pipeline(args: argparse.Namespace) -> int:
    from edge_rec.distill.pipeline import run_pipeline

    report = run_pipeline(preset=args.preset, seed=args.seed, out=args.out, data=args.data,
                          overwrite=args.overwrite, jobs=args.jobs, loo_repeats=args.loo_repeats)
    ran = [k for k, v in report["stages"].items() if v.startswith("ran")]
    print(f"stages run: {', '.join(ran)}")
    for k, v in report["stages"].items():
        if not v.startswith("ran"):
            print(f"  {k}: {v}")
    print(f"report: {Path(args.out) / 'report.md'}  (JSON: {Path(args.out) / 'report.json'})")
    return 0


def cmd_federate(args: argparse.Namespace) -> int:
    from edge_rec.distill.federate import run_federate

    rep = run_federate(args.data, args.bundle, args.out, rounds=args.rounds, clients_per_round=args.clients_per_round,
                       epsilons=args.epsilon or [math.inf, 8.0, 2.0, 1.0], delta=args.delta, clip=args.clip,
                       local_epochs=args.local_epochs, max_users=args.max_users, seed=args.seed,
                       overwrite=args.overwrite, privacy=args.privacy or ["central", "local"])
    print(f"{rep['clients']} clients, {rep['settings'][0]['rounds']} rounds, engine {rep['engine']}; NDCG@10 on each "
          f"viewer's test request: frozen {rep['frozen']['ndcg@10']:.4f}, adapter trained centrally "
          f"{rep['central']['ndcg@10']:.4f}")
    p = rep["personalization"]["overall"]
    print(f"  personal adapters (each viewer alone, kept by {rep['personalization']['adopted']} of "
          f"{rep['viewers']}): {p['personal.ndcg@10']:.4f} (lift {p['lift']:+.4f}, "
          f"95 % CI {p['lift_ci95'][0]:+.4f} .. {p['lift_ci95'][1]:+.4f})")
    for st in rep["settings"]:
        eps = "inf" if st["epsilon"] is None else f"{st['epsilon']:g}"
        print(f"  federated, {st['privacy']} DP, epsilon {eps} (delta {st['delta']:g}, noise x{st['noise_multiplier']:.3g}): "
              f"{st['ndcg@10']:.4f} at round {st['picked_round']} (picked on validation; lift "
              f"{st['lift_vs_frozen']:+.4f}; last round {st['last_round.ndcg@10']:.4f}), "
              f"{st['bytes_per_client_round']} bytes per client per round")
    print(f"report: {Path(args.out) / 'federate_report.json'}  plot: {rep['plot']}  bundle: {rep['bundle']['path']}")
    return 0


def _csv(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


def cmd_export(args: argparse.Namespace) -> int:
    from edge_rec.errors import GateError
    from edge_rec.export.stage import Gates, export_bundle

    gates = Gates.from_cli(min_ndcg_retained=args.min_ndcg_retained, max_size_kb=args.max_size_kb,
                           min_spearman=args.min_spearman)
    report = export_bundle(args.student, args.data, args.out, formats=_csv(args.formats), precisions=_csv(args.quant),
                           sign_key=args.sign_key,
                           buckets=_positive_ints(args.buckets, "--buckets"), parity_requests=args.parity_requests,
                           gates=gates, int8_mode=args.int8_mode, coreml_flexible=args.coreml_flexible,
                           overwrite=args.overwrite)
    # "gates": every bar of this file passed (a file that converted and ran but missed a bar reads "NO")
    print(f"{'format':<11}{'prec':<6}{'gates':<6}{'size KB':>9}{'weights':>9}{'spearman':>10}{'top10':>7}"
          f"{'ndcg ret.':>10}{'batch dev':>10}  note")
    for f, rows in report["exports"].items():
        for p, r in rows.items():
            if r.get("skipped"):
                continue
            size = f"{r['size_bytes'] / 1024:.1f}" if r.get("size_bytes") else "–"
            weights = f"{r['weight_bytes'] / 1024:.1f}" if r.get("weight_bytes") else "–"
            bi = r.get("batch_invariance") or {}
            dev = f"{bi['max_dev']:.1e}" if "max_dev" in bi else "–"
            note = "parity: macOS only" if r.get("parity_skipped") else \
                (r["error"] or "; ".join(r.get("gate_failures") or []))[:90]
            passed = r["ok"] and not r.get("gate_failures")
            print(f"{f:<11}{p:<6}{'pass' if passed else 'NO':<6}{size:>9}{weights:>9}{_num(r.get('spearman')):>10}"
                  f"{_num(r.get('top10_overlap')):>7}{_num(r.get('ndcg_retained')):>10}{dev:>10}  {note}")
    b = report["bundle"]
    print(f"bundle: {b['path']} ({b['files']} files), zip: {b['zip']}; report: {Path(b['path']) / 'export_report.json'}")
    if report["gate_failures"]:
        raise GateError(f"{len(report['gate_failures'])} export gate(s) failed:\n  " + "\n  ".join(report["gate_failures"]))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import tempfile
    import zipfile

    from edge_rec.bundle import check_golden, extract_bundle, verify_bundle
    from edge_rec.errors import GateError

    src = Path(args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        root = extract_bundle(src, Path(tmp) / "bundle") if src.is_file() and zipfile.is_zipfile(src) else src
        manifest = verify_bundle(root)
        out: dict[str, Any] = {"bundle": str(src), "schema_version": manifest["schema_version"],
                               "files_verified": len(manifest["files"]), "artifacts": len(manifest["artifacts"])}
        if args.public_key:
            from edge_rec.signing import verify_signature

            out["signature"] = verify_signature(root, args.public_key)
        if not args.no_golden:
            def line(key: str) -> None:
                why = " (ExecuTorch's Python bindings import torch: about 10 s, once)" if key.startswith("executorch") else ""
                print(f"golden outputs: {key}{why}", file=sys.stderr, flush=True)

            out["golden"] = check_golden(root, manifest, formats=_csv(args.formats) if args.formats else None,
                                         on_group=line)
    _print(out)
    bad = [k for k, v in out.get("golden", {}).items() if v.get("ok") is False]
    if bad:
        raise GateError(f"golden outputs differ for {', '.join(bad)} (see above).")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from edge_rec.errors import ConfigError
    from edge_rec.signing import generate_key, sign_bundle

    if args.generate_key:
        priv, pub = generate_key(args.generate_key)
        _print({"private_key": str(priv), "public_key": str(pub)})
        return 0
    if not args.bundle or not args.key:
        raise ConfigError("usage: edge-rec sign BUNDLE --key PRIVATE.pem (or: edge-rec sign --generate-key STEM)")
    from edge_rec.bundle import verify_bundle, write_zip

    root = Path(args.bundle)
    verify_bundle(root)                          # only a bundle that verifies gets signed
    sig = sign_bundle(root, args.key)
    out = {"bundle": str(root), "signature": str(sig)}
    z = root.with_name(root.name + ".zip")
    if z.is_file():
        out["zip"] = str(write_zip(root, z))
    _print(out)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from edge_rec.bundle import extract_bundle

    out = extract_bundle(args.zip, args.dest)
    manifest = json.loads((out / "manifest.json").read_text())
    _print({"bundle": str(out), "from": str(args.zip), "files_verified": len(manifest["files"]),
            "artifacts": len(manifest["artifacts"])})
    return 0


def cmd_rerank(args: argparse.Namespace) -> int:
    from edge_rec.errors import DataError
    from edge_rec.policy import PostRankPolicy
    from edge_rec.runtime import Reranker, request_time
    from edge_rec.state import UserState

    from edge_rec.validate import read_json

    feed = read_json(args.feed, "the feed file")
    if not isinstance(feed, dict) or not isinstance(feed.get("candidates"), list):
        raise DataError(f"{args.feed}: a feed is a JSON object with a 'candidates' list (see `edge-rec rerank --help`).")
    rr = Reranker.open(args.bundle, backend=args.backend, threads=args.threads, precision=args.precision,
                       policy=PostRankPolicy(enabled=not args.no_policy), public_key=args.public_key)
    # the whole request is checked before the store is touched: a bad candidate must not leave the
    # feed's history recorded (a corrected rerun would then record it twice)
    prepared = rr.prepare(feed["candidates"])
    history = rr.parse_history(feed.get("history") or [])
    now = request_time(feed.get("now"))
    context = {"now": feed.get("now"), "history": history, "history_total": feed.get("history_total")}
    context = {k: v for k, v in context.items() if v is not None}
    state = None
    if args.state:
        state = UserState(args.state)
        if args.record_history and history:
            state.record_many(history)
        # with a store the history comes from the store alone: say so, and warn when that drops the feed's
        used = {"source": f"store {args.state}", "events": len(state.events(before=now))}
        if history and not args.record_history:
            print(f"edge-rec: note: the feed's {len(history)} history events are not used: with --state the "
                  f"history is the store's ({used['events']} events before now); add --record-history to record "
                  "the feed's events into the store first.", file=sys.stderr)
    else:
        used = {"source": "the feed's history", "events": sum(1 for e in history if e.ts < now)}
    try:
        ranked = rr.rerank(prepared, context=context, k=args.k, explain=args.explain, state=state).to_list()
    finally:
        if state is not None:
            state.close()
    _print({"bundle": str(args.bundle), "engine": rr.engine.name, "format": rr.format, "precision": rr.precision,
            "candidates": len(feed["candidates"]), "history_used": used,
            "columns": {"score": "the model's combined logit (what orders the feed before the policy)",
                        "final_score": "score + the policy's adjustments (creator penalties, freshness boost); "
                                       "the order also applies diversity and the per-creator cap",
                        "p_click / p_finish / p_like": "each head's probability",
                        "explanation": "per modality: score minus the score with that modality masked"},
            "ranked": ranked})
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from edge_rec.distill.dataset import Dataset, write_json
    from edge_rec.distill.drift import drift_replay, planted_topics

    ds = Dataset.load(args.data)
    rep = drift_replay(ds, args.bundle, planted_topics(args.data), n_users=args.users, max_swipes=args.max_swipes,
                       seed=args.seed, local_learning=not args.no_local_learning, fit_every=args.fit_every)
    write_json(args.out, rep)
    _print({k: v for k, v in rep.items() if k != "rows"})
    print(f"report: {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_rec import bench as B
    from edge_rec.distill.dataset import write_json  # numpy-only module
    from edge_rec.errors import ConfigError, DataError, GateError

    if args.action == "merge":
        if not args.files or not args.out:
            raise ConfigError("usage: edge-rec bench merge a.json b.json ... --out DIR")
        merged = B.merge(args.files)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "merged.json", merged)
        (out / "merged.md").write_text(B.markdown_table(merged["rows"], device=True) + "\n")
        print(B.markdown_table(merged["rows"], device=True))
        print(f"merged {len(merged['devices'])} device(s): {out / 'merged.json'}, {out / 'merged.md'}")
        return 0
    if not args.bundle:
        raise ConfigError("edge-rec bench needs --bundle (or: edge-rec bench merge FILES --out DIR).")
    if args.package:
        z = B.package_runner(args.bundle, args.package)
        print(f"runner: {z} (unzip; python3 run_bench.py --out bench.json; needs numpy + one engine)")
        return 0
    if not args.out:
        raise ConfigError("edge-rec bench needs --out DIR (or --package OUT.zip).")
    # every argument is checked before any benchmark runs (they take minutes) or anything is written
    candidates = _positive_ints(args.candidates, "--candidates")
    threads = _positive_ints(args.threads, "--threads")
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1 (timed calls per row), got {args.repeats}.")
    formats = _csv(args.formats) if args.formats else None
    precisions = _csv(args.quant) if args.quant else None
    _bundle_has(args.bundle, formats, precisions)
    if args.teacher and not all((Path(args.teacher) / f).is_file() for f in ("config.json", "model.safetensors")):
        raise DataError(f"--teacher {args.teacher} holds no teacher (needs config.json and model.safetensors); "
                        "point at RUN/teacher of a pipeline run.")
    if args.report:
        _read_json(args.report, "--report (the pipeline's report.json)")
    reference = _read_json(args.check, "--check (a reference of ratio bounds)") if args.check else None
    if reference is not None and not isinstance(reference.get("ratios"), dict):
        raise DataError(f"--check {args.check}: a reference is {{\"ratios\": {{name: {{\"min\"|\"max\": x}}}}}}; "
                        "see edge_rec/bench_reference.json.")
    if reference is not None:
        # a ratio that cannot be measured without an input is a usage error now, not a "regression" later
        needs = {"teacher_over_student_p50": ("--teacher", args.teacher), "teacher_over_student_size": ("--report", args.report)}
        missing = [f"{name} needs {flag}" for name, (flag, given) in needs.items() if name in reference["ratios"] and not given]
        if missing:
            raise ConfigError(f"--check {args.check}: " + "; ".join(missing) + " (RUN/teacher and RUN/report.json of "
                              "a pipeline run), or check against a reference without those ratios.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rep = B.run_bench(args.bundle, formats=formats, precisions=precisions, candidates=candidates, threads=threads,
                      repeats=args.repeats)
    rat = B.ratios(args.bundle, teacher=args.teacher, repeats=max(50, args.repeats))
    rep["ratios"] = {k: rat.get(k) for k in ("teacher_over_student_p50", "wrapper_overhead", "teacher_over_rerank_p50")}
    rep["ratio_details"] = rat
    if "error" in rat:
        rep["errors"].append("ratios: " + "; ".join(rat["error"]))
    rep["quality"] = B.quality_rows(args.bundle, args.report)
    if rep["quality"]:
        ref = next((q["ndcg@10"] for q in rep["quality"] if q["model"] == "student pytorch fp32"), None)
        worst = min((q["ndcg@10"] for q in rep["quality"] if q["model"].startswith("student ") and "/" in q["model"]),
                    default=None)
        if ref and worst is not None:
            rep["ratios"]["export_ndcg_retained_min"] = worst / ref
        sizes = {q["model"]: q["size_bytes"] for q in rep["quality"] if q.get("size_bytes")}
        if "teacher" in sizes and "student" in sizes:
            rep["ratios"]["teacher_over_student_size"] = sizes["teacher"] / sizes["student"]
    rep["plots"] = B.plots(rep, rep["quality"], out)
    write_json(out / "bench.json", rep)
    table = B.markdown_table(rep["results"])
    rf = rep["roofline"]
    extra = [f"Roofline: peak {rf['peak_gflops'] or float('nan'):.2f} GFLOP/s (1-thread GEMM), achieved "
             f"{rf['achieved_gflops'] or float('nan'):.3f} GFLOP/s ({(rf['fraction_of_peak'] or float('nan')):.2%} of peak) "
             f"at {rf['at']}.",
             "Ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in rep["ratios"].items() if isinstance(v, (int, float)))]
    (out / "bench.md").write_text(table + "\n\n" + "\n\n".join(extra) + "\n")
    print(table)
    print("\n".join(extra))
    if rep["errors"]:
        print("errors: " + "; ".join(rep["errors"]), file=sys.stderr)
    print(f"bench: {out / 'bench.json'}, {out / 'bench.md'}" + (f", plots: {', '.join(rep['plots'])}" if rep["plots"] else ""))
    if reference is not None:
        fails = B.check_against(rep, reference)
        if fails:
            raise GateError(f"{len(fails)} benchmark regression(s) against {args.check}:\n  " + "\n  ".join(fails))
        print(f"no regression against {args.check}")
    if rep["errors"]:
        # an engine that crashed is not a result: the report is written, but the step did not succeed
        print(f"edge-rec bench: {len(rep['errors'])} row(s) failed (listed in {out / 'bench.json'} under 'errors').",
              file=sys.stderr)
        return 3
    return 0


def _positive_ints(text: str, flag: str) -> list[int]:
    from edge_rec.errors import ConfigError

    try:
        vals = [int(x) for x in _csv(text)]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise ConfigError(f"{flag} takes whole numbers >= 1, comma-separated (e.g. 16,200); got {text!r}.")
    return vals


def _read_json(path: str, what: str) -> dict:
    from edge_rec.errors import DataError
    from edge_rec.validate import read_json

    data = read_json(path, what)
    if not isinstance(data, dict):
        raise DataError(f"{what}: {path} must hold a JSON object, got {type(data).__name__}.")
    return data


def _bundle_has(bundle: str, formats: list[str] | None, precisions: list[str] | None) -> None:
    """Formats and precisions asked for must be in the bundle: a typo would otherwise benchmark nothing."""
    from edge_rec.bundle import verify_bundle
    from edge_rec.errors import ConfigError

    arts = verify_bundle(Path(bundle))["artifacts"]
    for asked, key, flag in ((formats, "format", "--formats"), (precisions, "precision", "--quant")):
        have = sorted({a[key] for a in arts})
        missing = [x for x in asked or () if x not in have]
        if missing:
            raise ConfigError(f"{flag}: the bundle has no {', '.join(map(repr, missing))}; it has {', '.join(have)}.")


# ---- parser -------------------------------------------------------------------------------------
def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be a whole number >= 1 (got {text!r}); 1 trains one model at a time")
    return n


JOBS_HELP = ("models trained side by side in worker processes on a CPU (default: one per core, at most the "
             "number of independent models; env EDGE_REC_JOBS; 1 = all in this process)")


class _HelpWithDefaults(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help when it has a real default its help does not state."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if (d is None or d is False or d == argparse.SUPPRESS or "default" in text or not action.option_strings
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return action.help
        return (text + " " if text else "") + "(default: %(default)s)"


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpWithDefaults
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for child in a.choices.values():
                _with_defaults(child)


def build_parser() -> argparse.ArgumentParser:
    from edge_rec import __version__

    p = argparse.ArgumentParser(prog="edge-rec", description="On-device multimodal reranking for short-video feeds.")
    p.add_argument("--version", action="version", version=f"edge-rec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("world", help="generate a synthetic short-video world with planted truth")
    w.add_argument("--preset", default="default", choices=["tiny", "default", "large"])
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", required=True, help="dataset folder to write")
    w.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    from edge_rec.distill.world import WorldConfig  # numpy-only module: cheap

    _config_options(w, WorldConfig, "world", exclude=("preset", "seed"))
    w.set_defaults(func=cmd_world)

    d = sub.add_parser("data", help="convert or inspect a real dataset")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = dsub.add_parser("convert", help="convert a KuaiRand log or an MMSSL-layout folder")
    c.add_argument("--format", required=True, choices=["kuairand", "mmssl"])
    c.add_argument("src", help="source file or folder")
    c.add_argument("--out", required=True)
    c.add_argument("--n-candidates", type=int, default=32)
    c.add_argument("--impressions-per-request", type=int, default=1,
                   help="kuairand without timestamps: consecutive impressions per request")
    c.add_argument("--positives-per-request", type=int, default=4,
                   help="mmssl: training positives grouped into one request (default 4)")
    c.add_argument("--negatives", default="uniform", choices=["uniform", "popularity"],
                   help="mmssl: how training requests' negatives are drawn from the catalogue (default uniform: "
                        "as the full catalogue is ranked; popularity-weighted negatives teach that popular means negative)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--items", help="a featurize output folder: join its embeddings and captions on item id")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=cmd_data_convert)

    fz = sub.add_parser("featurize", help="videos + captions -> item embeddings (visual, audio, text) and the "
                                          "packed vectors a server sends")
    fz.add_argument("--videos", required=True, help="folder of video files (.mp4, .mov, .mkv, .webm, ...)")
    fz.add_argument("--captions", help="CSV with a 'video' column (file name) and caption, hashtags, item_id, "
                                       "creator_id, upload_ts")
    fz.add_argument("--out", required=True)
    fz.add_argument("--dims", default=None, help="PCA dims per modality, e.g. visual=64,audio=32,text=48 (default), "
                                                 "or 'none' to keep the encoders' dims")
    fz.add_argument("--pca", help="apply the PCA of an earlier featurize output (folder or pca.safetensors)")
    fz.add_argument("--frames", type=int, default=8, help="frames sampled per video")
    fz.add_argument("--batch-frames", type=int, default=32, help="frames per CNN batch")
    fz.add_argument("--pack", default="int8", choices=["int8", "fp16"], help="how feed_items.jsonl packs vectors")
    fz.add_argument("--threads", type=int, default=None)
    fz.add_argument("--overwrite", action="store_true")
    fz.add_argument("--no-progress", action="store_true")
    fz.set_defaults(func=cmd_featurize)
    co = dsub.add_parser("collab", help="add a 'collab' modality: ALS item factors fitted on the training split, "
                                        "tuned on validation (the server's collaborative signal, sent with each candidate)")
    co.add_argument("dir", help="dataset folder")
    co.add_argument("--out", required=True, help="new dataset folder")
    co.add_argument("--name", default="collab", help="modality name (default collab)")
    co.add_argument("--overwrite", action="store_true")
    co.set_defaults(func=cmd_data_collab)
    i = dsub.add_parser("inspect", help="summarise a dataset folder (also written as JSON)")
    i.add_argument("dir")
    i.add_argument("--json", help="where to write the JSON summary (default DIR/inspect.json)")
    i.set_defaults(func=cmd_data_inspect)

    b = sub.add_parser("baselines", help="fit and evaluate the popularity and ID-only baselines")
    b.add_argument("--data", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--split", default="test", choices=["val", "test"])
    b.set_defaults(func=cmd_baselines)

    e = sub.add_parser("evaluate", help="the papers' protocol: rank the whole catalogue for each held-out item "
                                        "(Recall/NDCG/Hit@10,20,50, warm/cold, bootstrap CIs)")
    e.add_argument("--data", required=True, help="dataset folder (edge-rec world / data convert)")
    e.add_argument("--model", action="append", required=True, metavar="NAME=SPEC",
                   help="repeatable: popularity, content_knn, bpr, als (tuned on val), or NAME=FOLDER for a teacher, "
                        "student or bundle folder (a bundle runs in edge_rec.runtime on its default engine), or "
                        "retrieval (the server stage alone: tuned ALS's top items + content kNN's top cold items, 200 in all, "
                        "the cold share chosen on val), "
                        "or NAME=RETRIEVAL>K>RERANKER for two stages (e.g. 'two=retrieval>200>runs/x/bundle': the "
                        "server's 200 reranked by the bundle, ahead of the rest in the server's order; RETRIEVAL is "
                        "retrieval or a baseline)")
    e.add_argument("--split", default="test", choices=["val", "test"],
                   help="held-out split (default test; baselines are tuned on val)")
    e.add_argument("--max-requests", type=int, help="a seeded random subset of the split's requests (default: all)")
    e.add_argument("--out", required=True, help="JSON report to write")
    e.set_defaults(func=cmd_evaluate)

    fd = sub.add_parser("federate", help="on-device learning: each viewer's adapter trained on their own events, "
                                           "federated averaging on Flower with secure aggregation and differential "
                                           "privacy")
    fd.add_argument("--data", required=True, help="dataset folder with per-user val/test requests (e.g. RUN/data)")
    fd.add_argument("--bundle", required=True, help="the edge bundle whose adapter is trained (e.g. RUN/bundle)")
    fd.add_argument("--out", required=True, help="folder for federate_report.json, federate_rounds.png, bundle/")
    fd.add_argument("--rounds", type=int, default=10, help="federated rounds")
    fd.add_argument("--clients-per-round", type=int, default=20, help="clients sampled per round")
    fd.add_argument("--epsilon", type=float, action="append",
                    help="repeatable: per-viewer privacy budget over all rounds (inf: clipping, no noise); the "
                         "bundle written takes the first privacy kind's first epsilon (default: inf 8 2 1)")
    fd.add_argument("--privacy", choices=["central", "local"], action="append",
                    help="repeatable: central = clipped updates under Flower's SecAgg+, noise added once to the "
                         "average (trusts the server to add it); local = each phone noises its own update (trusts "
                         "nobody, needs far more noise) (default: central local)")
    fd.add_argument("--delta", type=float, default=1e-5, help="delta of (epsilon, delta)-DP")
    fd.add_argument("--clip", type=float, default=0.5, help="L2 bound of each client's update")
    fd.add_argument("--local-epochs", type=int, default=5, help="passes over a client's events per round")
    fd.add_argument("--max-users", type=int, help="a seeded random sample of the viewers (default: all)")
    fd.add_argument("--seed", type=int, default=0)
    fd.add_argument("--overwrite", action="store_true")
    fd.set_defaults(func=cmd_federate)

    t = sub.add_parser("train-teacher", help="train the teacher, the fusion baselines and the contrastive ablation "
                                             "(multi-GPU: torchrun --nproc_per_node N -m edge_rec.cli train-teacher ...)")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--preset", default="default", choices=["tiny", "default", "large"])
    t.add_argument("--resume", action="store_true", help="continue each model from OUT/runs/<model>/last")
    t.add_argument("--no-ablation", action="store_true", help="skip the teacher trained without the contrastive loss")
    t.add_argument("--no-baselines", action="store_true", help="skip early_fusion / late_fusion")
    t.add_argument("--jobs", type=_jobs, help=JOBS_HELP)
    from edge_rec.distill.configs import TeacherConfig, TrainConfig

    _config_options(t, TeacherConfig, "model", exclude=("hist_dim",))
    _config_options(t, TrainConfig, "train")
    t.set_defaults(func=cmd_train_teacher)

    ds_ = sub.add_parser("distill", help="distil the teacher into a student; prune modalities and structure")
    ds_.add_argument("--data", required=True)
    ds_.add_argument("--teacher", required=True, help="folder written by train-teacher")
    ds_.add_argument("--out", required=True)
    ds_.add_argument("--preset", default="default", choices=["tiny", "default", "large"])
    ds_.add_argument("--jobs", type=_jobs, help=JOBS_HELP)
    from edge_rec.distill.configs import DistillConfig, StudentConfig

    _config_options(ds_, StudentConfig, "student", exclude=("hist_dim",))
    _config_options(ds_, DistillConfig, "kd")
    _config_options(ds_, TrainConfig, "train", exclude=("listwise_weight", "contrastive_weight",
                                                        "contrastive_temperature", "hist_len"))
    ds_.set_defaults(func=cmd_distill)

    ex = sub.add_parser("export", help="quantize + export the student, verify each format in its runtime, write the "
                                       "edge bundle; exit 1 when a gate fails")
    ex.add_argument("--student", required=True, help="folder written by distill")
    ex.add_argument("--data", required=True, help="the dataset the student was trained on (verification requests)")
    ex.add_argument("--out", required=True, help="bundle folder to write (BUNDLE.zip is written next to it)")
    ex.add_argument("--formats", default="onnx,tflite,coreml,executorch",
                    help="comma-separated: onnx (+ .ort), tflite, coreml, executorch")
    ex.add_argument("--quant", default="fp32,int8", help="comma-separated precisions: fp32, fp16, int8")
    ex.add_argument("--int8-mode", default="static", choices=["static", "dynamic", "nncf"],
                    help="ONNX int8: static (NNCF post-training quantization with activation scales calibrated on "
                         "training requests; default) or dynamic (onnxruntime quantize_dynamic: one activation scale "
                         "per call, so a candidate's score depends on the others and the batch-invariance gate fails "
                         "it). nncf = static (the earlier name)")
    ex.add_argument("--buckets", default="16,64,256", help="candidate counts of the fixed-shape formats")
    ex.add_argument("--coreml-flexible", action="store_true", help="one Core ML model with a range of N instead of buckets")
    ex.add_argument("--parity-requests", type=int, default=1000, help="validation requests run through each export")
    ex.add_argument("--max-size-kb", type=float, help="gate: largest allowed model size per format/precision")
    ex.add_argument("--min-ndcg-retained", type=float, help="gate: NDCG@10 of each export / PyTorch's (default 0.995 int8)")
    ex.add_argument("--min-spearman", type=float, help="gate: mean per-list Spearman (default 0.9999 fp32, 0.99 int8)")
    ex.add_argument("--overwrite", action="store_true")
    ex.add_argument("--sign-key", help="Ed25519 private key (PEM) that signs the manifest (manifest.sig); "
                                       "make one with `edge-rec sign --generate-key STEM`")
    ex.set_defaults(func=cmd_export)

    sg = sub.add_parser("sign", help="sign a bundle's manifest with an Ed25519 key, or make a key pair")
    sg.add_argument("bundle", nargs="?", help="bundle folder to sign (its .zip beside it is rewritten)")
    sg.add_argument("--key", help="Ed25519 private key (PEM)")
    sg.add_argument("--generate-key", metavar="STEM", help="write a new key pair STEM.pem + STEM.pub.pem and exit")
    sg.set_defaults(func=cmd_sign)

    v = sub.add_parser("verify", help="verify a bundle (folder or .zip): schema, checksums, golden outputs per engine")
    v.add_argument("bundle")
    v.add_argument("--formats", help="only these formats' golden checks (comma-separated)")
    v.add_argument("--no-golden", action="store_true", help="checksums and schema only")
    v.add_argument("--public-key", help="also require manifest.sig to verify with this Ed25519 public key (PEM)")
    v.set_defaults(func=cmd_verify)

    bx = sub.add_parser("bundle", help="bundle files: `edge-rec bundle extract BUNDLE.zip DIR` (bounded, checked, verified)")
    bx.add_argument("action", choices=["extract"], help="extract: unpack a bundle zip into a new folder and verify it")
    bx.add_argument("zip", help="the bundle .zip (`edge-rec export` writes OUT.zip beside OUT/)")
    bx.add_argument("dest", help="folder to create (must not exist)")
    bx.set_defaults(func=cmd_bundle)

    rr = sub.add_parser("rerank", help="rerank a feed JSON with a bundle (the phone-side runtime); prints JSON")
    rr.add_argument("--bundle", required=True)
    rr.add_argument("--feed", required=True, help="feed JSON (the pipeline writes RUN/sample_feed.json)")
    rr.add_argument("--state", help="SQLite behaviour store: history comes from it instead of the feed")
    rr.add_argument("--record-history", action="store_true", help="first append the feed's history events to --state")
    rr.add_argument("--k", type=int, help="return the top k (default: all)")
    rr.add_argument("--explain", action="store_true", help="per-candidate modality attribution")
    rr.add_argument("--backend", default="auto", help="auto, ort, onnx, tflite, coreml or executorch")
    rr.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="default: int8 where it passed its gates")
    rr.add_argument("--threads", type=int, default=1)
    rr.add_argument("--public-key", help="refuse the bundle unless manifest.sig verifies with this Ed25519 key (PEM)")
    rr.add_argument("--no-policy", action="store_true", help="the model's order, without the post-ranking policy")
    rr.set_defaults(func=cmd_rerank)

    dr = sub.add_parser("drift", help="replay the world's planted interest switches through a bundle: swipes until "
                                      "the new interest holds the top 3: history frozen, history updated on the device, "
                                      "and history updates plus the personal adapter trained on the phone")
    dr.add_argument("--data", required=True, help="a synthetic world folder (it holds the planted truth)")
    dr.add_argument("--bundle", required=True)
    dr.add_argument("--out", required=True, help="JSON report to write")
    dr.add_argument("--users", type=int, default=50)
    dr.add_argument("--max-swipes", type=int, default=30)
    dr.add_argument("--seed", type=int, default=0)
    dr.add_argument("--fit-every", type=int, default=1, metavar="N",
                    help="the local-learning arm calls LocalLearner.fit() after every N swipes")
    dr.add_argument("--no-local-learning", action="store_true",
                    help="skip the local-learning arm (it trains the adapter in a real store per viewer: slower)")
    dr.set_defaults(func=cmd_drift)

    be = sub.add_parser("bench", help="latency, memory and size of every model in a bundle (bench.json, table, plots); "
                                      "`bench merge FILES` combines devices; `--package` builds a device-farm runner")
    be.add_argument("action", nargs="?", default="run", choices=["run", "merge"],
                    help="run (default): benchmark --bundle; merge: combine bench.json FILES into --out")
    be.add_argument("files", nargs="*", help="bench.json files to merge")
    be.add_argument("--bundle")
    be.add_argument("--out", help="output folder")
    be.add_argument("--formats", help="default: every format in the bundle")
    be.add_argument("--quant", help="precisions (default: all in the bundle)")
    be.add_argument("--candidates", default="16,64,200,1000", help="feed sizes N, comma-separated")
    be.add_argument("--threads", default="1,2", help="engine thread counts, comma-separated")
    be.add_argument("--repeats", type=int, default=200, help="timed calls per row (after warm-up)")
    be.add_argument("--teacher", help="teacher folder: adds the teacher/student speed ratio (needs torch)")
    be.add_argument("--report", help="the pipeline's report.json: adds teacher and student quality rows")
    be.add_argument("--check", nargs="?", const=str(Path(__file__).with_name("bench_reference.json")),
                    help="exit 1 on a regression against this reference of ratio bounds (default: the one shipped "
                         "with edge-rec, edge_rec/bench_reference.json; its teacher ratios need --teacher and "
                         "--report)")
    be.add_argument("--package", help="write a self-contained device-farm runner zip instead of benchmarking")
    be.set_defaults(func=cmd_bench)

    pl = sub.add_parser("pipeline", help="run every available stage and write report.json / report.md")
    pl.add_argument("--preset", default="default", choices=["tiny", "default", "large"])
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--out", required=True)
    pl.add_argument("--data", help="use this dataset folder instead of generating the synthetic world")
    pl.add_argument("--overwrite", action="store_true")
    pl.add_argument("--jobs", type=_jobs, help=JOBS_HELP)
    pl.add_argument("--loo-repeats", type=int, default=1, metavar="K",
                    help="students per leave-one-out arm of modality pruning, averaged (default 1; 3 on small "
                         "data, where one re-training moves a modality's worth by more than the budget)")
    pl.set_defaults(func=cmd_pipeline)
    _with_defaults(p)
    return p


def _quiet_known_noise() -> None:
    """Known-harmless third-party noise, filtered at the edge (the CLI; a library user keeps their own
    logging untouched), so that what reaches stderr is ours or a real problem:

    - torchao logs "Failed to load .../_C_mxfp8...so" and "_C_cutlass_90a" on import: CUDA kernels that
      a CPU-only machine never runs (only those two messages are dropped);
    - torch's pytree warns that a third party's Enum is registered as a constant the deprecated way
      (ExecuTorch/torchao's KernelPreference), once per process;
    - TensorFlow/LiteRT's C++ INFO lines below warnings, as export already sets; the converter's oneDNN
      notice is printed before absl's logging is set up, so the level does not reach it: export turns
      TensorFlow's oneDNN CPU kernels off instead (TF_ENABLE_ONEDNN_OPTS=0, see export/formats.py).
    """
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    logging.getLogger("torchao").addFilter(
        lambda r: not (r.getMessage().startswith("Failed to load") and ("mxfp8" in r.getMessage()
                                                                         or "cutlass" in r.getMessage())))
    logging.getLogger("torch.utils._pytree").addFilter(
        lambda r: "register_constant() on Enum subclasses is deprecated" not in r.getMessage())


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_known_noise()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except EdgeRecError as exc:
        print(f"edge-rec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-rec: interrupted", file=sys.stderr)
        return 3
    except SystemExit as exc:  # argparse usage errors exit 2 already
        return int(exc.code) if isinstance(exc.code, int) else 2
    except Exception:  # a crash: show it, exit 3
        traceback.print_exc()
        return 3


if __name__ == "__main__":
    sys.exit(main())
