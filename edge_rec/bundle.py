"""Edge bundles on the phone side: read, validate and verify a bundle folder or ``.zip``.

A bundle is a folder with ``manifest.json`` (valid against ``edge_rec/bundle.schema.json``), the
model files it lists (each with sha256 and size) and ``golden.json``. Nothing here imports torch.

The runtime refuses a bundle whose schema version, checksums or signature do not match, and the error
names every file or field that is wrong, so a CI log says at once what broke.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from edge_rec.errors import BundleError

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).with_name("bundle.schema.json")
MANIFEST = "manifest.json"


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
    if root.is_file() and zipfile.is_zipfile(root):
        raise BundleError(f"{root} is a zip; extract it with edge_rec.bundle.extract_bundle() (or "
                          f"`edge-rec verify {root}`, which does) and verify the folder.")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} is not an edge bundle: no {MANIFEST}. Point at the folder `edge-rec export` wrote.")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc}); re-export the bundle.") from exc
    problems = schema_errors(manifest)
    if problems:
        raise BundleError(f"{mpath} does not match the bundle schema:\n  " + "\n  ".join(problems))
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
    if manifest["golden"]["path"] not in listed:
        problems.append(f"{manifest['golden']['path']}: golden file is not among the listed files")
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel}: not listed in the manifest (unverified file)")
    if problems:
        raise BundleError(f"bundle {root} failed verification ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    return manifest


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


def extract_bundle(zip_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract a bundle zip into ``dest`` (which must not exist) after checking every member: absolute
    paths, ``..`` and symlinks are refused before anything is written; then the bundle is verified."""
    src, out = Path(zip_path), Path(dest)
    if not zipfile.is_zipfile(src):
        raise BundleError(f"{src} is not a zip file.")
    if out.exists():
        raise BundleError(f"{out} already exists; extract into a new folder.")
    with zipfile.ZipFile(src) as z:
        bad = [(i.filename, why) for i in z.infolist() if (why := _safe_member(i.filename, i))]
        if bad:
            raise BundleError(f"{src} has unsafe entries, nothing extracted: "
                              + "; ".join(f"{n!r} ({w})" for n, w in bad))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            z.extractall(tmp)
            verify_bundle(tmp)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def check_golden(root: str | os.PathLike[str], manifest: dict[str, Any] | None = None, *,
                 formats: list[str] | None = None) -> dict[str, Any]:
    """Run ``golden.json`` through every artifact whose engine is installed here and compare with the
    outputs recorded at export (to ``artifact_tolerance``) and with PyTorch fp32 (to the precision's
    tolerance). Returns ``{artifact path: {ok, max_abs_err_vs_recorded, max_abs_err_vs_reference} or
    {skipped: why}}``. On macOS this is where Core ML's numbers are checked."""
    import numpy as np

    from edge_rec.engines import open_manifest_group
    from edge_rec.errors import MissingDependencyError

    root = Path(root)
    manifest = manifest or verify_bundle(root)
    golden = json.loads((root / manifest["golden"]["path"]).read_text())
    tol_art = float(manifest["golden"].get("artifact_tolerance", 1e-5))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in manifest["artifacts"]:
        if formats is None or a["format"] in formats:
            groups.setdefault((a["format"], a["precision"]), []).append(a)
    result: dict[str, Any] = {}
    for (fmt, prec), arts in groups.items():
        key = f"{fmt}/{prec}"
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
