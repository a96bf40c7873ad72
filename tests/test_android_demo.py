"""The app prototype's Kotlin core (JUnit 5 on the JVM, the real ONNX Runtime and LiteRT libraries through JNA) and
its mobile-web prototype (headless Chromium, onnxruntime-web), both against the tiny pipeline's bundle
and the Python runtime's own rankings: one golden contract for Python, JVM and browser."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "android_demo"


def _load_rankings_script():
    """android_demo/python_rankings.py (a script users run by hand too), imported once."""
    spec = importlib.util.spec_from_file_location("python_rankings", DEMO / "python_rankings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.python_rankings


python_rankings = _load_rankings_script()


def _engine_libraries() -> tuple[str, str]:
    """The C libraries inside the onnxruntime and ai-edge-litert wheels (what an app links too)."""
    import ai_edge_litert
    import onnxruntime

    ort = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    litert = Path(ai_edge_litert.__file__).parent / "libLiteRt.so"
    if not ort or not litert.is_file():
        pytest.fail("the onnxruntime / LiteRT shared libraries were not found inside their wheels")
    return str(ort[0]), str(litert)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the JVM suite loads the Linux onnxruntime library")
def test_kotlin_core_passes_its_junit_suite_with_both_real_engines(bundle, tmp_path):
    expected = python_rankings(bundle, tmp_path / "expected.json")
    res = subprocess.run([str(DEMO / "run_jvm_tests.sh"), str(bundle), str(expected), *_engine_libraries()],
                         capture_output=True, text=True, timeout=900)
    tail = (res.stdout + res.stderr).strip().splitlines()
    summary = tail[-1] if tail else ""
    assert res.returncode == 0 and summary.endswith(" 0 failed"), "\n".join(tail[-40:])
    assert int(summary.split()[0]) >= 7


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="installs Debian's Chromium")
def test_web_prototype_in_a_real_headless_browser(bundle, tmp_path):
    expected = python_rankings(bundle, tmp_path / "expected.json")
    res = subprocess.run([str(DEMO / "web" / "run_browser_tests.sh"), str(bundle), str(expected), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=900)
    tail = (res.stdout + res.stderr).strip().splitlines()
    assert res.returncode == 0 and tail and tail[-1].endswith(" 0 failed"), "\n".join(tail[-40:])
    assert int(tail[-1].split()[0]) == 6
    assert (tmp_path / "out" / "web_prototype.png").stat().st_size > 10_000


def test_the_kotlin_core_stays_pure():
    """The core compiles into the Android app as is: no android.* and no JNA in src/main."""
    src = list((DEMO / "core" / "src" / "main" / "kotlin").rglob("*.kt"))
    assert len(src) >= 5
    for f in src:
        text = f.read_text()
        assert "import android." not in text and "com.sun.jna" not in text, f
