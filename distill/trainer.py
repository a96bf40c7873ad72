"""One trainer for every neural ranker: CPU, one GPU, or many through ``torchrun`` (DDP).

* device auto-select (cuda > mps > cpu); bf16 autocast on CUDA; optional ``torch.compile``;
* DDP when launched by ``torchrun`` (``WORLD_SIZE`` > 1): NCCL on GPUs, gloo on CPU; each rank
  takes an equal shard of the epoch's seeded permutation of training requests;
* AdamW, gradient clipping, linear warm-up + cosine decay (a pure function of the step, so a
  resumed run follows the same schedule), early stopping on validation NDCG@10;
* checkpoints as safetensors (model and optimizer tensors) + JSON (config, counters), written to a
  temporary folder and renamed; ``resume=True`` continues from ``OUT/last`` exactly: the random
  streams are re-seeded from (seed, epoch, rank) at every epoch, not carried in hidden state;
* a JSONL metrics log (``OUT/metrics.jsonl``) and progress bars (rank 0).

Losses: per-task BCE on click / finish / like, a listwise softmax loss on clicks within each
request, and (teacher only) InfoNCE between the modality projections of the same item.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from edge_rec.errors import ConfigError, DataError
from edge_rec.distill.configs import TrainConfig
from edge_rec.distill.dataset import Dataset, write_json
from edge_rec.distill.evaluate import evaluate_scores
from edge_rec.distill.features import CatalogueNegatives, FeatureBuilder, input_names
from edge_rec.distill.models import TASKS, RankerBase


def pick_device(name: str = "auto") -> torch.device:
    """cuda (honouring LOCAL_RANK under torchrun) > mps > cpu, unless a device is named."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no CUDA GPU; use --device auto or cpu.")
    return torch.device(name)


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


def model_inputs(model: RankerBase, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t[k] for k in input_names(model.modalities)}


