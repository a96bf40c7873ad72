"""The phone-side runtime on the tiny pipeline's real bundle: features, engines, policy, store, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_rec.cli import main
from edge_rec.errors import BundleError, ConfigError, DataError, EdgeRecError
from edge_rec.policy import PostRankPolicy, apply_policy
from edge_rec.runtime import Candidate, Reranker, _event
from edge_rec.state import SIGNALS_QUERY, Event, UserState


@pytest.fixture(scope="module")
def feed(tiny_run: Path) -> dict:
    return json.loads((tiny_run / "sample_feed.json").read_text())


@pytest.fixture(scope="module")
def rr(bundle) -> Reranker:
    return Reranker.open(bundle, backend="onnx", precision="fp32", policy=PostRankPolicy(enabled=False))


def _ctx(feed):
    return {"now": feed["now"], "history": feed["history"], "history_total": feed["history_total"]}


def test_reranking_never_imports_torch(bundle, tiny_run):
    code = ("import sys, json; from edge_rec.runtime import Reranker; "
            f"rr = Reranker.open({str(bundle)!r}); f = json.load(open({str(tiny_run / 'sample_feed.json')!r})); "
            "out = rr.rerank(f['candidates'], context={'now': f['now'], 'history': f['history']}, k=5, explain=True); "
            "assert len(out) == 5 and 'explanation' in out[0]; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(rr.engine.name, rr.format, rr.precision)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["onnxruntime", "ort", "int8"]        # auto: .ort, int8 (it passed its gates)


def test_features_and_scores_match_training_and_pytorch(rr, feed, tiny_run):
    """The runtime rebuilds the training features from raw feed fields exactly; scores equal PyTorch's."""
    import torch

    from edge_rec.distill.dataset import Dataset
    from edge_rec.distill.distill_stage import load_student
    from edge_rec.distill.features import FeatureBuilder

    ds = Dataset.load(tiny_run / "data")
    fb = FeatureBuilder.from_dataset(ds, rr.hist_len, list(rr.modalities))
    ref = fb.build(ds, np.array([feed["request"]]))
    valid = ref["valid"][0] > 0
    x = rr.features([Candidate.from_dict(c) for c in feed["candidates"]], feed["now"],
                    [_event(e) for e in feed["history"]], feed["history_total"])
    for k, v in x.items():
        want = ref[k][0][valid] if k.startswith("cand_") else ref[k][0]
        np.testing.assert_allclose(v, want, atol=1e-6, err_msg=k)
    student, _ = load_student(tiny_run / "student")
    with torch.no_grad():
        torch_score = student(**{k: torch.from_numpy(ref[k][0][valid] if k.startswith("cand_") else ref[k][0])
                                 for k in student.input_names})["score"].numpy()
    out = rr.rerank(feed["candidates"], context=_ctx(feed))
    ids = [c["item_id"] for c in feed["candidates"]]
    got = np.array([next(r["score"] for r in out if r["item_id"] == i) for i in ids])
    np.testing.assert_allclose(got, torch_score, atol=1e-5)
    assert [r["item_id"] for r in out] == [ids[i] for i in np.argsort(-torch_score, kind="stable")]


def test_backends_agree_and_bucketed_engines_chunk(bundle, feed):
    base = Reranker.open(bundle, backend="onnx", precision="fp32", policy=PostRankPolicy(enabled=False))
    tfl = Reranker.open(bundle, backend="tflite", precision="fp32", policy=PostRankPolicy(enabled=False))
    a = base.rerank(feed["candidates"], context=_ctx(feed))
    b = tfl.rerank(feed["candidates"], context=_ctx(feed))
    assert [r["item_id"] for r in a] == [r["item_id"] for r in b]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) < 1e-5
    with pytest.raises(BundleError, match="has no 'tensorrt' model"):
        Reranker.open(bundle, backend="tensorrt")
    if sys.platform != "darwin":
        with pytest.raises(BundleError, match="macOS"):
            Reranker.open(bundle, backend="coreml")


