"""The papers' protocol (full catalogue, earlier items masked, ties pessimistic) and leak-free features
for logs without timestamps, on the MMSSL-layout fixture and the tiny pipeline's models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_rec.cli import main
from edge_rec.distill.dataset import SPLITS
from edge_rec.distill.features import FeatureBuilder
from edge_rec.distill.loaders import load_mmssl
from edge_rec.distill.protocol import evaluate, full_catalogue_report, heldout_rows, metrics_from_ranks, ranks

FIXTURE = Path(__file__).parent / "fixtures" / "mmssl_small"


@pytest.fixture(scope="module")
def mm():
    return load_mmssl(FIXTURE)


def test_ranks_match_a_hand_computed_case(mm):
    """Score = item id: the rank of a positive is the number of ranked items with a larger id, where
    ranked = every item except the user's earlier ones and the request's other positives."""
    ds = mm
    rows = heldout_rows(ds, "test")
    rk, tied = ranks(ds, rows, lambda req: np.broadcast_to(np.arange(ds.n_items, dtype=float), (len(req), ds.n_items)))
    offsets, it, rq = ds.user_offsets(), ds.interactions, ds.requests
    for i in range(len(rows.req)):
        r, p = rows.req[i], rows.item[i]
        earlier = set(it["item"][offsets[rq["user"][r]]:rq["hist_end"][r]].tolist())
        others = set(rows.item[rows.req == r].tolist()) - {p}
        want = sum(1 for j in range(ds.n_items) if j > p and j not in earlier and j not in others)
        assert rk[i] == want, (i, rk[i], want)
    assert not tied.any()
    # the reference definition, one positive per row: NDCG@K = 1 / log2(rank + 2) inside the top K
    m = metrics_from_ranks(rows, rk, tied, n_boot=0)
    per_row = np.where(rk < 20, 1 / np.log2(rk + 2), 0.0)
    u, inv = np.unique(rows.req, return_inverse=True)
    assert m["ndcg@20"] == pytest.approx((np.bincount(inv, per_row) / np.bincount(inv)).mean())
    assert m["recall@20"] == pytest.approx((np.bincount(inv, rk < 20) / np.bincount(inv)).mean())
    # validation and test items are both held out from the training ranking; a user's val item is
    # masked when ranking their test item (it sits in the history before the test request)
    vrow = heldout_rows(ds, "val")
    u0 = rq["user"][rows.req[0]]
    val_items = vrow.item[rq["user"][vrow.req] == u0]
    assert set(val_items.tolist()) <= set(it["item"][offsets[u0]:rq["hist_end"][rows.req[0]]].tolist())


def test_ties_count_against_the_positive(mm):
    rows = heldout_rows(mm, "test")
    rk, tied = ranks(mm, rows, lambda req: np.zeros((len(req), mm.n_items)))
    assert tied.all() and (rk > 20).all()                   # a constant scorer finds nothing
    assert evaluate(mm, rows, lambda req: np.zeros((len(req), mm.n_items)), n_boot=0)["recall@50"] == 0.0


def _rewrite(src: Path, dest: Path, change) -> Path:
    shutil.copytree(src, dest)
    for name in ("val", "test"):
        d = json.loads((dest / f"{name}.json").read_text())
        (dest / f"{name}.json").write_text(json.dumps(change(name, d)))
    return dest


def test_no_training_input_depends_on_held_out_rows(tmp_path):
    """Permute and replace validation/test rows: every training request's candidates, labels and model
    inputs stay the same (popularity, negatives, upload times and clocks come from training only)."""
    rng = np.random.default_rng(0)

    def change(name, d):
        users = sorted(d)
        items = [d[u] for u in users]
        perm = rng.permutation(len(users))
        out = {u: items[perm[k]] for k, u in enumerate(users)}           # held-out rows move between users
        out[users[0]] = [int(i) for i in rng.choice(55, size=3, replace=False)]   # and change
        return out

    a = load_mmssl(FIXTURE)
    b = load_mmssl(_rewrite(FIXTURE, tmp_path / "b", change))
    assert a.meta["has_timestamps"] is False and "uniform" in a.meta["negatives"]
    ta, tb = a.split_index("train"), b.split_index("train")
    assert np.array_equal(ta, tb)
    for k in ("cand", "click", "user"):
        assert np.array_equal(a.requests[k][ta], b.requests[k][tb]), k
    # hist_end indexes the whole interaction table; within each user it is the same
    rel = [d.requests["hist_end"][t] - d.user_offsets()[d.requests["user"][t]] for d, t in ((a, ta), (b, tb))]
    assert np.array_equal(*rel)
    fa = FeatureBuilder.from_dataset(a, hist_len=8).build(a, ta)
    fb = FeatureBuilder.from_dataset(b, hist_len=8).build(b, tb)
    for k in fa:
        assert np.array_equal(fa[k], fb[k]), k
    # popularity is the training split's, a training request's own clicks taken out
    fba = FeatureBuilder.from_dataset(a, hist_len=8)
    train_clicks = np.bincount(a.interactions["item"][a.train_interaction_mask()], minlength=a.n_items)
    assert np.array_equal(fba.static_counts, train_clicks)
    r = ta[0]
    c, y = a.requests["cand"][r], a.requests["click"][r]
    want = (np.log1p(np.maximum(train_clicks[np.maximum(c, 0)] - y, 0)) - fba.pop_scale[0]) / fba.pop_scale[1]
    got = fba.build(a, np.array([r]))["cand_dense"][0, :, 2]
    assert np.allclose(got[c >= 0], want[c >= 0], atol=1e-6)
    # no time: freshness and history ages are constant
    assert np.ptp(fa["cand_dense"][..., 1][fa["valid"] > 0]) == 0 and not fa["hist_age"].any()
    assert a.requests["split"][ta].max() == SPLITS["train"]


def test_evaluate_cli_on_the_mmssl_fixture(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["data", "convert", "--format", "mmssl", str(FIXTURE), "--out", str(data),
                 "--positives-per-request", "3"]) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(data), "--model", "popularity", "--model", "content_knn",
                 "--model", "als", "--model", "bpr", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["models"]) == {"popularity", "content_knn", "als", "bpr"}
    assert "no time filter" in rep["protocol"] and rep["n_rows"] > 0 and rep["n_cold"] > 0
    for name, r in rep["models"].items():
        for key in ("recall@20", "ndcg@20", "recall@50", "hit@20", "cold.recall@20", "warm.recall@20"):
            assert 0.0 <= r[key] <= 1.0, (name, key)
        lo, hi = r["ci95"]["recall@20"]
        assert lo <= r["recall@20"] <= hi
    # content can reach cold items, pure CF cannot (zero factors, ties counted against them)
    assert rep["models"]["content_knn"]["cold.recall@50"] > 0 == rep["models"]["als"]["cold.recall@20"]
    assert len(rep["models"]["als"]["info"]["trials"]) > 1                  # tuned on validation
    assert "R@20" in capsys.readouterr().out
    assert main(["evaluate", "--data", str(data), "--model", "nonsense", "--out", str(out)]) == 2
    # the server stage alone and reranked; a malformed two-stage spec fails before any work
    assert main(["evaluate", "--data", str(data), "--model", "retrieval", "--model", "two=retrieval>50>bpr",
                 "--out", str(out)]) == 0
    two = json.loads(out.read_text())["models"]
    assert two["two"]["info"]["retrieval"]["recall@50"] == two["two"]["recall@50"]
    assert two["retrieval"]["info"]["retrieval"]["k"] == 200
    assert main(["evaluate", "--data", str(data), "--model", "x=retrieval>10>bpr", "--out", str(out)]) == 2
    assert main(["evaluate", "--data", str(data), "--model", "x=retrieval>50>no/such/run", "--out", str(out)]) == 2


def test_full_catalogue_on_the_tiny_pipeline(tiny_run):
    """Teacher, student and the bundle's default file through the runtime, with the baselines, on the
    same rows; int8 in the runtime keeps the student's ranking."""
    from edge_rec.distill.dataset import Dataset

    ds = Dataset.load(tiny_run / "data")
    rep = full_catalogue_report(ds, {"popularity": "popularity", "student": str(tiny_run / "student"),
                                     "student.int8.runtime": str(tiny_run / "bundle")}, max_requests=60)
    m = rep["models"]
    assert m["student.int8.runtime"]["info"]["precision"] == "int8"
    assert m["student.int8.runtime"]["recall@20"] >= 0.95 * m["student"]["recall@20"]
    assert m["student"]["recall@20"] > 0.2


