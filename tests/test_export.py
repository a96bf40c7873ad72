"""Export, parity and the edge bundle, on the tiny pipeline's real student and real converters/runtimes."""

from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from edge_rec.bundle import check_golden, extract_bundle, load_schema, verify_bundle, write_zip
from edge_rec.cli import main
from edge_rec.engines import Bucketed, open_engine, pad_candidates
from edge_rec.errors import BundleError, ConfigError

FORMATS = ("onnx", "tflite", "coreml", "executorch")


@pytest.fixture(scope="module")
def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_onnx_and_tflite_files_are_compacted(tiny_run):
    """No shape annotations, node names or long tensor names left in the shipped .onnx files (the
    dynamic quantizer adds one of each per tensor: without compaction int8 is as big as fp32), and no
    long inner tensor names in the .tflite buckets."""
    import onnx

    models = tiny_run / "bundle" / "models"
    for prec in ("fp32", "int8"):
        m = onnx.load(str(models / f"student.{prec}.onnx"))
        io = {v.name for v in m.graph.input} | {v.name for v in m.graph.output}
        assert len(m.graph.value_info) == 0 and not any(n.name for n in m.graph.node), prec
        assert all(len(x) <= 3 for n in m.graph.node for x in list(n.input) + list(n.output) if x not in io), prec
    from ai_edge_litert import schema_py_generated as schema

    for f in sorted(models.glob("*.tflite")):
        g = schema.Model.GetRootAsModel(f.read_bytes(), 0).Subgraphs(0)
        io = {g.Inputs(i) for i in range(g.InputsLength())} | {g.Outputs(i) for i in range(g.OutputsLength())}
        inner = [g.Tensors(i).Name() for i in range(g.TensorsLength()) if i not in io]
        assert inner and all(len(n) <= 3 for n in inner), f.name
    rep = json.loads((tiny_run / "bundle" / "export_report.json").read_text())
    # size is weights + graph: on a student this small the graph (and static int8's quantize/dequantize
    # nodes) outweighs the weights, so the int8 weights are what int8 shrinks (tiny: 0.78 of fp32, the
    # narrow layers left fp32); the whole file stays far under the 64 KB budget of the default bundle
    row = rep["exports"]["onnx"]["int8"]
    assert row["weight_bytes"] + row["graph_bytes"] == row["size_bytes"] and row["weight_ratio_vs_fp32"] < 0.9
    assert row["size_bytes"] <= 64 * 1024
    assert rep["exports"]["tflite"]["int8"]["weight_ratio_vs_fp32"] < 0.5


def test_every_format_exports_and_passes_parity(tiny_run, manifest):
    rep = json.loads((tiny_run / "bundle" / "export_report.json").read_text())
    assert rep["gate_failures"] == [] and rep["ok"]
    # the lean single-request graph was traced, after it matched the training forward on real requests
    assert rep["traced"]["forward"] == "forward_request" and rep["traced"]["max_abs_diff_vs_forward"] <= 1e-5
    for fmt in FORMATS:
        for prec in ("fp32", "int8"):
            row = rep["exports"][fmt][prec]
            assert row["ok"], (fmt, prec, row["error"])
            assert row["size_bytes"] > 0
            if fmt == "coreml":                      # Linux: spec + MIL checks only, marked as such
                assert "macOS" in row["parity_skipped"] and row["compat"]["mil_ops"]
                continue
            bar = 0.9999 if prec == "fp32" else 0.99
            assert row["spearman"] >= bar and row["ndcg_retained"] >= 0.995, (fmt, prec)
            assert row["padding"]["ok"] and row["padding"]["variants"] >= 2
            # a candidate's outputs do not depend on its neighbours: alone, shuffled, beside another
            # request's candidates, stacked with masked copies (static int8 included)
            bi = row["batch_invariance"]
            assert bi["ok"] and bi["max_dev"] <= bi["tolerance"] <= 1e-2 and set(bi["by_variant"]) == \
                {"alone", "shuffled", "with_others", "stacked_masked"}, (fmt, prec, bi)
            assert bi["tolerance"] < bi["median_score_gap"] / 10 and 0 <= bi["neighbour_pairs_within_tolerance"] < 0.2
            if prec == "fp32":
                assert row["max_abs_err"] < 1e-4 and row["top10_overlap"] == 1.0
    assert rep["exports"]["tflite"]["fp32"]["compat"]["builtin_only"]
    assert rep["exports"]["executorch"]["fp32"]["compat"]["delegate_calls"] >= 1
    assert rep["exports"]["onnx"]["int8"]["ort"]["ok"]
    mob = rep["exports"]["onnx"]["fp32"]["compat"]["mobile_usability"]
    assert mob["returncode"] == 0 and mob["eps"]["NNAPI"]["as_is"]["nodes_total"] > 0
    assert "recommended" in mob["eps"]["NNAPI"]["fixed_shapes"] and mob["recommendation"]
    # the parity numbers travel in the manifest too
    assert manifest["parity"]["onnx"]["int8"]["passed"] is True
    # every file takes exactly the signature's inputs (a training-only mask once leaked into TFLite's)
    want = {t["name"] for t in manifest["signature"]["inputs"]}
    for art in manifest["artifacts"]:
        if art["format"] in ("onnx", "ort", "tflite"):
            eng = open_engine(art["format"], tiny_run / "bundle" / art["path"])
            assert set(eng.input_names) == want, (art["path"], sorted(eng.input_names))