def test_prepared_feed_reranks_as_the_raw_feed_and_drops_seen_items(bundle, feed):
    """A feed prepared once and reranked at every swipe gives what the raw feed gives; ``without``
    drops the items the viewer saw; the history inputs follow new events and the clock."""
    rr = Reranker.open(bundle, backend="onnx", precision="fp32")            # the default policy is on
    ctx = _ctx(feed)
    prepared = rr.prepare(feed["candidates"])
    a, b = rr.rerank(prepared, context=ctx), rr.rerank(feed["candidates"], context=ctx)
    assert a == b and a.to_list() == b.to_list() and len(a) == len(feed["candidates"])
    json.dumps(a.to_list())                                                   # plain JSON rows
    assert a[:2] == a.to_list()[:2] and a[-1]["rank"] == len(a)
    with pytest.raises(IndexError):
        a[len(a)]
    seen = a[0]["item_id"]
    rest = rr.rerank(prepared.without([seen]), context=ctx)
    assert seen not in [r["item_id"] for r in rest]
    assert rest == rr.rerank([c for c in feed["candidates"] if c["item_id"] != seen], context=ctx)
    # the history rows are cached between swipes; a new event and a later clock must still show
    hist = [_event(e) for e in feed["history"]]
    later = feed["now"] + 7200.0
    new_event = Event(item_id=seen, ts=feed["now"] + 60.0, watch_ms=9000.0, duration_ms=10000.0, like=True,
                      embeddings=prepared.candidates[0].arrays())
    liked_later = hist[:-1] + [dataclasses.replace(hist[-1], like=not hist[-1].like)]   # same event, updated
    for history, now in ((hist, feed["now"]), (hist + [new_event], later), (hist, later), (liked_later, later)):
        got = {k: v.copy() for k, v in rr.features(prepared, now, history, None).items()}
        fresh = Reranker.open(bundle, backend="onnx", precision="fp32").features(feed_cands(feed), now, history, None)
        for k in got:
            np.testing.assert_array_equal(got[k], fresh[k], err_msg=k)


def feed_cands(feed):
    return [Candidate.from_dict(c) for c in feed["candidates"]]


def test_history_rows_slide_with_the_swipes_as_a_rebuild_writes_them(rr, bundle, feed):
    """Between swipes the last L events move on by one: the kept rows are shifted, not rebuilt. Every
    step of a history that grows, slides by 1-6 events, shrinks, updates a like in place and jumps
    must give the inputs a rebuild from nothing gives."""
    hist = [_event(e) for e in feed["history"]]
    L = rr.hist_len
    pool = [dataclasses.replace(hist[i % len(hist)], ts=1000.0 + 10.0 * i, like=i % 3 == 0, skip=i % 5 == 0)
            for i in range(3 * L)]
    # (first, end) of the events given: growing, sliding by 1-6, a short tail of the same stream (the
    # rows above it must be cleared), shrinking, one like changed in place, jumps
    spans = [(0, e) for e in range(0, L + 3)] + [(0, L + 4), (0, L + 5), (0, L + 11), (0, L + 12),
                                                 (L + 8, L + 13), (L + 8, L + 14), (0, 5), (0, 6), (0, 6),
                                                 (0, 2 * L), (0, 3 * L)]
    sliding = Reranker.open(bundle, backend="onnx", precision="fp32")
    rebuilt = Reranker.open(bundle, backend="onnx", precision="fp32")
    for step, (first, end) in enumerate(spans):
        history = pool[first:end]
        if step == len(spans) - 3:                                          # the same events, one like changed
            history = history[:-1] + [dataclasses.replace(history[-1], like=not history[-1].like)]
        now = 1000.0 + 10.0 * end + 1.0
        got = {k: v.copy() for k, v in sliding.history_inputs(now, history).items()}
        rebuilt._hist_key = None                                            # forces the full rebuild
        want = rebuilt.history_inputs(now, history)
        for k in got:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"step {step} (events {first}:{end}): {k}")


def test_ten_thousand_candidates(bundle, feed):
    """Chunked through the biggest bucket (TFLite) and in one call (ONNX): same scores."""
    rng = np.random.default_rng(0)
    base = feed["candidates"]
    many = []
    for i in range(10_000):
        c = dict(base[int(rng.integers(len(base)))])
        c["item_id"] = 10**6 + i
        many.append(c)
    ctx = _ctx(feed)
    a = Reranker.open(bundle, backend="onnx", precision="fp32", policy=PostRankPolicy(enabled=False)).rerank(many, context=ctx, k=50)
    b = Reranker.open(bundle, backend="tflite", precision="fp32", policy=PostRankPolicy(enabled=False)).rerank(many, context=ctx, k=50)
    assert len(a) == 50 and [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-5)


@pytest.mark.parametrize("backend,precision", [("auto", None), ("onnx", "fp32"), ("tflite", "int8"),
                                               ("executorch", "int8")])
def test_explanations_never_move_a_score(bundle, feed, backend, precision):
    """explain=True returns exactly the rows of explain=False (scores, order, heads) on every engine."""
    r = Reranker.open(bundle, backend=backend, precision=precision)
    plain = r.rerank(feed["candidates"], context=_ctx(feed)).to_list()
    explained = r.rerank(feed["candidates"], context=_ctx(feed), explain=True).to_list()
    assert [{k: v for k, v in row.items() if k != "explanation"} for row in explained] == plain
    assert all(set(row["explanation"]) == set(r.modalities) for row in explained)