def test_collab_modality_comes_from_training_clicks_only(tiny_run, tmp_path):
    """`edge-rec data collab`: ALS item factors (tuned on validation) as one more modality; items
    without a training click lack it (the model's mask token), so cold items fall back on content."""
    from edge_rec.distill.dataset import Dataset

    out = tmp_path / "with_collab"
    assert main(["data", "collab", str(tiny_run / "data"), "--out", str(out)]) == 0
    ds, base = Dataset.load(out), Dataset.load(tiny_run / "data")
    assert list(ds.modalities) == list(base.modalities) + ["collab"]
    trained = np.bincount(base.interactions["item"][base.train_interaction_mask() & (base.interactions["click"] > 0)],
                          minlength=base.n_items) > 0
    assert np.array_equal(ds.present["collab"].astype(bool), trained)
    assert not ds.present["collab"][np.asarray(ds.items["cold"]).astype(bool)].any()
    e = ds.embeddings["collab"].astype(np.float64)[trained]
    assert np.sqrt((e ** 2).mean()) == pytest.approx(1.0, rel=0.01) and np.isfinite(e).all()
    rep = json.loads((out / "collab_report.json").read_text())
    assert rep["val.recall@20"] > 0 and len(rep["trials"]) > 1
    for k in ("cand", "click", "split"):                       # the requests are the same
        assert np.array_equal(ds.requests[k], base.requests[k])
    assert main(["data", "collab", str(out), "--out", str(tmp_path / "again")]) == 2   # already there: named