def ranking_loss(out: dict[str, torch.Tensor], t: dict[str, torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
    """Masked per-task BCE + listwise softmax cross-entropy on clicks."""
    valid = t["valid"]
    # per-task BCE only where a label was observed (logged candidates): a catalogue negative is "not
    # clicked" for the ranking, but no impression of it was shown, so it says nothing about p_click
    labelled = t.get("labelled", valid)
    logits = out["logits"].float()
    loss = logits.new_zeros(())
    denom = labelled.sum().clamp(min=1.0)
    for j, task in enumerate(TASKS):
        bce = F.binary_cross_entropy_with_logits(logits[..., j], t[task], reduction="none")
        loss = loss + cfg.task_weights[j] * (bce * labelled).sum() / denom
    if cfg.listwise_weight > 0:
        s = out["score"].float().masked_fill(valid <= 0, -1e4)
        logp = torch.log_softmax(s, dim=-1)
        y = t["click"] * valid
        npos = y.sum(-1)
        has = npos > 0
        if has.any():
            lw = -(y * logp).sum(-1)[has] / npos[has]
            loss = loss + cfg.listwise_weight * lw.mean()
    return loss


def contrastive_loss(model: RankerBase, t: dict[str, torch.Tensor], items: np.ndarray, cfg: TrainConfig,
                     gen: np.random.Generator, max_items: int = 256) -> torch.Tensor:
    """InfoNCE between every pair of modality projections of the same item (distinct items only)."""
    core = getattr(model, "module", model)
    if not hasattr(core, "modality_tokens") or len(core.modalities) < 2 or cfg.contrastive_weight <= 0:
        return torch.zeros((), device=t["valid"].device)
    flat_items = items.reshape(-1)
    ok = np.flatnonzero(flat_items >= 0)
    _, first = np.unique(flat_items[ok], return_index=True)
    rows = ok[first]
    if len(rows) > max_items:
        rows = gen.choice(rows, size=max_items, replace=False)
    rows_t = torch.from_numpy(np.sort(rows)).to(t["valid"].device)
    toks = core.modality_tokens({k: v for k, v in t.items() if k.startswith("cand_")})
    mods = list(core.modalities)
    total, pairs = torch.zeros((), device=rows_t.device), 0
    for a in range(len(mods)):
        for b in range(a + 1, len(mods)):
            ma = t[f"cand_mask_{mods[a]}"].reshape(-1)[rows_t]
            mb = t[f"cand_mask_{mods[b]}"].reshape(-1)[rows_t]
            both = (ma > 0) & (mb > 0)
            if both.sum() < 4:
                continue
            za = F.normalize(toks[mods[a]].reshape(-1, toks[mods[a]].shape[-1])[rows_t][both].float(), dim=-1)
            zb = F.normalize(toks[mods[b]].reshape(-1, toks[mods[b]].shape[-1])[rows_t][both].float(), dim=-1)
            logits = za @ zb.T / cfg.contrastive_temperature
            target = torch.arange(len(za), device=za.device)
            total = total + 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            pairs += 1
    return total / max(1, pairs)


@torch.no_grad()
def predict(model: RankerBase, fb: FeatureBuilder, ds: Dataset, idx: np.ndarray, batch: int = 256,
            device: torch.device | None = None, output: str = "score") -> np.ndarray:
    """Model output ``output`` for requests ``idx``: [len(idx), N] float64."""
    core = getattr(model, "module", model)
    device = device or next(core.parameters()).device
    was = core.training
    core.eval()
    parts = []
    for c0 in range(0, len(idx), batch):
        t = to_tensors(fb.build(ds, idx[c0:c0 + batch]), device)
        parts.append(core(**model_inputs(core, t))[output].float().cpu().numpy())
    core.train(was)
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, ds.requests["cand"].shape[1]))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in state_dict order (to compare DDP ranks)."""
    h = hashlib.sha256()
    for k, v in getattr(model, "module", model).state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---- checkpoints ---------------------------------------------------------------------------------
def save_checkpoint(path: Path, model: torch.nn.Module, state: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write ``path/{model.safetensors, optim.safetensors, state.json}`` atomically."""
    from safetensors.torch import save_file

    core = getattr(model, "module", model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in core.state_dict().items()}, str(tmp / "model.safetensors"))
        if optimizer is not None:
            osd = optimizer.state_dict()
            tensors = {}
            for pid, st in osd["state"].items():
                for name, val in st.items():
                    tensors[f"{pid}.{name}"] = (val if torch.is_tensor(val) else torch.tensor(val)).detach().cpu().contiguous()
            save_file(tensors, str(tmp / "optim.safetensors"))
            state = {**state, "optimizer_param_groups": osd["param_groups"]}
        write_json(tmp / "state.json", state)
        from edge_rec.distill.dataset import replace_dir

        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load weights (and optimizer state) from a checkpoint folder; returns its ``state.json``."""
    from safetensors.torch import load_file

    if not (path / "model.safetensors").is_file() or not (path / "state.json").is_file():
        raise DataError(f"{path} is not a checkpoint (needs model.safetensors and state.json).")
    core = getattr(model, "module", model)
    sd = load_file(str(path / "model.safetensors"))
    missing, unexpected = core.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise DataError(f"checkpoint {path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}. "
                        f"Was it trained with another config or dataset?")
    state = json.loads((path / "state.json").read_text())
    if optimizer is not None and (path / "optim.safetensors").is_file():
        flat = load_file(str(path / "optim.safetensors"))
        st: dict[int, dict[str, torch.Tensor]] = {}
        for key, val in flat.items():
            pid, name = key.split(".", 1)
            st.setdefault(int(pid), {})[name] = val
        optimizer.load_state_dict({"state": st, "param_groups": state["optimizer_param_groups"]})
    return state


# ---- training ------------------------------------------------------------------------------------
def _select_name(cfg: TrainConfig) -> str:
    return "ndcg@10" if cfg.select_on == "sampled" else "full_recall@20"


def _selector(model: RankerBase, fb: FeatureBuilder, ds: Dataset, val_idx: np.ndarray, cfg: TrainConfig,
              device: torch.device) -> Callable[[], float]:
    """The validation metric that picks the best epoch (``cfg.select_on``)."""
    if cfg.select_on == "sampled" or ds.split_index("val").size == 0:
        return lambda: evaluate_scores(ds, val_idx, predict(model, fb, ds, val_idx, device=device))["ndcg@10"]
    from edge_rec.distill import protocol as P

    rows = P.heldout_rows(ds, "val", max_requests=cfg.select_requests, seed=cfg.seed)
    if len(rows.req) == 0:
        return lambda: evaluate_scores(ds, val_idx, predict(model, fb, ds, val_idx, device=device))["ndcg@10"]

    def full() -> float:
        core = getattr(model, "module", model)
        was = core.training
        core.eval()
        try:
            scorer = P.neural_scorer(ds, core, fb.hist_len, list(core.modalities), fb=fb, device=device)
            return float(P.evaluate(ds, rows, scorer, n_boot=0)["recall@20"])
        finally:
            core.train(was)

    return full


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup_frac * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    prog = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))


def train(model: RankerBase, ds: Dataset, out: str | Path, cfg: TrainConfig, *, resume: bool = False,
          stop_after_epochs: int | None = None, progress: bool = True, fb: FeatureBuilder | None = None,
          extra_loss: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], np.ndarray], torch.Tensor] | None = None,
          label_weight: float = 1.0, train_idx: np.ndarray | None = None) -> dict[str, Any]:
    """Train ``model`` on ``ds``'s training requests; checkpoints and logs under ``out``.

    Returns ``{best_val, selected_on, best_val_ndcg@10, best_epoch, epochs_run, samples_per_s,
    requests_per_s, train_s, world_size, device, stopped_early, catalogue_negatives}``: ``best_val`` is
    the selection metric (``cfg.select_on``) at the best epoch, ``best_val_ndcg@10`` the sampled
    validation NDCG@10 there; the model holds the best weights afterwards.
    ``stop_after_epochs`` pauses after that many epochs (the run can be resumed).
    ``extra_loss(outputs, tensors, request_idx)`` adds a term (distillation uses it) to
    ``label_weight`` x the label loss; ``train_idx`` restricts training to those requests.
    """
    out = Path(out)
    rank, world = _dist_info()
    device = pick_device(cfg.device)
    distributed = world > 1
    if distributed and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)
    torch.manual_seed(cfg.seed)
    model.to(device)
    fb = fb or FeatureBuilder.from_dataset(ds, cfg.hist_len)
    negatives = CatalogueNegatives(ds) if cfg.catalogue_negatives > 0 else None
    train_idx = ds.split_index("train") if train_idx is None else np.asarray(train_idx)
    val_idx = ds.split_index("val")
    if len(val_idx) == 0:  # tiny real datasets without val requests: watch the latest training requests
        val_idx = train_idx[-min(len(train_idx), 256):]
    if len(train_idx) == 0:
        raise DataError("the dataset has no training requests.")
    select = _selector(model, fb, ds, val_idx, cfg, device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    n_epoch = len(train_idx) if cfg.max_train_requests <= 0 else min(len(train_idx), cfg.max_train_requests)
    per_rank = n_epoch // world
    if per_rank < 1:
        raise DataError(f"{n_epoch} training requests cannot be shared by {world} ranks.")
    steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs

    state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0, "train_s": 0.0,
             "samples": 0, "config": cfg.to_dict(), "model_kind": model.kind}
    if resume:
        if not (out / "last").is_dir():
            raise DataError(f"nothing to resume: {out / 'last'} does not exist.")
        state = load_checkpoint(out / "last", model, optimizer)
        state.pop("optimizer_param_groups", None)
    elif rank == 0 and out.exists():
        for stale in ("metrics.jsonl",):
            (out / stale).unlink(missing_ok=True)
    train_model: torch.nn.Module = model
    if distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = torch.compile(train_model) if cfg.compile else train_model
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16
                else torch.autocast("cpu", enabled=False))
    out.mkdir(parents=True, exist_ok=True)
    stopped_early = False
    epochs_this_call = 0
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        if state["bad_epochs"] >= cfg.patience:
            stopped_early = True
            break
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break
        gen = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch * 101 + rank)
        perm = gen.permutation(train_idx)[:n_epoch]
        mine = perm[rank::world][:per_rank]
        model.train()
        t0 = time.perf_counter()
        losses = []
        batches = range(steps_per_epoch)
        if progress and rank == 0:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"{model.kind} epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for b in batches:
            idx = mine[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            extra = None if negatives is None else negatives.sample(ds, idx, cfg.catalogue_negatives, gen)
            arrays = fb.build(ds, idx, extra=extra)
            items = ds.requests["cand"][idx] if extra is None else np.concatenate([ds.requests["cand"][idx], extra], 1)
            t = to_tensors(arrays, device)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(state["step"], total_steps, cfg)
            with autocast:
                o = step_model(**model_inputs(model, t))
                loss = label_weight * ranking_loss(o, t, cfg)
                if extra_loss is not None:
                    loss = loss + extra_loss(o, t, idx)
                if cfg.contrastive_weight > 0:
                    loss = loss + cfg.contrastive_weight * contrastive_loss(train_model, t, items, cfg, gen)
            if not torch.isfinite(loss):
                raise DataError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {b}; "
                                f"lower --lr or check the inputs for extreme values.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            state["step"] += 1
        dt = time.perf_counter() - t0
        state["train_s"] += dt
        state["samples"] += len(mine) * world * ds.requests["cand"].shape[1]
        val = select()
        # the sampled validation NDCG@10 is logged either way: modality pruning measures worth with it
        sampled = val if cfg.select_on == "sampled" else \
            evaluate_scores(ds, val_idx, predict(model, fb, ds, val_idx, device=device))["ndcg@10"]
        improved = val > state["best"]
        state["epoch"] = epoch + 1
        if improved:
            state.update(best=val, best_epoch=epoch + 1, bad_epochs=0, best_sampled=sampled)
        else:
            state["bad_epochs"] += 1
        record = {"epoch": epoch + 1, "step": state["step"], "train_loss": float(np.mean(losses)),
                  "val_" + _select_name(cfg): val, "val_ndcg@10": sampled,
                  "lr": lr_at(state["step"] - 1, total_steps, cfg),
                  "epoch_s": round(dt, 3), "requests_per_s": len(mine) * world / dt}
        if rank == 0:
            if improved:
                save_checkpoint(out / "best", model, {**state, "model_config": getattr(model, "config", None) and model.config.to_dict()})
            save_checkpoint(out / "last", model, state, optimizer)
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        if distributed:
            torch.distributed.barrier()
        epochs_this_call += 1
    if state["bad_epochs"] >= cfg.patience and state["epoch"] < cfg.epochs:
        stopped_early = True
    if distributed:
        write_json(out / "ddp" / f"rank{rank}.json", {"rank": rank, "world_size": world, "step": state["step"],
                                                     "weights_sha256": weights_digest(model)})
        torch.distributed.barrier()
    finished = stopped_early or state["epoch"] >= cfg.epochs
    if finished and (out / "best").is_dir():
        load_checkpoint(out / "best", model)
    n_cand = ds.requests["cand"].shape[1]
    return {
        "best_val_ndcg@10": state.get("best_sampled", state["best"]),     # at the selected epoch
        "best_val": state["best"], "selected_on": "val_" + _select_name(cfg),
        "catalogue_negatives": cfg.catalogue_negatives,
        "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
        "train_s": round(state["train_s"], 2),
        "samples_per_s": state["samples"] / max(state["train_s"], 1e-9),
        "requests_per_s": state["samples"] / n_cand / max(state["train_s"], 1e-9),
        "world_size": world, "device": str(device), "stopped_early": stopped_early,
    }