def test_explanations_are_masked_score_differences(rr, feed):
    out = rr.rerank(feed["candidates"], context=_ctx(feed), explain=True)
    m = next(iter(rr.modalities))
    masked = [dict(c, embeddings={k: v for k, v in c["embeddings"].items() if k != m}) for c in feed["candidates"]]
    plain = {r["item_id"]: r["score"] for r in rr.rerank(masked, context=_ctx(feed))}
    for r in out:
        assert r["explanation"][m] == pytest.approx(r["score"] - plain[r["item_id"]], abs=1e-5)
    assert any(abs(r["explanation"][m]) > 1e-3 for r in out)


def test_bad_input_gets_typed_errors(rr, feed):
    ctx = _ctx(feed)
    m = next(iter(rr.modalities))
    c0 = feed["candidates"][0]
    assert rr.rerank([], context=ctx) == []
    cases = {
        "has 3 dims": [dict(c0, embeddings={m: [0.1, 0.2, 0.3]})],
        "NaN or inf": [dict(c0, embeddings={m: [float("nan")] * rr.modalities[m]})],
        "unknown modality": [dict(c0, embeddings={"smell": [1.0]})],
        "duplicate item ids": [c0, c0],
        "must be finite": [dict(c0, duration_s=float("inf"))],
        "no item_id": [{"creator_id": 1}],
        "64-bit": [dict(c0, creator_id=2**70)],
    }
    d = rr.modalities[m]
    cases.update({                                   # mistyped JSON fields: named, never a crash or a silent cast
        "item_id must be an integer id": [dict(c0, item_id="abc")],
        "got float 1.7": [dict(c0, item_id=1.7)],    # truncating to 1 could merge two items
        "got bool True": [dict(c0, item_id=True)],
        "creator_id must be an integer": [dict(c0, creator_id="x")],
        "duration_s must be a number": [dict(c0, duration_s="long")],
        "embeddings must be an object": [dict(c0, embeddings=[1.0, 2.0])],
        "must be a JSON object": [5],
        r"whole numbers in \[-128, 127\]": [dict(c0, embeddings={m: {"int8": [1000] * d, "scale": 0.1}})],
        "'scale' must be a number": [dict(c0, embeddings={m: {"int8": [1] * d, "scale": "s"}})],
        "'scale' must be a finite number > 0": [dict(c0, embeddings={m: {"int8": [1] * d, "scale": 0}})],
        "not valid base64": [dict(c0, embeddings={m: {"fp16_b64": "!!!"}})],
        "float16 values take 2 bytes": [dict(c0, embeddings={m: {"fp16_b64": "AAAA"}})],
    })
    for msg, cands in cases.items():
        with pytest.raises(DataError, match=msg):
            rr.rerank(cands, context=ctx)
    h0 = feed["history"][0]
    bad_context = {
        "ts must be a number": {"history": [dict(h0, ts="yesterday")]},
        "lacks 'ts'": {"history": [{"item_id": 5}]},
        "like must be true or false": {"history": [dict(h0, like="yes")]},
        "watch_ms must be finite and >= 0": {"history": [dict(h0, watch_ms=-1)]},
        "history event for item .*: unknown modality 'smell'": {"history": [dict(h0, embeddings={"smell": [1.0]})]},
        "history event for item .*: modality .* has 2 dims": {"history": [dict(h0, embeddings={m: [1.0, 2.0]})]},
        "history must be a list": {"history": {"item_id": 1}},
        "a history event must be a JSON object": {"history": [5]},
        "'now' .*must be a number": {"now": "tomorrow"},
        "'now' must be a finite time": {"now": float("nan")},     # was scored silently (int8 engines hide NaN)
        "'history_total' must be a whole number": {"history_total": -4},
    }
    for msg, change in bad_context.items():
        with pytest.raises(DataError, match=msg):
            rr.rerank([c0], context={**ctx, **change})
    # what a JSON client may legitimately send: a 64-bit id as a string of digits, null for a missing field
    ok = rr.rerank([dict(c0, item_id=str(2**62 + 1), creator_id="7", duration_s=None)], context=ctx)
    assert ok[0]["item_id"] == 2**62 + 1 and ok[0]["creator_id"] == 7
    # a pruned modality the server still sends is ignored; a missing one is allowed
    pruned = next(iter(rr.pruned), None)
    if pruned:
        extra = [dict(c0, embeddings={**c0["embeddings"], pruned: [0.0] * 4})]
        assert rr.rerank(extra, context=ctx)[0]["score"] == pytest.approx(rr.rerank([c0], context=ctx)[0]["score"])
    assert len(rr.rerank([dict(c0, embeddings={})], context=ctx)) == 1