def test_bundle_and_dataset_folders_get_normal_permissions(tiny_run):
    """Staged in owner-only temp folders, they are given what a normal folder gets (the umask), so a CI
    artifact upload or an app's asset step can read them."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for d in (tiny_run / "bundle", tiny_run / "data"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~mask, d
        f = next(p for p in d.rglob("*") if p.is_file())
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f


def test_manifest_is_valid_and_complete(bundle, manifest):
    jsonschema.Draft202012Validator(load_schema()).validate(manifest)
    assert verify_bundle(bundle)["schema_version"] == manifest["schema_version"]
    # a Core ML package holds what its own manifest lists, nothing else (no converter debug maps)
    packages = list((bundle / "models").glob("*.mlpackage"))
    assert packages
    for pkg in packages:
        listed = {"Manifest.json"} | {"Data/" + e["path"] for e in json.loads((pkg / "Manifest.json").read_text())["itemInfoEntries"].values()}
        for f in pkg.rglob("*"):
            if f.is_file():
                rel = f.relative_to(pkg).as_posix()
                assert rel in listed or any(rel.startswith(p + "/") for p in listed), (pkg.name, rel)
    kept = manifest["modalities"]["kept"]
    assert kept and set(kept).isdisjoint(manifest["modalities"]["pruned"])
    names = [t["name"] for t in manifest["signature"]["inputs"]]
    assert names[:2] == [f"cand_{kept[0]}", f"cand_mask_{kept[0]}"] and names[-1] == "context"
    assert {a["format"] for a in manifest["artifacts"]} == set(FORMATS) | {"ort"}
    tfl = [a["bucket"] for a in manifest["artifacts"] if a["format"] == "tflite" and a["precision"] == "fp32"]
    assert sorted(tfl) == manifest["signature"]["buckets"] == [16, 64, 256]
    assert manifest["features"]["cand_dense"]["duration"]["std"] > 0
    assert manifest["training"]["student_config"]["d_model"] > 0
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == on_disk


def test_one_changed_byte_fails_verification_naming_the_file(bundle, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    target = copy / "models" / "student.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"models/student\.int8\.onnx: sha256"):
        verify_bundle(copy)
    assert main(["verify", str(copy), "--no-golden"]) == 2
    assert "student.int8.onnx" in capsys.readouterr().err
    (copy / "models" / "student.int8.onnx").unlink()
    (copy / "models" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(BundleError) as e:
        verify_bundle(copy)
    assert "student.int8.onnx: missing" in str(e.value) and "extra.onnx: not listed" in str(e.value)


def test_zip_round_trip_and_escaping_paths_are_refused(bundle, tmp_path):
    z = write_zip(bundle, tmp_path / "b.zip")
    out = extract_bundle(z, tmp_path / "x")
    assert verify_bundle(out)
    assert main(["verify", str(z), "--no-golden"]) == 0
    for name in ("../evil.txt", "/abs.txt", "models/../../evil.txt"):
        bad = tmp_path / "bad.zip"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("manifest.json", "{}")
            zf.writestr(name, "boom")
        with pytest.raises(BundleError, match="unsafe"):
            extract_bundle(bad, tmp_path / "y")
        assert not (tmp_path / "y").exists() and not (tmp_path / "evil.txt").exists()
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("models/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(BundleError, match="symbolic link"):
        extract_bundle(link, tmp_path / "z")


def test_golden_outputs_match_every_engine_here(bundle, manifest):
    res = check_golden(bundle, manifest)
    for key, r in res.items():
        if key.startswith("coreml/"):
            assert "macOS" in r["skipped"]
            continue
        assert r["ok"], (key, r)
        assert r["max_abs_err_vs_recorded"] <= 1e-5
    # each artifact verified here carries its own tolerance: 1.5 x the error it showed on the golden
    # requests + 1e-4 (reproducible, since every file is batch-invariant); verify uses it
    by_art = manifest["golden"]["tolerance_by_artifact"]
    assert set(by_art) == {k for k in res if not k.startswith("coreml/")}
    report = json.loads((bundle / "export_report.json").read_text())
    for key, tol in by_art.items():
        err = report["golden"]["max_abs_err_vs_reference"][key]
        assert tol == pytest.approx(1.5 * err + 1e-4, rel=1e-2) and res[key]["tolerance_vs_reference"] == tol
    # tight enough that a swapped model file fails: test_a_swapped_model_file_fails_the_golden_check
    doctored = json.loads(json.dumps(manifest))
    doctored["golden"]["tolerance_by_artifact"]["onnx/int8"] = 1e-9
    assert not check_golden(bundle, doctored, formats=["onnx"])["onnx/int8"]["ok"]
    del doctored["golden"]["tolerance_by_artifact"]                 # a bundle from before: the precision's
    assert check_golden(bundle, doctored, formats=["onnx"])["onnx/int8"]["tolerance_vs_reference"] == \
        manifest["golden"]["tolerance"]["int8"]
    golden = json.loads((bundle / "golden.json").read_text())
    names = [c["name"] for c in golden["cases"]]
    assert any("first5" in n for n in names) and any("missing" in n for n in names)
    case = golden["cases"][1]
    assert case["inputs"]["cand_dense"]["shape"][0] == 5 == len(case["reference"]["score"]["data"])


def test_padding_and_chunking_do_not_change_real_scores(bundle, manifest):
    """Bucketed LiteRT (16/64/256, chunked beyond 256) against dynamic-N ONNX Runtime, same inputs."""
    golden = json.loads((bundle / "golden.json").read_text())
    x = {k: np.asarray(v["data"], np.float32).reshape(v["shape"]) for k, v in golden["cases"][0]["inputs"].items()}
    rng = np.random.default_rng(0)
    big = {k: (v[rng.integers(0, len(v), 300)] if k.startswith("cand_") else v) for k, v in x.items()}
    tfl = Bucketed({a["bucket"]: open_engine("tflite", bundle / a["path"]) for a in manifest["artifacts"]
                    if a["format"] == "tflite" and a["precision"] == "fp32"})
    onnx = open_engine("onnx", bundle / "models" / "student.fp32.onnx")
    want = onnx.run(big)["score"]
    assert np.abs(tfl.run(big)["score"] - want).max() <= 1e-5                 # 300 = 256 + a padded 64
    perm = rng.permutation(300)
    shuffled = {k: (v[perm] if k.startswith("cand_") else v) for k, v in big.items()}
    assert np.abs(tfl.run(shuffled)["score"] - want[perm]).max() <= 1e-5
    three = {k: (v[:3] if k.startswith("cand_") else v) for k, v in big.items()}
    assert np.abs(tfl.run(three)["score"] - want[:3]).max() <= 1e-5
    assert pad_candidates(three, 16)["cand_dense"].shape[0] == 16


def test_impossible_gate_exits_1_listing_every_failure(tiny_run, tmp_path, capsys):
    code = main(["export", "--student", str(tiny_run / "student"), "--data", str(tiny_run / "data"),
                 "--out", str(tmp_path / "b"), "--formats", "onnx", "--quant", "fp32,int8",
                 "--min-ndcg-retained", "1.5", "--max-size-kb", "1", "--parity-requests", "30"])
    err = capsys.readouterr().err
    assert code == 1
    assert "4 export gate(s) failed" in err
    for tag in ("onnx/fp32: NDCG@10 retained", "onnx/int8: NDCG@10 retained", "onnx/fp32: size", "onnx/int8: size"):
        assert tag in err
    # the bundle and its report are still written, whole, for the CI log
    assert verify_bundle(tmp_path / "b") and (tmp_path / "b.zip").is_file()


def test_a_bundle_its_own_verify_would_reject_is_a_gate_failure(tiny_run, tmp_path, capsys, monkeypatch):
    """Export checks the golden requests against each artifact's tolerance before it reports success:
    with no margin and a floor no engine meets, the fp32 file fails that gate (exit 1, named)."""
    import edge_rec.export.stage as stage

    monkeypatch.setattr(stage, "GOLDEN_MARGIN", 0.0)
    monkeypatch.setattr(stage, "GOLDEN_SLACK", 1e-12)
    monkeypatch.setattr(stage, "GOLDEN_TOL", {"fp32": 1e-12, "fp16": 1e-12, "int8": 1e-12})
    code = main(["export", "--student", str(tiny_run / "student"), "--data", str(tiny_run / "data"),
                 "--out", str(tmp_path / "b"), "--formats", "onnx", "--quant", "fp32", "--parity-requests", "30"])
    err = capsys.readouterr().err
    assert code == 1 and "onnx/fp32: a golden request's score is" in err and "would reject" in err
    rep = json.loads((tmp_path / "b" / "export_report.json").read_text())
    assert rep["golden"]["max_abs_err_vs_reference"]["onnx/fp32"] > rep["golden"]["tolerance"]["onnx/fp32"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["parity"]["onnx"]["fp32"]["passed"] is False            # the runtime will not pick it


def test_unknown_format_lists_the_known_ones(tiny_run, tmp_path, capsys):
    code = main(["export", "--student", str(tiny_run / "student"), "--data", str(tiny_run / "data"),
                 "--out", str(tmp_path / "b"), "--formats", "onnx,tensorrt"])
    assert code == 2
    err = capsys.readouterr().err
    assert "tensorrt" in err and "onnx, tflite, coreml, executorch" in err
    assert not (tmp_path / "b").exists()


def test_a_failing_format_is_reported_with_its_op_and_the_others_still_export(tiny_run, tmp_path):
    """A student variant with an op Core ML cannot convert (bucketize): Core ML fails naming it, ONNX
    exports and verifies, and the bundle holds only what converted."""
    from edge_rec.distill.distill_stage import load_student
    from edge_rec.export.stage import export_bundle

    student, _ = load_student(tiny_run / "student")

    class Bucketized(type(student)):
        def forward(self, **inputs):
            out = super().forward(**inputs)
            tier = torch.bucketize(inputs["cand_dense"][..., 0], torch.tensor([-1.0, 0.0, 1.0])).float()
            out["score"] = out["score"] + 1e-3 * tier
            return out

    variant = Bucketized(student.config)
    variant.load_state_dict(student.state_dict())
    rep = export_bundle(tiny_run / "student", tiny_run / "data", tmp_path / "b", formats=["coreml", "onnx"],
                        precisions=["fp32"], parity_requests=20, progress=False, model=variant)
    cm = rep["exports"]["coreml"]["fp32"]
    assert not cm["ok"] and "bucketize" in cm["error"] and "coreml/fp32" in cm["error"]
    assert rep["exports"]["onnx"]["fp32"]["ok"] and rep["exports"]["onnx"]["fp32"]["spearman"] > 0.9999
    assert rep["gate_failures"] == [cm["error"]]
    # its forward differs from the lean single-request graph, so the plain forward was traced
    assert rep["traced"]["forward"] == "forward" and rep["traced"]["max_abs_diff_vs_forward"] > 1e-4
    m = verify_bundle(tmp_path / "b")
    assert {a["format"] for a in m["artifacts"]} == {"onnx", "ort"}
    assert not list((tmp_path / "b" / "models").glob("*.mlpackage"))


def test_bad_export_arguments_are_typed_errors(tiny_run, tmp_path):
    from edge_rec.export.stage import export_bundle

    with pytest.raises(ConfigError, match="precision"):
        export_bundle(tiny_run / "student", tiny_run / "data", tmp_path / "b", precisions=["int4"], progress=False)
    with pytest.raises(ConfigError, match="int8 mode"):
        export_bundle(tiny_run / "student", tiny_run / "data", tmp_path / "b", int8_mode="magic", progress=False)
    assert not (tmp_path / "b").exists()


def test_dynamic_int8_fails_batch_invariance_and_auto_skips_it(tiny_run, tmp_path):
    """Dynamic int8 (one activation scale per call) stays available and the gate tells the truth about
    it: a candidate's score moves with its neighbours, the file fails its gate, `auto` does not pick it."""
    from edge_rec.export.stage import export_bundle
    from edge_rec.runtime import Reranker

    rep = export_bundle(tiny_run / "student", tiny_run / "data", tmp_path / "b", formats=["onnx"],
                        precisions=["fp16", "int8"], int8_mode="dynamic", parity_requests=30, progress=False)
    fp16, dyn = rep["exports"]["onnx"]["fp16"], rep["exports"]["onnx"]["int8"]
    assert fp16["ok"] and fp16["spearman"] >= 0.99 and fp16["ort"]["ok"] and fp16["batch_invariance"]["ok"]
    assert dyn["ok"] and dyn["spearman"] >= 0.99 and dyn["compat"]["int8_mode"] == "dynamic"
    assert not dyn["batch_invariance"]["ok"] and dyn["batch_invariance"]["max_dev"] > 1e-2
    assert any("onnx/int8: a candidate's outputs change with the other candidates" in f for f in rep["gate_failures"])
    rr = Reranker.open(tmp_path / "b")
    assert (rr.format, rr.precision) == ("ort", "fp16")
    # the earlier name of the static mode still works
    rep = export_bundle(tiny_run / "student", tiny_run / "data", tmp_path / "c", formats=["onnx"],
                        precisions=["int8"], int8_mode="nncf", parity_requests=30, progress=False)
    assert rep["int8_mode"] == "static" and rep["exports"]["onnx"]["int8"]["batch_invariance"]["ok"]


