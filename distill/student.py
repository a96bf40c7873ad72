"""The on-device student: small, one light fusion block, target attention over the history.

Same I/O contract as the teacher (inputs only for the modalities it keeps)::

    candidate: [visual] [audio] [text] [dense]    shared per-modality Linear (d) + type emb,
                  │  mask token where missing      1 block: MHA (num_heads) + FFN (ffn_dim)
                  ▼  mean over tokens
               cand (B, N, d) ── dot-product target attention ──► interest (B, N, d)
                                          ▲
    history: hist_emb split per modality ─► the same Linear ─► mean over present modalities
             + Linear(watch ratio, like, skip, age)  (B, L, d)  (+ a zero null slot)
    head: Linear(4d + ctx) ─► GELU ─► Linear(head_hidden ─► 3) ─► click / finish / like, score

Sharing the modality projections between candidates and history keeps the parameter count small;
the target attention has no weights. torch-pruning can remove FFN width, attention heads and
head-MLP width; ``d_model`` stays fixed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edge_rec.distill.configs import StudentConfig
from edge_rec.distill.features import N_CONTEXT, N_DENSE, N_ENGAGEMENT
from edge_rec.distill.models import MultiHeadAttention, RankerBase, TASKS, _batched, content_noise


class Student(RankerBase):
    kind = "student"

    def __init__(self, config: StudentConfig) -> None:
        super().__init__(config.modalities, config.hist_dim, config.score_weights)
        c = self.config = config
        d = c.d_model
        self.proj = nn.ModuleDict({m: nn.Linear(dim, d) for m, dim in c.modalities.items()})
        m = len(c.modalities)
        self.type_emb = nn.Parameter(torch.randn(m + 1, d) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(max(1, m), d) * 0.02)
        self.dense = nn.Linear(N_DENSE, d)
        self.ln1 = nn.LayerNorm(d)
        self.attn = MultiHeadAttention(d, c.num_heads, c.head_dim or d // c.num_heads)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, c.ffn_dim), nn.GELU(), nn.Linear(c.ffn_dim, d))
        self.hist_eng = nn.Linear(N_ENGAGEMENT + 1, d)
        self.head = nn.Sequential(nn.Linear(4 * d + N_CONTEXT, c.head_hidden), nn.GELU(),
                                  nn.Linear(c.head_hidden, len(TASKS)))
        offs, o = {}, 0
        for name, dim in c.modalities.items():
            offs[name] = (o, o + dim)
            o += dim
        self.offsets = offs

    def encode(self, x: dict[str, torch.Tensor], drop_modalities: bool = False) -> dict[str, torch.Tensor]:
        b, n, _ = x["cand_dense"].shape
        toks = []
        for j, m in enumerate(self.modalities):
            keep = x[f"cand_mask_{m}"].unsqueeze(-1)
            if drop_modalities and self.config.modality_dropout > 0:
                keep = keep * (torch.rand_like(keep) >= self.config.modality_dropout).to(keep.dtype)
            toks.append(keep * self.proj[m](self._noisy(x[f"cand_{m}"])) + (1 - keep) * self.mask_token[j] + self.type_emb[j])
        toks.append(self.dense(x["cand_dense"]) + self.type_emb[-1])
        t = torch.stack(toks, dim=2).reshape(b * n, len(toks), -1)          # (B*N, T, d)
        h = self.ln1(t)
        t = t + self.attn(h, h)
        t = t + self.ffn(self.ln2(t))
        cand = t.mean(dim=1).view(b, n, -1)                                   # (B, N, d)

        he = x["hist_emb"]                                                    # (B, L, d_h)
        acc = 0.0
        cnt = torch.zeros_like(he[..., :1])
        for m in self.modalities:
            a, z = self.offsets[m]
            sl = he[..., a:z]
            present = (sl.abs().sum(-1, keepdim=True) > 0).to(he.dtype)
            acc = acc + present * self.proj[m](self._noisy(sl))
            cnt = cnt + present
        eng = he[..., he.shape[-1] - N_ENGAGEMENT:]
        hist = acc / cnt.clamp(min=1.0) + self.hist_eng(torch.cat([eng, x["hist_age"].unsqueeze(-1)], -1))
        d = hist.shape[-1]
        hist = torch.cat([torch.zeros_like(hist[:, :1]), hist], dim=1)        # null slot
        hmask = torch.cat([torch.ones_like(x["hist_weight"][:, :1]), x["hist_weight"]], dim=1)
        att = (cand @ hist.transpose(1, 2)) / math.sqrt(d)                   # (B, N, 1+L)
        att = att.masked_fill(hmask[:, None, :] <= 0, -1e4).softmax(-1)
        interest = att @ hist                                                 # (B, N, d)
        return {"cand": cand, "interest": interest}

    def _noisy(self, v: torch.Tensor) -> torch.Tensor:
        return content_noise(self, v, self.config.input_noise)

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        x, single = _batched(inputs)
        e = self.encode(x, drop_modalities=self.training)
        n = e["cand"].shape[1]
        ctx = x["context"].unsqueeze(1).expand(-1, n, -1)
        h = torch.cat([e["cand"], e["interest"], e["cand"] * e["interest"], e["cand"] - e["interest"], ctx], -1)
        out = self._outputs(self.head(h), single)
        out["fused"] = e["cand"].squeeze(0) if single else e["cand"]
        return out

    # ---- the exported graph --------------------------------------------------------------------
    def forward_request(self, **x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One request without the batch dimension (``cand_*`` [N, ...], ``hist_*`` [L, ...],
        ``context`` [c]) -> ``score``/``p_*`` [N], ``fused`` [N, d]: what the exporters trace.

        The same parameters and the same arithmetic as :meth:`forward` (the export parity checks compare
        the two), written so that no op depends on a tensor's shape: heads are split along the last axis
        instead of ``view(b, n, h, hd)``, the null slot is a ``pad``, the context is broadcast by an
        add. The batched form costs ~40 shape nodes (Shape/Gather/Unsqueeze/Concat/If) that an engine
        runs at every call; on a model this small they took as long as the arithmetic.
        """
        toks = []
        for j, m in enumerate(self.modalities):
            keep = x[f"cand_mask_{m}"].unsqueeze(-1)
            toks.append(keep * self.proj[m](x[f"cand_{m}"]) + (1 - keep) * self.mask_token[j] + self.type_emb[j])
        toks.append(self.dense(x["cand_dense"]) + self.type_emb[-1])
        t = torch.stack(toks, dim=-2)                                         # (N, T, d)
        t = t + self._token_attention(self.ln1(t))
        t = t + self.ffn(self.ln2(t))
        cand = t.mean(dim=-2)                                                 # (N, d)

        he = x["hist_emb"]                                                    # (L, d_h)
        acc, cnt = 0.0, 0.0
        for m in self.modalities:
            a, z = self.offsets[m]
            sl = he[:, a:z]
            present = (sl.abs().sum(-1, keepdim=True) > 0).to(he.dtype)
            acc = acc + present * self.proj[m](sl)
            cnt = cnt + present
        eng = he[:, he.shape[-1] - N_ENGAGEMENT:]
        hist = acc / torch.clamp(cnt, min=1.0) + self.hist_eng(torch.cat([eng, x["hist_age"].unsqueeze(-1)], -1))
        d = hist.shape[-1]
        hist = F.pad(hist, (0, 0, 1, 0))                                      # null slot first: (1+L, d)
        hmask = F.pad(x["hist_weight"], (1, 0), value=1.0)
        att = (cand @ hist.transpose(0, 1)) / math.sqrt(d)                   # (N, 1+L)
        att = att.masked_fill(hmask <= 0, -1e4).softmax(-1)
        interest = att @ hist                                                 # (N, d)
        ctx = cand[:, :1] * 0.0 + x["context"]                                # (N, c), broadcast
        logits = self.head(torch.cat([cand, interest, cand * interest, cand - interest, ctx], -1))
        out = {"score": (logits * self.score_w).sum(-1)}
        for j, task in enumerate(TASKS):
            out[f"p_{task}"] = torch.sigmoid(logits[:, j])
        out["fused"] = cand
        return out

    def _token_attention(self, h: torch.Tensor) -> torch.Tensor:
        """:class:`MultiHeadAttention` over the T tokens of each candidate, h: (N, T, d), heads split
        along the last axis (the order ``transpose(1, 2).reshape`` concatenates them in)."""
        a = self.attn
        q, k, v = a.q(h), a.k(h), a.v(h)                                     # (N, T, heads*hd)
        scale = math.sqrt(a.head_dim)
        if a.num_heads == 1:
            return a.o(((q @ k.transpose(-1, -2)) / scale).softmax(-1) @ v)
        outs = [((qh @ kh.transpose(-1, -2)) / scale).softmax(-1) @ vh
                for qh, kh, vh in zip(q.split(a.head_dim, -1), k.split(a.head_dim, -1), v.split(a.head_dim, -1))]
        return a.o(torch.cat(outs, -1))