def test_bad_settings_are_config_errors(bundle, rr, feed):
    """Settings that would silently mean something else (threads=0 is 'all cores' to onnxruntime,
    k=-1 an empty ranking, k=2.5 two items) or crash later (a freshness time constant of 0) fail at once."""
    for kw, msg in ((dict(mmr_lambda=2.0), "mmr_lambda"), (dict(window=-1), "window"), (dict(max_per_creator=0), "max_per_creator"),
                    (dict(freshness_tau_h=0), "freshness_tau_h"), (dict(skip_penalty=float("nan")), "skip_penalty")):
        with pytest.raises(ConfigError, match=msg):
            PostRankPolicy(**kw)
    for threads in (0, -1, 1.5, 10**400):          # a huge count used to fail in the engine and fall back silently
        with pytest.raises(ConfigError, match="threads"):
            Reranker.open(bundle, backend="onnx", threads=threads)
    with pytest.raises(ConfigError, match="precision='int4'"):
        Reranker.open(bundle, precision="int4")
    with pytest.raises(ConfigError, match="backend=5"):
        Reranker.open(bundle, backend=5)
    for k in (-1, 2.5, "5", True):
        with pytest.raises(ConfigError, match="k="):
            rr.rerank(feed["candidates"], context=_ctx(feed), k=k)
    with pytest.raises(DataError, match="context must be a mapping"):
        rr.rerank(feed["candidates"], context=[1, 2])
    with pytest.raises(DataError, match="candidates is None"):
        rr.rerank(None)
    assert len(rr.rerank(feed["candidates"], context=_ctx(feed), k=np.int64(3))) == 3
    assert len(rr.rerank(feed["candidates"], context=_ctx(feed), k=0)) == 0


def test_tampered_or_wrong_version_bundle_is_refused(bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["schema_version"] = "2.0"
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="schema"):
        Reranker.open(copy)
    shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    with open(copy / "models" / "student.int8.ort", "r+b") as f:
        f.seek(64)
        b = f.read(1)
        f.seek(64)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="student.int8.ort"):
        Reranker.open(copy)


# ---- post-ranking policy ------------------------------------------------------------------------
def test_policy_switches_off_and_each_part_acts():
    score = np.array([3.0, 2.9, 2.8, 1.0, 0.5])
    creators = [1, 1, 1, 2, 3]
    ages = np.full(5, 1000.0)
    off, _ = apply_policy(PostRankPolicy(enabled=False), score, None, creators, ages, {})
    assert off.tolist() == [0, 1, 2, 3, 4]
    cap, _ = apply_policy(PostRankPolicy(max_per_creator=2, mmr_lambda=1.0, freshness_boost=0), score, None, creators, ages, {})
    assert cap.tolist() == [0, 1, 3, 4, 2]                      # the third item of creator 1 waits for the others
    pen, _ = apply_policy(PostRankPolicy(max_per_creator=None, mmr_lambda=1.0, freshness_boost=0), score, None,
                          creators, ages, {1: {"skips": 10.0, "negative_comments": 0.0}})
    assert pen[:2].tolist() == [3, 4]                           # a creator just skipped ten times drops below the rest
    fresh_age = np.array([1000.0, 1000.0, 1000.0, 1000.0, 0.0])
    fr, adj = apply_policy(PostRankPolicy(max_per_creator=None, mmr_lambda=1.0, freshness_boost=5.0), score, None,
                           creators, fresh_age, {})
    assert fr[0] == 4 and adj[4] == pytest.approx(5.5)
    fused = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.7, 0.7]])
    mmr, _ = apply_policy(PostRankPolicy(max_per_creator=None, mmr_lambda=0.5, freshness_boost=0), np.array([3.0, 2.99, 2.9, 1.0, 0.5]),
                          fused, [1, 2, 3, 4, 5], ages, {})
    assert mmr[:2].tolist() == [0, 2]                           # the near-duplicate of the top item waits


def _reference_policy(pol: PostRankPolicy, score, fused, creators, ages, signals, k=None):
    """The post-ranking policy written the slow, obvious way (plain Python), to check the fast one."""
    n = len(score)
    adj = [float(s) for s in score]
    for i, c in enumerate(creators):
        if c is not None and c in signals:
            adj[i] -= pol.skip_penalty * signals[c].get("skips", 0.0) + pol.negative_penalty * signals[c].get("negative_comments", 0.0)
        adj[i] += pol.freshness_boost * math.exp(-float(ages[i]) / pol.freshness_tau_h)
    ranked = sorted(range(n), key=lambda i: -adj[i])                     # stable, as argsort(kind="stable")
    lo, hi = min(adj), max(adj)
    rel = [(a - lo) / (hi - lo) if hi > lo else 1.0 for a in adj]
    window = min(n if k is None else k, pol.window)
    short = ranked[:4 * window]
    lam = pol.mmr_lambda if fused is not None else 1.0
    unit = None if fused is None else [np.asarray(f, np.float64) / max(np.linalg.norm(f), 1e-12) for f in fused]
    chosen, count = [], {}
    while len(chosen) < window:
        best, best_v = None, -math.inf
        for i in short:
            if i in chosen or (pol.max_per_creator is not None and creators[i] is not None
                               and count.get(creators[i], 0) >= pol.max_per_creator):
                continue
            sim = max([max(0.0, float(unit[i] @ unit[j])) for j in chosen], default=0.0) if unit is not None else 0.0
            v = lam * rel[i] - (1 - lam) * sim
            if v > best_v:
                best, best_v = i, v
        if best is None:
            break
        chosen.append(best)
        if creators[best] is not None:
            count[creators[best]] = count.get(creators[best], 0) + 1
    order = chosen + [i for i in ranked if i not in chosen]
    return order[:k] if k is not None else order


