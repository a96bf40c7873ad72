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