def test_a_log_without_creators_gives_feeds_without_creators(mm):
    """Missing means missing: the MMSSL layout has no creators, so the feed says null (not one creator
    -1 for every item, which filled the policy's per-creator cap at once and switched diversity off)."""
    from edge_rec.distill.feed import request_feed
    from edge_rec.policy import PostRankPolicy, apply_policy

    feed = request_feed(mm, int(mm.split_index("test")[0]))
    assert feed["candidates"] and all(c["creator_id"] is None for c in feed["candidates"])
    assert all(e["creator_id"] is None for e in feed["history"])
    n = 12
    rng = np.random.default_rng(0)
    order, _ = apply_policy(PostRankPolicy(max_per_creator=1, mmr_lambda=1.0, freshness_boost=0.0), rng.normal(size=n),
                            None, [None] * n, np.zeros(n), {})
    assert len(order) == n == len(set(order.tolist()))          # no cap applies to unknown creators


def test_heads_without_labels_are_not_trained_and_do_not_vote(mm):
    """Clicks only: the finish and like heads get loss weight 0 and score weight 0."""
    from edge_rec.distill.configs import labelled_tasks, without_unlabelled
    from edge_rec.distill.teacher_stage import teacher_configs

    assert labelled_tasks(mm) == (True, False, False)
    kw, cfg = without_unlabelled(*teacher_configs("tiny"), mm)
    assert tuple(kw["score_weights"]) == (1.0, 0.0, 0.0) and cfg.task_weights[1:] == (0.0, 0.0)
    assert cfg.task_weights[0] > 0


