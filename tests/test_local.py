"""On-device learning: the adapter step in ExecuTorch, numpy and PyTorch; training from the store
without torch; forget(); what a federated client sends; the privacy accounting; `edge-rec federate`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edge_rec.errors import ConfigError
from edge_rec.local import BATCH, HeadWeights, loss_and_grad


def _batch(d: int, seed: int = 0, pad: int = 9) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(BATCH, d)).astype(np.float32), rng.normal(size=BATCH).astype(np.float32),
            (rng.random(BATCH) < 0.4).astype(np.float32), (np.arange(BATCH) < BATCH - pad).astype(np.float32))


def test_one_step_is_the_same_in_executorch_numpy_and_pytorch(tmp_path):
    """The bundle's training program, run by ExecuTorch's TrainingModule and its SGD, takes the step
    PyTorch's autograd + torch.optim.SGD takes, and so does the runtime's numpy step; over several steps
    too, from a start that is not zero (the L2 pull aims at it)."""
    from edge_rec.export.training import et_step, export_training_program, torch_step

    d, lr, l2 = 16, 0.5, 0.1
    theta0 = np.random.default_rng(1).normal(0, 0.2, d + 2).astype(np.float32)
    prog = export_training_program(d, l2, tmp_path / "head.pte", theta0)
    batch = _batch(d)
    losses, t_et = et_step(prog, batch, lr, steps=3)
    theta = theta0.copy()
    for k in range(3):
        loss_np, g = loss_and_grad(theta, theta0, *batch, l2)
        if k == 0:
            loss_pt, t_pt = torch_step(theta0, batch, lr, l2)
            assert abs(loss_np - loss_pt) < 1e-6 and abs(losses[0] - loss_pt) < 1e-6
            assert np.abs((theta0 - lr * g) - t_pt).max() < 1e-6
        assert abs(losses[k] - loss_np) < 1e-5
        theta = (theta - np.float32(lr) * g).astype(np.float32)
    assert np.abs(t_et - theta).max() < 1e-6
    assert np.abs(t_et - theta0).max() > 1e-3                 # it did move
    # padding rows (weight 0) change nothing
    f, s, y, w = batch
    y2 = y.copy()
    y2[w == 0] = 1 - y2[w == 0]
    assert np.allclose(loss_and_grad(theta0, theta0, f, s, y2, w, l2)[1], loss_and_grad(theta0, theta0, *batch, l2)[1])


def test_the_bundle_carries_its_training_program(bundle):
    """Export writes local/head_train.pte beside the inference files, listed with its checksum, and the
    parity it measured."""
    from edge_rec.bundle import sha256_file, verify_bundle

    m = verify_bundle(bundle)
    ll = m["local_learning"]
    files = {f["path"]: f for f in m["files"]}
    assert ll["program"] in files and files[ll["program"]]["sha256"] == sha256_file(bundle / ll["program"])
    assert max(ll["parity"].values()) < 1e-5
    assert ll["global_head"]["theta"] == [0.0] * (ll["global_head"]["d"] + 2)     # the frozen ranking


LEARN = r"""
import json, sys, numpy as np
from edge_rec.runtime import Reranker
from edge_rec.state import UserState, Event
from edge_rec.local import LocalLearner, stored_head