def test_a_swapped_model_file_fails_the_golden_check(tiny_run, tmp_path):
    """A model file from other weights, its checksum written into the manifest as an attacker or a broken
    build step would: the checksums pass, the golden check must not (against PyTorch and against the
    outputs recorded for the file)."""
    import torch

    from edge_rec.bundle import MANIFEST, sha256_file
    from edge_rec.distill.distill_stage import load_student
    from edge_rec.export.stage import export_bundle

    a, b = tmp_path / "a", tmp_path / "b"
    export_bundle(tiny_run / "student", tiny_run / "data", a, formats=["onnx"], precisions=["int8"],
                  parity_requests=30, progress=False)
    other, _ = load_student(tiny_run / "student")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():                     # another training run's weights: same shapes, other values
        for p in other.parameters():
            p.add_(0.3 * p.std().nan_to_num(0.1) * torch.randn(p.shape, generator=gen))
    export_bundle(tiny_run / "student", tiny_run / "data", b, formats=["onnx"], precisions=["int8"],
                  parity_requests=30, progress=False, model=other)
    target = "models/student.int8.onnx"
    (a / target).write_bytes((b / target).read_bytes())
    man = json.loads((a / MANIFEST).read_text())
    entry = next(f for f in man["files"] if f["path"] == target)
    entry["sha256"], entry["size"] = sha256_file(a / target), (a / target).stat().st_size
    (a / MANIFEST).write_text(json.dumps(man))
    res = check_golden(a, formats=["onnx"])["onnx/int8"]
    assert not res["ok"]
    assert res["max_abs_err_vs_reference"] > res["tolerance_vs_reference"]
    assert res["max_abs_err_vs_recorded"] > res["tolerance_vs_recorded"]
    assert main(["verify", str(a), "--formats", "onnx"]) == 1