def test_two_stage_ranks_the_retrieved_set_by_the_reranker_first(tiny_run):
    """RETRIEVAL>K>RERANKER: the retrieval stage's top K, in the reranker's order, then the rest in the
    retrieval order; with the reranker = the retrieval model itself it is the retrieval ranking."""
    from edge_rec.distill.dataset import Dataset
    from edge_rec.distill.protocol import baseline_scorer, two_stage_scorer

    ds = Dataset.load(tiny_run / "data")
    rows = heldout_rows(ds, "test", max_requests=40)
    pop, _ = baseline_scorer(ds, "popularity")
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(ds.requests["user"]), ds.n_items))
    rand = lambda req: noise[req]                                              # noqa: E731
    req = rows.requests[:5]
    got = two_stage_scorer(ds, pop, rand, k=30)(req)
    for b in range(len(req)):
        top30 = set(np.argsort(-pop(req[b:b + 1])[0], kind="stable")[:30].tolist())
        order = np.argsort(-got[b], kind="stable")
        assert set(order[:30].tolist()) == top30                           # the retrieved set comes first
        inside = order[:30]
        assert (np.diff(noise[req[b]][inside]) <= 0).all()                # in the reranker's order
    same = evaluate(ds, rows, two_stage_scorer(ds, pop, pop, k=30), n_boot=0)["recall@20"]
    assert same == pytest.approx(evaluate(ds, rows, pop, n_boot=0)["recall@20"])
    rep = full_catalogue_report(ds, {"two": f"als>50>{tiny_run / 'student'}"}, max_requests=40)
    assert rep["models"]["two"]["info"]["retrieval"]["k"] == 50 and 0 <= rep["models"]["two"]["recall@20"] <= 1


def test_ties_in_a_ranking_keep_the_feed_order():
    """Equal scores (common in int8 files): the ranking is the feed's order, with the policy off and on."""
    from edge_rec.policy import PostRankPolicy, apply_policy

    score = np.array([0.5, 0.7, 0.5, 0.7, 0.5])
    off, _ = apply_policy(PostRankPolicy(enabled=False), score, None, [None] * 5, np.zeros(5), {})
    on, _ = apply_policy(PostRankPolicy(freshness_boost=0.0), score, None, [None] * 5, np.zeros(5), {})
    assert off.tolist() == on.tolist() == [1, 3, 0, 2, 4]


def test_mmssl_world_fixture_has_collaborative_warm_and_content_cold_structure():
    """tests/fixtures/mmssl_world (the tiny world in the MMSSL layout, content weakened, no timestamps):
    ID models carry warm items, content is all a cold item has — the shape of the real held-out set."""
    ds = load_mmssl(Path(__file__).parent / "fixtures" / "mmssl_world")
    assert ds.meta["has_timestamps"] is False and int(np.asarray(ds.items["cold"]).sum()) > 50
    rep = full_catalogue_report(ds, {m: m for m in ("popularity", "content_knn", "bpr", "als")})
    m = rep["models"]
    assert rep["n_cold"] > 0
    for cf in ("bpr", "als"):
        assert m[cf]["warm.recall@20"] > m["content_knn"]["warm.recall@20"] and m[cf]["cold.recall@20"] == 0.0
    assert m["content_knn"]["cold.recall@50"] > 0.0


