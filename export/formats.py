"""Format exporters behind one small protocol and an explicit registry.

Each exporter turns the (eval-mode) student into model files for one format at one precision and
returns the artifacts it wrote plus a compatibility summary. Exporters never decide whether a result is
good enough; :mod:`edge_rec.export.stage` runs every artifact in its own runtime and applies the gates.

=========== ========================= ===================== ==============================================
format      files                     N (candidates)        precisions
=========== ========================= ===================== ==============================================
onnx        ``.onnx`` + ``.ort``      dynamic               fp32, fp16, int8 (static NNCF PTQ | quantize_dynamic)
tflite      ``.n{B}.tflite``          fixed buckets B       fp32, int8 (dynamic-range, AI Edge Quantizer)
coreml      ``.n{B}.mlpackage``       fixed buckets B       fp32, fp16, int8 (weights, coremltools.optimize)
            (or one flexible model)   (or a RangeDim)
executorch  ``.pte`` (XNNPACK)        dynamic               fp32, int8 (PT2E dynamic int8)
=========== ========================= ===================== ==============================================
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

# LiteRT's converter logs from C++ straight to stderr; keep the CLI's output to what matters
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "2")
# The TFLite converter folds constants with TensorFlow's CPU kernels; with oneDNN on they may round
# differently from run to run and machine to machine (TensorFlow's own notice, printed on every import
# before the log level above applies). Off, conversion is reproducible and the notice is gone; a user
# who sets the variable keeps their choice.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from edge_rec._requires import requires
from edge_rec.errors import ConfigError, ExportError
from edge_rec.distill.features import OUTPUT_NAMES

EXPORT_OUTPUTS = OUTPUT_NAMES + ["fused"]
"""Outputs of every exported model: score, per-task probabilities, and the fused candidate embedding
[N, d] (the runtime's diversity step uses it)."""

MAX_N = 4096   # the largest candidate count a dynamic-N export promises (torch.export needs a bound)


@dataclass
class Artifact:
    format: str            # onnx | ort | tflite | coreml | executorch
    precision: str         # fp32 | fp16 | int8
    path: Path             # absolute, inside the staging folder
    bucket: int | None     # fixed candidate count, None = dynamic
    engine: str

    def rel(self, root: Path) -> str:
        return self.path.relative_to(root).as_posix()


@dataclass
class ExportContext:
    """What every exporter needs besides the model."""

    input_names: list[str]
    hist_len: int
    buckets: list[int]
    models_dir: Path                                       # where model files go
    example: Callable[[int], dict[str, torch.Tensor]]      # real inputs of one request padded/cut to N
    calibration: list[dict[str, np.ndarray]] = field(default_factory=list)   # real training requests (static int8)
    int8_mode: str = "static"                              # onnx int8: static (NNCF PTQ) | dynamic
    coreml_flexible: bool = False                          # one RangeDim model instead of buckets
    stem: str = "student"
    lean: bool = True                                      # trace forward_request (see request_forward)


class Exporter(Protocol):
    name: str
    precisions: tuple[str, ...]

    def export(self, model: torch.nn.Module, precision: str, ctx: ExportContext) -> tuple[list[Artifact], dict[str, Any]]:
        """Write the files for ``precision``; return (artifacts, compatibility summary)."""
        ...


def request_forward(model: torch.nn.Module, lean: bool = True) -> Callable[..., dict[str, torch.Tensor]]:
    """What the exporters trace for one request: the model's ``forward_request`` (the same arithmetic
    without shape bookkeeping, :meth:`Student.forward_request`) when it has one and ``lean`` is set, else
    its ``forward``. The export stage sets ``lean`` only after checking on real requests that the two
    agree, so a subclass that changes ``forward`` alone is still exported as it computes."""
    fn = getattr(model, "forward_request", None) if lean else None
    return fn or model


class PositionalWrapper(torch.nn.Module):
    """The ranker with positional inputs in contract order and a tuple of :data:`EXPORT_OUTPUTS`
    (what the tracing exporters want)."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], lean: bool = True) -> None:
        super().__init__()
        self.model, self.names, self.lean = model, list(input_names), lean

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = request_forward(self.model, self.lean)(**dict(zip(self.names, args)))
        return tuple(out[k] for k in EXPORT_OUTPUTS)


class NamedWrapper(torch.nn.Module):
    """Keyword inputs and a dict of outputs, so LiteRT's signature carries the contract's names."""

    def __init__(self, model: torch.nn.Module, lean: bool = True) -> None:
        super().__init__()
        self.model, self.lean = model, lean

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        out = request_forward(self.model, self.lean)(**inputs)
        return {k: out[k] for k in EXPORT_OUTPUTS}


@contextlib.contextmanager
def _quiet():
    """Converters print pages of progress; keep the CLI's output readable (errors still raise)."""
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:400]


