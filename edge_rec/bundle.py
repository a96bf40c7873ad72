"""Edge bundles on the phone side: read, validate and verify a bundle folder or ``.zip``.

A bundle is a folder with ``manifest.json`` (valid against ``edge_rec/bundle.schema.json``), the
model files it lists (each with sha256 and size) and ``golden.json``. Nothing here imports torch.

The runtime refuses a bundle whose schema version, checksums or signature do not match, and the error
names every file or field that is wrong, so a CI log says at once what broke.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from edge_rec.errors import BundleError

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).with_name("bundle.schema.json")
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"          # optional Ed25519 signature of manifest.json (edge_rec.signing)


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def schema_errors(manifest: Any) -> list[str]:
    """Every JSON Schema violation of ``manifest`` as 'path: message' (empty when valid). Without
    jsonschema installed (a phone or device-farm runner with numpy and one engine only) the schema step
    is skipped; checksums, sizes and the file list are still verified."""
    try:
        import jsonschema
    except ImportError:
        return []

    validator = jsonschema.Draft202012Validator(load_schema())
    out = []
    for err in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        out.append(f"manifest {where}: {err.message}")
    return out


MAX_MANIFEST_BYTES = 8 << 20
"""manifest.json and golden.json are read into memory: a bundle's are a few hundred KB at most."""
MAX_HIST_LEN = 4096
MAX_DIM = 1 << 16
OUTPUTS = ("score", "p_click", "p_finish", "p_like", "fused")


