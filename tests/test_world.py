"""The synthetic world plants what it says it plants."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from edge_rec.distill.dataset import SPLITS
from edge_rec.distill.world import NOISE_MODALITY, generate_world, world_config
from edge_rec.errors import ConfigError


def _item_probe_auc(ds, modality: str) -> float:
    """Cross-validated logistic probe: item embedding -> 'item engages above the median'.

    Folds are over items, so a probe cannot win by recognising an item it saw in training.
    """
    it = ds.interactions
    n = np.bincount(it["item"], minlength=ds.n_items)
    clicks = np.bincount(it["item"], weights=it["click"], minlength=ds.n_items)
    ok = n >= 3
    rate = clicks[ok] / n[ok]
    y = (rate > np.median(rate)).astype(int)
    x = ds.embeddings[modality][ok].astype(np.float32)
    p = cross_val_predict(LogisticRegression(max_iter=300, C=0.1), x, y, cv=5, method="predict_proba")[:, 1]
    return roc_auc_score(y, p)


@pytest.fixture(scope="module")
def probe_worlds():
    return [generate_world(world_config("tiny", seed=s, n_items=3000, n_users=600)) for s in range(3)]


def test_noise_modality_is_no_better_than_chance_and_visual_is_predictive(probe_worlds):
    noise = [_item_probe_auc(ds, NOISE_MODALITY) for ds in probe_worlds]
    visual = [_item_probe_auc(ds, "visual") for ds in probe_worlds]
    assert abs(np.mean(noise) - 0.5) <= 0.02, noise
    assert all(abs(a - 0.5) <= 0.05 for a in noise), noise   # one seed: ~1800 items, sd ~0.014
    assert min(visual) > 0.62, visual
    assert min(visual) > max(noise) + 0.1


def test_audio_pays_only_through_visual(probe_worlds):
    # Alone, the soundtrack says nothing about engagement; the planted energetic x beat match does.
    ds = probe_worlds[0]
    audio = _item_probe_auc(ds, "audio")
    assert abs(audio - 0.5) <= 0.05, audio
    it = ds.interactions
    match = (ds.planted["item_energetic"] * ds.planted["item_beat"])[it["item"]]
    assert roc_auc_score(it["click"], match) > 0.6
    assert abs(roc_auc_score(it["click"], ds.planted["item_beat"][it["item"]]) - 0.5) < 0.03


def test_planted_truth_is_recorded(tiny_world):
    planted = tiny_world.meta["planted"]
    assert planted["noise_modality"] == NOISE_MODALITY
    assert set(tiny_world.modalities) == {"visual", "audio", "text", NOISE_MODALITY}
    assert "noise" not in NOISE_MODALITY and "random" not in NOISE_MODALITY
    assert len(planted["drift_events"]) > 0
    assert {"user", "ts", "from_topic", "to_topic"} <= set(planted["drift_events"][0])


def test_cold_start_items_never_appear_in_training(tiny_world):
    ds = tiny_world
    cold_planted = ds.items["upload_ts"] > ds.meta["train_end"]
    assert cold_planted.sum() > 0
    train = ds.requests["split"] == SPLITS["train"]
    train_cands = ds.requests["cand"][train]
    assert not cold_planted[train_cands[train_cands >= 0]].any()
    assert not cold_planted[ds.interactions["item"][ds.train_interaction_mask()]].any()
    assert np.array_equal(ds.items["cold"].astype(bool), cold_planted)
    test = ds.requests["split"] == SPLITS["test"]
    c = ds.requests["cand"][test]
    pos = (ds.requests["click"][test] > 0) & (c >= 0)
    assert cold_planted[c[pos]].any(), "cold items must be engaged with in the test period"


def test_drift_events_change_what_users_engage_with(tiny_world):
    ds, planted = tiny_world, tiny_world.planted
    it = ds.interactions
    topic = planted["item_topic"][it["item"]]
    drift_ts = planted["user_drift_ts"][it["user"]]
    drifted = np.isfinite(drift_ts)
    after = it["ts"] >= drift_ts
    new_t = topic == planted["user_new_topic"][it["user"]]
    old_t = topic == planted["user_main_topic"][it["user"]]
    rate = lambda m: it["click"][m].mean()
    assert rate(drifted & new_t & after) > rate(drifted & new_t & ~after) + 0.15
    assert rate(drifted & old_t & ~after) > rate(drifted & old_t & after) + 0.15


def test_feedback_shapes(tiny_world):
    it, items = tiny_world.interactions, tiny_world.items
    ratio = it["watch_ms"] / it["duration_ms"]
    long = items["duration_s"][it["item"]] > 40
    short = items["duration_s"][it["item"]] < 12
    assert ratio[short].mean() > ratio[long].mean() + 0.05          # duration bias
    assert it["watch_ms"][long].mean() > it["watch_ms"][short].mean()  # ...while raw watch time favours long videos
    assert np.array_equal(it["finish"].astype(bool), it["watch_ms"] >= it["duration_ms"])
    assert not (it["click"].astype(bool) & it["skip"].astype(bool)).any()
    assert not (it["like"].astype(bool) & ~it["click"].astype(bool)).any()
    for name in ("like", "share", "finish", "skip"):
        assert 0 < it[name].mean() < 0.6, name
    assert (it["comment"] < 0).any()
    counts = np.sort(np.bincount(it["item"], minlength=tiny_world.n_items))[::-1]
    assert counts[: len(counts) // 10].sum() > 0.3 * counts.sum()   # long tail
    for m, p in tiny_world.present.items():
        assert 0.5 < p.mean() < 1.0, m                                  # some items lack each modality
        assert (tiny_world.embeddings[m][~p] == 0).all()


def test_world_is_deterministic_per_seed():
    a = generate_world(world_config("tiny", seed=3, n_users=50, n_items=120))
    b = generate_world(world_config("tiny", seed=3, n_users=50, n_items=120))
    c = generate_world(world_config("tiny", seed=4, n_users=50, n_items=120))
    assert np.array_equal(a.requests["cand"], b.requests["cand"])
    assert np.array_equal(a.embeddings["visual"], b.embeddings["visual"])
    assert not np.array_equal(a.embeddings["visual"], c.embeddings["visual"])


def test_bad_world_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown preset"):
        world_config("huge")
    with pytest.raises(ConfigError, match="n_candidates"):
        world_config("tiny", n_candidates=3)
