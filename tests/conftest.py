"""Shared fixtures: small seeded worlds, written to pytest's temporary folders (never the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_world():
    from edge_rec.distill.world import generate_world, world_config

    return generate_world(world_config("tiny", seed=0))


@pytest.fixture(scope="session")
def tiny_world_dir(tiny_world, tmp_path_factory) -> Path:
    return tiny_world.save(tmp_path_factory.mktemp("world") / "tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """`edge-rec pipeline --preset tiny --loo-repeats 2` once per session: world, baselines, teacher,
    student (two students per leave-one-out arm), bundle. ``EDGE_REC_TEST_RUN=DIR`` reuses a run made
    with that same command by this version of the code (tests only read it)."""
    from edge_rec.cli import main

    import os

    reuse = os.environ.get("EDGE_REC_TEST_RUN")
    if reuse:                      # a developer's shortcut: a tiny run made by this code version (never in CI)
        return Path(reuse)
    run = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(["pipeline", "--preset", "tiny", "--out", str(run), "--loo-repeats", "2"]) == 0
    return run


@pytest.fixture(scope="session")
def bundle(tiny_run: Path) -> Path:
    """The tiny pipeline's edge bundle (every format, fp32 and int8)."""
    return tiny_run / "bundle"
