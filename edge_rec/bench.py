"""Benchmarks of a bundle's models, one schema for every engine (``bench.json``), torch-free.

Each (format, precision, threads) runs in a fresh worker process, so that ``peak_rss_mb`` is that
engine's own peak and one engine's threads or allocator cannot colour the next. Inputs are the bundle's
golden request (real features) repeated to N candidates. Per configuration and N: init (open + the
engine's own setup), first inference, then warm p50/p90/p99/mean over ``repeats`` calls.

Roofline: the MACs of one request (``model.macs_per_candidate`` x N), the achieved GFLOP/s at the p50
and the single-core peak GFLOP/s of this machine measured in the same run (a float32 GEMM, one thread).

The same module runs on a phone or a device-farm host from the packaged runner (``edge-rec bench
--package``): it needs python3, numpy and one engine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

BENCH_SCHEMA_VERSION = "1.0"
RESULT_KEYS = ("model", "format", "precision", "engine", "candidates", "threads", "init_ms", "first_ms",
               "p50_ms", "p90_ms", "p99_ms", "mean_ms", "peak_rss_mb", "size_bytes")


def _peak_rss_mb() -> float:
    """This process's peak resident set (MB). Linux: VmHWM, which starts afresh at exec (ru_maxrss
    would carry over the peak of the parent that launched the worker)."""
    try:
        for ln in Path("/proc/self/status").read_text().splitlines():
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 1024.0 if sys.platform != "darwin" else r / 1024.0 / 1024.0
    except ImportError:              # not on every platform (e.g. Windows)
        return float("nan")


def peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Single-thread float32 GEMM throughput (run this in a process limited to one BLAS thread)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def golden_inputs(root: Path, manifest: dict[str, Any], n: int) -> dict[str, np.ndarray]:
    """The bundle's first golden request, its candidates repeated (cyclically) to ``n``."""
    golden = json.loads((root / manifest["golden"]["path"]).read_text())
    case = golden["cases"][0]["inputs"]
    x = {k: np.asarray(v["data"], np.float32).reshape(v["shape"]) for k, v in case.items()}
    return {k: (np.ascontiguousarray(np.resize(v, (n,) + v.shape[1:])) if k.startswith("cand_") else v)
            for k, v in x.items()}


def _worker(bundle: str, fmt: str, precision: str, threads: int, candidates: list[int], repeats: int,
            with_peak: bool) -> dict[str, Any]:
    """Runs inside a fresh process: open one engine, time it at every N."""
    from edge_rec.bundle import verify_bundle
    from edge_rec.engines import files_size, open_manifest_group

    root = Path(bundle)
    manifest = verify_bundle(root)
    arts = [a for a in manifest["artifacts"] if a["format"] == fmt and a["precision"] == precision]
    t0 = time.perf_counter()
    eng = open_manifest_group(root, manifest, arts, threads=threads)
    init_ms = (time.perf_counter() - t0) * 1e3
    size = files_size([root / a["path"] for a in arts])
    rows = []
    for n in candidates:
        x = golden_inputs(root, manifest, n)
        t = time.perf_counter()
        eng.run(x)
        first_ms = (time.perf_counter() - t) * 1e3
        for _ in range(min(20, repeats)):
            eng.run(x)
        ms = np.empty(repeats)
        for i in range(repeats):
            t = time.perf_counter()
            eng.run(x)
            ms[i] = (time.perf_counter() - t) * 1e3
        rows.append({"model": manifest["model"]["kind"], "format": fmt, "precision": precision, "engine": eng.name,
                     "engine_version": getattr(eng, "version", "unknown"), "candidates": n, "threads": threads,
                     "init_ms": init_ms, "first_ms": first_ms, "p50_ms": float(np.median(ms)),
                     "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
                     "mean_ms": float(ms.mean()), "peak_rss_mb": _peak_rss_mb(), "size_bytes": size})
    out: dict[str, Any] = {"rows": rows}
    if with_peak:
        out["peak_gflops"] = peak_gflops()
    return out