bundle, store, out = sys.argv[1:4]
rr = Reranker.open(bundle)
feed = json.load(open(f"{bundle}/sample_feed.json"))
cands = feed["candidates"]
cut = float(np.median([c["embeddings"]["visual"][0] for c in cands]))
# 25 pages of the sample feed's items (fresh ids, jittered vectors); the viewer watches every item whose
# first visual coordinate is above the median and never touches the rest (negatives from the feed)
rng = np.random.default_rng(0)
learner = None
with UserState(store) as st:
    learner = LocalLearner(rr, st)
    pages = []
    for p in range(25):
        now = 1000.0 + 600 * p
        page = []
        for j, c in enumerate(cands):
            v = np.asarray(c["embeddings"]["visual"], np.float32) + rng.normal(0, 0.05, len(c["embeddings"]["visual"]))
            page.append({**c, "item_id": 1_000_000 + 100 * p + j, "embeddings": {"visual": v.tolist()}})
        learner.observe(page, now)
        for j, c in enumerate(page):
            if c["embeddings"]["visual"][0] > cut:
                st.record(Event(item_id=c["item_id"], ts=now + 10 + j, watch_ms=20000.0, duration_ms=20000.0,
                                finish=True, embeddings={"visual": np.asarray(c["embeddings"]["visual"], np.float32)}))
        pages.append(page)
    test = pages[-1]
    before = [r["item_id"] for r in rr.rerank(test, context={"now": 99999.0}, state=st)]
    rep = learner.fit()
    head = stored_head(rr, st)
    after = rr.rerank(test, context={"now": 99999.0}, state=st)
    events = st.events()
    st.forget()
    gone = stored_head(rr, st) is None and st._exposures() == []
    st.record_many(events)           # the same events again: the ranking is the frozen one, the adapter is gone
    again = [r["item_id"] for r in rr.rerank(test, context={"now": 99999.0}, state=st)]
json.dump({"report": rep, "theta": None if head is None else head.theta.tolist(), "before": before,
           "after": [r["item_id"] for r in after], "gone": gone, "again": again, "n": len(cands),
           "torch": "torch" in sys.modules}, open(out, "w"))
