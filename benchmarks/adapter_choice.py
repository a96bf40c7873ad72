"""Which part of the student should the phone train? The output adapter against a low-rank adapter
(LoRA) inside the fusion block, measured side by side on the same viewers, pages and protocol.

    .venv/bin/python benchmarks/adapter_choice.py --run runs/default [--viewers 150] [--rank 4]

Both start from the run's final student (PyTorch, fp32) and train each viewer alone on their own
training-period pages, labelled as the phone labels them (:func:`edge_rec.local.event_label`; a
candidate with no reaction is a negative from the feed), with the phone's rule
(:func:`edge_rec.local.validated_head`'s): train on the oldest 80 % of the examples, keep the adapter
only if its log loss on the newest 20 % beats the frozen model's, then retrain on all.

* **output adapter** (what edge-rec ships): ``score * (1 + a) + b + fused · u``, d + 2 numbers, trained
  by :func:`edge_rec.local.train_head` on the frozen model's ``score`` and ``fused``: the model never
  runs during training;
* **LoRA** on the fusion block (the per-candidate token attention and its FFN): ``W + B A`` with rank
  ``--rank`` on ``attn.q``, ``attn.v``, ``ffn[0]`` and ``ffn[2]``, ``B`` = 0 at the start (the frozen
  model exactly), SGD on the same loss with an L2 pull to zero; every step runs the student forward
  and backward on the page.

Hyper-parameters (each kind's L2 pull; LoRA's learning rate) are picked on the viewers' validation
request, NDCG@10 is then read once on their test request. Prints and writes ``RUN/adapter_choice.json``:
mean NDCG@10 of the frozen model and of each kind, the lift with a paired 95 % bootstrap interval,
how many viewers kept an adapter, trained numbers (the size of a federated update), and ms per step.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edge_rec.local import Examples, HeadWeights, event_label, validated_head
from edge_rec.metrics import ndcg_at_k

EPOCHS = 20
HEAD_GRID = (0.01, 0.1, 1.0)                       # the output adapter's L2 pull (the federate step's grid)
LORA_GRID = ((0.02, 0.01), (0.1, 0.01), (0.1, 0.1))   # LoRA (lr, L2)


class LoRALinear(nn.Module):
    """``base(x) + (x A^T) B^T * scale``; A [r, in] small random, B [out, r] zero: the base layer at start."""

    def __init__(self, base: nn.Linear, rank: int, seed: int) -> None:
        super().__init__()
        self.base = base
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=g) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T) @ self.B.T


def _ndcg(score: np.ndarray, click: np.ndarray) -> float:
    return float(ndcg_at_k(np.asarray(score, np.float64)[None], click[None].astype(np.float64), 10)[0])


def _inputs(rr: Any, feed: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """A feed's model inputs as torch tensors (copied: the runtime reuses its history buffers)."""
    f = rr.prepare(feed["candidates"])
    x = rr.features(f, feed["now"], rr.parse_history(feed["history"]))
    return {k: torch.tensor(np.array(v)) for k, v in x.items()}, [int(i) for i in f.item_ids]