def test_example_ci_workflow_uses_real_commands():
    """The example workflow's edge-rec command lines parse with today's CLI (no stale flags)."""
    import shlex

    import yaml

    from edge_rec.cli import build_parser

    wf = yaml.safe_load((Path(__file__).parents[1] / "examples" / "ci" / "export-gate.yml").read_text())
    runs = [s["run"] for s in wf["jobs"]["export"]["steps"] if "run" in s]
    cmds = []
    for block in runs:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith(".venv/bin/edge-rec"):
                cmds.append(shlex.split(line.replace("$STUDENT", "s").replace("$DATA", "d"))[1:])
    assert [c[0] for c in cmds] == ["pipeline", "export", "verify"]
    for c in cmds:
        build_parser().parse_args(c)


def test_unusable_export_arguments_fail_before_any_work(tiny_run, tmp_path, capsys):
    """A bar no result can be compared with (NaN, a negative size, a Spearman of 5), no format, a
    non-numeric bucket or a parity sample below 1 is exit 2 before anything converts; an impossible but
    meaningful bar stays a gate (exit 1, above)."""
    base = ["export", "--student", str(tiny_run / "student"), "--data", str(tiny_run / "data"), "--out", str(tmp_path / "b")]
    cases = {"--max-size-kb must be a finite size": ["--max-size-kb", "-1"],
             "--min-ndcg-retained must be a finite ratio": ["--min-ndcg-retained", "nan"],
             r"--min-spearman must be a correlation in \[-1, 1\]": ["--min-spearman", "5"],
             "no format to export": ["--formats", ","],
             "--buckets takes whole numbers": ["--buckets", "16,abc"],
             "parity_requests must be a whole number >= 1": ["--parity-requests", "-5"]}
    for msg, extra in cases.items():
        assert main(base + extra) == 2, msg
        assert re.search(msg, capsys.readouterr().err), msg
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.zip").exists()