def _op_from_error(exc: BaseException) -> str | None:
    """The op or construct named in a converter's error, when it names one."""
    for pat in (r"[Uu]nsupported fx node ([\w.:]+)", r"Exporting the operator '([\w.:]+)'", r"converting '([\w.:]+)' op", r"[Uu]nsupported (?:op|operator)[^'\"]*['\"]([\w.:]+)['\"]",
                r"aten[.:]+[\w.]+", r"op[_ ]type[=: ]+['\"]?([\w.]+)"):
        m = re.search(pat, str(exc))
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return None


def conversion_error(fmt: str, precision: str, exc: BaseException) -> ExportError:
    op = _op_from_error(exc)
    where = f" at op {op!r}" if op else ""
    return ExportError(f"{fmt}/{precision}: conversion failed{where}: {type(exc).__name__}: {_first_line(exc)}")


def _ex_tuple(ctx: ExportContext, n: int) -> tuple[torch.Tensor, ...]:
    x = ctx.example(n)
    return tuple(x[k] for k in ctx.input_names)


# ---- ONNX ---------------------------------------------------------------------------------------
class OnnxExporter:
    """``torch.onnx.export`` (TorchScript path, opset 17: smaller and faster in onnxruntime than the
    dynamo exporter here), dynamic N; ``.ort`` for ONNX Runtime Mobile next to every ``.onnx``."""

    name = "onnx"
    precisions = ("fp32", "fp16", "int8")

    def __init__(self, dynamo: bool = False) -> None:
        self.dynamo = dynamo

    def _fp32(self, model: torch.nn.Module, ctx: ExportContext, path: Path) -> None:
        requires("onnx")
        dyn = {k: {0: "N"} for k in ctx.input_names if k.startswith("cand_")}
        dyn.update({k: {0: "N"} for k in EXPORT_OUTPUTS})
        wrapped = PositionalWrapper(model, ctx.input_names, ctx.lean).eval()
        import warnings

        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore")
            if self.dynamo:
                requires("onnxscript")
                prog = torch.onnx.export(wrapped, _ex_tuple(ctx, 16), input_names=ctx.input_names,
                                         output_names=EXPORT_OUTPUTS, dynamic_axes=dyn, dynamo=True,
                                         external_data=False)
                prog.save(str(path))
            else:
                torch.onnx.export(wrapped, _ex_tuple(ctx, 16), str(path), input_names=ctx.input_names,
                                  output_names=EXPORT_OUTPUTS, dynamic_axes=dyn, opset_version=17, dynamo=False)

    def export(self, model: torch.nn.Module, precision: str, ctx: ExportContext) -> tuple[list[Artifact], dict[str, Any]]:
        onnx = requires("onnx")
        out = ctx.models_dir / f"{ctx.stem}.{precision}.onnx"
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            self._fp32(model, ctx, fp32)
            if precision == "fp32":
                shutil.copyfile(fp32, out)
            elif precision == "fp16":
                from onnxruntime.transformers.float16 import convert_float_to_float16

                # keep_io_types: the app feeds and reads float32 whatever the weights are. The converter
                # appends its input casts after the nodes that use them, which onnx's checker rejects:
                # sort the graph topologically before saving.
                half = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
                _toposort(half.graph)
                onnx.save(half, str(out))
            elif ctx.int8_mode == "static":
                self._nncf(fp32, out, ctx)
            else:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                with _quiet():
                    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                                     nodes_to_exclude=_narrow_layers(fp32))
            # constant folding would turn fp16 weights behind their casts back into fp32 ones, and a
            # static int8 model's DequantizeLinear of constant int8 weights into fp32 weights: those
            # are only renamed and stripped (NNCF's file: 39.9 -> 16.4 KB on the tiny student)
            static = precision == "int8" and ctx.int8_mode == "static"
            compact_onnx(out, Path(tmp), optimize=precision == "fp32" or (precision == "int8" and not static))
        onnx.checker.check_model(str(out))
        ort_path = to_ort(out, fixed=(precision == "int8" and ctx.int8_mode == "static"))
        compat = {"opset": 17 if not self.dynamo else "dynamo", "mobile_usability": mobile_usability(out),
                  "ops": dict(collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)),
                  "int8_mode": ctx.int8_mode if precision == "int8" else None}
        return ([Artifact("onnx", precision, out, None, "onnxruntime"),
                 Artifact("ort", precision, ort_path, None, "onnxruntime")], compat)

    def _nncf(self, src: Path, out: Path, ctx: ExportContext) -> None:
        """Static int8: NNCF post-training quantization of the ONNX model, activation scales fixed from
        real calibration requests, so a candidate's score never depends on the other candidates of its
        call (dynamic int8 computes one activation scale per call: 0.05-0.5 off, see BATCH_TOL)."""
        os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")   # it compiles an extension; slow on 2 cores
        nncf = requires("nncf")
        import logging

        nncf.set_log_level(logging.ERROR)      # its INFO lines (ignored nodes, statistics) read like problems
        onnx = requires("onnx")
        if not ctx.calibration:
            raise ConfigError("static int8 needs calibration requests; none were given.")
        names = ctx.input_names
        # SmoothQuant is off: it fails on a weight shared by two MatMuls (the student's modality
        # projections serve candidates and history alike) and the activations here have no outliers.
        adv = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1))
        with _quiet():
            q = nncf.quantize(onnx.load(str(src)), nncf.Dataset(ctx.calibration, lambda r: {k: r[k] for k in names}),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(ctx.calibration),
                              advanced_parameters=adv,
                              ignored_scope=nncf.IgnoredScope(names=_narrow_layers(src) + _concat_fed_layers(src),
                                                              validate=False))
        onnx.save(q, str(out))


