"""A trained ranker on disk: ``model.safetensors`` + ``config.json`` (everything to rebuild it).

Used for the teacher (``edge-rec train-teacher``) and the final student (``edge-rec distill``), and
read by the exporters. JSON + safetensors only: nothing executable is ever loaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from edge_rec.errors import DataError
from edge_rec.distill.dataset import write_json


def save_ranker(model: torch.nn.Module, out: Path, kind: str, hist_len: int, **extra: Any) -> None:
    """Write the weights and ``{"kind", "config", "hist_len", "input_names", "output_names", **extra}``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    write_json(out / "config.json", {"kind": kind, "config": model.config.to_dict(), "hist_len": hist_len, **extra,
                                     "input_names": model.input_names, "output_names": model.output_names})


def load_ranker(path: str | Path, kind: str, model_cls: type, config_cls: type,
                hint: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a ``kind`` model saved by :func:`save_ranker` (weights loaded, eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
        raise DataError(f"{p} holds no {kind} (needs config.json and model.safetensors); run `{hint}` first.")
    try:
        meta = json.loads((p / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p / 'config.json'} is not valid JSON ({exc}); re-run `{hint}`.") from exc
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        got = meta.get("kind") if isinstance(meta, dict) else None
        raise DataError(f"{p} holds a {got!r} model, not a {kind}.")
    c = dict(meta.get("config") or {})
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(c) - known)
    if unknown:
        # a model saved by another version of edge-rec: say which settings this one does not have
        raise DataError(f"{p / 'config.json'} has settings this edge-rec does not know: {', '.join(unknown)}; "
                        f"it was saved by another version. Re-run `{hint}` with this one.")
    if "score_weights" in c:
        c["score_weights"] = tuple(c["score_weights"])
    model = model_cls(config_cls(**c))
    try:
        model.load_state_dict(load_file(str(p / "model.safetensors")))
    except (RuntimeError, OSError, SafetensorError) as exc:   # shapes or names that do not match the config, or a bad file
        raise DataError(f"{p / 'model.safetensors'} does not fit {p / 'config.json'} ({str(exc).splitlines()[0]}); "
                        f"re-run `{hint}`.") from exc
    return model.eval(), meta