def test_a_bundle_without_time_features_ignores_the_clock(tiny_run):
    """A model trained on a log without timestamps saw constant time features; a bundle that says so
    (manifest features.time_features = false) gets the same constants at any request time."""
    from edge_rec.runtime import Reranker
    from edge_rec.state import Event

    rr = Reranker.open(tiny_run / "bundle", backend="onnx", precision="fp32")
    feed = json.loads((tiny_run / "sample_feed.json").read_text())
    hist = [Event(item_id=1, ts=feed["now"] - 7200.0), Event(item_id=2, ts=feed["now"] - 60.0)]
    later = feed["now"] + 86400 * 3 + 3600

    def feats(r, now):            # copies: the runtime reuses its input buffers between calls
        return {k: v.copy() for k, v in r.features(r.prepare(feed["candidates"]), now, hist).items()}

    timed = [feats(rr, now) for now in (feed["now"], later)]
    for k in ("cand_dense", "hist_age", "context"):
        assert not np.array_equal(timed[0][k], timed[1][k]), k
    manifest = json.loads(json.dumps(rr.manifest))
    manifest["features"]["time_features"] = False
    flat = Reranker(rr.root, manifest, rr.engine, rr.format, rr.precision, None)
    a, b = (feats(flat, now) for now in (feed["now"], later))
    for k in ("cand_dense", "hist_age", "context"):
        assert np.array_equal(a[k], b[k]), k
    assert not a["hist_age"].any() and np.allclose(a["cand_dense"][:, 1], (np.log1p(0.0) - 4.0) / 2.0)
    assert a["context"][1] == 0.0 and a["context"][2] == 1.0               # hour 0
    fb = FeatureBuilder.from_dataset(load_mmssl(FIXTURE), hist_len=4)
    assert fb.normalisation()["time_features"] is False


def test_catalogue_negatives_are_uniform_past_items_that_are_not_the_requests_own(tiny_run, mm):
    """Training on the catalogue as it is ranked: uniform draws among items uploaded by the request's
    time (every item without time), never one of its own candidates, label 0 and outside the per-task
    BCE (``labelled`` = 0), after the logged candidates whose features and labels do not change."""
    from edge_rec.distill.dataset import Dataset
    from edge_rec.distill.features import CatalogueNegatives

    ds = Dataset.load(tiny_run / "data")
    idx = ds.split_index("train")[:400]
    neg = CatalogueNegatives(ds).sample(ds, idx, 64, np.random.default_rng(0))
    assert neg.shape == (400, 64) and (neg >= 0).mean() > 0.9
    ok = neg >= 0
    upload = np.asarray(ds.items["upload_ts"], np.float64)
    assert (upload[neg[ok]] <= np.broadcast_to(ds.requests["ts"][idx][:, None], neg.shape)[ok]).all()
    own = ds.requests["cand"][idx]
    assert not ((neg[:, :, None] == own[:, None, :]) & ok[:, :, None]).any()
    # no clock: every item is available and the draws are uniform over the catalogue
    u = CatalogueNegatives(mm).sample(mm, np.zeros(4000, np.int64), 50, np.random.default_rng(1))
    allowed = ~np.isin(np.arange(mm.n_items), mm.requests["cand"][0])      # request 0's own candidates never
    counts = np.bincount(u[u >= 0], minlength=mm.n_items)
    assert not counts[~allowed].any()
    expect = (u >= 0).sum() / allowed.sum()
    chi2 = ((counts[allowed] - expect) ** 2 / expect).sum()
    dof = allowed.sum() - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof)                   # a uniform draw passes, a skewed one cannot
    # features: logged columns unchanged, extras labelled 0 and masked out of the BCE
    fb = FeatureBuilder.from_dataset(ds, 8)
    base, ext = fb.build(ds, idx[:32]), fb.build(ds, idx[:32], extra=neg[:32])
    n = own.shape[1]
    for k in ("cand_dense", "click", "valid"):
        assert np.array_equal(ext[k][:, :n], base[k][:, :n]), k
    assert np.array_equal(ext["labelled"][:, :n], base["valid"]) and not ext["labelled"][:, n:].any()
    assert not ext["click"][:, n:].any() and np.array_equal(ext["valid"][:, n:], (neg[:32] >= 0).astype(np.float32))