def _toposort(graph: Any) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs (Kahn)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"onnx: graph has a cycle or a dangling input near node {rest[0].name!r}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def compact_onnx(path: Path, tmp: Path, optimize: bool = True) -> None:
    """Shrink an ``.onnx`` file in place without changing what it computes: ONNX Runtime's *basic*
    graph optimisations when ``optimize`` (constant folding, redundant-node elimination: standard ONNX
    ops only, so the file stays portable), then no shape annotations (``value_info``; runtimes infer them), no node
    names or doc strings, and short tensor names (graph inputs and outputs keep theirs).

    Measured on the default student: fp32 48.6 -> 36.6 KB, dynamic int8 47.5 -> 17.8 KB (the quantizer
    adds a shape annotation and a long name for every tensor). Parity is checked on the result."""
    onnx = requires("onnx")
    src = path
    if optimize:
        ort = requires("onnxruntime")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(tmp / "basic.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        src = tmp / "basic.onnx"
    m = onnx.load(str(src))
    g = m.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return                                     # subgraphs (If/Loop) would need scoped renaming: keep as is
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, np.base_repr(len(names), 36).lower())

    del g.value_info[:]
    for t in g.initializer:
        t.name = short(t.name)
    for node in g.node:
        node.name, node.doc_string = "", ""
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    m.doc_string, g.doc_string = "", ""
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


MIN_INT8_INPUTS = 32
"""Dynamic int8 leaves a MatMul/Gemm in fp32 when its weight has fewer input rows than this."""


