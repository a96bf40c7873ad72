"""Inference engines behind one interface: named numpy inputs -> named numpy outputs.

The same classes run the parity checks at export time, the runtime on the phone and the benchmarks,
so what is verified is what ships. Each engine library is imported lazily; a missing one raises an
error naming the extra to install.

Shapes follow the model I/O contract (one request): ``cand_*`` ``[N, ...]``, ``hist_*`` ``[L, ...]``,
``context`` ``[c]``; outputs ``score``/``p_*`` ``[N]``, ``fused`` ``[N, d]``. Fixed-shape formats
(TFLite, Core ML buckets) are wrapped by :class:`Bucketed`, which pads N up to a bucket (see
:func:`pad_candidates`) and chunks feeds larger than the biggest bucket.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from edge_rec._requires import requires
from edge_rec.errors import BundleError, MissingDependencyError


class Engine(Protocol):
    name: str
    fixed_n: int | None        # the candidate count a fixed-shape model needs; None = dynamic

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _f32(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}


class OrtEngine:
    """ONNX Runtime on ``.onnx`` or ``.ort`` (the mobile format), CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1, **_: Any) -> None:
        ort = requires("onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        first = self.session.get_inputs()[0].shape[0]
        self.fixed_n = first if isinstance(first, int) else None
        self.version = ort.__version__

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = _f32(inputs)
        outs = self.session.run(self.output_names, {k: x[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))


class LiteRTEngine:
    """LiteRT (``ai-edge-litert``) on a ``.tflite`` file through its named signature, XNNPACK on CPU.

    tflite-runtime 2.14 is deliberately not a fallback for int8 models: it loads the AI Edge
    Quantizer's dynamic-int8 models and returns wrong scores (see DESIGN.md).
    """

    name = "litert"

    def __init__(self, path: str | Path, threads: int = 1, **_: Any) -> None:
        mod = requires("ai_edge_litert.interpreter")
        self.interpreter = mod.Interpreter(model_path=str(path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner()
        sig = self.interpreter.get_signature_list()
        only = next(iter(sig.values()))
        self.input_names, self.output_names = list(only["inputs"]), list(only["outputs"])
        details = self.runner.get_input_details()
        self.fixed_n = int(details["cand_dense"]["shape"][0]) if "cand_dense" in details else None
        import ai_edge_litert

        self.version = getattr(ai_edge_litert, "__version__", "unknown")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = _f32(inputs)
        out = self.runner(**{k: x[k] for k in self.input_names})
        return {k: np.asarray(v) for k, v in out.items()}


class ExecuTorchEngine:
    """The ExecuTorch runtime's Python bindings on a ``.pte`` (XNNPACK delegate). Its inputs are
    positional, so the bundle's signature supplies the names. (These bindings import torch; on a phone
    the same ``.pte`` runs in the C++/Java/Swift runtime.)"""

    name = "executorch"

    def __init__(self, path: str | Path, threads: int = 1, *, input_names: Sequence[str] = (),
                 output_names: Sequence[str] = (), **_: Any) -> None:
        if not input_names or not output_names:
            raise BundleError("an ExecuTorch model needs the bundle's input and output names (its inputs are positional).")
        with _native_stderr_muted():
            rt = requires("executorch.runtime")
            self._torch = requires("torch")
            self.method = rt.Runtime.get().load_program(str(path)).load_method("forward")
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.fixed_n = None
        self.version = _dist_version("executorch")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = _f32(inputs)
        outs = self.method.execute([self._torch.from_numpy(x[k]) for k in self.input_names])
        return {k: o.numpy().copy() for k, o in zip(self.output_names, outs)}


@contextlib.contextmanager
def _native_stderr_muted():
    """Hold back what native code writes to file descriptor 2 while ExecuTorch loads: on a machine
    without ARM CPU-id files its cpuinfo prints "Failed to open midr file ..." lines, and torchao
    "Failed to load ..." for CUDA kernels a CPU never uses. They read like failures and are not. If
    loading raises, what was written is passed on, so a real error is never hidden."""
    import os
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):            # no real stderr (embedded interpreter): nothing to mute
        yield
        return
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            buf.seek(0)
            os.write(2, buf.read()[-20000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class CoreMLEngine:
    """Core ML through coremltools; prediction exists only on macOS (elsewhere: a clear error)."""

    name = "coreml"

    def __init__(self, path: str | Path, threads: int = 1, **_: Any) -> None:
        if platform.system() != "Darwin":
            raise MissingDependencyError(f"Core ML prediction needs macOS (this is {platform.system()}); "
                                         "use the onnx, tflite or executorch model here.")
        ct = requires("coremltools")
        self.model = ct.models.MLModel(str(path))
        spec = self.model.get_spec()
        self.input_names = [i.name for i in spec.description.input]
        self.output_names = [o.name for o in spec.description.output]
        shape = list(spec.description.input[0].type.multiArrayType.shape)
        self.fixed_n = int(shape[0]) if shape else None
        self.version = ct.__version__

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = _f32(inputs)
        out = self.model.predict({k: x[k] for k in self.input_names})
        return {k: np.asarray(out[k], dtype=np.float32) for k in self.output_names}


ENGINES: dict[str, type] = {"onnx": OrtEngine, "ort": OrtEngine, "tflite": LiteRTEngine,
                            "executorch": ExecuTorchEngine, "coreml": CoreMLEngine}


def open_engine(fmt: str, path: str | Path, threads: int = 1, **kwargs: Any) -> Engine:
    """Open ``path`` with the engine for format ``fmt`` (one of :data:`ENGINES`)."""
    if fmt not in ENGINES:
        raise BundleError(f"no engine for format {fmt!r}; known formats: {', '.join(sorted(ENGINES))}.")
    return ENGINES[fmt](path, threads=threads, **kwargs)


def pad_candidates(inputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Pad every ``cand_*`` input from N to ``n`` rows by repeating the last real candidate.

    Why copies and not zeros: an int8 model with dynamic activation quantization computes one scale per
    tensor from its min and max, so zero rows (which the layers turn into non-zero activations) could
    widen the range and move the real candidates' scores; copies of a real row never change a min or a
    max. The caller drops the outputs beyond N.
    """
    out = {}
    for k, v in inputs.items():
        if k.startswith("cand_") and 0 < v.shape[0] < n:
            out[k] = np.concatenate([v, np.repeat(v[-1:], n - v.shape[0], axis=0)], axis=0)
        else:
            out[k] = v
    return out


class Bucketed:
    """Several fixed-N models of one network as one engine with dynamic N.

    A request of N candidates runs on the smallest bucket >= N (padded); a feed larger than the biggest
    bucket is scored in chunks of that bucket. Candidates are scored independently by the model (the
    only cross-candidate operation would be a bug), so padding and chunking change no real score —
    the export checks prove it to 1e-5.
    """

    def __init__(self, engines: dict[int, Engine]) -> None:
        if not engines:
            raise BundleError("a bucketed model needs at least one bucket.")
        self.engines = dict(sorted(engines.items()))
        first = next(iter(self.engines.values()))
        self.name = first.name
        self.version = getattr(first, "version", "unknown")
        self.input_names = getattr(first, "input_names", [])
        self.output_names = getattr(first, "output_names", [])
        self.fixed_n = None
        self.buckets = list(self.engines)

    def bucket_for(self, n: int) -> int:
        return next((b for b in self.buckets if b >= n), self.buckets[-1])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = int(inputs["cand_dense"].shape[0])
        big = self.buckets[-1]
        parts: list[dict[str, np.ndarray]] = []
        for lo in range(0, max(n, 1), big):
            hi = min(n, lo + big)
            chunk = {k: (v[lo:hi] if k.startswith("cand_") else v) for k, v in inputs.items()}
            b = self.bucket_for(hi - lo)
            out = self.engines[b].run(pad_candidates(chunk, b))
            parts.append({k: v[: hi - lo] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def open_group(fmt: str, files: Sequence[tuple[Path, int | None]], *, threads: int = 1,
               input_names: Sequence[str] = (), output_names: Sequence[str] = ()) -> Engine:
    """One engine for the files of one (format, precision): ``files`` = [(path, bucket or None)]. A
    single dynamic-N file opens directly; fixed-N files become one :class:`Bucketed` engine."""
    kw = {"input_names": list(input_names), "output_names": list(output_names)}
    if files[0][1] is None:
        return open_engine(fmt, files[0][0], threads=threads, **kw)
    return Bucketed({b: open_engine(fmt, p, threads=threads, **kw) for p, b in files})


def open_manifest_group(root: Path, manifest: dict[str, Any], artifacts: Sequence[dict[str, Any]],
                        threads: int = 1) -> Engine:
    """:func:`open_group` for manifest artifact entries (paths relative to the bundle ``root``)."""
    return open_group(artifacts[0]["format"], [(root / a["path"], a["bucket"]) for a in artifacts], threads=threads,
                      input_names=[t["name"] for t in manifest["signature"]["inputs"]],
                      output_names=[t["name"] for t in manifest["signature"]["outputs"]])


def files_size(paths: Sequence[Path]) -> int:
    """Bytes on disk of files and folders (an ``.mlpackage`` is a folder)."""
    return sum(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
               for p in paths)


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"