def _run_worker(args: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    env = dict(os.environ)
    t = str(args["threads"])
    env.update(OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t)
    code = "import json, sys; from edge_rec.bench import _worker; print('@@' + json.dumps(_worker(**json.loads(sys.argv[1]))))"
    res = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                         timeout=timeout, env=env)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("@@")), None)
    if res.returncode != 0 or line is None:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"error": f"{args['fmt']}/{args['precision']}: worker failed: {' | '.join(tail)}"}
    return json.loads(line[2:])


def machine_info(engines: dict[str, str]) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "engines": engines}


def run_bench(bundle: str | Path, *, formats: Sequence[str] | None = None, precisions: Sequence[str] | None = None,
              candidates: Sequence[int] = (16, 64, 200, 1000), threads: Sequence[int] = (1, 2), repeats: int = 200,
              progress: bool = True) -> dict[str, Any]:
    """Benchmark every (format, precision) of ``bundle`` (or the ones asked for) x threads x N."""
    from edge_rec.bundle import verify_bundle

    root = Path(bundle)
    manifest = verify_bundle(root)
    groups = sorted({(a["format"], a["precision"]) for a in manifest["artifacts"]})
    if formats:
        groups = [g for g in groups if g[0] in formats]
    if precisions:
        groups = [g for g in groups if g[1] in precisions]
    results, errors, engines, skipped = [], [], {}, []
    if platform.system() != "Darwin" and any(f == "coreml" for f, _ in groups):
        skipped.append("coreml: prediction needs macOS; run the packaged runner on a Mac for its numbers")
        groups = [g for g in groups if g[0] != "coreml"]
    peak = None
    jobs = [(f, p, t) for f, p in groups for t in threads]
    for i, (f, p, t) in enumerate(jobs):
        if progress:
            print(f"bench {i + 1}/{len(jobs)}: {f}/{p} threads={t}", file=sys.stderr, flush=True)
        out = _run_worker({"bundle": str(root), "fmt": f, "precision": p, "threads": t,
                           "candidates": list(candidates), "repeats": repeats, "with_peak": peak is None and t == 1})
        if "error" in out:
            errors.append(out["error"])
            continue
        peak = out.get("peak_gflops", peak)
        for r in out["rows"]:
            engines[r["engine"]] = r.pop("engine_version")
            results.append(r)
    macs = int(manifest["model"]["macs_per_candidate"])
    rep: dict[str, Any] = {"schema_version": BENCH_SCHEMA_VERSION, "machine": machine_info(engines),
                           "bundle": str(root), "repeats": repeats, "results": results, "errors": errors, "skipped": skipped,
                           "model": {"params": manifest["model"]["params"], "macs_per_candidate": macs}}
    best = min((r for r in results if r["threads"] == 1), key=lambda r: r["p50_ms"] / r["candidates"], default=None)
    achieved = None
    if best is not None:
        achieved = 2.0 * macs * best["candidates"] / (best["p50_ms"] / 1e3) / 1e9
    rep["roofline"] = {"peak_gflops": peak, "achieved_gflops": achieved,
                       "fraction_of_peak": achieved / peak if achieved and peak else None,
                       "at": None if best is None else {k: best[k] for k in ("format", "precision", "candidates")},
                       "macs_per_request": None if best is None else macs * best["candidates"]}
    rep["ratios"] = {}
    return rep