def _narrow_layers(onnx_path: Path) -> list[str]:
    """Names of the MatMul / Gemm nodes whose constant weight has fewer than :data:`MIN_INT8_INPUTS`
    input features (K): what ``quantize_dynamic`` should leave in fp32.

    Dynamic int8 quantizes a layer's input activations with one scale per call. A narrow layer (the
    fusion block's attention and FFN matrices after structural pruning: K = 6-16 in the tiny student)
    saves at most a few hundred bytes as int8, and its inputs are where one scale costs the most.
    ``quantize_dynamic`` rewrites every Gemm as a MatMul under a new name before it quantizes, so there
    these names reach the MatMul nodes only and the Gemm layers (projections, head) stay int8; NNCF
    sees the original graph and leaves narrow Gemms in fp32 too. Measured with 300-1000 parity requests: the tiny student's int8 ONNX
    Spearman 0.987 -> 0.993 and NDCG@10 retained 0.991 -> 0.996; the default student's 0.9952 -> 0.9963
    and 0.9964 -> 0.9972, its file 17.8 -> 19.8 KB."""
    import onnx

    m = onnx.load(str(onnx_path))
    shapes = {i.name: tuple(i.dims) for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2 or n.input[1] not in shapes:
            continue
        w = shapes[n.input[1]]
        if len(w) != 2:
            continue
        trans_b = n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)
        if (w[1] if trans_b else w[0]) < MIN_INT8_INPUTS:
            out.append(n.name)
    return out


def _concat_fed_layers(onnx_path: Path) -> list[str]:
    """Names of the MatMul / Gemm nodes whose activation input comes straight from a Concat: what static
    int8 leaves in fp32. One fixed scale per tensor must then span parts of very different ranges (the
    student's head reads [cand, interest, cand x interest, cand - interest, context]), and the narrow
    parts lose all their resolution. Measured on the tiny student (300 validation requests): keeping
    the head's input layer fp32 took static int8 from Spearman 0.9913 and mean |score error| 0.18 to
    0.9977 and 0.05, for 190 bytes."""
    import onnx

    m = onnx.load(str(onnx_path))
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    return [n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and producer.get(n.input[0]) == "Concat"]


def to_ort(onnx_path: Path, fixed: bool = False) -> Path:
    """Convert to ONNX Runtime's mobile ``.ort`` format with onnxruntime's own tool (in a subprocess,
    as onnxruntime documents it). NNCF's QDQ models convert only with the Fixed optimization style."""
    out = onnx_path.with_suffix(".ort")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / onnx_path.name
        shutil.copyfile(onnx_path, src)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
               "--output_dir", tmp, "--optimization_style", "Fixed" if fixed else "Runtime"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        made = sorted(Path(tmp).glob("*.ort"))
        if res.returncode != 0 or not made:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise ExportError(f"ort: converting {onnx_path.name} failed: {' | '.join(tail)}")
        shutil.copyfile(made[0], out)
    return out


