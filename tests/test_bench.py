"""edge-rec bench: one schema for every engine, ratios, regression checks, the device-farm runner, merge."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_rec.bench import RESULT_KEYS, check_against, merge
from edge_rec.cli import main


@pytest.fixture(scope="module")
def bench_dir(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--bundle", str(tiny_run / "bundle"), "--out", str(out), "--formats", "onnx,ort,tflite",
                 "--candidates", "16,300", "--threads", "1", "--repeats", "5",
                 "--teacher", str(tiny_run / "teacher"), "--report", str(tiny_run / "report.json")]) == 0
    return out


def test_bench_json_has_every_row_the_roofline_and_the_ratios(bench_dir):
    b = json.loads((bench_dir / "bench.json").read_text())
    assert b["schema_version"] == "1.0" and b["errors"] == []
    assert {"cpu", "cores", "python", "engines"} <= set(b["machine"]) and "onnxruntime" in b["machine"]["engines"]
    got = {(r["format"], r["precision"], r["candidates"]) for r in b["results"]}
    assert got == {(f, p, n) for f in ("onnx", "ort", "tflite") for p in ("fp32", "int8") for n in (16, 300)}
    for r in b["results"]:
        assert set(RESULT_KEYS) <= set(r)
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["peak_rss_mb"] > 10 and r["size_bytes"] > 1000
    rf = b["roofline"]
    assert rf["peak_gflops"] > 0.1 and 0 < rf["achieved_gflops"] < rf["peak_gflops"]
    rt = b["ratios"]
    assert rt["teacher_over_student_p50"] > 1 and rt["wrapper_overhead"] > -1
    assert rt["teacher_over_student_size"] > 5 and 0.9 < rt["export_ndcg_retained_min"] <= 1.1
    assert {q["model"] for q in b["quality"]} >= {"teacher", "student", "student onnx/int8"}
    for png in ("latency.png", "quality_size.png"):
        assert (bench_dir / png).stat().st_size > 5000
    assert "| tflite | int8 | litert | 300 |" in (bench_dir / "bench.md").read_text()


def test_check_names_the_regression_and_exits_1(bench_dir, tiny_run, tmp_path, capsys):
    b = json.loads((bench_dir / "bench.json").read_text())
    ref = {"ratios": {"teacher_over_student_size": {"min": 1e9}, "wrapper_overhead": {"max": 1e9}}}
    assert check_against(b, ref) == [f"teacher_over_student_size: {b['ratios']['teacher_over_student_size']:.4g} < min 1000000000.0"]
    assert check_against(b, {"ratios": {"teacher_over_student_size": {"min": 1.0}}}) == []
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    code = main(["bench", "--bundle", str(tiny_run / "bundle"), "--out", str(tmp_path / "o"), "--formats", "onnx",
                 "--quant", "fp32", "--candidates", "16", "--threads", "1", "--repeats", "3",
                 "--report", str(tiny_run / "report.json"), "--check", str(tmp_path / "ref.json")])
    assert code == 1
    assert "teacher_over_student_size" in capsys.readouterr().err


def test_bad_bench_arguments_fail_before_anything_runs(tiny_run, tmp_path, capsys):
    """Each would have crashed (exit 3), silently benchmarked nothing, or dropped a row without a word."""
    b, out = str(tiny_run / "bundle"), tmp_path / "o"
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text("{not json")
    cases = {"--candidates takes whole numbers >= 1": ["--candidates", "0"],
             "--candidates takes whole": ["--candidates", "16,abc"],
             "--threads takes whole numbers": ["--threads", "0"],
             "--repeats must be >= 1": ["--repeats", "0"],
             "--formats: the bundle has no 'foo'": ["--formats", "onnx,foo"],
             "--quant: the bundle has no 'int3'": ["--quant", "int3"],
             "holds no teacher": ["--teacher", str(tmp_path / "nowhere")],
             "--report .* not found": ["--report", str(tmp_path / "none.json")],
             "--check .* must hold a JSON object": ["--check", str(tmp_path / "list.json")],
             "--check .* not readable JSON": ["--check", str(tmp_path / "broken.json")],
             # the shipped reference, found from any folder; its teacher ratios need their inputs
             "teacher_over_student_p50 needs --teacher; teacher_over_student_size needs --report": ["--check"]}
    for msg, extra in cases.items():
        assert main(["bench", "--bundle", b, "--out", str(out), *extra]) == 2, msg
        assert re.search(msg, capsys.readouterr().err), msg
    assert not out.exists()                                     # nothing ran, nothing was written
    for f, msg in (("list.json", "is not a bench.json"), ("broken.json", "not readable JSON"), ("none.json", "not found")):
        assert main(["bench", "merge", str(tmp_path / f), "--out", str(tmp_path / "m")]) == 2
        assert msg in capsys.readouterr().err


def test_a_failed_row_is_reported_and_exits_3(tiny_run, tmp_path, capsys):
    """A teacher folder whose weights do not load: the engine rows still run and bench.json is written,
    but the failed ratio row is listed under 'errors' and the step exits 3, not 0."""
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    (teacher / "model.safetensors").write_bytes(b"not safetensors")
    code = main(["bench", "--bundle", str(tiny_run / "bundle"), "--out", str(tmp_path / "o"), "--formats", "onnx",
                 "--quant", "int8", "--candidates", "16", "--threads", "1", "--repeats", "3", "--teacher", str(teacher)])
    assert code == 3
    b = json.loads((tmp_path / "o" / "bench.json").read_text())
    assert len(b["results"]) == 1 and len(b["errors"]) == 1 and b["errors"][0].startswith("ratios: ")
    assert "row(s) failed" in capsys.readouterr().err


def test_reference_file_is_ratios_only():
    ref = json.loads((Path(__file__).parents[1] / "edge_rec" / "bench_reference.json").read_text())
    assert ref["ratios"] and all(set(b) <= {"min", "max"} for b in ref["ratios"].values())
    assert not any(k.endswith("_ms") for k in ref["ratios"])


@pytest.mark.slow
def test_packaged_runner_in_a_bare_venv_and_merge(tiny_run, tmp_path, capsys):
    """Unzipped into an empty folder with a venv holding only numpy and onnxruntime: it runs, writes a
    valid bench.json, and two such files merge into one comparison."""
    z = tmp_path / "runner.zip"
    assert main(["bench", "--bundle", str(tiny_run / "bundle"), "--package", str(z)]) == 0
    work = tmp_path / "device"
    with zipfile.ZipFile(z) as zf:
        zf.extractall(work)
    assert "benchmark_model --graph=bundle/models/" in (work / "native_commands.txt").read_text()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "numpy==2.3.5", "onnxruntime==1.32.0"]
    subprocess.run(pip, check=True, timeout=600)
    py = str(venv / "bin" / "python")
    listed = subprocess.run([py, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "torch" not in names and "jsonschema" not in names and "edge-rec" not in names
    bad = subprocess.run([py, "run_bench.py", "--candidates", "16,0"], cwd=work, capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert bad.returncode == 2 and "--candidates takes whole numbers >= 1" in bad.stderr
    outs = []
    for dev in ("phone-a", "phone-b"):
        out = work / f"bench-{dev}.json"
        subprocess.run([py, "run_bench.py", "--candidates", "16,64", "--threads", "1", "--repeats", "5",
                        "--device", dev, "--out", str(out)], cwd=work, check=True, timeout=600,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        b = json.loads(out.read_text())
        assert b["device"] == dev and b["errors"] == [] and b["schema_version"] == "1.0"
        assert {r["format"] for r in b["results"]} == {"onnx", "ort"} and len(b["results"]) == 8
        outs.append(str(out))
    assert main(["bench", "merge", *outs, "--out", str(tmp_path / "merged")]) == 0
    m = json.loads((tmp_path / "merged" / "merged.json").read_text())
    assert [d["device"] for d in m["devices"]] == ["phone-a", "phone-b"] and len(m["rows"]) == 16
    assert "| phone-b | ort | int8 |" in (tmp_path / "merged" / "merged.md").read_text()
    assert merge(outs)["rows"] == m["rows"]


def test_rerank_latency_benchmark_reports_every_row_and_its_ratios(tiny_run):
    """benchmarks/rerank_latency.py (issue #6's latency report) on the tiny run: every row timed, and the
    ratios and the "met" flags follow from the medians it wrote (behaviour, not wall-clock)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "rerank_latency.py"
    proc = subprocess.run([sys.executable, str(script), "--run", str(tiny_run), "--candidates", "40",
                           "--repeats", "30", "--windows", "5,10"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tiny_run / "rerank_latency.json").read_text())
    rows = ("rerank_swipe", "rerank_swipe_store", "rerank_swipe_policy_off", "rerank_swipe_window_5", "rerank_swipe_window_10",
            "rerank_new_page", "engine_call", "engine_call_after_a_write", "teacher_pytorch_fp32",
            "teacher_large_preset_pytorch_fp32", "record_event", "record_event_normal", "rerank_swipe_store_normal",
            "engine_call_after_a_normal_write")
    for row in rows:
        assert 0 < r[row]["p50_ms"] <= r[row]["p99_ms"], row
    assert r["record_event"]["n"] == r["record_event_normal"]["n"] == 30     # the timed loop's records only
    e = r["engine_call"]["p50_ms"]
    assert r["wrapper_overhead"] == pytest.approx((r["rerank_swipe"]["p50_ms"] - e) / e)
    ew = r["engine_call_after_a_write"]["p50_ms"]            # the app loop is timed against its own engine row
    assert r["wrapper_overhead_with_store"] == pytest.approx((r["rerank_swipe_store"]["p50_ms"] - ew) / ew)
    en = r["engine_call_after_a_normal_write"]["p50_ms"]
    assert r["wrapper_overhead_with_store_normal"] == pytest.approx((r["rerank_swipe_store_normal"]["p50_ms"] - en) / en)
    assert r["record_full_over_normal_p50"] == pytest.approx(r["record_event"]["p50_ms"] / r["record_event_normal"]["p50_ms"])
    assert r["wrapper_overhead_by_window"]["5"] == pytest.approx((r["rerank_swipe_window_5"]["p50_ms"] - e) / e)
    assert r["default_policy_window"] == 20 and r["candidates"] == 40
    assert r["met"]["teacher_slower_20x"] == (r["teacher_pytorch_fp32"]["p50_ms"] / r["rerank_swipe"]["p50_ms"] >= 20)
    assert "wrapper overhead by policy window (default 20): 5: " in proc.stdout
    bad = subprocess.run([sys.executable, str(script), "--run", str(tiny_run), "--windows", "0"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--windows must be positive" in bad.stderr


def test_local_learning_benchmark_measures_the_phone_side_alone(tiny_run, tmp_path):
    """benchmarks/local_learning.py: each viewer replayed in a process that never imports torch, every
    cost measured (observe, fit, one step) and the memory figures consistent with each other."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "local_learning.py"
    out = tmp_path / "ll.json"
    proc = subprocess.run([sys.executable, str(script), "--run", str(tiny_run), "--viewers", "2", "--repeats", "30",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["torch_imported_by_the_phone_side"] is False and len(r["viewers"]) == 2
    for v in r["viewers"]:
        assert v["pages"] > 0 and v["examples"] >= v["candidates"] > 0      # every page kept, plus off-page events
        assert v["observe_ms_p50"] > 0 and v["fit_ms"] > 0 and 0 < v["step_ms_p50"] <= v["step_ms_p99"]
        m = v["rss_mb"]
        assert 0 < m["process_start"] <= m["peak_before_fit"] <= m["peak_after_fit"]
        assert m["fit_added_peak"] == pytest.approx(m["peak_after_fit"] - m["peak_before_fit"])
        assert v["fit_traced_peak_kb"] > 0
    assert r["median_over_viewers"]["step_ms_p50"] == pytest.approx(float(np.median([v["step_ms_p50"] for v in r["viewers"]])))
    assert "torch imported: False" in proc.stdout


def test_adapter_choice_benchmark_compares_both_kinds_on_one_protocol(tiny_run, tmp_path):
    """benchmarks/adapter_choice.py: LoRA attached at rank r is the frozen model exactly, each kind's
    setting is the one validation picked, and the sizes are what the two parametrisations train."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "adapter_choice.py"
    out = tmp_path / "ac.json"
    proc = subprocess.run([sys.executable, str(script), "--run", str(tiny_run), "--viewers", "4", "--rank", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["viewers"] == 4 and r["lora_at_start_max_abs_diff"] == 0.0
    cfg = json.loads((tiny_run / "student" / "config.json").read_text())["config"]
    d, ffn = cfg["d_model"], cfg["ffn_dim"]
    inner = cfg["num_heads"] * (cfg.get("head_dim") or d // cfg["num_heads"])
    k = r["kinds"]
    assert k["output_adapter"]["trained_numbers"] == d + 2
    assert k["lora"]["trained_numbers"] == 2 * (2 * (d + inner) + (d + ffn) + (ffn + d))
    for kind, v in k.items():
        tried = [t for t in r["trials"] if t["kind"] == kind]
        assert v["picked"]["val.ndcg@10"] == max(t["val.ndcg@10"] for t in tried)
        assert 0 <= v["kept"] <= 4 and v["lift"] == pytest.approx(v["ndcg@10"] - r["frozen"]["ndcg@10"])
        assert v["lift_ci95"][0] <= v["lift"] <= v["lift_ci95"][1]
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, str(script), "--run", str(tiny_run), "--rank", "0"], check=True,
                       capture_output=True, timeout=300)