def _viewers(ds: Any, rr: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """Viewers with a clicked validation and test request: their training pages (inputs, labels) and
    the two held-out requests (inputs, clicks)."""
    from edge_rec.distill.federate import _events
    from edge_rec.distill.feed import request_feed

    rq = ds.requests
    val = {int(rq["user"][r]): int(r) for r in ds.split_index("val") if rq["click"][r].max() > 0}
    test = {int(rq["user"][r]): int(r) for r in ds.split_index("test") if rq["click"][r].max() > 0}
    users = sorted(set(val) & set(test))
    users = sorted(np.random.default_rng(seed).choice(users, min(n, len(users)), replace=False).tolist())
    train: dict[int, list[int]] = {}
    for r in ds.split_index("train").tolist():
        train.setdefault(int(rq["user"][r]), []).append(r)
    out = []
    for u in users:
        pages = []
        for r in sorted(train.get(u, []), key=lambda r: rq["ts"][r]):
            x, ids = _inputs(rr, request_feed(ds, r, history=rr.hist_len))
            label_of = {e.item_id: event_label(e) for e in _events(ds, np.flatnonzero(ds.interactions["req"] == r))}
            pages.append((x, torch.tensor([label_of.get(i, 0.0) for i in ids], dtype=torch.float32)))
        held = {}
        for split, r in (("val", val[u]), ("test", test[u])):
            feed = request_feed(ds, r, history=rr.hist_len)
            x, ids = _inputs(rr, feed)
            clicked = set(feed["clicked_item_ids"])
            held[split] = (x, np.array([1.0 if i in clicked else 0.0 for i in ids]))
        out.append({"user": u, "pages": pages, **held})
    return out


def _score(model: nn.Module, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return model.forward_request(**x)


def _head_runs(model: nn.Module, viewers: list[dict[str, Any]], l2: float) -> tuple[list[HeadWeights | None], list[float]]:
    """The output adapter per viewer (None: not kept), and ms per step."""
    heads, ms = [], []
    d = int(model.config.d_model)
    with torch.no_grad():
        for v in viewers:
            fused, score, label = [], [], []
            for x, y in v["pages"]:
                o = _score(model, x)
                n = len(y)
                fused.append(o["fused"].numpy()[:n]), score.append(o["score"].numpy()[:n]), label.append(y.numpy())
            if not fused or sum(len(s) for s in score) < 8:
                heads.append(None)
                continue
            ex = Examples(np.concatenate(fused).astype(np.float32), np.concatenate(score).astype(np.float32),
                          np.concatenate(label).astype(np.float32))
            h, rep = validated_head(HeadWeights.zeros(d), ex, epochs=EPOCHS, lr=0.5, l2=l2)
            heads.append(h)
            if h is not None and rep.get("steps"):
                ms.append(rep["ms"] / rep["steps"])
    return heads, ms


def _lora_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(model.attn, "q"), (model.attn, "v"), (model.ffn, "0"), (model.ffn, "2")]


def _attach(model: nn.Module, rank: int) -> list[LoRALinear]:
    wraps = []
    for j, (parent, name) in enumerate(_lora_layers(model)):
        base = getattr(parent, name) if not name.isdigit() else parent[int(name)]
        w = LoRALinear(base, rank, seed=j)
        if name.isdigit():
            parent[int(name)] = w
        else:
            setattr(parent, name, w)
        wraps.append(w)
    return wraps


def _lora_params(wraps: list[LoRALinear]) -> list[nn.Parameter]:
    return [p for w in wraps for p in (w.A, w.B)]


def _train_lora(model: nn.Module, wraps: list[LoRALinear], pages: list[tuple[dict, torch.Tensor]], lr: float,
                l2: float, init: list[torch.Tensor]) -> tuple[int, float]:
    """SGD from ``init`` over whole pages for EPOCHS epochs (a page per step, shuffled); returns steps, ms."""
    params = _lora_params(wraps)
    with torch.no_grad():
        for p, v in zip(params, init):
            p.copy_(v)
    opt = torch.optim.SGD(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    steps, t0 = 0, time.perf_counter()
    for _ in range(EPOCHS):
        for k in torch.randperm(len(pages), generator=g).tolist():
            x, y = pages[k]
            z = _score(model, x)["score"][: len(y)]
            loss = nn.functional.binary_cross_entropy_with_logits(z, y)
            loss = loss + 0.5 * l2 * sum(((p - q) ** 2).sum() for p, q in zip(params, init))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    return steps, (time.perf_counter() - t0) * 1e3


def _log_loss(model: nn.Module, pages: list[tuple[dict, torch.Tensor]]) -> float:
    with torch.no_grad():
        z = torch.cat([_score(model, x)["score"][: len(y)] for x, y in pages])
        y = torch.cat([y for _, y in pages])
        return float(nn.functional.binary_cross_entropy_with_logits(z, y))


def _lora_runs(model: nn.Module, wraps: list[LoRALinear], viewers: list[dict[str, Any]], lr: float,
               l2: float) -> tuple[list[list[torch.Tensor] | None], list[float]]:
    """LoRA weights per viewer under the phone's rule (None: not kept), and ms per step (one page)."""
    params = _lora_params(wraps)
    init = [p.detach().clone() for p in params]
    out, ms = [], []
    for v in viewers:
        pages = v["pages"]
        n_ex = sum(len(y) for _, y in pages)
        if n_ex < 8 or len(pages) < 2:
            out.append(None)
            continue
        # the phone's split by time, at page granularity: the oldest ~80 % of the examples
        cum = np.cumsum([len(y) for _, y in pages])
        cut = int(min(max(1, np.searchsorted(cum, 0.8 * n_ex) + 1), len(pages) - 1))
        _train_lora(model, wraps, pages[:cut], lr, l2, init)
        trial = _log_loss(model, pages[cut:])
        _reset(params, init)
        base = _log_loss(model, pages[cut:])
        if not trial < base:
            out.append(None)
            continue
        steps, t = _train_lora(model, wraps, pages, lr, l2, init)
        out.append([p.detach().clone() for p in params])
        ms.append(t / steps)
        _reset(params, init)
    return out, ms


def _reset(params: list[nn.Parameter], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def _evaluate(model: nn.Module, viewers: list[dict[str, Any]], split: str, head: list[HeadWeights | None] | None = None,
              lora: tuple[list[LoRALinear], list[list[torch.Tensor] | None]] | None = None) -> np.ndarray:
    out = []
    with torch.no_grad():
        init = [p.detach().clone() for p in _lora_params(lora[0])] if lora else None
        for j, v in enumerate(viewers):
            x, click = v[split]
            if lora and lora[1][j] is not None:
                _reset(_lora_params(lora[0]), lora[1][j])
            o = _score(model, x)
            n = len(click)
            s = o["score"].numpy()[:n].astype(np.float64)
            if head and head[j] is not None:
                s = head[j].adjust(s, o["fused"].numpy()[:n])
            out.append(_ndcg(s, click))
            if lora and lora[1][j] is not None:
                _reset(_lora_params(lora[0]), init)
    return np.array(out)


def _ci(d: np.ndarray, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    m = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(1000)]
    return [float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a pipeline run folder (data/, student/, bundle/)")
    ap.add_argument("--viewers", type=int, default=150)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON to write (default RUN/adapter_choice.json)")
    a = ap.parse_args(argv)
    if a.viewers < 1 or a.rank < 1:
        ap.error("--viewers and --rank must be >= 1")
    from edge_rec.distill.checkpoint import load_ranker
    from edge_rec.distill.configs import StudentConfig
    from edge_rec.distill.dataset import Dataset
    from edge_rec.distill.student import Student
    from edge_rec.runtime import Reranker

    torch.set_num_threads(1)
    run = Path(a.run)
    t0 = time.perf_counter()
    ds = Dataset.load(run / "data")
    rr = Reranker.open(run / "bundle", backend="onnx", precision="fp32")       # feature building only
    model, _ = load_ranker(run / "student", "student", Student, StudentConfig, "edge-rec distill")
    for p in model.parameters():
        p.requires_grad_(False)
    viewers = _viewers(ds, rr, a.viewers, a.seed)
    frozen = {s: _evaluate(model, viewers, s) for s in ("val", "test")}
    kinds: dict[str, Any] = {}
    trials = []
    for l2 in HEAD_GRID:
        hs, ms = _head_runs(model, viewers, l2)
        trials.append({"kind": "output_adapter", "l2": l2, "val.ndcg@10": float(_evaluate(model, viewers, "val", head=hs).mean()),
                       "kept": sum(h is not None for h in hs), "_w": hs, "_ms": ms})
    before = [_score(model, v["val"][0])["score"] for v in viewers]
    wraps = _attach(model, a.rank)
    with torch.no_grad():                  # B = 0: the model with LoRA attached is the frozen model exactly
        at_start = max(float((_score(model, v["val"][0])["score"] - b).abs().max()) for v, b in zip(viewers, before))
    for lr, l2 in LORA_GRID:
        ws, ms = _lora_runs(model, wraps, viewers, lr, l2)
        trials.append({"kind": "lora", "lr": lr, "l2": l2, "val.ndcg@10": float(_evaluate(model, viewers, "val", lora=(wraps, ws)).mean()),
                       "kept": sum(w is not None for w in ws), "_w": ws, "_ms": ms})
    n_lora = sum(p.numel() for p in _lora_params(wraps))
    d = int(model.config.d_model)
    for kind, size in (("output_adapter", d + 2), ("lora", n_lora)):
        best = max((t for t in trials if t["kind"] == kind), key=lambda t: t["val.ndcg@10"])
        test = (_evaluate(model, viewers, "test", head=best["_w"]) if kind == "output_adapter"
                else _evaluate(model, viewers, "test", lora=(wraps, best["_w"])))
        lift = test - frozen["test"]
        kinds[kind] = {"picked": {k: v for k, v in best.items() if not k.startswith("_")}, "ndcg@10": float(test.mean()),
                       "lift": float(lift.mean()), "lift_ci95": _ci(lift), "kept": best["kept"],
                       "trained_numbers": size, "update_bytes_float32": 4 * size,
                       "ms_per_step_p50": float(np.median(best["_ms"])) if best["_ms"] else None,
                       "step": "numpy, a batch of 64 examples, the model does not run" if kind == "output_adapter"
                               else "PyTorch, one page forward + backward through the student"}
    rep = {"viewers": len(viewers), "rank": a.rank, "epochs": EPOCHS,
           "frozen": {"ndcg@10": float(frozen["test"].mean()), "val.ndcg@10": float(frozen["val"].mean())},
           "lora_at_start_max_abs_diff": at_start,
           "kinds": kinds, "trials": [{k: v for k, v in t.items() if not k.startswith("_")} for t in trials],
           "lora_layers": ["attn.q", "attn.v", "ffn.0", "ffn.2"], "seconds": time.perf_counter() - t0}
    out = Path(a.out) if a.out else run / "adapter_choice.json"
    out.write_text(json.dumps(rep, indent=2))
    print(f"{len(viewers)} viewers, NDCG@10 on the test request; frozen student {rep['frozen']['ndcg@10']:.4f} "
          f"(validation {rep['frozen']['val.ndcg@10']:.4f})")
    for kind, k in kinds.items():
        ms = "n/a" if k["ms_per_step_p50"] is None else f"{k['ms_per_step_p50']:.3f}"
        print(f"  {kind:15s} {k['ndcg@10']:.4f}  lift {k['lift']:+.4f} (95 % {k['lift_ci95'][0]:+.4f} .. "
              f"{k['lift_ci95'][1]:+.4f})  kept by {k['kept']}  {k['trained_numbers']} numbers  {ms} ms/step  "
              f"picked {k['picked']}")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