def mobile_usability(onnx_path: Path) -> dict[str, Any]:
    """ONNX Runtime's mobile usability check, summarised per execution provider (NNAPI, Core ML), as is
    and with fixed input shapes: nodes it could take, partitions, unsupported ops, its verdict; plus the
    tool's overall recommendation (for a model this small, usually the CPU EP)."""
    cmd = [sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(onnx_path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [re.sub(r"^\w+:\s+", "", ln).strip() for ln in (res.stdout + res.stderr).splitlines()]
    out: dict[str, Any] = {"returncode": res.returncode, "eps": {}}
    ep, variant = None, "as_is"
    for ln in lines:
        m = re.match(r"Checking (NNAPI|CoreML \w+|CoreML)$", ln)
        if m:
            ep, variant = m.group(1), "as_is"
            continue
        if ln.startswith("Checking if model will perform better if the dynamic shapes are fixed"):
            variant = "fixed_shapes"
            continue
        if ep is None:
            continue
        row = out["eps"].setdefault(ep, {}).setdefault(variant, {})
        m = re.match(r"(\d+) partitions with a total of (\d+)/(\d+) nodes", ln)
        if m:
            row.update(partitions=int(m.group(1)), nodes_supported=int(m.group(2)), nodes_total=int(m.group(3)))
        m = re.match(r"Unsupported ops: (.*)", ln)
        if m:
            row["unsupported_ops"] = sorted({op.split(":")[-1] for op in m.group(1).split(",") if op})
        m = re.match(r"Model should perform well with .*?: (YES|NO)", ln)
        if m:
            row["recommended"] = m.group(1) == "YES"
        if ln.startswith("For optimal performance"):
            out["recommendation"] = ln
    if "recommendation" not in out:
        out["recommendation"] = next((ln for ln in reversed(lines) if ln), "")
    return out


def weight_bytes(path: Path) -> int | None:
    """Bytes of a model file that are constant tensors (weights, biases, quantization scales): the
    initializers of an ``.onnx`` file, the buffers of a ``.tflite`` file; None for other formats. The
    rest of the file is graph (ops, names, shapes): on a student of a few thousand parameters it is
    most of the file, which is why size is reported as both."""
    if path.suffix == ".onnx":
        onnx = requires("onnx")
        m = onnx.load(str(path))
        return int(sum(len(t.raw_data) if t.raw_data else t.ByteSize() for t in m.graph.initializer))
    if path.suffix == ".tflite":
        schema = requires("ai_edge_litert.schema_py_generated")
        model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
        return int(sum(model.Buffers(i).DataLength() for i in range(model.BuffersLength())))
    return None


# ---- TFLite (LiteRT) ----------------------------------------------------------------------------
class TFLiteExporter:
    """litert-torch at fixed candidate buckets (dynamic N does not convert, and resizing a fixed input
    breaks the XNNPACK delegate); int8 = dynamic-range weights through the AI Edge Quantizer."""

    name = "tflite"
    precisions = ("fp32", "int8")

    def export(self, model: torch.nn.Module, precision: str, ctx: ExportContext) -> tuple[list[Artifact], dict[str, Any]]:
        litert_torch = requires("litert_torch")
        arts, ops = [], collections.Counter()
        for b in ctx.buckets:
            out = ctx.models_dir / f"{ctx.stem}.{precision}.n{b}.tflite"
            x = ctx.example(b)
            with _quiet():
                em = litert_torch.convert(NamedWrapper(model, ctx.lean).eval(), (), sample_kwargs=x)
                if precision == "fp32":
                    em.export(str(out))
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        src = Path(tmp) / "fp32.tflite"
                        em.export(str(src))
                        quantizer = requires("ai_edge_quantizer.quantizer")
                        recipe = requires("ai_edge_quantizer.recipe")
                        q = quantizer.Quantizer(str(src))
                        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
                        q.quantize().export_model(str(out), overwrite=True)
            compact_tflite(out)
            ops.update(tflite_ops(out))
            arts.append(Artifact("tflite", precision, out, b, "litert"))
        flex = sorted(o for o in ops if o.startswith("Flex") or o == "CUSTOM")
        compat = {"ops": dict(ops), "builtin_only": not flex, "non_builtin": flex}
        if flex:
            raise ExportError(f"tflite/{precision}: non-builtin ops {flex} (Flex/custom ops need the full "
                              "TensorFlow runtime on the phone); rewrite the construct that produces them.")
        return arts, compat


def compact_tflite(path: Path) -> None:
    """Shorten the names of a ``.tflite`` file's inner tensors in place (litert-torch names each one
    after its place in the traced module: 11 KB of a 59 KB bucket for the default student). The
    subgraph's input and output tensors and the signature keep their names; the buffers, ops and
    quantisation parameters are written back unchanged, so the model computes the same (the parity
    checks run on the result)."""
    schema = requires("ai_edge_litert.schema_py_generated")
    flatbuffers = requires("flatbuffers")
    raw = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(raw, 0))
    for sg in model.subgraphs or []:
        keep = {int(i) for i in list(sg.inputs) + list(sg.outputs)}
        for i, t in enumerate(sg.tensors or []):
            if i not in keep:
                t.name = np.base_repr(i, 36).lower().encode()
    b = flatbuffers.Builder(len(raw))
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bytes(b.Output()))
    tmp.replace(path)


