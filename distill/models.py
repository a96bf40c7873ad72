"""Neural rankers with the I/O contract of DESIGN.md: the teacher and the fusion baselines.

Every model takes the named inputs of :mod:`edge_rec.distill.features` as keyword tensors with a
leading request dimension (``cand_visual`` [B, N, d], ``hist_emb`` [B, L, d_h], ...) or without it
(one request, as the phone runs it: [N, d], [L, d_h]) and returns ``{"score", "p_click",
"p_finish", "p_like"}``, each [B, N] (or [N]).

Teacher (``FusionTransformer``)::

    candidate i:  [CLS] [visual] [audio] [text] [motion] [dense]      per-modality Linear + type emb,
                      │  mask token where a modality is missing        L x (hand-written MHA + FFN)
                      ▼
                   cand_vec (B, N, d) ──── target attention ───► interest (B, N, d)
                                               ▲ keys/values
    history:  [hist_1 .. hist_L] + age  ─► H x (MHA + FFN) ─► (B, L, d)   (+ a learned null slot)
    context ─► Linear ─► (B, d)
    head: MLP([cand, interest, cand*interest, ctx]) ─► logits (click, finish, like) ─► score

Attention is written by hand (Linear q/k/v/o, ``num_heads`` an attribute): torch-pruning can prune
its heads and every exporter handles it (see DESIGN.md's toolchain facts).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from edge_rec.distill.configs import TeacherConfig
from edge_rec.distill.features import N_CONTEXT, N_DENSE, N_ENGAGEMENT, OUTPUT_NAMES, input_names

TASKS = ("click", "finish", "like")


class MultiHeadAttention(nn.Module):
    """Hand-written multi-head attention. q: (B, Tq, d), kv: (B, Tk, d), key_mask: (B, Tk) 1 = keep."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or d_model // num_heads
        inner = self.num_heads * self.head_dim
        self.q = nn.Linear(d_model, inner)
        self.k = nn.Linear(d_model, inner)
        self.v = nn.Linear(d_model, inner)
        self.o = nn.Linear(inner, d_model)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, tq, _ = q.shape
        tk = kv.shape[1]
        h, hd = self.num_heads, self.head_dim
        qh = self.q(q).view(b, tq, h, hd).transpose(1, 2)                   # (B, h, Tq, hd)
        kh = self.k(kv).view(b, tk, h, hd).transpose(1, 2)                  # (B, h, Tk, hd)
        vh = self.v(kv).view(b, tk, h, hd).transpose(1, 2)
        att = (qh @ kh.transpose(-1, -2)) / math.sqrt(hd)                   # (B, h, Tq, Tk)
        if key_mask is not None:
            att = att.masked_fill(key_mask[:, None, None, :] <= 0, -1e4)
        out = att.softmax(dim=-1) @ vh                                      # (B, h, Tq, hd)
        return self.o(out.transpose(1, 2).reshape(b, tq, h * hd))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (self-attention + FFN)."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, mask))
        return x + self.drop(self.ffn(self.ln2(x)))


