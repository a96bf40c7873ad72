"""Model and training configs: plain frozen dataclasses, importable without torch (the CLI
builds its options from them), dumped into every report and checkpoint they produce."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edge_rec.errors import ConfigError


@dataclass(frozen=True)
class TeacherConfig:
    """Size and regularisation of the teacher. ``modalities`` {name: dim} and ``hist_dim`` come from the data.

    ``input_noise``: std of the Gaussian noise added to the (standardised) content embeddings while
    training. Measured on the default world: 0.5 lifts NDCG@10 on cold-start items from 0.611 to 0.632
    at the same budget (see ``FusionTransformer._noisy``).
    """

    modalities: dict[str, int] = field(default_factory=dict)
    hist_dim: int = 0
    d_model: int = 96
    num_heads: int = 4
    num_layers: int = 2
    hist_layers: int = 1
    ffn_mult: int = 2
    head_hidden: int = 128
    dropout: float = 0.1
    modality_dropout: float = 0.1
    input_noise: float = 0.0
    score_weights: tuple[float, float, float] = (1.0, 0.2, 0.2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score_weights"] = list(self.score_weights)
        return d


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``max_train_requests`` > 0 subsamples each epoch (CPU budgets)."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    patience: int = 2
    seed: int = 0
    hist_len: int = 20
    task_weights: tuple[float, float, float] = (1.0, 0.5, 0.5)
    listwise_weight: float = 1.0
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.1
    max_train_requests: int = 0
    # training on the catalogue as it will be ranked: this many uniform catalogue negatives join each
    # request's logged candidates (label 0, in the listwise loss only; see features.CatalogueNegatives)
    catalogue_negatives: int = 0
    # the early-stopping / best-epoch metric: "sampled" = NDCG@10 over each validation request's logged
    # candidates, "full" = Recall@20 of the papers' protocol (whole catalogue, earlier items masked)
    # on ``select_requests`` validation requests
    select_on: str = "sampled"
    select_requests: int = 300
    device: str = "auto"
    compile: bool = False
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs, batch_size and lr must be positive (got {self.epochs}, {self.batch_size}, {self.lr}).")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device {self.device!r} unknown; use auto, cpu, cuda, cuda:N or mps.")
        if self.select_on not in ("sampled", "full"):
            raise ConfigError(f"select_on must be 'sampled' or 'full', got {self.select_on!r}.")
        if self.catalogue_negatives < 0 or self.select_requests < 1:
            raise ConfigError(f"catalogue_negatives must be >= 0 and select_requests >= 1 "
                              f"(got {self.catalogue_negatives}, {self.select_requests}).")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["task_weights"] = list(self.task_weights)
        return d


@dataclass(frozen=True)
class StudentConfig:
    """The on-device student. ``modalities`` are the *kept* ones; ``hist_dim`` matches them."""

    modalities: dict[str, int] = field(default_factory=dict)
    hist_dim: int = 0
    d_model: int = 32
    num_heads: int = 2
    head_dim: int = 0                        # 0: d_model // num_heads (kept fixed when heads are pruned)
    ffn_dim: int = 64
    head_hidden: int = 48
    dropout: float = 0.0
    modality_dropout: float = 0.1
    input_noise: float = 0.0                 # as TeacherConfig.input_noise
    score_weights: tuple[float, float, float] = (1.0, 0.2, 0.2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score_weights"] = list(self.score_weights)
        return d


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation, modality pruning and structural pruning settings."""

    temperature: float = 2.0
    label_weight: float = 1.0
    pointwise_weight: float = 1.0
    listwise_weight: float = 1.0
    feature_weight: float = 0.5
    modality_budget: float = 0.005          # drop a modality whose masking costs < 0.5 % relative NDCG@10
    prune_modalities: bool = True
    loo_repeats: int = 1                    # students per leave-one-out arm (seeds seed..seed+k-1), averaged
    target_params_ratio: float = 0.05       # structural pruning target: student params <= ratio x teacher params
    max_prune_ratio: float = 0.8            # never remove more than this share of FFN / head-MLP width
    finetune_epochs: int = 3

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}.")
        if not 0 <= self.modality_budget < 1:
            raise ConfigError(f"modality_budget must be in [0, 1), got {self.modality_budget}.")
        if self.loo_repeats < 1:
            raise ConfigError(f"loo_repeats must be >= 1 (students per leave-one-out arm), got {self.loo_repeats}.")
        if not 0 < self.target_params_ratio <= 1:
            raise ConfigError(f"target_params_ratio must be in (0, 1], got {self.target_params_ratio}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preset_configs(presets: dict[str, dict[str, dict[str, Any]]], preset: str,
                   model_overrides: dict[str, Any] | None = None,
                   train_overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], TrainConfig]:
    """Model keyword arguments and the :class:`TrainConfig` of ``presets[preset]``, with overrides."""
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(presets)}.")
    p = presets[preset]
    return {**p["model"], **(model_overrides or {})}, TrainConfig(**{**p["train"], **(train_overrides or {})})


def labelled_tasks(ds: Any) -> tuple[bool, ...]:
    """Per task of ``TASKS`` (click, finish, like): whether the training requests hold any positive label
    of it. A log with clicks only (the MMSSL layout) has no finish or like labels."""
    tr = ds.split_index("train")
    return tuple(bool((ds.requests[t][tr] > 0).any()) for t in ("click", "finish", "like"))


def without_unlabelled(model_kw: dict[str, Any], cfg: "TrainConfig", ds: Any) -> tuple[dict[str, Any], "TrainConfig"]:
    """The configs with every task the data has no label for switched off: a head whose label is absent
    is not trained (loss weight 0) and does not vote in the combined score (score weight 0)."""
    import dataclasses

    have = labelled_tasks(ds)
    if all(have):
        return model_kw, cfg
    sw = tuple(w if h else 0.0 for w, h in zip(model_kw.get("score_weights", (1.0, 0.2, 0.2)), have))
    tw = tuple(w if h else 0.0 for w, h in zip(cfg.task_weights, have))
    return {**model_kw, "score_weights": sw}, dataclasses.replace(cfg, task_weights=tw)