"""


def test_the_phone_learns_from_its_store_without_torch_and_forget_drops_it(bundle, tmp_path):
    """The runtime trains the adapter from a UserState in a process that never imports torch; the next
    rerank() uses it; forget() discards it with the events (the frozen ranking comes back)."""
    script = tmp_path / "learn.py"
    script.write_text(LEARN)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(script), str(bundle), str(tmp_path / "viewer.db"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["torch"] is False
    rep = r["report"]
    assert rep["trained"] is True, rep
    assert rep["held_out_loss"]["personal"] < rep["held_out_loss"]["bundle"]
    assert rep["examples"] == 25 * r["n"] and rep["steps"] > 0        # every candidate of every page
    assert r["theta"] is not None and any(abs(x) > 1e-3 for x in r["theta"])
    assert r["after"] != r["before"]                              # the next rerank used the weights
    assert r["gone"] is True and r["again"] == r["before"]        # forget() took the adapter too


def test_pages_are_labelled_by_the_reaction_that_followed(bundle, tmp_path):
    """A page's candidate is a positive if the viewer's first event on it after the page was an
    effective view, a negative if it was a skip or there was none; an event from before the page does
    not label it (it is an example of its own, scored from its stored vectors)."""
    from edge_rec.local import LocalLearner, examples_from_store
    from edge_rec.runtime import Reranker
    from edge_rec.state import Event, UserState

    rr = Reranker.open(bundle)
    cands = json.loads((bundle / "sample_feed.json").read_text())["candidates"][:4]
    ids = [c["item_id"] for c in cands]
    vec = {c["item_id"]: np.asarray(c["embeddings"]["visual"], np.float32) for c in cands}
    with UserState(tmp_path / "v.db") as st:
        st.record(Event(item_id=ids[3], ts=50.0, watch_ms=9000.0, duration_ms=10000.0, embeddings={"visual": vec[ids[3]]}))
        LocalLearner(rr, st).observe(cands, 100.0)
        st.record_many([Event(item_id=ids[0], ts=110.0, watch_ms=6000.0, duration_ms=10000.0, embeddings={"visual": vec[ids[0]]}),
                        Event(item_id=ids[1], ts=120.0, watch_ms=800.0, duration_ms=10000.0, skip=True,
                              embeddings={"visual": vec[ids[1]]})])
        ex = examples_from_store(rr, st)
        assert ex.label.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]       # the page's four, then the earlier view
        assert len(st._exposures()) == 4


def test_a_viewer_with_no_pattern_keeps_the_bundles_adapter(bundle, tmp_path):
    """Coin-flip labels: the trained adapter cannot predict the newest events better, so nothing is kept."""
    from edge_rec.local import LocalLearner, stored_head
    from edge_rec.runtime import Reranker
    from edge_rec.state import Event, UserState

    rr = Reranker.open(bundle)
    cands = json.loads((bundle / "sample_feed.json").read_text())["candidates"]
    rng = np.random.default_rng(3)
    flips = rng.random(60) < 0.5
    evs = [Event(item_id=5_000_000 + k, ts=100.0 + k, duration_ms=10000.0, skip=bool(flips[k]),
                 watch_ms=500.0 if flips[k] else 10000.0,
                 embeddings={"visual": np.asarray(cands[k % len(cands)]["embeddings"]["visual"], np.float32)})
           for k in range(60)]
    with UserState(tmp_path / "v.db") as st:
        st.record_many(evs)
        rep = LocalLearner(rr, st).fit()
        assert rep["trained"] is False and stored_head(rr, st) is None
        assert rep["held_out_loss"]["personal"] >= rep["held_out_loss"]["bundle"]


def test_a_damaged_adapter_in_the_store_is_a_clear_error(bundle, tmp_path):
    from edge_rec.errors import DataError
    from edge_rec.local import STORE_KEY
    from edge_rec.runtime import Reranker
    from edge_rec.state import UserState

    rr = Reranker.open(bundle)
    cands = json.loads((bundle / "sample_feed.json").read_text())["candidates"]
    with UserState(tmp_path / "v.db") as st:
        st._set_meta(STORE_KEY, json.dumps({"d": rr.fused_dim, "theta": [float("nan")] * (rr.fused_dim + 2),
                                            "bundle": rr.bundle_id}))
        with pytest.raises(DataError, match="personal adapter"):
            rr.rerank(cands, context={"now": 1e9}, state=st)
        # an adapter trained for another bundle is ignored, not applied to this model
        st._set_meta(STORE_KEY, json.dumps({"d": 3, "theta": [1.0] * 5, "bundle": "another"}))
        assert len(rr.rerank(cands, context={"now": 1e9}, state=st)) == len(cands)


def test_a_client_sends_only_its_clipped_noised_update_and_the_round():
    """The bytes that leave the phone: one float32 tensor of the adapter's size (Flower's ndarray
    serialization) and the round number; the change is clipped, and noised when epsilon is finite."""
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.common import bytes_to_ndarray

    from edge_rec.distill.federate import Request, Viewer, make_client
    from edge_rec.local import Examples

    d = 16
    f, s, y, _ = _batch(d, seed=2)
    y = (f[:, 0] > 0).astype(np.float32)                       # learnable: the update is large before clipping
    blank = Request(np.zeros(3), np.zeros((3, d)), np.array([1.0, 0, 0]))
    v = Viewer(7, [], Examples(f, s, y), blank, blank)
    g = np.zeros(d + 2, np.float32)
    ins = FitIns(ndarrays_to_parameters([g]), {"round": 4})
    plain = make_client(v, epochs=5, lr=0.5, l2=0.0, clip=0.25, noise_multiplier=0.0, seed=0).to_client().fit(ins)
    noisy = make_client(v, epochs=5, lr=0.5, l2=0.0, clip=0.25, noise_multiplier=2.0, seed=0).to_client().fit(ins)
    for res in (plain, noisy):
        assert len(res.parameters.tensors) == 1 and res.metrics == {"round": 4} and res.num_examples == 1
        upd = bytes_to_ndarray(res.parameters.tensors[0])
        assert upd.dtype == np.float32 and upd.shape == (d + 2,)
        assert len(res.parameters.tensors[0]) <= 128 + 4 * (d + 2)        # .npy header + the numbers
    a, b = (bytes_to_ndarray(r.parameters.tensors[0]) for r in (plain, noisy))
    assert abs(np.linalg.norm(a) - 0.25) < 1e-5                 # clipped to the bound
    assert np.linalg.norm(b - a) > 0.25                          # noise of sd 2 x 0.25 per coordinate


def test_noise_is_calibrated_by_the_rdp_accountant():
    from edge_rec.distill.federate import epsilon_spent, noise_for

    sig = {e: noise_for(e, 1e-5, 10) for e in (8.0, 2.0, 1.0)}
    assert sig[8.0] < sig[2.0] < sig[1.0]
    for e, s in sig.items():
        assert e * 0.97 <= epsilon_spent(s, 1e-5, 10) <= e
    assert noise_for(math.inf, 1e-5, 10) == 0.0
    assert epsilon_spent(sig[2.0], 1e-5, 5) < epsilon_spent(sig[2.0], 1e-5, 10)    # spent grows per round


def _viewers(n: int, d: int = 16, seed: int = 0) -> list:
    """``n`` synthetic viewers whose clicks follow the first fused coordinate: an adapter can learn them."""
    from edge_rec.distill.federate import Request, Viewer
    from edge_rec.local import Examples

    out = []
    for u in range(n):
        f, s, _, _ = _batch(d, seed=seed * 1000 + u)
        y = (f[:, 0] + 0.3 * np.random.default_rng(u).normal(size=len(f)) > 0).astype(np.float32)
        r = np.random.default_rng(500 + u)
        req = [Request(r.normal(size=12), r.normal(size=(12, d)), (np.arange(12) == k).astype(float)) for k in (0, 1)]
        out.append(Viewer(u, [], Examples(f, s, y), req[0], req[1]))
    return out


def test_secure_aggregation_gives_fedavgs_average_and_nothing_of_one_update():
    """Flower's SecAgg+ over the in-process grid, every client every round, no noise: the global adapter
    is plain FedAvg's (to SecAgg+'s quantization step); and no reply a phone sends holds its update:
    parameters cleared, only SecAgg+ keys/shares, the masked vector (uniform over the modulus) and the round."""
    from flwr.common import bytes_to_ndarray
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    from edge_rec.distill.federate import federate, federate_secure

    vs = _viewers(6)
    start = HeadWeights(np.zeros(18, np.float32))
    sec = federate_secure(vs, start, rounds=2, clients_per_round=6, epsilon=math.inf, clip=0.5)
    plain = federate(vs, start, rounds=2, clients_per_round=6, epsilon=math.inf, clip=0.5)
    a, b = sec["final_head"].theta, plain["final_head"].theta
    assert np.linalg.norm(b) > 0.1 and np.abs(a - b).max() < 1e-4
    allowed = {"pk1", "pk2", "dsts", "ctxts", "masked_params", "nids", "shares"}
    nodes = {n for n, _ in sec["wire"]}
    assert len(nodes) == 6 and len(sec["wire"]) == 6 * 4 * 2                 # 4 SecAgg+ stages, 2 rounds
    masked = 0
    for _, raw in sec["wire"]:
        c = message_from_proto(ProtoMessage.FromString(raw)).content
        assert all(len(r) == 0 for r in c.array_records.values())
        cfg = c.config_records["secaggplus_configs"]
        assert set(cfg) <= allowed
        if "fitres.metrics" in c.config_records:
            assert dict(c.config_records["fitres.metrics"]) in ({"round": 1}, {"round": 2})
        if "masked_params" in cfg:
            vec = np.concatenate([bytes_to_ndarray(x).ravel() for x in cfg["masked_params"]]).astype(np.float64)
            assert vec[-18:].std() > 0.1 * 2 ** 32              # uniform over the modulus, not a quantized update
            masked += 1
    assert masked == 12


def test_central_dp_counts_the_sample_rate():
    """User-level DP under secure aggregation: clients sampled at rate q per round need far less noise
    than a client noising every round on its own, for the same epsilon; the accountant agrees."""
    from edge_rec.distill.federate import epsilon_spent, federate_secure, noise_for

    for e in (8.0, 1.0):
        s_central, s_local = noise_for(e, 1e-5, 10, sample_rate=0.05), noise_for(e, 1e-5, 10)
        assert s_central < s_local / 2
        assert e * 0.97 <= epsilon_spent(s_central, 1e-5, 10, 0.05) <= e
    vs = _viewers(12)
    res = federate_secure(vs, HeadWeights(np.zeros(18, np.float32)), rounds=3, clients_per_round=4, epsilon=2.0)
    assert res["sample_rate"] == pytest.approx(4 / 12)
    assert res["noise_multiplier"] == pytest.approx(noise_for(2.0, 1e-5, 3, sample_rate=4 / 12))
    assert [r["round"] for r in res["rounds"]] == [0, 1, 2, 3] and res["rounds"][0]["epsilon_spent"] == 0.0
    assert 1.9 < res["rounds"][-1]["epsilon_spent"] <= 2.0
    with pytest.raises(ConfigError):
        federate_secure(vs, HeadWeights(np.zeros(18, np.float32)), rounds=1, clients_per_round=2, epsilon=2.0)


def test_federate_cli_on_the_tiny_world(tiny_run, tmp_path):
    """`edge-rec federate` as a user runs it: the report's keys, a plot, and an updated bundle that
    verifies and whose adapter the runtime uses."""
    from edge_rec.bundle import verify_bundle
    from edge_rec.cli import main
    from edge_rec.runtime import Reranker

    out = tmp_path / "fed"
    assert main(["federate", "--data", str(tiny_run / "data"), "--bundle", str(tiny_run / "bundle"), "--out", str(out),
                 "--rounds", "3", "--clients-per-round", "8", "--epsilon", "inf", "--epsilon", "4",
                 "--max-users", "60"]) == 0
    rep = json.loads((out / "federate_report.json").read_text())
    assert [(s["privacy"], s["epsilon"]) for s in rep["settings"]] == [("central", None), ("central", 4.0),
                                                                       ("local", None), ("local", 4.0)]
    for s in rep["settings"]:
        assert {"epsilon", "delta", "rounds", "clients_per_round", "ndcg@10", "lift_vs_frozen",
                "bytes_per_client_round"} <= set(s)
        if s["privacy"] == "local":
            assert s["bytes_per_client_round"] == 128 + 4 * (16 + 2) and s["sample_rate"] == 1.0
        else:           # SecAgg+ keys, encrypted shares and the masked vector, over four stages
            assert 1000 < s["bytes_per_client_round"] < 20000 and s["sample_rate"] == pytest.approx(8 / rep["clients"])
    for k in (0, 2):
        assert rep["settings"][k + 1]["noise_multiplier"] > 0 and rep["settings"][k]["noise_multiplier"] == 0
        assert 3.8 < rep["settings"][k + 1]["epsilon_spent"] <= 4.0
    assert set(rep["privacy"]) >= {"central", "local", "accountant", "delta"}
    assert [r["round"] for r in rep["rounds"]] == [0, 1, 2, 3]
    assert {"ndcg@10", "epsilon_spent"} <= set(rep["rounds"][0])
    assert 0 < rep["frozen"]["ndcg@10"] <= 1 and 0 < rep["central"]["ndcg@10"] <= 1
    assert rep["rounds"][0]["ndcg@10"] == pytest.approx(rep["frozen"]["ndcg@10"])
    p = rep["personalization"]
    assert p["viewers"] == rep["viewers"] == 60 and len(p["buckets"]) == 2
    assert (out / "federate_rounds.png").stat().st_size > 1000
    m = verify_bundle(out / "bundle")
    theta = m["local_learning"]["global_head"]["theta"]
    assert m["local_learning"]["federated"]["picked_round"] == rep["settings"][0]["picked_round"]
    rr = Reranker.open(out / "bundle")
    assert np.allclose(rr.global_head.theta, theta)
    assert main(["federate", "--data", str(tiny_run / "data"), "--bundle", str(tiny_run / "bundle"),
                 "--out", str(tmp_path / "y"), "--rounds", "0"]) == 2
    assert main(["federate", "--data", str(tiny_run / "data"), "--bundle", str(tiny_run / "bundle"),
                 "--out", str(tmp_path / "x"), "--epsilon", "-1"]) == 2


def test_head_weights_round_trip():
    h = HeadWeights(np.arange(18, dtype=np.float32))
    assert np.array_equal(HeadWeights.from_json(json.loads(json.dumps(h.to_json())), 16, "t").theta, h.theta)
    s, f = np.array([0.5, -1.0]), np.ones((2, 16))
    assert np.allclose(h.adjust(s, f), s * (1 + 16) + 17 + f @ np.arange(16))