def _batched(inputs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Add the request dimension if a single request ([N, d]) was given."""
    single = inputs["cand_dense"].dim() == 2
    if single:
        inputs = {k: v.unsqueeze(0) for k, v in inputs.items()}
    return inputs, single


def content_noise(model: nn.Module, v: torch.Tensor, std: float) -> torch.Tensor:
    """``v`` plus Gaussian noise of ``std`` while ``model`` trains; ``v`` itself otherwise.

    Applied to content embeddings (``input_noise`` of the teacher and student configs). An item's
    embedding is also a unique fingerprint: without noise a model memorises warm items by it (worst
    through a modality that carries nothing else) and then scores fresh items by fingerprints it never saw.
    """
    return v + std * torch.randn_like(v) if model.training and std > 0 else v


class RankerBase(nn.Module):
    """Shared I/O contract: names, example inputs, output packing."""

    kind = "base"

    def __init__(self, modalities: dict[str, int], hist_dim: int, score_weights=(1.0, 0.2, 0.2)) -> None:
        super().__init__()
        self.modalities = dict(modalities)
        self.hist_dim = hist_dim
        self.register_buffer("score_w", torch.tensor(score_weights, dtype=torch.float32), persistent=False)

    @property
    def input_names(self) -> list[str]:
        return input_names(self.modalities)

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUT_NAMES)

    def example_inputs(self, n: int = 16, hist_len: int = 20, batch: int | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the right shapes (one request unless ``batch`` is given)."""
        g = torch.Generator().manual_seed(0)
        lead = (batch,) if batch else ()
        x: dict[str, torch.Tensor] = {}
        for m, d in self.modalities.items():
            x[f"cand_{m}"] = torch.randn(*lead, n, d, generator=g)
            x[f"cand_mask_{m}"] = torch.ones(*lead, n)
        x["cand_dense"] = torch.randn(*lead, n, N_DENSE, generator=g)
        x["hist_emb"] = torch.randn(*lead, hist_len, self.hist_dim, generator=g)
        x["hist_weight"] = torch.ones(*lead, hist_len)
        x["hist_age"] = torch.rand(*lead, hist_len, generator=g) * 5
        x["context"] = torch.randn(*lead, N_CONTEXT, generator=g)
        return x

    def _outputs(self, logits: torch.Tensor, single: bool) -> dict[str, torch.Tensor]:
        # logits: (B, N, 3) for click, finish, like
        # a weighted sum rather than `logits @ w`: Core ML's matmul rejects a 1-D right operand
        out = {"score": (logits * self.score_w).sum(-1)}
        for j, t in enumerate(TASKS):
            out[f"p_{t}"] = torch.sigmoid(logits[..., j])
        out["logits"] = logits
        if single:
            out = {k: v.squeeze(0) for k, v in out.items()}
        return out


class FusionTransformer(RankerBase):
    """The teacher: modality tokens fused by a transformer, target attention over the history."""

    kind = "teacher"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config.modalities, config.hist_dim, config.score_weights)
        c = self.config = config
        d = c.d_model
        self.proj = nn.ModuleDict({m: nn.Linear(dim, d) for m, dim in c.modalities.items()})
        n_tok = len(c.modalities) + 2
        self.type_emb = nn.Parameter(torch.randn(n_tok, d) * 0.02)          # CLS, modalities..., dense
        self.mask_token = nn.Parameter(torch.randn(max(1, len(c.modalities)), d) * 0.02)
        self.dense = nn.Linear(N_DENSE, d)
        self.blocks = nn.ModuleList(Block(d, c.num_heads, c.ffn_mult * d, c.dropout) for _ in range(c.num_layers))
        self.ln_c = nn.LayerNorm(d)
        self.hist_proj = nn.Linear(c.hist_dim + 1, d)                       # + age
        self.hist_blocks = nn.ModuleList(Block(d, c.num_heads, c.ffn_mult * d, c.dropout) for _ in range(c.hist_layers))
        self.null_slot = nn.Parameter(torch.zeros(1, 1, d))                  # attended when history is empty
        self.target_attn = MultiHeadAttention(d, c.num_heads)
        self.ln_h = nn.LayerNorm(d)
        self.ctx = nn.Linear(N_CONTEXT, d)
        self.head = nn.Sequential(nn.Linear(4 * d, c.head_hidden), nn.GELU(), nn.Dropout(c.dropout),
                                  nn.Linear(c.head_hidden, len(TASKS)))

    def modality_tokens(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Projected modality embeddings before fusion, (B, N, d) each: used by the contrastive loss."""
        return {m: self.proj[m](self._noisy(x[f"cand_{m}"])) for m in self.modalities}

    def _noisy(self, v: torch.Tensor) -> torch.Tensor:
        return content_noise(self, v, self.config.input_noise)

    def _noisy_hist(self, h: torch.Tensor) -> torch.Tensor:
        # the last N_ENGAGEMENT columns are what the viewer did, not an embedding: left exact
        if not (self.training and self.config.input_noise > 0):
            return h
        return torch.cat([self._noisy(h[..., :-N_ENGAGEMENT]), h[..., -N_ENGAGEMENT:]], dim=-1)

    def encode(self, x: dict[str, torch.Tensor], drop_modalities: bool = False) -> dict[str, torch.Tensor]:
        """Fused candidate vector, interest vector and context, all (B, N, d) / (B, d)."""
        b, n, _ = x["cand_dense"].shape
        d = self.config.d_model
        toks = [self.type_emb[0].expand(b, n, d)]
        proj = self.modality_tokens(x)
        for j, m in enumerate(self.modalities):
            keep = x[f"cand_mask_{m}"].unsqueeze(-1)
            if drop_modalities and self.config.modality_dropout > 0:
                keep = keep * (torch.rand_like(keep) >= self.config.modality_dropout).to(keep.dtype)
            tok = keep * proj[m] + (1 - keep) * self.mask_token[j]
            toks.append(tok + self.type_emb[1 + j])
        toks.append(self.dense(x["cand_dense"]) + self.type_emb[-1])
        t = torch.stack(toks, dim=2).reshape(b * n, len(toks), d)            # (B*N, T, d)
        for blk in self.blocks:
            t = blk(t)
        cand = self.ln_c(t[:, 0]).view(b, n, d)                               # (B, N, d)

        hist = self.hist_proj(torch.cat([self._noisy_hist(x["hist_emb"]), x["hist_age"].unsqueeze(-1)], dim=-1))
        hmask = x["hist_weight"]
        for blk in self.hist_blocks:
            hist = blk(hist, hmask)
        hist = torch.cat([self.null_slot.expand(b, 1, d), hist], dim=1)       # (B, 1+L, d)
        hmask = torch.cat([torch.ones_like(hmask[:, :1]), hmask], dim=1)
        interest = self.ln_h(self.target_attn(cand, hist, hmask))             # (B, N, d)
        return {"cand": cand, "interest": interest, "ctx": self.ctx(x["context"])}

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        x, single = _batched(inputs)
        e = self.encode(x, drop_modalities=self.training)
        n = e["cand"].shape[1]
        ctx = e["ctx"].unsqueeze(1).expand(-1, n, -1)
        h = torch.cat([e["cand"], e["interest"], e["cand"] * e["interest"], ctx], dim=-1)
        out = self._outputs(self.head(h), single)
        out["fused"] = e["cand"].squeeze(0) if single else e["cand"]
        return out


def _hist_pool(x: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of the real history rows, (B, d_h)."""
    w = x["hist_weight"].unsqueeze(-1)
    return (x["hist_emb"] * w).sum(1) / w.sum(1).clamp(min=1.0)


class EarlyFusion(RankerBase):
    """Feature-level fusion: concatenated embeddings + pooled history + context -> MLP."""

    kind = "early_fusion"

    def __init__(self, modalities: dict[str, int], hist_dim: int, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__(modalities, hist_dim)
        d_in = sum(modalities.values()) + len(modalities) + N_DENSE + hist_dim + N_CONTEXT
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden // 2), nn.GELU(), nn.Linear(hidden // 2, len(TASKS)))

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        x, single = _batched(inputs)
        n = x["cand_dense"].shape[1]
        parts = [x[f"cand_{m}"] for m in self.modalities] + [x[f"cand_mask_{m}"].unsqueeze(-1) for m in self.modalities]
        user = torch.cat([_hist_pool(x), x["context"]], dim=-1).unsqueeze(1).expand(-1, n, -1)
        h = torch.cat(parts + [x["cand_dense"], user], dim=-1)
        return self._outputs(self.mlp(h), single)


class LateFusion(RankerBase):
    """Decision-level fusion: one scorer per modality (+ one on dense features), mixed by learned weights."""

    kind = "late_fusion"

    def __init__(self, modalities: dict[str, int], hist_dim: int, hidden: int = 96, dropout: float = 0.1) -> None:
        super().__init__(modalities, hist_dim)
        offs, o = {}, 0
        for m, d in modalities.items():
            offs[m] = (o, o + d)
            o += d
        self.offsets = offs
        self.scorers = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(2 * d + 3, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, len(TASKS)))
            for m, d in modalities.items()})
        self.dense_scorer = nn.Sequential(nn.Linear(N_DENSE + N_CONTEXT, hidden), nn.GELU(), nn.Linear(hidden, len(TASKS)))
        self.mix = nn.Parameter(torch.zeros(len(modalities) + 1))

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        x, single = _batched(inputs)
        n = x["cand_dense"].shape[1]
        pooled = _hist_pool(x)
        eng = pooled[:, -3:]
        w = torch.softmax(self.mix, dim=0)
        logits = w[-1] * self.dense_scorer(torch.cat([x["cand_dense"], x["context"].unsqueeze(1).expand(-1, n, -1)], -1))
        for j, m in enumerate(self.modalities):
            a, b = self.offsets[m]
            user_m = torch.cat([pooled[:, a:b], eng], -1).unsqueeze(1).expand(-1, n, -1)
            s = self.scorers[m](torch.cat([x[f"cand_{m}"], user_m], -1))
            logits = logits + w[j] * s * x[f"cand_mask_{m}"].unsqueeze(-1)
        return self._outputs(logits, single)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def macs_per_candidate(model: RankerBase, n: int = 32, hist_len: int = 20) -> int:
    """Multiply-accumulates of one request divided by its candidate count, counted by a
    forward hook on every Linear plus the attention matmuls (LayerNorm/activations ignored)."""
    total = 0

    def lin_hook(mod: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += inp[0].numel() // inp[0].shape[-1] * mod.in_features * mod.out_features

    def att_hook(mod: MultiHeadAttention, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        q, kv = inp[0], inp[1]
        total += 2 * q.shape[0] * q.shape[1] * kv.shape[1] * mod.num_heads * mod.head_dim

    hooks = [m.register_forward_hook(lin_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    hooks += [m.register_forward_hook(att_hook) for m in model.modules() if isinstance(m, MultiHeadAttention)]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(**model.example_inputs(n=n, hist_len=hist_len))
    model.train(was)
    for h in hooks:
        h.remove()
    return int(round(total / n))


def build_model(kind: str, modalities: dict[str, int], hist_dim: int, **kwargs: Any) -> RankerBase:
    """``teacher`` | ``early_fusion`` | ``late_fusion``."""
    from edge_rec.errors import ConfigError

    if kind == "teacher":
        return FusionTransformer(TeacherConfig(modalities=dict(modalities), hist_dim=hist_dim, **kwargs))
    if kind == "early_fusion":
        return EarlyFusion(modalities, hist_dim, **kwargs)
    if kind == "late_fusion":
        return LateFusion(modalities, hist_dim, **kwargs)
    raise ConfigError(f"unknown model kind {kind!r}; known: ['early_fusion', 'late_fusion', 'teacher'].")