def test_two_stage_specs_and_the_retrieval_stage_alone(tiny_run):
    """``retrieval`` = the server stage alone: tuned ALS's top K - c in ALS's order, then content kNN's
    top c items without a training click in kNN's order (c chosen on validation by the list's
    Recall@K); the spec forms parse or fail by name."""
    from edge_rec.distill.dataset import Dataset
    from edge_rec.distill.protocol import (RETRIEVAL_COLD_CHOICES, RETRIEVAL_K, baseline_scorer, parse_two_stage,
                                           two_stage_scorer)
    from edge_rec.errors import ConfigError

    assert parse_two_stage("retrieval") == ("retrieval", RETRIEVAL_K, None)
    assert parse_two_stage("retrieval>100") == ("retrieval", 100, None)
    assert parse_two_stage("als>50>runs/s") == ("als", 50, "runs/s")
    assert parse_two_stage("retrieval>runs/s") == ("retrieval", RETRIEVAL_K, "runs/s")
    for bad in ("nonsense>50>x", "als>0>x", "retrieval>10>x", "als>5>x>y", "als>x>y"):
        with pytest.raises(ConfigError):
            parse_two_stage(bad)
    ds = Dataset.load(tiny_run / "data")
    als, _ = baseline_scorer(ds, "als", tune_requests=60)
    knn, _ = baseline_scorer(ds, "content_knn")
    cold = np.asarray(ds.items["cold"]).astype(bool)
    req = heldout_rows(ds, "test", max_requests=10).requests
    k, RETRIEVAL_COLD = 60, 20
    got = two_stage_scorer(ds, als, None, k=k, k_cold=RETRIEVAL_COLD, cold_retrieval=knn)(req)
    a, c = als(req), knn(req)
    for b in range(len(req)):
        order = np.argsort(-got[b], kind="stable")
        want = np.argsort(-a[b], kind="stable")[: k - RETRIEVAL_COLD]
        assert order[: k - RETRIEVAL_COLD].tolist() == want.tolist()
        cs = np.where(cold & ~np.isin(np.arange(ds.n_items), want), c[b], -np.inf)
        assert order[k - RETRIEVAL_COLD:k].tolist() == np.argsort(-cs, kind="stable")[:RETRIEVAL_COLD].tolist()
    rep = full_catalogue_report(ds, {"retrieval": "retrieval"}, max_requests=40)
    info = rep["models"]["retrieval"]["info"]["retrieval"]
    assert info["k"] == RETRIEVAL_K and info["cold_model"] == "content_knn"
    trials = info["cold_share_trials"]
    assert [t["k_cold"] for t in trials] == list(RETRIEVAL_COLD_CHOICES)
    best = max(t["val.recall@200"] for t in trials)
    assert info["k_cold"] == min(t["k_cold"] for t in trials if t["val.recall@200"] == best)


@pytest.mark.slow
def test_pipeline_on_the_mmssl_world_fixture_beats_retrieval_and_als(tmp_path):
    """A user's real-data path on the MMSSL-layout fixture (clicks only, no time, weak content, cold
    items): `data convert --format mmssl`, then `pipeline --data`. The two-stage student beats the
    server's retrieval alone and tuned ALS; int8 in the runtime keeps >= 95 % of the teacher."""
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["data", "convert", "--format", "mmssl", str(Path(__file__).parent / "fixtures" / "mmssl_world"),
                 "--out", str(data)]) == 0
    assert main(["pipeline", "--preset", "tiny", "--data", str(data), "--out", str(run)]) == 0
    rep = json.loads((run / "report.json").read_text())
    fc = rep["full_catalogue"]["models"]
    assert rep["full_catalogue"]["n_cold"] > 0 and "no time filter" in rep["full_catalogue"]["protocol"]
    assert fc["student"]["recall@20"] > max(fc["retrieval"]["recall@20"], fc["als"]["recall@20"])
    assert fc["student.int8.runtime"]["recall@20"] >= 0.95 * fc["teacher"]["recall@20"]