def tflite_ops(path: Path) -> collections.Counter:
    """Op histogram of a ``.tflite`` file, from LiteRT's own model analyzer."""
    aw = requires("ai_edge_litert._pywrap_analyzer_wrapper")
    text = aw.ModelAnalyzer(str(path), True, False)
    return collections.Counter(re.findall(r"Op#\d+ (\w+)\(", text))


# ---- Core ML ------------------------------------------------------------------------------------
class CoreMLExporter:
    """coremltools (torch.export frontend), ML program for iOS 16+. Fixed buckets by default (flexible
    shapes keep Core ML off the Neural Engine); ``coreml_flexible`` writes one model with a RangeDim.
    fp16 = fp16 compute; int8 = int8 weights (linear symmetric, coremltools.optimize)."""

    name = "coreml"
    precisions = ("fp32", "fp16", "int8")

    def export(self, model: torch.nn.Module, precision: str, ctx: ExportContext) -> tuple[list[Artifact], dict[str, Any]]:
        ct = requires("coremltools")
        arts, ops = [], collections.Counter()
        buckets: list[int | None] = [None] if ctx.coreml_flexible else list(ctx.buckets)
        for b in buckets:
            tag = "flex" if b is None else f"n{b}"
            out = ctx.models_dir / f"{ctx.stem}.{precision}.{tag}.mlpackage"
            n = b or ctx.buckets[0]
            ex = _ex_tuple(ctx, n)
            wrapped = PositionalWrapper(model, ctx.input_names, ctx.lean).eval()
            with _quiet():
                if b is None:
                    dim = torch.export.Dim("N", min=1, max=MAX_N)
                    shapes = tuple({0: dim} if k.startswith("cand_") else None for k in ctx.input_names)
                    ep = torch.export.export(wrapped, ex, dynamic_shapes=(shapes,))
                    rng = ct.RangeDim(lower_bound=1, upper_bound=MAX_N, default=n)
                    inputs = [ct.TensorType(name=k, shape=((rng,) + tuple(v.shape[1:])) if k.startswith("cand_") else tuple(v.shape),
                                            dtype=np.float32) for k, v in zip(ctx.input_names, ex)]
                else:
                    ep = torch.export.export(wrapped, ex)
                    inputs = [ct.TensorType(name=k, shape=tuple(v.shape), dtype=np.float32) for k, v in zip(ctx.input_names, ex)]
                ep = ep.run_decompositions({})
                prec = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
                ml = ct.convert(ep, inputs=inputs, outputs=[ct.TensorType(name=k) for k in EXPORT_OUTPUTS],
                                convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                                compute_precision=prec)
                if precision == "int8":
                    opt = requires("coremltools.optimize.coreml")
                    cfg = opt.OptimizationConfig(global_config=opt.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0))
                    ml = opt.linear_quantize_weights(ml, config=cfg)
                ml.save(str(out))
                # coremltools adds a debug map (op -> torch.export debug handle) to packages converted
                # from torch.export; it is outside the package manifest, no runtime reads it, and it
                # weighed as much as the model: it does not go to phones.
                (out / "executorch_debug_handle_mapping.json").unlink(missing_ok=True)
            ops.update(coreml_spec_check(out, ctx.input_names, n if b else None))
            arts.append(Artifact("coreml", precision, out, b, "coreml"))
        compat = {"target": "iOS16", "model_type": "mlProgram", "flexible_n": ctx.coreml_flexible,
                  "mil_ops": dict(ops), "spec_checked": True,
                  "prediction": "macOS only: run `edge-rec verify` on a Mac to compare its scores"}
        return arts, compat


