"""The documentation a user reads: the site builds in strict mode (broken links and stale API
references fail), every Python snippet of the README and docs/ runs, every `edge-rec` command they
show parses with today's CLI, and the README's tour runs against the tiny pipeline's outputs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edge_rec.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(lang: str) -> list[tuple[str, str]]:
    """(page, code) of every fenced ``lang`` block in the README and docs/."""
    out = []
    for page in PAGES:
        for m in re.finditer(rf"^```{lang}\n(.*?)^```", page.read_text(), flags=re.S | re.M):
            out.append((page.name, m.group(1)))
    return out


def commands(code: str) -> list[str]:
    """Shell lines of a block, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    lines = [re.sub(r"\s+#.*$", "", ln).strip() for ln in joined.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_docs_site_builds_in_strict_mode(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("Reranker", "UserState", "PostRankPolicy", "ndcg_at_k", "EdgeRecError"):
        assert name in api, name                  # rendered from the docstrings, not hand-written


def test_every_edge_rec_command_in_the_docs_parses():
    """Each `edge-rec ...` line the README and docs show is a valid command line today (optional
    parts in [brackets] dropped, the first of a|b|c alternatives taken)."""
    parser = build_parser()
    seen = 0
    for page, code in blocks("bash"):
        for line in commands(code):
            if not line.startswith("edge-rec "):
                continue
            line = re.sub(r"\[[^\]]*\]", "", line)
            line = re.sub(r"(\S+?)\|\S+", r"\1", line)
            argv = shlex.split(line)[1:]
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"{page}: `{line}` does not parse (exit {exc.code})")
            seen += 1
    assert seen >= 15


def test_python_snippets_run_without_torch(tiny_run, tmp_path):
    """Every ```python block, with `runs/default/` pointing at the tiny pipeline's run, in a fresh
    interpreter in an empty folder; the phone-side API never imports torch."""
    snippets = blocks("python")
    assert len(snippets) >= 2
    for page, code in snippets:
        code = code.replace("runs/default/", f"{tiny_run}/")
        check = "\nimport sys\nassert 'torch' not in sys.modules, 'the runtime imported torch'\n"
        work = tmp_path / page.replace(".md", "")
        work.mkdir()
        proc = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, cwd=work,
                              timeout=300)
        assert proc.returncode == 0, f"{page}:\n{proc.stderr[-3000:]}"
        assert (work / "viewer.db").is_file()            # the store is where the snippet said


def test_the_readme_tour_runs(tiny_run, tmp_path):
    """The README's tour after `make demo PRESET=tiny`: rerank, verify and evaluate, through the
    installed console script, on the tiny pipeline's run (outputs go to a temporary folder)."""
    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## A five-minute tour"):]
    code = re.search(r"```bash\n(.*?)```", tour, flags=re.S).group(1)
    exe = os.path.join(os.path.dirname(sys.executable), "edge-rec")
    ran = []
    for line in commands(code):
        if not line.startswith("edge-rec "):
            continue
        argv = shlex.split(line.replace("runs/tiny/", f"{tiny_run}/"))[1:]
        if "--out" in argv:
            i = argv.index("--out") + 1
            argv[i] = str(tmp_path / Path(argv[i]).name)
        proc = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, f"`{line}`:\n{proc.stderr[-3000:]}"
        ran.append(argv[0])
        if argv[0] == "verify":      # a progress line per engine; ExecuTorch (which imports torch) last, said so
            checked = [ln.split(": ", 1)[1] for ln in proc.stderr.splitlines() if ln.startswith("golden outputs: ")]
            assert len(checked) >= 6 and checked[-1].startswith("executorch") and "imports torch" not in checked[0]
            assert "import torch" in checked[-1]
    assert ran == ["rerank", "verify", "evaluate"]
    assert (tmp_path / "eval.json").is_file()


def test_help_states_defaults(capsys):
    """`-h` says what an option does when it is not given."""
    from edge_rec.cli import main

    assert main(["bench", "-h"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 16,64,200,1000)" in out and "(default: 200)" in out and "run (default)" in out
