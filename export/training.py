"""The on-device training program: :mod:`edge_rec.local`'s adapter step as an ExecuTorch joint
forward/backward program (``executorch.extension.training``), and the PyTorch step it must equal.

The program takes ``fused`` [B, d], ``score`` [B], ``label`` [B], ``weight`` [B] (B = :data:`BATCH`,
static; padding rows have weight 0) and returns the loss and the adapted scores; its parameters are
``theta`` [d+2] and, as a buffer the optimizer does not touch, ``start`` [d+2] (the weights the L2 pull
aims at). A phone runs it with ExecuTorch's ``TrainingModule`` and its SGD optimizer (C++ or Java);
:func:`et_step` runs it here through ExecuTorch's Python bindings (which import torch, so the Python
runtime trains with the equal numpy step instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_rec.local import BATCH


class HeadLoss(nn.Module):
    """loss = sum(weight * BCE(z, label)) / max(sum(weight), 1) + l2/2 ||theta - start||^2,
    z = score * (1 + a) + b + fused · u, theta = [u, a, b]."""

    def __init__(self, d: int, l2: float, theta: np.ndarray | None = None) -> None:
        super().__init__()
        t = torch.zeros(d + 2) if theta is None else torch.as_tensor(np.asarray(theta, np.float32)).clone()
        self.theta = nn.Parameter(t)
        self.register_buffer("start", t.detach().clone())
        self.l2 = float(l2)
        self.d = d

    def forward(self, fused: torch.Tensor, score: torch.Tensor, label: torch.Tensor,
                weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, a, b = self.theta[: self.d], self.theta[self.d], self.theta[self.d + 1]
        z = score * (1.0 + a) + b + (fused * u).sum(-1)
        bce = torch.clamp(z, min=0.0) - z * label + torch.log1p(torch.exp(-torch.abs(z)))
        diff = self.theta - self.start
        loss = (bce * weight).sum() / torch.clamp(weight.sum(), min=1.0) + 0.5 * self.l2 * (diff * diff).sum()
        return loss, z.detach()


def _example(d: int) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(BATCH, d), torch.zeros(BATCH), torch.zeros(BATCH), torch.ones(BATCH))


def export_training_program(d: int, l2: float, path: str | Path, theta: np.ndarray | None = None) -> Path:
    """Write the joint forward/backward ExecuTorch program of :class:`HeadLoss` to ``path`` (.pte)."""
    import warnings

    from edge_rec.engines import _native_stderr_muted

    with _native_stderr_muted(), warnings.catch_warnings():
        # torch's pytree deprecation of LeafSpec, raised inside ExecuTorch's own serialization
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        from executorch.exir import to_edge
        from torch.export import export
        from torch.export.experimental import _export_forward_backward

        net = HeadLoss(d, l2, theta)
        ep = export(net, _example(d), strict=False)
        ep = _export_forward_backward(ep)            # the joint graph: outputs, gradients, parameters
        prog = to_edge(ep).to_executorch()
    path = Path(path)
    path.write_bytes(prog.buffer)
    return path


def torch_step(theta: np.ndarray, batch: tuple[np.ndarray, ...], lr: float, l2: float,
               start: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """One step of PyTorch autograd + ``torch.optim.SGD``: (loss before the step, theta after)."""
    net = HeadLoss(len(theta) - 2, l2, theta if start is None else start)
    with torch.no_grad():
        net.theta.copy_(torch.as_tensor(np.asarray(theta, np.float32)))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss, _ = net(*(torch.as_tensor(np.asarray(a, np.float32)) for a in batch))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach()), net.theta.detach().numpy().copy()


def et_step(program: str | Path, batch: tuple[np.ndarray, ...], lr: float, steps: int = 1) -> tuple[list[float], np.ndarray]:
    """``steps`` steps of the ExecuTorch program with ExecuTorch's own SGD: (losses, theta after)."""
    from edge_rec.engines import _native_stderr_muted

    # ExecuTorch's cpuinfo prints "Failed to open midr file" lines on a machine without ARM CPU ids
    with _native_stderr_muted():
        from executorch.extension.training import _load_for_executorch_for_training, get_sgd_optimizer

        mod = _load_for_executorch_for_training(str(program))
        inputs = tuple(torch.as_tensor(np.asarray(a, np.float32)) for a in batch)
        losses: list[float] = []
        opt: Any = None
        for _ in range(steps):
            out = mod.forward_backward("forward", inputs)
            if opt is None:
                opt = get_sgd_optimizer(mod.named_parameters(), lr, 0, 0, 0, False)
            losses.append(float(np.asarray(out[0]).reshape(-1)[0]))
            opt.step(mod.named_gradients())
    return losses, mod.named_parameters()["theta"].numpy().copy()


PROGRAM = "local/head_train.pte"


def write_program(stage: Path, d: int, theta: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """Write :data:`PROGRAM` into a bundle being built and return the manifest's ``local_learning``
    section: the global adapter (``theta``, default zero: the frozen ranking), the program and the
    settings the runtime trains with, and the measured agreement of one ExecuTorch step with the numpy
    step of :mod:`edge_rec.local` and with PyTorch's (random inputs of the program's shapes)."""
    from edge_rec.local import DEFAULTS, HeadWeights, loss_and_grad

    theta = np.zeros(d + 2, np.float32) if theta is None else np.asarray(theta, np.float32)
    path = stage / PROGRAM
    path.parent.mkdir(parents=True, exist_ok=True)
    export_training_program(d, DEFAULTS["l2"], path, theta)
    rng = np.random.default_rng(seed)
    batch = (rng.normal(size=(BATCH, d)).astype(np.float32), rng.normal(size=BATCH).astype(np.float32),
             (rng.random(BATCH) < 0.5).astype(np.float32), (np.arange(BATCH) < BATCH - 7).astype(np.float32))
    lr = DEFAULTS["lr"]
    _, t_et = et_step(path, batch, lr)
    _, t_pt = torch_step(theta, batch, lr, DEFAULTS["l2"])
    _, g = loss_and_grad(theta, theta, *batch, DEFAULTS["l2"])
    t_np = theta - np.float32(lr) * g
    return {"global_head": HeadWeights(theta).to_json(), "program": PROGRAM, "batch": BATCH,
            "formula": "score * (1 + a) + b + fused . u; theta = [u, a, b]", **DEFAULTS,
            "parity": {"executorch_vs_pytorch": float(np.abs(t_et - t_pt).max()),
                       "numpy_vs_pytorch": float(np.abs(t_np - t_pt).max())}}