def coreml_spec_check(path: Path, input_names: list[str], n: int | None) -> collections.Counter:
    """What Linux can check of a saved ``.mlpackage``: it loads as a spec, is an ML program, its inputs
    and outputs are the contract's (names, and N where fixed), and its MIL ops; raises on a mismatch."""
    ct = requires("coremltools")
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ExportError(f"coreml: {path.name} is a {spec.WhichOneof('Type')}, not an ML program.")
    got_in = [i.name for i in spec.description.input]
    got_out = [o.name for o in spec.description.output]
    if got_in != list(input_names) or got_out != EXPORT_OUTPUTS:
        raise ExportError(f"coreml: {path.name} has inputs {got_in} / outputs {got_out}; expected "
                          f"{input_names} / {EXPORT_OUTPUTS}.")
    if n is not None:
        shape = list(spec.description.input[0].type.multiArrayType.shape)
        if not shape or shape[0] != n:
            raise ExportError(f"coreml: {path.name} first input has shape {shape}, expected N={n}.")
    ops: collections.Counter = collections.Counter()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
    return ops


# ---- ExecuTorch ---------------------------------------------------------------------------------
class ExecuTorchExporter:
    """torch.export with dynamic N, lowered to XNNPACK; int8 = PT2E dynamic int8 (XNNPACK quantizer)."""

    name = "executorch"
    precisions = ("fp32", "int8")

    def export(self, model: torch.nn.Module, precision: str, ctx: ExportContext) -> tuple[list[Artifact], dict[str, Any]]:
        exir = requires("executorch.exir")
        xnn = requires("executorch.backends.xnnpack.partition.xnnpack_partitioner")
        out = ctx.models_dir / f"{ctx.stem}.{precision}.pte"
        wrapped = PositionalWrapper(model, ctx.input_names, ctx.lean).eval()
        ex = _ex_tuple(ctx, 32)
        dim = torch.export.Dim("N", min=1, max=MAX_N)
        shapes = tuple({0: dim} if k.startswith("cand_") else None for k in ctx.input_names)
        with _quiet():
            if precision == "int8":
                xq = requires("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
                pt2e = requires("torchao.quantization.pt2e.quantize_pt2e")
                quantizer = xq.XNNPACKQuantizer().set_global(
                    xq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
                gm = torch.export.export(wrapped, ex, dynamic_shapes=(shapes,)).module()
                gm = pt2e.prepare_pt2e(gm, quantizer)
                for r in ctx.calibration[:8] or [dict(zip(ctx.input_names, (t.numpy() for t in ex)))]:
                    gm(*(torch.from_numpy(np.asarray(r[k], np.float32)) for k in ctx.input_names))
                gm = pt2e.convert_pt2e(gm)
                ep = torch.export.export(gm, ex, dynamic_shapes=shapes)
            else:
                ep = torch.export.export(wrapped, ex, dynamic_shapes=(shapes,))
            edge = exir.to_edge_transform_and_lower(ep, partitioner=[xnn.XnnpackPartitioner()])
            prog = edge.to_executorch()
        out.write_bytes(prog.buffer)
        graph = edge.exported_program().graph
        calls = sum(1 for nd in graph.nodes if nd.op == "call_function" and "call_delegate" in str(nd.target))
        left = sorted({_target_name(nd.target) for nd in graph.nodes if nd.op == "call_function"
                       and "call_delegate" not in str(nd.target) and "getitem" not in str(nd.target)})
        compat = {"delegate": "XnnpackBackend", "delegate_calls": calls, "ops_outside_delegate": left,
                  "dynamic_n": [1, MAX_N]}
        return [Artifact("executorch", precision, out, None, "executorch")], compat


def _target_name(target: Any) -> str:
    """'aten.mean.dim' -> 'mean'; plain functions by name (never their memory address)."""
    text = str(target)
    if text.startswith("<"):
        return getattr(target, "__name__", type(target).__name__)
    parts = text.split(".")
    return parts[-2] if len(parts) >= 2 else text


REGISTRY: dict[str, Callable[[], Exporter]] = {
    "onnx": OnnxExporter,
    "tflite": TFLiteExporter,
    "coreml": CoreMLExporter,
    "executorch": ExecuTorchExporter,
}


def get_exporter(name: str) -> Exporter:
    """The exporter for ``name``; an unknown name's error lists the known ones."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown export format {name!r}; known formats: {', '.join(REGISTRY)}.")
    return REGISTRY[name]()
