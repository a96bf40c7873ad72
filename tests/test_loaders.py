"""Real-data loaders land in the same contract and run through inspect and the baselines."""

import json
import shutil

import numpy as np
import pytest

from edge_rec.distill.baselines import run_baselines
from edge_rec.distill.dataset import Dataset, inspect
from edge_rec.distill.loaders import convert, load_kuairand, load_mmssl
from edge_rec.errors import DataError

from conftest import FIXTURES

KUAI = FIXTURES / "kuairand_sample" / "kuairand_sample.csv"
MMSSL = FIXTURES / "mmssl_small"


def test_kuairand_sample_loads_into_the_contract(tmp_path):
    ds = load_kuairand(KUAI, n_candidates=16)
    out = ds.save(tmp_path / "kr")
    ds = Dataset.load(out)
    assert (ds.n_users, ds.n_items, len(ds.interactions["user"])) == (145, 29, 200)
    assert ds.modalities == {}
    it = ds.interactions
    assert ds.meta["zero_duration_rows"] == 18
    zero = it["duration_ms"] == 0
    assert (it["watch_ratio"][zero] == 0).all() and (it["long_view"][zero] == 0).all()
    nz = ~zero
    assert np.allclose(it["watch_ratio"][nz], it["watch_ms"][nz] / it["duration_ms"][nz])
    short = nz & (it["duration_ms"] <= 18_000)
    assert np.array_equal(it["long_view"][short].astype(bool), it["watch_ms"][short] >= it["duration_ms"][short])
    longv = it["duration_ms"] > 18_000
    assert np.array_equal(it["long_view"][longv].astype(bool), it["watch_ms"][longv] >= 18_000)
    assert it["click"].sum() == 32
    assert inspect(ds)["test_users"] > 0
    rows = run_baselines(ds)
    assert 0 <= rows["id_only"]["ndcg@10"] <= 1 and 0 <= rows["popularity"]["auc"] <= 1


def test_kuairand_bad_input(tmp_path):
    lines = KUAI.read_text().splitlines()
    hdr = lines[0].split(",")
    no_col = tmp_path / "no_col.csv"
    no_col.write_text("\n".join(",".join(c for i, c in enumerate(l.split(",")) if i != hdr.index("duration_ms"))
                                for l in lines))
    with pytest.raises(DataError, match="duration_ms"):
        load_kuairand(no_col)
    bad_val = tmp_path / "bad_val.csv"
    row = lines[5].split(",")
    row[hdr.index("play_time_ms")] = "abc"
    bad_val.write_text("\n".join(lines[:5] + [",".join(row)] + lines[6:]))
    with pytest.raises(DataError, match=r"row 6, column 'play_time_ms'"):
        load_kuairand(bad_val)


def test_mmssl_layout_loads_with_its_split():
    ds = load_mmssl(MMSSL, n_candidates=16)
    assert ds.modalities == {"visual": 16, "text": 8}          # image_feat -> visual
    assert not ds.present["text"][7] and ds.present["text"].sum() == 59
    cold = ds.items["cold"].astype(bool)
    assert cold[55:60].all()
    test_users = ds.requests["user"][ds.requests["split"] == 2]
    val_users = ds.requests["user"][ds.requests["split"] == 1]
    assert len(test_users) == 30 and len(val_users) == 29       # user 29 has no val items
    train = json.loads((MMSSL / "train.json").read_text())
    tr = ds.train_interaction_mask()
    assert tr.sum() == sum(len(v) for v in train.values())
    rows = run_baselines(ds)
    assert rows["id_only"]["cold.ndcg@10"] is not None


def test_mmssl_bad_input(tmp_path):
    bad = tmp_path / "mm"
    shutil.copytree(MMSSL, bad)
    feat = np.load(bad / "image_feat.npy")
    feat[3, 1] = np.nan
    np.save(bad / "image_feat.npy", feat)
    with pytest.raises(DataError, match=r"image_feat.npy: 1 row\(s\) hold NaN/inf \(first: item 3\)"):
        load_mmssl(bad)
    np.save(bad / "image_feat.npy", feat[:10])
    with pytest.raises(DataError, match="row i must be item i"):
        load_mmssl(bad)
    (bad / "val.json").unlink()
    with pytest.raises(DataError, match="lacks val.json"):
        load_mmssl(bad)


def test_unknown_format_lists_known_ones():
    with pytest.raises(DataError, match=r"known formats: \['kuairand', 'mmssl'\]"):
        convert("movielens", MMSSL)