def test_policy_matches_a_plain_python_reference():
    rng = np.random.default_rng(0)
    for trial in range(150):
        n = int(rng.integers(1, 120))
        score = rng.normal(size=n).astype(np.float32)
        fused = rng.normal(size=(n, 6)).astype(np.float32) if trial % 4 else None
        creators = [None if rng.random() < 0.1 else int(c) for c in rng.integers(0, n // 4 + 1, n)]
        ages = rng.uniform(0, 100, n)
        # none, a few, or more penalised creators than the feed has (some not in it at all)
        signals = {int(c): {"skips": float(rng.integers(0, 4)), "negative_comments": float(rng.integers(0, 2))}
                   for c in rng.integers(0, 40, int(rng.integers(0, 25)))}
        pol = PostRankPolicy(mmr_lambda=float(rng.choice([0.5, 0.8, 1.0])), max_per_creator=[None, 1, 2][trial % 3],
                             window=int(rng.choice([1, 5, 20])))
        k = None if trial % 5 else int(rng.integers(0, n + 1))
        got, _ = apply_policy(pol, score, fused, creators, ages, signals, k)
        assert got.tolist() == _reference_policy(pol, score, fused, creators, ages, signals, k), trial


# ---- the behaviour store ------------------------------------------------------------------------
def _ev(i: int, ts: float, **kw) -> Event:
    return Event(item_id=i, ts=ts, watch_ms=5000.0, duration_ms=10000.0, creator_id=i % 3,
                 embeddings={"visual": np.full(4, i, np.float32)}, **kw)


def test_store_round_trip_retention_forget_export(tmp_path):
    path = tmp_path / "state.db"
    with UserState(path, max_events=5, max_age_days=1.0) as st:
        assert st._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        st.record_many(_ev(i, 1000.0 + i, like=(i == 2)) for i in range(8))
        evs = st.events()
        assert [e.item_id for e in evs] == [3, 4, 5, 6, 7]           # bounded: the 5 newest, oldest first
        assert evs[0].embeddings["visual"].tolist() == [3.0] * 4 and evs[0].watch_ratio == 0.5
        marker = Event(item_id=99, ts=1000.0 + 3 * 86400, embeddings={"visual": np.full(4, 1234.0, np.float32)})
        st.record(marker)                                               # two days later: older ones expire
        assert [e.item_id for e in st.events()] == [99]
        data = st.export()
        assert json.loads(json.dumps(data))["events"][0]["item_id"] == 99
        with pytest.raises(DataError, match="sentiment"):
            st.record(_ev(5, 2000.0, sentiment=3.0))
        with pytest.raises(DataError, match="finite"):
            st.record(Event(item_id=1, ts=float("nan")))
        assert st.count() == 1                                          # bad events change nothing
        st.forget()
        assert st.count() == 0 and st.export()["events"] == []
    trace = np.full(4, 1234.0, np.float16).tobytes().hex().encode()
    files = [p for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
    assert files and not any(trace in p.read_bytes() for p in files)    # forget() leaves no trace on disk


def test_store_signals_match_the_history_and_retention_keeps_the_newest(tmp_path):
    """The store's creator signals (read through its covering index) are what the same events give as
    a request's history; retention at the cap keeps the newest events by time even when they arrive
    out of order, and an old store gains the index when opened."""
    from edge_rec.runtime import _creator_signals

    rng = np.random.default_rng(3)
    path = tmp_path / "s.db"
    events = [Event(item_id=i, ts=float(rng.uniform(0, 7200)), creator_id=None if i % 7 == 0 else int(rng.integers(0, 5)),
                    skip=bool(rng.random() < 0.3), sentiment=None if rng.random() < 0.6 else float(rng.uniform(-1, 1)))
              for i in range(300)]
    with UserState(path, max_events=120) as st:
        for c0 in range(0, 300, 50):                       # several transactions, times shuffled
            st.record_many(events[c0:c0 + 50])
        kept = sorted(events, key=lambda e: e.ts)[-120:]
        assert [e.item_id for e in st.events()] == [e.item_id for e in kept]
        for now in (3600.0, 5000.0, 7200.0, 9000.0):
            got = st.creator_signals(now)
            assert got == _creator_signals(kept, now), now
            expected: dict[int, dict[str, float]] = {}     # counted here, apart from the shared summation
            for e in kept:
                neg = e.sentiment is not None and e.sentiment < 0
                if e.creator_id is not None and now - 3600.0 <= e.ts <= now and (e.skip or neg):
                    d = expected.setdefault(e.creator_id, {"skips": 0.0, "negative_comments": 0.0})
                    d["skips"] += e.skip
                    d["negative_comments"] += neg
            assert got == expected, now
            assert bool(got) == (now > kept[0].ts), now          # the first hour is before what retention kept
            assert all(v["skips"] + v["negative_comments"] > 0 for v in got.values())
    # a store written before the partial index, with the full covering index it had instead
    db = sqlite3.connect(path)
    db.execute("DROP INDEX events_signals")
    db.execute("CREATE INDEX events_recent ON events(ts, skip, sentiment, creator_id)")
    db.commit()
    db.close()
    with UserState(path) as st:
        indexes = {r[0] for r in st._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "events_signals" in indexes and "events_recent" not in indexes
        plan = st._db.execute("EXPLAIN QUERY PLAN " + SIGNALS_QUERY, (0.0, 1.0)).fetchall()
        assert "COVERING INDEX events_signals" in str(plan)
        assert st.creator_signals(7200.0) == _creator_signals(kept, 7200.0)


def test_store_reads_decode_each_row_once_and_follow_other_writers(tmp_path):
    """events() keeps decoded rows by id (a swipe re-reads the last L events, at most one of them new),
    yet what it returns follows the file: another connection's record and forget() show at once, and
    changing a returned event changes nothing for the next caller. The writer keeps what it wrote
    decoded (the app records a swipe, then reranks): the same events a reader of the rows gets."""
    path = tmp_path / "s.db"
    with UserState(path) as a, UserState(path) as b:
        a.record_many(_ev(i, 100.0 + i, sentiment=-0.5 if i == 1 else None, skip=i == 3) for i in range(5))
        a.record(Event(item_id=50, ts=50.0, creator_id=7, embeddings={"visual": np.full(4, 0.1, np.float32)}))
        assert len(a._decoded) == 6 and not b._decoded
        assert a.export()["events"] == b.export()["events"] and len(b._decoded) == 6   # written = read back
        assert a.events()[0].embeddings["visual"][0] == np.float32(np.float16(0.1))    # stored as float16
        first = a.events(limit=3)
        assert [e.item_id for e in first] == [2, 3, 4] and len(a._decoded) == 6
        first[0].like = True
        first[0].embeddings["visual"] = np.zeros(4, np.float32)
        with pytest.raises(ValueError):
            first[1].embeddings["visual"][0] = 7.0               # the shared arrays are read-only
        b.record(_ev(9, 200.0))                                  # another writer
        again = a.events(limit=3)
        assert [e.item_id for e in again] == [3, 4, 9] and len(a._decoded) == 7   # only the new row decoded
        assert [e.item_id for e in a.events(limit=3, before=150.0)] == [2, 3, 4]
        assert a.events(limit=3, before=150.0)[0].like is False
        assert a.events(limit=3, before=150.0)[0].embeddings["visual"].tolist() == [2.0] * 4
        b.forget()
        assert a.events() == [] and a.count() == 0


def test_recording_an_event_again_keeps_one_copy(tmp_path):
    """An event is (item_id, ts): recorded again (a retry after a crash, a replayed log, the same item
    twice in one batch) it keeps the first copy and returns that copy's id; another item at the same
    instant, or the same item later, is a new event."""
    with UserState(tmp_path / "s.db") as st:
        first = st.record_many([_ev(1, 100.0), _ev(2, 101.0)])
        again = st.record_many([_ev(2, 101.0, like=True), _ev(3, 102.0), _ev(3, 102.0)])
        assert again[0] == first[1] and again[1] == again[2] and again[1] not in first
        assert st.record(_ev(1, 100.0)) == first[0]
        assert st.record(_ev(1, 100.5)) not in first and st.record(_ev(4, 100.0)) not in first
        assert st.count() == 5
        assert [(e.item_id, e.ts, e.like) for e in st.events()][:3] == [(1, 100.0, False), (4, 100.0, False),
                                                                     (1, 100.5, False)]
        assert [e.like for e in st.events() if e.item_id == 2] == [False]         # the first copy stands


def test_a_store_written_before_the_event_key_loses_only_its_duplicates(tmp_path):
    """A store from before recording was idempotent may hold a replayed history twice: opening it keeps
    each event's first copy (and every other row), then the key holds."""
    import sqlite3

    from edge_rec.state import SCHEMA

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    rows = [(100.0 + i % 3, i % 3, 5000.0 * (i + 1)) for i in range(7)]          # items 0, 1, 2 recorded 3, 2, 2 times
    db.executemany("INSERT INTO events (ts, item_id, watch_ms) VALUES (?, ?, ?)", rows)
    db.commit()
    db.close()
    with UserState(path) as st:
        assert [(e.item_id, e.watch_ms) for e in st.events()] == [(0, 5000.0), (1, 10000.0), (2, 15000.0)]
        assert st.record(Event(item_id=1, ts=101.0)) == st.record(Event(item_id=1, ts=101.0)) and st.count() == 3
    with UserState(path) as st:                                                  # a second open changes nothing
        assert st.count() == 3


def test_store_rejects_mistyped_events_and_writes_nothing(tmp_path):
    """An app's Event with a mistyped field is a DataError before the transaction (a batch with one bad
    event writes none of them); 1.5 is never stored as item 1, True never as a time."""
    with UserState(tmp_path / "s.db") as st:
        good = _ev(1, 100.0)
        for bad, msg in ((Event(item_id="abc", ts=1.0), "item_id must be an integer id"),
                         (Event(item_id=1.5, ts=1.0), "got float 1.5"),
                         (Event(item_id=2**70, ts=1.0), "64-bit"),
                         (Event(item_id=1, ts=1.0, creator_id="c"), "creator_id must be an integer"),
                         (Event(item_id=1, ts=True), "ts must be a number, got bool"),
                         (Event(item_id=1, ts=1.0, sentiment="bad"), "sentiment must be a number"),
                         (Event(item_id=1, ts=1.0, embeddings={"visual": "abc"}), "must be a list of numbers")):
            with pytest.raises(DataError, match=msg):
                st.record_many([good, bad])
        assert st.count() == 0
        st.record(Event(item_id="12", ts=2.0))                   # a digit string is an id
        assert [e.item_id for e in st.events()] == [12]


def _writer(path: str, start: int, n: int) -> None:
    st = UserState(path)
    for i in range(n):
        st.record(_ev(start + i, float(start + i)))
    st.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "state.db")
    UserState(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 1000, 150)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with UserState(path) as st:
        assert st.count() == 600
        assert sorted(e.item_id for e in st.events()) == sorted(k * 1000 + i for k in range(4) for i in range(150))


CRASH_WRITER = """
import sys, numpy as np
from edge_rec.state import Event, UserState
st = UserState(sys.argv[1], max_events=100000, durability=sys.argv[2])
i = 0
while True:
    st.record(Event(item_id=i, ts=float(i), watch_ms=1.0, duration_ms=2.0, embeddings={"visual": np.ones(64, np.float32)}))
    print(i, flush=True)            # printed only after the commit returned
    i += 1
"""


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_killed_writer_keeps_every_committed_event(tmp_path, durability):
    """Either durability keeps every acknowledged event when the writing process is killed ("normal"
    leaves only a power cut or an OS crash able to take the last commits)."""
    path = tmp_path / "state.db"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(path), durability], stdout=subprocess.PIPE, text=True)
    committed = -1
    deadline = time.time() + 60
    while committed < 300 and time.time() < deadline:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)                                    # mid-stream, no cleanup
    proc.wait()
    assert committed >= 300
    raw = sqlite3.connect(str(path))
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with UserState(path) as st:
        ids = [e.item_id for e in st.events()]
    assert ids[: committed + 1] == list(range(committed + 1))            # every acknowledged event is there


