"""What on-device learning costs the phone: time per training step, per ``observe()`` and per ``fit()``,
and the memory training adds, measured in a process that holds only the phone-side runtime.

    .venv/bin/python benchmarks/local_learning.py --run runs/default [--viewers 5] [--repeats 2000]

The parent process reads the run's dataset and writes, for each of ``--viewers`` viewers (those with
the most training-period pages), their pages as the server sent them and their reactions as the app
recorded them (JSON). Each viewer is then replayed in a **fresh child process** that imports only
``edge_rec`` (numpy + ONNX Runtime, no torch: checked) and opens the bundle's int8 ONNX student, as a
phone app would:

1. every page: ``LocalLearner.observe(page)`` (one engine call and one SQLite transaction; timed), then
   the viewer's reactions go into the store (``UserState``, SQLite, ``durability="normal"``);
2. ``LocalLearner.fit()`` once (timed): examples from the store, the held-out check, SGD;
3. one training step (``loss_and_grad`` and the update on a batch of :data:`~edge_rec.local.BATCH`),
   timed ``--repeats`` times on the viewer's own examples;
4. memory: the resident set after opening the bundle, the high-water mark (Linux ``VmHWM``) before and
   after ``fit()``, so what training adds on top of reranking is their difference; and the peak of the
   Python/numpy allocations during a second ``fit()`` (``tracemalloc``), which does not depend on what
   the process did before.

Prints medians and writes ``OUT`` (default ``RUN/local_learning.json``). Nothing here is a target: the
figures are what this machine measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rss_mb() -> dict[str, float]:
    """VmRSS and VmHWM (MB) of this process from /proc (Linux); elsewhere ru_maxrss as both."""
    try:
        kv = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {k: int(kv[k].split()[0]) / 1024.0 for k in ("VmRSS", "VmHWM")}
    except (OSError, KeyError, ValueError):
        import resource

        m = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 1024.0 ** 2)
        return {"VmRSS": m, "VmHWM": m}


def _phone(pages_path: str, bundle: str, repeats: int) -> dict[str, Any]:
    """The child: replay one viewer's pages on the phone-side runtime alone."""
    import tracemalloc

    from edge_rec.local import BATCH, LocalLearner, _batches, examples_from_store, loss_and_grad
    from edge_rec.runtime import Reranker
    from edge_rec.state import UserState

    pages = json.loads(Path(pages_path).read_text())
    mem: dict[str, Any] = {"start": _rss_mb()}
    rr = Reranker.open(bundle, backend="onnx", precision="int8")
    mem["bundle_open"] = _rss_mb()
    obs_ms = []
    with tempfile.TemporaryDirectory(prefix="edge-rec-ll-") as tmp:
        # the world's log spans more than the store's default 90 days: keep all of this viewer's
        with UserState(Path(tmp) / "viewer.db", durability="normal", max_age_days=36500.0) as state:
            learner = LocalLearner(rr, state)
            for p in pages:
                t = time.perf_counter()
                learner.observe(p["candidates"], p["now"])
                obs_ms.append((time.perf_counter() - t) * 1e3)
                state.record_many(rr.parse_history(p["events"]))
            # a rerank from the store, as the app does between fits: part of the baseline, not of training
            rr.rerank(pages[-1]["candidates"], context={"now": pages[-1]["now"] + 1.0}, k=10, state=state)
            mem["before_fit"] = _rss_mb()
            t = time.perf_counter()
            fit = learner.fit()
            fit_ms = (time.perf_counter() - t) * 1e3
            mem["after_fit"] = _rss_mb()
            tracemalloc.start()
            learner.fit()
            traced_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            ex = examples_from_store(rr, state)
    # one SGD step on a batch of the viewer's own examples, built as train_head builds it
    f, s, y, w = next(_batches(ex, np.arange(min(BATCH, len(ex)))))
    theta0 = rr.global_head.theta.astype(np.float32)
    theta = theta0.copy()
    steps = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        _, g = loss_and_grad(theta, theta0, f, s, y, w, 0.1)
        theta = (theta - np.float32(0.5) * g).astype(np.float32)
        steps[i] = (time.perf_counter() - t) * 1e3
    return {"pages": len(pages), "candidates": int(sum(len(p["candidates"]) for p in pages)),
            "events": int(sum(len(p["events"]) for p in pages)), "examples": len(ex),
            "trained": bool(fit["trained"]), "fit_steps": fit.get("steps"),
            "observe_ms_p50": float(np.median(obs_ms)), "fit_ms": fit_ms, "step_ms_p50": float(np.median(steps)),
            "step_ms_p99": float(np.percentile(steps, 99)),
            "rss_mb": {"process_start": mem["start"]["VmRSS"], "bundle_open": mem["bundle_open"]["VmRSS"],
                       "peak_before_fit": mem["before_fit"]["VmHWM"], "peak_after_fit": mem["after_fit"]["VmHWM"],
                       "fit_added_peak": max(0.0, mem["after_fit"]["VmHWM"] - mem["before_fit"]["VmHWM"])},
            "fit_traced_peak_kb": traced_peak / 1024.0,
            "torch_imported": "torch" in sys.modules, "engine": f"{rr.engine.name} {rr.format}/{rr.precision}"}