def check_against(bench: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Regressions of ``bench`` (plus its ``ratios``/``quality``) against ``reference`` tolerances.

    ``reference``: ``{"ratios": {name: {"min": x} | {"max": x}}}`` — only ratios, never absolute times."""
    fails = []
    have = dict(bench.get("ratios", {}))
    for name, bounds in reference.get("ratios", {}).items():
        v = have.get(name)
        if v is None:
            fails.append(f"{name}: missing from the bench results")
            continue
        if "min" in bounds and not v >= bounds["min"]:
            fails.append(f"{name}: {v:.4g} < min {bounds['min']}")
        if "max" in bounds and not v <= bounds["max"]:
            fails.append(f"{name}: {v:.4g} > max {bounds['max']}")
    return fails


def merge(files: Sequence[str | Path]) -> dict[str, Any]:
    """Combine bench.json files from many devices: one row per (device, format, precision, N, threads)."""
    rows, devices = [], []
    from edge_rec.errors import DataError

    from edge_rec.validate import read_json

    for f in files:
        b = read_json(f, "merge input (a bench.json written by `edge-rec bench` or the runner)")
        if not isinstance(b, dict) or not isinstance(b.get("schema_version"), str):
            raise DataError(f"{f} is not a bench.json (no schema_version); merge takes files written by `edge-rec bench`.")
        if b["schema_version"].split(".")[0] != BENCH_SCHEMA_VERSION.split(".")[0]:
            raise DataError(f"{f}: bench schema {b.get('schema_version')!r} is not {BENCH_SCHEMA_VERSION}.")
        if not isinstance(b.get("machine"), dict) or not isinstance(b.get("results"), list):
            raise DataError(f"{f}: a bench.json needs 'machine' and 'results'; this one is incomplete.")
        dev = b.get("device") or f"{b['machine']['cpu']} ({Path(f).stem})"
        devices.append({"device": dev, "file": str(f), **b["machine"]})
        for r in b["results"]:
            rows.append({"device": dev, **{k: r.get(k) for k in RESULT_KEYS}})
    return {"schema_version": BENCH_SCHEMA_VERSION, "devices": devices, "rows": rows}


def markdown_table(rows: Sequence[dict[str, Any]], device: bool = False) -> str:
    cols = (["device"] if device else []) + ["format", "precision", "engine", "candidates", "threads", "init_ms",
                                            "first_ms", "p50_ms", "p99_ms", "peak_rss_mb", "size_bytes"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _ratio_worker(bundle: str, teacher: str | None, n: int, repeats: int) -> dict[str, Any]:
    """Side by side in one process, 1 thread, interleaved call by call: ``rerank()`` at a swipe (a feed
    prepared once, the default post-ranking policy) vs the bare engine call on the bundle's sample feed
    (N candidates), and the PyTorch teacher on inputs of the same shape (when ``teacher`` is given)."""
    from edge_rec.policy import PostRankPolicy
    from edge_rec.runtime import Candidate, Reranker, _event

    root = Path(bundle)
    rr = Reranker.open(root, threads=1, policy=PostRankPolicy())
    feed = json.loads((root / "sample_feed.json").read_text())
    base = feed["candidates"]
    cands = [Candidate.from_dict(dict(base[i % len(base)], item_id=10**7 + i)) for i in range(n)]
    hist = [_event(e) for e in feed["history"]]
    ctx = {"now": feed["now"], "history": hist, "history_total": feed["history_total"]}
    prepared = rr.prepare(cands)
    x = {k: v.copy() for k, v in rr.features(prepared, feed["now"], hist, feed["history_total"]).items()}

    def timed(fns, reps):
        for fn in fns:
            for _ in range(20):
                fn()
        ms = np.empty((len(fns), reps))
        for i in range(reps):
            for j, fn in enumerate(fns):
                t = time.perf_counter()
                fn()
                ms[j, i] = (time.perf_counter() - t) * 1e3
        return np.median(ms, axis=1).tolist()

    rerank_ms, engine_ms = timed([lambda: rr.rerank(prepared, context=ctx), lambda: rr.score(x)], repeats)
    out = {"rerank_p50_ms": rerank_ms, "engine_p50_ms": engine_ms, "student": f"{rr.format}/{rr.precision}",
           "candidates": n}
    if teacher:
        import torch

        from edge_rec.distill.teacher_stage import load_teacher

        torch.set_num_threads(1)
        t_model, _ = load_teacher(teacher)
        tx = t_model.example_inputs(n=n)
        with torch.inference_mode():
            out["teacher_p50_ms"] = timed([lambda: t_model(**tx)], max(30, repeats // 5))[0]
    return out


def ratios(bundle: str | Path, teacher: str | Path | None = None, n: int = 200, repeats: int = 300) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = {"bundle": str(bundle), "teacher": None if teacher is None else str(teacher), "n": n, "repeats": repeats}
    code = "import json, sys; from edge_rec.bench import _ratio_worker; print('@@' + json.dumps(_ratio_worker(**json.loads(sys.argv[1]))))"
    res = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env, timeout=900)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("@@")), None)
    if res.returncode != 0 or line is None:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:] }
    r = json.loads(line[2:])
    r["wrapper_overhead"] = (r["rerank_p50_ms"] - r["engine_p50_ms"]) / r["engine_p50_ms"]
    if "teacher_p50_ms" in r:
        r["teacher_over_student_p50"] = r["teacher_p50_ms"] / r["engine_p50_ms"]
        r["teacher_over_rerank_p50"] = r["teacher_p50_ms"] / r["rerank_p50_ms"]
    return r


RUNNER = '''"""edge-rec device-farm runner: benchmark the bundle next to this file on this device.

    python3 run_bench.py [--candidates 16,64,200,1000] [--threads 1,2] [--repeats 200] [--out bench.json]

Needs python3, numpy and one engine (onnxruntime or ai-edge-litert); writes the same bench.json as
`edge-rec bench`. Combine several devices with `edge-rec bench merge a.json b.json ...`.
"""
import argparse, json, os, platform, sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")

from edge_rec.bench import run_bench  # noqa: E402
from edge_rec.engines import ENGINES  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--candidates", default="16,64,200,1000")
ap.add_argument("--threads", default="1,2")
ap.add_argument("--repeats", type=int, default=200)
ap.add_argument("--formats", help="default: every format whose engine is installed here")
ap.add_argument("--device", default=platform.node(), help="name of this device in merged tables")
ap.add_argument("--out", default="bench.json")
a = ap.parse_args()
def _counts(text, flag):
    try:
        v = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        v = []
    if not v or min(v) < 1:
        ap.error(f"{flag} takes whole numbers >= 1, comma-separated; got {text!r}")
    return v
cands, threads = _counts(a.candidates, "--candidates"), _counts(a.threads, "--threads")
if a.repeats < 1:
    ap.error(f"--repeats must be >= 1, got {a.repeats}")
import importlib.util
mods = {"onnx": "onnxruntime", "ort": "onnxruntime", "tflite": "ai_edge_litert", "executorch": "executorch", "coreml": "coremltools"}
formats = a.formats.split(",") if a.formats else [f for f, m in mods.items() if importlib.util.find_spec(m)]
if platform.system() != "Darwin" and "coreml" in formats:
    formats.remove("coreml")
rep = run_bench(HERE / "bundle", formats=formats, candidates=cands, threads=threads, repeats=a.repeats)
rep["device"] = a.device
Path(a.out).write_text(json.dumps(rep, indent=2) + "\\n")
print(f"wrote {a.out}: {len(rep['results'])} rows, errors: {rep['errors'] or 'none'}")
'''

PACKAGE_FILES = ("__init__.py", "errors.py", "_requires.py", "engines.py", "bundle.py", "bench.py", "bundle.schema.json")


def native_commands(manifest: dict[str, Any]) -> list[str]:
    """Equivalent command lines for the engines' own benchmark tools on the same model files."""
    lines = []
    for a in manifest["artifacts"]:
        if a["format"] == "tflite":
            lines.append(f"benchmark_model --graph=bundle/{a['path']} --num_threads=1 --num_runs=200 --warmup_runs=20"
                         f"   # TFLite, N={a['bucket']}, {a['precision']}")
        elif a["format"] in ("onnx", "ort"):
            shapes = ",".join(f"{t['name']}:{'x'.join(str(200 if d == 'N' else d) for d in t['shape'])}"
                              for t in manifest["signature"]["inputs"])
            lines.append(f"onnxruntime_perf_test -e cpu -x 1 -r 200 -I -f N:200 bundle/{a['path']} result.txt"
                         f"   # {a['format']} {a['precision']}; inputs: {shapes}")
    return lines


def package_runner(bundle: str | Path, out_zip: str | Path) -> Path:
    """A self-contained zip: the bundle, the torch-free modules this benchmark needs, ``run_bench.py``,
    ``native_commands.txt`` and a README. Unzip anywhere with python3 + numpy + one engine."""
    import zipfile

    from edge_rec.bundle import verify_bundle

    root = Path(bundle)
    manifest = verify_bundle(root)
    pkg = Path(__file__).parent
    out = Path(out_zip)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                z.write(p, f"bundle/{p.relative_to(root).as_posix()}")
        for name in PACKAGE_FILES:
            z.write(pkg / name, f"edge_rec/{name}")
        z.writestr("run_bench.py", RUNNER)
        z.writestr("native_commands.txt", "\n".join(native_commands(manifest)) + "\n")
        z.writestr("README.txt", "edge-rec device-farm runner\n\n"
                   "  python3 -m venv venv && venv/bin/pip install numpy onnxruntime   # or ai-edge-litert\n"
                   "  venv/bin/python run_bench.py --out bench-$(hostname).json\n\n"
                   "On Android (Termux): pkg install python; pip install numpy onnxruntime; python run_bench.py\n"
                   "Over adb: adb push runner.zip /data/local/tmp/ and run it in a Termux or device-farm shell.\n"
                   "native_commands.txt: the same models through TFLite's benchmark_model and onnxruntime_perf_test.\n"
                   "Merge many devices: edge-rec bench merge bench-*.json --out merged/\n")
    os.replace(tmp, out)
    return out


def quality_rows(bundle: str | Path, report: str | Path | None = None) -> list[dict[str, Any]]:
    """NDCG@10 against size: every export (from the bundle's export report, measured on the same
    validation requests) and, given the pipeline's ``report.json``, the teacher and students (test)."""
    rows = []
    rep = Path(bundle) / "export_report.json"
    if rep.is_file():
        er = json.loads(rep.read_text())
        for f, precs in er["exports"].items():
            for p, r in precs.items():
                if r.get("ok") and r.get("ndcg@10") is not None:
                    rows.append({"model": f"student {f}/{p}", "split": er["split"], "ndcg@10": r["ndcg@10"],
                                 "size_bytes": r["size_bytes"]})
        rows.append({"model": "student pytorch fp32", "split": er["split"], "ndcg@10": er["reference"]["ndcg@10"],
                     "size_bytes": None})
    if report is not None and Path(report).is_file():
        models = json.loads(Path(report).read_text()).get("models", {})
        for name in ("teacher", "student_label_only", "student_kd", "student"):
            if name in models:
                m = models[name]
                rows.append({"model": name, "split": "test", "ndcg@10": m["ndcg@10"], "size_bytes": 4 * m["params"]})
    return rows


def plots(bench: dict[str, Any], quality: list[dict[str, Any]], out: Path) -> list[str]:
    """``latency.png`` (p50 against N per engine/precision, 1 thread) and ``quality_size.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in bench["results"]:
        if r["threads"] == 1:
            series.setdefault(f"{r['format']}/{r['precision']}", []).append((r["candidates"], r["p50_ms"]))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("candidates per request (N)")
    ax.set_ylabel("warm p50 latency (ms), 1 thread")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    made.append("latency.png")
    # quality against size for the exported files only: they are measured on the same validation
    # requests as the PyTorch student they came from, so "retained" is a like-for-like ratio (the
    # teacher and students are on the test split, in the report's table, not on this axis)
    ref = next((q["ndcg@10"] for q in quality if q["model"] == "student pytorch fp32"), None)
    pts = [q for q in quality if q.get("size_bytes") and q["model"].startswith("student ") and ref]
    if pts:
        from matplotlib.ticker import ScalarFormatter

        fig, ax = plt.subplots(figsize=(6.0, 4.0))
        kb = [q["size_bytes"] / 1024 for q in pts]
        kept = [100.0 * q["ndcg@10"] / ref for q in pts]
        colors = {"onnx": "tab:blue", "tflite": "tab:green", "coreml": "tab:purple", "executorch": "tab:red"}
        for q, x, y in zip(pts, kb, kept):
            fmt, prec = q["model"].removeprefix("student ").split("/")
            # one legend entry per file (points of a format and its int8 twin can sit on top of each other)
            ax.scatter(x, y, marker="o" if prec == "fp32" else "s", s=40, color=colors.get(fmt, "tab:grey"),
                       facecolors="none" if prec == "int8" else None, linewidths=1.5,
                       label=f"{fmt} {prec}: {x:.1f} KB, {y:.2f} %")
        ax.axhline(100.0, color="grey", lw=0.8, ls="--", label="the PyTorch student (100 %)")
        # an honest scale: at least 98-101 %, so a 0.1 % difference looks like one
        ax.set_ylim(min(98.0, min(kept) - 0.5), max(101.0, max(kept) + 0.5))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("file size (KB, log scale)")
        ax.set_ylabel("NDCG@10 retained (% of the PyTorch student,\nsame validation requests)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(out / "quality_size.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append("quality_size.png")
    return made