def test_durability_sets_sqlite_synchronous_and_a_bad_one_writes_nothing(tmp_path):
    for durability, level in (("full", 2), ("normal", 1)):        # SQLite: 1 NORMAL, 2 FULL
        with UserState(tmp_path / f"{durability}.db", durability=durability) as st:
            assert st._db.execute("PRAGMA synchronous").fetchone()[0] == level
            assert st._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            st.record(Event(item_id=1, ts=1.0))
        with UserState(tmp_path / f"{durability}.db") as st:        # reopened with the default: the events are there
            assert [e.item_id for e in st.events()] == [1]
    with pytest.raises(ConfigError, match="durability='off'.*'full'.*'normal'"):
        UserState(tmp_path / "new" / "x.db", durability="off")
    assert not (tmp_path / "new").exists()


def test_corrupt_store_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EdgeRecError, match="not a readable behaviour store"):
        UserState(bad)


# ---- the CLI ------------------------------------------------------------------------------------
def test_rerank_cli_with_and_without_a_store(tiny_run, tmp_path, capsys):
    b, f = str(tiny_run / "bundle"), str(tiny_run / "sample_feed.json")
    assert main(["rerank", "--bundle", b, "--feed", f, "--k", "5", "--explain"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["ranked"]) == 5 and out["ranked"][0]["rank"] == 1 and "explanation" in out["ranked"][0]
    db = str(tmp_path / "s.db")
    assert main(["rerank", "--bundle", b, "--feed", f, "--state", db, "--record-history", "--no-policy"]) == 0
    with_store = json.loads(capsys.readouterr().out)["ranked"]
    # the store holds exactly the feed's history, so the same count stands in for history_total
    feed = json.loads(Path(f).read_text())
    feed["history_total"] = len(feed["history"])
    (tmp_path / "f2.json").write_text(json.dumps(feed))
    assert main(["rerank", "--bundle", b, "--feed", str(tmp_path / "f2.json"), "--no-policy"]) == 0
    no_store = json.loads(capsys.readouterr().out)["ranked"]
    assert [r["item_id"] for r in with_store] == [r["item_id"] for r in no_store]
    assert [r["score"] for r in with_store] == pytest.approx([r["score"] for r in no_store], abs=1e-6)
    # which history was used is said: a new store without --record-history drops the feed's, with a note
    assert main(["rerank", "--bundle", b, "--feed", f, "--state", str(tmp_path / "new.db")]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["history_used"] == {"source": f"store {tmp_path / 'new.db'}", "events": 0}
    assert f"the feed's {len(feed['history'])} history events are not used" in cap.err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["rerank", "--bundle", b, "--feed", str(tmp_path / "bad.json")]) == 2
    assert "not readable JSON" in capsys.readouterr().err


def test_rerank_cli_checks_the_whole_request_before_recording_history(tiny_run, tmp_path, capsys):
    """A bad candidate or clock fails (exit 2, the field named) before the feed's history reaches the
    store: otherwise the corrected rerun would record that history twice."""
    b = str(tiny_run / "bundle")
    feed = json.loads((tiny_run / "sample_feed.json").read_text())
    db = tmp_path / "s.db"
    for field, value, msg in (("duration_s", "long", "duration_s must be a number"), ("now", "x", "'now'")):
        bad = json.loads(json.dumps(feed))
        if field == "now":
            bad["now"] = value
        else:
            bad["candidates"][-1][field] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        assert main(["rerank", "--bundle", b, "--feed", str(tmp_path / "bad.json"), "--state", str(db),
                     "--record-history"]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
        if db.exists():
            with UserState(db) as st:
                assert st.count() == 0
    (tmp_path / "good.json").write_text(json.dumps(feed))
    assert main(["rerank", "--bundle", b, "--feed", str(tmp_path / "good.json"), "--state", str(db), "--record-history"]) == 0
    capsys.readouterr()
    with UserState(db) as st:
        assert st.count() == len(feed["history"])                      # recorded once, by the good request
    assert main(["rerank", "--bundle", b, "--feed", str(tmp_path / "good.json"), "--state", str(db), "--record-history"]) == 0
    capsys.readouterr()
    with UserState(db) as st:
        assert st.count() == len(feed["history"])                      # running it again records nothing twice


def test_drift_replay_adapts_faster_with_on_device_history(tiny_run, tmp_path, capsys):
    rep = json.loads((tiny_run / "drift.json").read_text())
    w, wo = rep["with_updates"], rep["without_updates"]
    assert rep["users"] == 50
    assert w["mean_swipes"] < wo["mean_swipes"] and w["reached_top3"] > wo["reached_top3"]
    assert all(0 <= r["with_updates"] <= rep["max_swipes"] for r in rep["rows"])
    # the local-learning arm: a real store and the adapter trained on the phone after every swipe
    ll = rep["with_local_learning"]
    assert ll["fit_every"] == 1 and ll["fits"] >= rep["users"] and 0 <= ll["fits_kept"] <= ll["fits"]
    assert all(0 <= r["with_local_learning"] <= rep["max_swipes"] for r in rep["rows"])
    vs = ll["swipes_vs_history_updates"]
    assert vs["fewer"] + vs["more"] + vs["same"] == rep["users"]
    assert vs["mean_difference"] == pytest.approx(np.mean([r["with_local_learning"] - r["with_updates"] for r in rep["rows"]]))
    # a viewer whose fit() never kept an adapter was ranked by the store's history alone: exactly the
    # history-updates arm (the store and the request's history are the same inputs)
    same = [r for r in rep["rows"] if r["local_learning"]["kept"] == 0]
    assert all(r["with_local_learning"] == r["with_updates"] for r in same)
    out = tmp_path / "d.json"
    assert main(["drift", "--data", str(tiny_run / "data"), "--bundle", str(tiny_run / "bundle"),
                 "--out", str(out), "--users", "3", "--no-local-learning"]) == 0
    small = json.loads(out.read_text())
    assert small["users"] == 3 and "with_local_learning" not in small and "local_learning" not in small["rows"][0]
    # counts that would report NaN medians (0 users) or run the pool dry are refused, nothing written
    for flag, v, msg in (("--users", "0", "users must be a whole number >= 1"),
                         ("--max-swipes", "0", "max_swipes must be"), ("--max-swipes", "100", "<= 61"),
                         ("--fit-every", "0", "fit_every must be a whole number >= 1")):
        assert main(["drift", "--data", str(tiny_run / "data"), "--bundle", str(tiny_run / "bundle"),
                     "--out", str(tmp_path / "bad.json"), flag, v]) == 2
        assert msg in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