def _viewer_pages(ds: Any, user: int) -> list[dict[str, Any]]:
    """A viewer's training-period pages, oldest first: the feed as sent, then the reactions to it."""
    from edge_rec.distill.feed import event_json, request_feed

    rq = ds.requests
    return [{**{k: v for k, v in request_feed(ds, r, history=0).items() if k in ("now", "candidates")},
             "events": [event_json(ds, j) for j in np.flatnonzero(ds.interactions["req"] == r).tolist()]}
            for r in sorted(ds.split_index("train").tolist(), key=lambda r: rq["ts"][r]) if int(rq["user"][r]) == user]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a pipeline run folder (data/ and bundle/)")
    ap.add_argument("--viewers", type=int, default=5, help="viewers replayed, each in a fresh process")
    ap.add_argument("--repeats", type=int, default=2000, help="timed training steps per viewer")
    ap.add_argument("--out", help="JSON to write (default RUN/local_learning.json)")
    ap.add_argument("--phone", nargs=2, metavar=("PAGES", "BUNDLE"), help=argparse.SUPPRESS)   # the child
    a = ap.parse_args(argv)
    if a.phone:
        print(json.dumps(_phone(a.phone[0], a.phone[1], a.repeats)))
        return 0
    if not a.run:
        ap.error("--run is required")
    from edge_rec.distill.dataset import Dataset

    run = Path(a.run)
    ds = Dataset.load(run / "data")
    rq = ds.requests
    train = ds.split_index("train")
    counts = np.bincount(rq["user"][train], minlength=int(rq["user"].max()) + 1)
    users = np.argsort(-counts, kind="stable")[: a.viewers]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-rec-ll-") as tmp:
        for u in users.tolist():
            p = Path(tmp) / f"viewer{u}.json"
            p.write_text(json.dumps(_viewer_pages(ds, int(u))))
            done = subprocess.run([sys.executable, __file__, "--phone", str(p), str(run / "bundle"),
                                   "--repeats", str(a.repeats)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            rows.append({"user": int(u), **json.loads(done.stdout.strip().splitlines()[-1])})
    med = {k: float(np.median([r[k] for r in rows])) for k in ("observe_ms_p50", "fit_ms", "step_ms_p50",
                                                               "fit_traced_peak_kb", "examples")}
    med["fit_added_peak_mb"] = float(np.median([r["rss_mb"]["fit_added_peak"] for r in rows]))
    med["bundle_open_rss_mb"] = float(np.median([r["rss_mb"]["bundle_open"] for r in rows]))
    rep = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "processor": platform.processor() or platform.machine()},
           "engine": rows[0]["engine"], "viewers": rows, "median_over_viewers": med,
           "torch_imported_by_the_phone_side": any(r["torch_imported"] for r in rows)}
    out = Path(a.out) if a.out else run / "local_learning.json"
    out.write_text(json.dumps(rep, indent=2))
    print(f"{'viewer':>7} {'pages':>6} {'examples':>8} {'observe ms':>10} {'fit ms':>8} {'step ms':>8} "
          f"{'RSS open MB':>11} {'fit adds MB':>11} {'fit traced KB':>13}")
    for r in rows:
        print(f"{r['user']:>7} {r['pages']:>6} {r['examples']:>8} {r['observe_ms_p50']:>10.2f} {r['fit_ms']:>8.1f} "
              f"{r['step_ms_p50']:>8.4f} {r['rss_mb']['bundle_open']:>11.1f} {r['rss_mb']['fit_added_peak']:>11.2f} "
              f"{r['fit_traced_peak_kb']:>13.0f}")
    print(f"medians over {len(rows)} viewers: step {med['step_ms_p50']:.4f} ms, fit {med['fit_ms']:.0f} ms on "
          f"{med['examples']:.0f} examples, observe {med['observe_ms_p50']:.2f} ms/page, RSS after opening the "
          f"bundle {med['bundle_open_rss_mb']:.0f} MB, fit adds {med['fit_added_peak_mb']:.2f} MB to the peak "
          f"({med['fit_traced_peak_kb']:.0f} KB traced); torch imported: {rep['torch_imported_by_the_phone_side']}")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
