"""The dataset contract: round trip, validation errors, and no half-written folders."""

import json
import os

import numpy as np
import pytest

from edge_rec.distill.dataset import SPLITS, Dataset
from edge_rec.distill.splits import finalize
from edge_rec.errors import DataError


def _copy(ds: Dataset) -> Dataset:
    return Dataset(meta=dict(ds.meta), users={k: v.copy() for k, v in ds.users.items()},
                   items={k: v.copy() for k, v in ds.items.items()},
                   interactions={k: v.copy() for k, v in ds.interactions.items()},
                   requests={k: v.copy() for k, v in ds.requests.items()},
                   embeddings={k: v.copy() for k, v in ds.embeddings.items()},
                   present={k: v.copy() for k, v in ds.present.items()})


def test_round_trip(tiny_world, tiny_world_dir):
    ds = Dataset.load(tiny_world_dir)
    assert ds.modalities == tiny_world.modalities
    assert ds.embeddings["visual"].dtype == np.float16
    for k in tiny_world.requests:
        assert np.array_equal(ds.requests[k], tiny_world.requests[k])
    meta = json.loads((tiny_world_dir / "meta.json").read_text())
    assert meta["users"] == tiny_world.n_users and meta["cold_items"] > 0
    assert ds.planted is not None and "item_topic" in ds.planted


def test_requests_are_temporal_per_user(tiny_world):
    rq = tiny_world.requests
    for u in range(tiny_world.n_users):
        r = np.flatnonzero(rq["user"] == u)
        order = r[np.argsort(rq["ts"][r])]
        assert rq["split"][order[-1]] == SPLITS["test"]
        assert rq["split"][order[-2]] == SPLITS["val"]
        assert (rq["split"][order[:-2]] == SPLITS["train"]).all()
    # history ends where the request starts: every history row is earlier than the request
    off = tiny_world.user_offsets()
    it = tiny_world.interactions
    for r in range(0, len(rq["user"]), 97):
        hist = slice(off[rq["user"][r]], rq["hist_end"][r])
        assert (it["ts"][hist] < rq["ts"][r]).all()
    # logged impressions keep their real labels; sampled negatives are unlabelled
    assert (rq["click"][rq["logged"] == 0] == 0).all()
    assert rq["logged"].sum() == len(it["user"])


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.items.update(item_id=np.zeros_like(d.items["item_id"])), "duplicate ids"),
    (lambda d: d.interactions.pop("watch_ms"), "missing column 'watch_ms'"),
    (lambda d: d.interactions.update(ts=d.interactions["ts"].astype(np.int64)), "interactions.ts: dtype"),
    (lambda d: d.embeddings["visual"].__setitem__((3, 0), np.nan), "embeddings.visual: 1 item row"),
    (lambda d: d.requests.update(split=np.zeros_like(d.requests["split"])), "no test requests"),
])
def test_contract_violations_are_clear_errors_and_write_nothing(tiny_world, tmp_path, breakage, message):
    bad = _copy(tiny_world)
    breakage(bad)
    with pytest.raises(DataError, match=message):
        bad.save(tmp_path / "out")
    assert os.listdir(tmp_path) == []  # no half-written dataset, no temp folder left behind


def test_failed_overwrite_keeps_the_old_dataset(tiny_world, tmp_path):
    out = tiny_world.save(tmp_path / "ds")
    with pytest.raises(DataError, match="already exists"):
        tiny_world.save(out)
    bad = _copy(tiny_world)
    bad.interactions["ts"][:] = np.nan
    with pytest.raises(DataError, match="NaN"):
        bad.save(out, overwrite=True)
    assert Dataset.load(out).n_items == tiny_world.n_items
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_load_errors_say_what_is_missing(tmp_path, tiny_world_dir):
    with pytest.raises(DataError, match="does not exist"):
        Dataset.load(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text(json.dumps({"schema": "edge-rec-dataset/1"}))
    with pytest.raises(DataError, match="missing"):
        Dataset.load(broken)


def test_no_test_users_is_refused():
    # every user has a single request -> nobody can be tested
    n = 6
    inter = {"user": np.arange(n), "item": np.arange(n) % 3, "req": np.arange(n), "ts": np.arange(n, dtype=float),
             "watch_ms": np.ones(n), "duration_ms": np.ones(n), **{k: np.zeros(n, np.int8) for k in
             ("click", "finish", "like", "share", "skip", "comment")}}
    with pytest.raises(DataError, match="no test requests"):
        finalize(meta={}, users={"user_id": np.arange(n)},
                 items={"item_id": np.arange(3), "creator_id": np.zeros(3, np.int64),
                        "duration_s": np.ones(3), "upload_ts": np.zeros(3)},
                 interactions=inter, embeddings={}, present={}, n_candidates=3, seed=0)