def runtime_value_errors(manifest: dict[str, Any]) -> list[str]:
    """Every manifest value a runtime computes with, checked for type and range, and the signature
    checked against the modalities and history length it must agree with. The JSON Schema cannot say
    these (a std of 0 or a negated one, a history of 10^9 rows) and a phone may run without jsonschema,
    so they are checked here, in plain Python, on every open. Returns 'where: what' lines."""
    out: list[str] = []

    def num(path: str, positive: bool = False) -> float | None:
        v: Any = manifest
        for k in path.split("."):
            if not isinstance(v, dict) or k not in v:
                out.append(f"manifest lacks {path}")
                return None
            v = v[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
            out.append(f"manifest {path} must be a finite number{' > 0' if positive else ''}, got {v!r}")
            return None
        return float(v)

    for stat_ in ("duration", "popularity"):
        num(f"features.cand_dense.{stat_}.mean")
        num(f"features.cand_dense.{stat_}.std", positive=True)
    num("features.cand_dense.freshness.shift")
    num("features.cand_dense.freshness.scale", positive=True)
    model, mods, sig = manifest.get("model"), manifest.get("modalities"), manifest.get("signature")
    hist_len = model.get("hist_len") if isinstance(model, dict) else None
    if isinstance(hist_len, bool) or not isinstance(hist_len, int) or not 1 <= hist_len <= MAX_HIST_LEN:
        out.append(f"manifest model.hist_len must be a whole number in [1, {MAX_HIST_LEN}], got {hist_len!r}")
        hist_len = None
    dims = mods.get("dims") if isinstance(mods, dict) else None
    if not isinstance(dims, dict) or not dims or not all(
            isinstance(m, str) and isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM for m, d in dims.items()):
        out.append(f"manifest modalities.dims must map modality names to whole numbers in [1, {MAX_DIM}], got {dims!r}")
        dims = None
    pruned = mods.get("pruned") if isinstance(mods, dict) else None
    if not isinstance(pruned, list) or not all(isinstance(m, str) for m in pruned):
        out.append(f"manifest modalities.pruned must be a list of names, got {pruned!r}")
    lim = manifest.get("features", {}).get("cand_modality", {}).get("limit") if isinstance(manifest.get("features"), dict) \
        and isinstance(manifest["features"].get("cand_modality", {}), dict) else None
    if lim is not None:
        if not isinstance(lim, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                and math.isfinite(v) and v > 0 for v in lim.values()):
            out.append(f"manifest features.cand_modality.limit must map modalities to finite numbers > 0, got {lim!r}")
    if dims is not None and hist_len is not None and isinstance(sig, dict):
        want: dict[str, list[Any]] = {}
        for m, d in dims.items():
            want[f"cand_{m}"], want[f"cand_mask_{m}"] = ["N", d], ["N"]
        want.update({"cand_dense": ["N", 3], "hist_emb": [hist_len, sum(dims.values()) + 3], "hist_weight": [hist_len],
                     "hist_age": [hist_len], "context": [3]})
        try:
            got = {t["name"]: list(t["shape"]) for t in sig["inputs"]}
            outs = [t["name"] for t in sig["outputs"]]
        except (TypeError, KeyError):
            out.append("manifest signature.inputs / outputs must be lists of {name, shape}")
        else:
            if set(got) != set(want):
                out.append(f"manifest signature inputs {sorted(got)} do not match the modalities {sorted(dims)} "
                           f"(expected {sorted(want)})")
            else:
                out += [f"manifest signature input {k} has shape {got[k]}, the modalities and hist_len say {v}"
                        for k, v in want.items() if got[k] != v]
            if not set(OUTPUTS) <= set(outs):
                out.append(f"manifest signature outputs {outs} lack {sorted(set(OUTPUTS) - set(outs))}")
    return out


def file_entries(root: Path, paths: list[str]) -> list[dict[str, Any]]:
    """``[{path, sha256, size}]`` for files under ``root`` (POSIX relative paths, sorted)."""
    return [{"path": p, "sha256": sha256_file(root / p), "size": (root / p).stat().st_size} for p in sorted(paths)]


def verify_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a bundle folder and return its manifest; raise :class:`BundleError` listing every problem.

    Checks: the manifest parses and is valid against the schema; its major schema version is one this
    runtime reads; every listed file exists with the listed size and sha256; every artifact is a listed
    file; no unlisted file sits in the bundle (a stray model file would otherwise run unverified).
    """
    root = Path(path)
    if root.is_file():
        if zipfile.is_zipfile(root):
            raise BundleError(f"{root} is a zip; extract it with `edge-rec bundle extract {root} DIR` (or "
                              f"edge_rec.bundle.extract_bundle(); `edge-rec verify {root}` checks it) and open the folder.")
        raise BundleError(f"{root} is a file that is neither a bundle folder nor a valid zip (truncated or not a zip?).")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} is not an edge bundle: no {MANIFEST}. Point at the folder `edge-rec export` wrote.")
    manifest = read_bounded_json(mpath, "manifest")
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} must hold a JSON object, got {type(manifest).__name__}; re-export the bundle.")
    problems = schema_errors(manifest)
    if problems:
        raise BundleError(f"{mpath} does not match the bundle schema:\n  " + "\n  ".join(problems))
    problems = runtime_value_errors(manifest)
    if problems:
        raise BundleError(f"{mpath} holds values no runtime can use:\n  " + "\n  ".join(problems))
    major = manifest["schema_version"].split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise BundleError(f"bundle schema version {manifest['schema_version']} is not readable by this runtime "
                          f"(reads {SCHEMA_VERSION.split('.')[0]}.x); upgrade edge-rec or re-export.")
    listed = {f["path"]: f for f in manifest["files"]}
    for f in manifest["files"]:
        p = root / f["path"]
        if not p.is_file():
            problems.append(f"{f['path']}: missing")
            continue
        size = p.stat().st_size
        if size != f["size"]:
            problems.append(f"{f['path']}: size {size} bytes, manifest says {f['size']}")
        digest = sha256_file(p)
        if digest != f["sha256"]:
            problems.append(f"{f['path']}: sha256 {digest[:12]}… does not match the manifest's {f['sha256'][:12]}…")
    for a in manifest["artifacts"]:
        path = a["path"]
        if path not in listed and not any(k.startswith(path.rstrip("/") + "/") for k in listed):
            problems.append(f"{path}: artifact {a['format']}/{a['precision']} is not among the listed files")
    prog = manifest.get("local_learning", {}).get("program")
    if prog is not None and prog not in listed:
        problems.append(f"{prog}: the on-device training program is not among the listed files")
    if manifest["golden"]["path"] not in listed:
        problems.append(f"{manifest['golden']['path']}: golden file is not among the listed files")
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in (MANIFEST, SIGNATURE) and rel not in listed:
            problems.append(f"{rel}: not listed in the manifest (unverified file)")
    if problems:
        raise BundleError(f"bundle {root} failed verification ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    return manifest


def read_bounded_json(path: Path, what: str, limit: int = MAX_MANIFEST_BYTES) -> Any:
    """A bundle's JSON file, refused before reading when larger than ``limit`` bytes (a bundle from an
    unknown source must not be able to make the runtime read a gigabyte into memory)."""
    size = path.stat().st_size
    if size > limit:
        raise BundleError(f"{path}: the {what} is {size} bytes, more than the {limit} a bundle's {what} may take; "
                          "the bundle is damaged or not from edge-rec.")
    try:
        return json.loads(path.read_bytes())
    except RecursionError as exc:
        raise BundleError(f"{path}: the {what} is nested too deeply to be a bundle's.") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle.") from exc


def write_zip(folder: str | os.PathLike[str], zip_path: str | os.PathLike[str]) -> Path:
    """Zip a bundle folder (files stored uncompressed, as Android assets want; fixed timestamps so the
    same bundle gives the same zip). Written to a temp name, then renamed: never half a zip."""
    root, out = Path(folder), Path(zip_path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                info = zipfile.ZipInfo(p.relative_to(root).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                z.writestr(info, p.read_bytes())
    os.replace(tmp, out)
    return out


def _safe_member(name: str, info: zipfile.ZipInfo) -> str | None:
    """Why a zip member may not be extracted (None when it is safe)."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or (pure.parts and ":" in pure.parts[0]):
        return "absolute path"
    if ".." in pure.parts:
        return "path escapes the bundle folder ('..')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


MAX_BUNDLE_BYTES = 1 << 30
MAX_FILE_BYTES = 512 << 20
MAX_MEMBERS = 10_000
MAX_RATIO = 100
"""Bounds on a zip before anything is extracted: total and per-file size, members, and the compression
ratio of any member (edge-rec writes bundles uncompressed, ratio 1; model files deflate about 1.1-3x;
a zip bomb reaches 1,000x and more)."""


def extract_bundle(zip_path: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                   max_bytes: int = MAX_BUNDLE_BYTES, max_file_bytes: int = MAX_FILE_BYTES) -> Path:
    """Extract a bundle zip into ``dest`` (which must not exist), then verify it.

    Before anything is written every member is checked: absolute paths, ``..`` and symlinks are
    refused, and so is a zip whose files would take more than ``max_bytes`` in all (or one more than
    ``max_file_bytes``, or whose manifest is over :data:`MAX_MANIFEST_BYTES`), that has more than
    :data:`MAX_MEMBERS` members, or a member compressed more than :data:`MAX_RATIO` times. Members are
    then streamed with a byte count, so a member that lies about its size cannot write more; a corrupt
    member (bad CRC, truncated data) is a :class:`BundleError` and leaves nothing behind."""
    src, out = Path(zip_path), Path(dest)
    if not src.is_file() or not zipfile.is_zipfile(src):
        raise BundleError(f"{src} is not a valid zip file (missing, truncated or another format).")
    if out.exists():
        raise BundleError(f"{out} already exists; extract into a new folder.")
    try:
        z = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"{src} is not a valid zip file ({exc}).") from exc
    with z:
        infos = z.infolist()
        bad = [(i.filename, why) for i in infos if (why := _safe_member(i.filename, i))]
        if len(infos) > MAX_MEMBERS:
            bad.append((f"{len(infos)} members", f"more than {MAX_MEMBERS}"))
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            bad.append(("(all members)", f"{total} bytes uncompressed, more than {max_bytes}"))
        for i in infos:
            limit = MAX_MANIFEST_BYTES if i.filename == MANIFEST else max_file_bytes
            if i.file_size > limit:
                bad.append((i.filename, f"{i.file_size} bytes uncompressed, more than {limit}"))
            if i.file_size > 1 << 20 and i.file_size > MAX_RATIO * max(i.compress_size, 1):
                bad.append((i.filename, f"compressed {i.file_size / max(i.compress_size, 1):.0f}x, more than {MAX_RATIO}x "
                                        "(a zip bomb?)"))
        if bad:
            raise BundleError(f"{src} has unsafe or oversized entries, nothing extracted: " + "; ".join(f"{n!r} ({w})" for n, w in bad))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            written = 0
            for i in infos:
                target = tmp / PurePosixPath(i.filename.replace("\\", "/"))
                if i.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(i) as fin, open(target, "wb") as fout:
                    while block := fin.read(1 << 20):
                        written += len(block)
                        if written > total:                   # never more than the sizes checked above
                            raise BundleError(f"{src}: member {i.filename!r} holds more than its declared size.")
                        fout.write(block)
            verify_bundle(tmp)
            normal_permissions(tmp)
            os.replace(tmp, out)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"{src} is damaged, nothing extracted ({type(exc).__name__}: {exc}).") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def normal_permissions(root: Path) -> None:
    """Give a folder staged with :func:`tempfile.mkdtemp` (owner-only, 0700) and everything in it the
    permissions a normal folder would get (the process umask applied to 0777 / 0666), so a CI artifact
    or an app's assets can be read by the tools that need them."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def check_golden(root: str | os.PathLike[str], manifest: dict[str, Any] | None = None, *,
                 formats: list[str] | None = None, on_group: Any = None) -> dict[str, Any]:
    """Run ``golden.json`` through every artifact whose engine is installed here and compare with the
    outputs recorded at export (to ``artifact_tolerance``) and with PyTorch fp32 (to the precision's
    tolerance). Returns ``{artifact path: {ok, max_abs_err_vs_recorded, max_abs_err_vs_reference} or
    {skipped: why}}``. On macOS this is where Core ML's numbers are checked. ExecuTorch goes last: its
    Python bindings import torch (seconds, hundreds of MB), which a phone's runtime never does.
    ``on_group(key)`` is called before each format/precision is checked (progress lines)."""
    import numpy as np

    from edge_rec.engines import open_manifest_group
    from edge_rec.errors import MissingDependencyError

    root = Path(root)
    manifest = manifest or verify_bundle(root)
    golden = read_bounded_json(root / manifest["golden"]["path"], "golden file", 16 * MAX_MANIFEST_BYTES)
    tol_art = float(manifest["golden"].get("artifact_tolerance", 1e-5))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in manifest["artifacts"]:
        if formats is None or a["format"] in formats:
            groups.setdefault((a["format"], a["precision"]), []).append(a)
    result: dict[str, Any] = {}
    for (fmt, prec), arts in sorted(groups.items(), key=lambda kv: kv[0][0] == "executorch"):
        key = f"{fmt}/{prec}"
        if on_group is not None:
            on_group(key)
        try:
            eng = open_manifest_group(root, manifest, arts)
        except MissingDependencyError as exc:
            result[key] = {"skipped": str(exc)}
            continue
        worst_rec = worst_ref = 0.0
        recorded_any = False
        for case in golden["cases"]:
            x = {k: np.asarray(v["data"], np.float32).reshape(v["shape"]) for k, v in case["inputs"].items()}
            got = eng.run(x)["score"]
            ref = np.asarray(case["reference"]["score"]["data"], np.float32)
            worst_ref = max(worst_ref, float(np.abs(got - ref).max()))
            rec = case["artifacts"].get(arts[0]["path"])
            if rec is not None:
                recorded_any = True
                worst_rec = max(worst_rec, float(np.abs(got - np.asarray(rec["score"]["data"], np.float32)).max()))
        # the artifact's own tolerance (what its parity check measured, with a margin) where the
        # exporter recorded one; the precision's otherwise (older bundles, Core ML exported on Linux)
        tol_ref = float(manifest["golden"].get("tolerance_by_artifact", {}).get(
            key, manifest["golden"]["tolerance"].get(prec, 1e-4)))
        ok = worst_ref <= tol_ref and (not recorded_any or worst_rec <= tol_art)
        result[key] = {"ok": ok, "engine": eng.name, "max_abs_err_vs_reference": worst_ref, "tolerance_vs_reference": tol_ref,
                       "max_abs_err_vs_recorded": worst_rec if recorded_any else None, "tolerance_vs_recorded": tol_art}
    return result
