"""Learning on the phone without the data leaving it, measured on a dataset with per-user splits.

Two experiments over the same users, both through the bundle's own engine (``edge_rec.runtime``):

- **personalization** (:func:`personalize`): every viewer trains the personal adapter of
  :mod:`edge_rec.local` on their own training-period events (their store) and is judged on their next
  request (NDCG@10, the test split), against the frozen bundle; the adapter's settings are picked on
  the validation request;
- **federated averaging**: each viewer is one Flower client (``flwr.client.NumPyClient``) holding its own
  store; per round a sample of clients trains from the global adapter and sends back only its update
  and the round number; Flower's ``FedAvg`` averages them; the global adapter is judged every round on
  every viewer's test request. Two kinds of differential privacy:

  - ``central`` (:func:`federate_secure`, the default): Flower's secure aggregation (SecAgg+: the
    server learns only the sum of the updates), each update clipped on the phone, Gaussian noise added
    once to the average (Flower's ``DifferentialPrivacyClientSideFixedClipping``); user-level DP
    accounted with Opacus' RDP accountant at the clients' sample rate per round. The server is trusted
    to add the noise and to sample clients uniformly, never with a single update.
  - ``local`` (:func:`federate`): each client clips its update and adds the noise itself before it leaves
    the phone, so nobody is trusted; counted as a release every round (sample rate 1, no amplification
    claimed, because the server knows who sent an update). It needs far more noise for the same epsilon.

Flower's server workflows (``DefaultWorkflow`` + ``SecAggPlusWorkflow``) and client mods
(``secaggplus_mod``, ``fixedclipping_mod``) run unchanged over an in-process ``Grid`` that delivers
Flower's own protobuf messages (:func:`_local_grid`); Flower's Ray-backed simulation engine is not used
(it needs ``ray``, which this project does not install). The local kind drives ``NumPyClient.fit`` ->
``FitRes`` -> ``FedAvg.aggregate_fit`` directly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edge_rec.errors import ConfigError
from edge_rec.local import Examples, HeadWeights, event_label, score_page, train_head, validated_head
from edge_rec.metrics import ndcg_at_k
from edge_rec.state import Event

from .dataset import Dataset


@dataclass
class Request:
    """One request of a viewer as the runtime scored it with the frozen model: score [N], fused [N, d],
    click [N]."""

    score: np.ndarray
    fused: np.ndarray
    click: np.ndarray

    def ndcg(self, head: HeadWeights | None) -> float:
        s = self.score if head is None else head.adjust(self.score, self.fused)
        return float(ndcg_at_k(s[None], self.click[None].astype(np.float64), 10)[0])


@dataclass
class Viewer:
    user: int
    events: list[Event]
    examples: Examples
    val: Request
    test: Request
    extra: dict[str, Any] = field(default_factory=dict)


def _events(ds: Dataset, rows: np.ndarray) -> list[Event]:
    """Interaction rows as the events a phone would have stored (real reactions and embeddings)."""
    from edge_rec.distill.feed import creator_or_none

    it, items = ds.interactions, ds.items
    out = []
    for j in rows.tolist():
        i = int(it["item"][j])
        out.append(Event(item_id=int(items["item_id"][i]), ts=float(it["ts"][j]), watch_ms=float(it["watch_ms"][j]),
                         duration_ms=float(it["duration_ms"][j]), finish=bool(it["finish"][j]),
                         skip=bool(it["skip"][j]), like=bool(it["like"][j]), share=bool(it["share"][j]),
                         creator_id=creator_or_none(items["creator_id"][i]),
                         embeddings={m: ds.embeddings[m][i].astype(np.float32) for m in ds.embeddings if ds.present[m][i]}))
    return out


def _request(rr: Any, ds: Dataset, r: int) -> Request:
    """Request ``r`` scored as the phone scored it (:func:`edge_rec.local.score_page`); click [N] are its
    clicks (a held-out request: what the metric reads)."""
    from edge_rec.distill.feed import request_feed

    feed = request_feed(ds, r, history=rr.hist_len)
    hist = rr.parse_history(feed["history"])
    _, score, fused = score_page(rr, feed["candidates"], feed["now"], hist)
    clicked = set(feed["clicked_item_ids"])
    click = np.array([1.0 if c["item_id"] in clicked else 0.0 for c in feed["candidates"]])
    return Request(score.astype(np.float64), fused.astype(np.float64), click)


def _page_examples(rr: Any, ds: Dataset, r: int) -> Examples:
    """A training-period page as :meth:`LocalLearner.observe` keeps it, labelled as
    :func:`~edge_rec.local.examples_from_store` labels it: the viewer's logged reaction to an item
    through :func:`~edge_rec.local.event_label`, 0 for a candidate with none (a negative from the feed)."""
    from edge_rec.distill.feed import request_feed

    feed = request_feed(ds, r, history=rr.hist_len)
    ids, score, fused = score_page(rr, feed["candidates"], feed["now"], rr.parse_history(feed["history"]))
    rows = np.flatnonzero(ds.interactions["req"] == r)
    label_of = {e.item_id: event_label(e) for e in _events(ds, rows)}
    label = np.array([label_of.get(int(i), 0.0) for i in ids], np.float32)
    return Examples(fused, score, label)


def load_viewers(ds: Dataset, rr: Any, max_users: int | None = None, seed: int = 0, progress: bool = False) -> list[Viewer]:
    """Viewers with a validation and a test request that has a click; their store holds their
    training-period pages and reactions. ``max_users``: a random sample of them (seeded)."""
    rq = ds.requests
    val = {int(rq["user"][r]): int(r) for r in ds.split_index("val") if rq["click"][r].max() > 0}
    test = {int(rq["user"][r]): int(r) for r in ds.split_index("test") if rq["click"][r].max() > 0}
    users = sorted(set(val) & set(test))
    if max_users is not None and len(users) > max_users:
        users = sorted(np.random.default_rng(seed).choice(users, max_users, replace=False).tolist())
    train = {}
    for r in ds.split_index("train").tolist():
        train.setdefault(int(rq["user"][r]), []).append(r)
    viewers = []
    it: Any = users
    if progress:
        from tqdm import tqdm

        it = tqdm(users, desc="viewers", unit="user")
    d = rr.fused_dim
    for u in it:
        pages = [_page_examples(rr, ds, r) for r in sorted(train.get(u, []), key=lambda r: rq["ts"][r])]
        ex = (Examples(np.concatenate([p.fused for p in pages]), np.concatenate([p.score for p in pages]),
                       np.concatenate([p.label for p in pages])) if pages else
              Examples(np.zeros((0, d), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)))
        viewers.append(Viewer(u, [], ex, _request(rr, ds, val[u]), _request(rr, ds, test[u])))
    return viewers


def _mean_ndcg(viewers: Sequence[Viewer], heads: Sequence[HeadWeights | None] | HeadWeights | None, split: str) -> float:
    hs = heads if isinstance(heads, (list, tuple)) else [heads] * len(viewers)
    return float(np.nanmean([getattr(v, split).ndcg(h) for v, h in zip(viewers, hs)]))


PERSONAL_GRID = ({"l2": 0.01}, {"l2": 0.1}, {"l2": 1.0})


def personalize(viewers: Sequence[Viewer], start: HeadWeights, epochs: int = 20, lr: float = 0.5) -> dict[str, Any]:
    """Each viewer trains alone on their own events; the L2 pull is picked on validation, then the
    test request is read once. Returns frozen vs personal NDCG@10 overall and per bucket (viewers with
    at most / more than the median number of labelled events) and the cost of a step."""
    def heads_for(l2: float) -> tuple[list[HeadWeights], list[float], int]:
        # the runtime's own rule (LocalLearner.fit): keep a viewer's adapter only if it predicts their
        # newest events better than the bundle's
        hs, ms, adopted = [], [], 0
        for v in viewers:
            h, rep = validated_head(start, v.examples, epochs=epochs, lr=lr, l2=l2) if len(v.examples) >= 8 else (None, {})
            hs.append(h if h is not None else start)
            adopted += h is not None
            if h is not None and rep.get("steps"):
                ms.append(rep["ms"] / rep["steps"])
        return hs, ms, adopted

    trials = []
    for g in PERSONAL_GRID:
        hs, _, adopted = heads_for(g["l2"])
        trials.append({**g, "val.ndcg@10": _mean_ndcg(viewers, hs, "val"), "adopted": adopted})
    best = max(trials, key=lambda t: t["val.ndcg@10"])
    heads, ms_per_step, adopted = heads_for(best["l2"])
    n_ex = np.array([len(v.examples) for v in viewers])
    med = float(np.median(n_ex))
    frozen = np.array([v.test.ndcg(start if start.theta.any() else None) for v in viewers])
    personal = np.array([v.test.ndcg(h) for v, h in zip(viewers, heads)])

    def summary(sel: np.ndarray) -> dict[str, Any]:
        d = personal[sel] - frozen[sel]
        lo, hi = _bootstrap_ci(d)
        return {"viewers": int(sel.sum()), "frozen.ndcg@10": float(np.nanmean(frozen[sel])),
                "personal.ndcg@10": float(np.nanmean(personal[sel])), "lift": float(np.nanmean(d)), "lift_ci95": [lo, hi]}

    return {"viewers": len(viewers), "adopted": adopted, "grid": trials, "picked": best, "epochs": epochs, "lr": lr,
            "overall": summary(np.ones(len(viewers), bool)),
            "buckets": {f"few (<= {med:g} events)": summary(n_ex <= med), f"many (> {med:g} events)": summary(n_ex > med)},
            "ms_per_step_p50": float(np.median(ms_per_step)) if ms_per_step else None,
            "labelled_events_median": med}


def _bootstrap_ci(d: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# Opacus' default RDP orders stop at 63; with few rounds at a small sample rate the best order for a
# large epsilon lies beyond, and the bound would be looser than it needs to be (Opacus warns so)
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 512, 1024]


def noise_for(epsilon: float, delta: float, rounds: int, sample_rate: float = 1.0) -> float:
    """Noise multiplier that gives each client (epsilon, delta)-DP over ``rounds`` releases (Opacus RDP);
    ``sample_rate``: the chance that a client takes part in a round (1: every round, no amplification)."""
    if math.isinf(epsilon):
        return 0.0
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=rounds, accountant="rdp", alphas=RDP_ORDERS))


def epsilon_spent(noise_multiplier: float, delta: float, rounds: int, sample_rate: float = 1.0) -> float:
    if noise_multiplier == 0 or rounds == 0:
        return float("inf") if rounds else 0.0
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, rounds)]
    return float(acc.get_epsilon(delta, alphas=RDP_ORDERS))


def make_client(v: Viewer, *, epochs: int, lr: float, l2: float, clip: float, noise_multiplier: float, seed: int,
                send: str = "delta") -> Any:
    """One viewer's device as a Flower ``NumPyClient``: ``fit`` trains from the global adapter on the
    viewer's own examples and returns [update], 1 (every update weighs the same, as the DP bound
    assumes) and {"round": r}: nothing else leaves the phone.

    ``send="delta"`` (local DP): the update is the change of the adapter, clipped to L2 ``clip`` and
    noised here. ``send="weights"`` (central DP under secure aggregation): the trained adapter itself;
    Flower's ``fixedclipping_mod`` clips its change to ``clip`` and ``secaggplus_mod`` masks it before it
    leaves, and the noise is added once, to the sum."""
    from flwr.client import NumPyClient

    class EdgeClient(NumPyClient):
        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            rnd = int(config["round"])
            g = np.asarray(parameters[0], np.float32)
            local, _ = train_head(HeadWeights(g), v.examples, epochs=epochs, lr=lr, l2=l2, seed=seed + rnd)
            if send == "weights":
                return [local.theta.astype(np.float32)], 1, {"round": rnd}
            delta = (local.theta - g).astype(np.float64)
            norm = float(np.linalg.norm(delta))
            if norm > clip:
                delta *= clip / norm
            if noise_multiplier > 0:
                rng = np.random.default_rng([seed, v.user, rnd])
                delta = delta + rng.normal(0.0, noise_multiplier * clip, delta.shape)
            return [delta.astype(np.float32)], 1, {"round": rnd}

    return EdgeClient()


def _local_grid(apps: dict[int, Any]) -> Any:
    """Flower's ``Grid`` (the server side of its message transport) delivered in this process: a message
    goes to its node's ``ClientApp`` with that node's ``Context`` and the reply comes straight back. Only
    the transport (SuperLink and SuperNodes, or the Ray simulation engine) is replaced; the messages,
    the SecAgg+ stages, their cryptography and the strategies are Flower's, and every message crosses as
    Flower's protobuf bytes. ``sent[node]`` counts the bytes of every reply a node sends."""
    from uuid import uuid4

    from flwr.common import Context, Message, RecordDict
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.server import Grid
    from flwr.supercore.run import Run

    class LocalGrid(Grid):
        def __init__(self) -> None:
            self._run = Run.create_empty(run_id=1)
            self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
                             for n in apps}
            self.sent: dict[int, int] = {n: 0 for n in apps}
            self.rounds_of: dict[int, set[str]] = {n: set() for n in apps}
            self.replies: list[Message] = []
            self.log: list[tuple[int, bytes]] = []         # (node, reply bytes) of every reply: what left the phones

        def set_run(self, run: Any) -> None:
            self._run = run

        @property
        def run(self) -> Any:
            return self._run

        def create_message(self, content: Any, message_type: str, dst_node_id: int, group_id: str,
                           ttl: float | None = None) -> Any:
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> list[int]:
            return list(apps)

        def push_messages(self, messages: Any) -> list[str]:
            ids = []
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = str(uuid4())
                msg.metadata.__dict__["_run_id"] = 1
                node = msg.metadata.dst_node_id
                # each side gets what crossed the wire, as over gRPC: its own decoded copy
                reply = apps[node](message_from_proto(message_to_proto(msg)), self.contexts[node])
                wire = message_to_proto(reply)
                self.sent[node] += wire.ByteSize()
                self.log.append((node, wire.SerializeToString()))
                reply = message_from_proto(wire)
                self.rounds_of[node].add(msg.metadata.group_id)
                self.replies.append(reply)
                ids.append(msg.metadata.message_id)
            return ids

        def pull_messages(self, message_ids: Any) -> list[Any]:
            want = set(message_ids)
            got = [m for m in self.replies if m.metadata.reply_to_message_id in want]
            self.replies = [m for m in self.replies if m.metadata.reply_to_message_id not in want]
            return got

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
            return self.pull_messages(self.push_messages(messages))

    return LocalGrid()


def federate_secure(viewers: Sequence[Viewer], start: HeadWeights, *, rounds: int, clients_per_round: int,
                    epsilon: float, delta: float = 1e-5, clip: float = 0.5, epochs: int = 5, lr: float = 0.5,
                    l2: float = 0.1, seed: int = 0, on_round: Any = None) -> dict[str, Any]:
    """FedAvg of the adapter under secure aggregation and central differential privacy, all Flower's:
    ``SecAggPlusWorkflow`` (clients' updates are masked so the server learns only their sum; Shamir
    shares among each client's neighbours recover it when clients drop), ``fixedclipping_mod`` on each
    client (its change clipped to L2 ``clip``), ``DifferentialPrivacyClientSideFixedClipping`` around
    ``FedAvg`` (Gaussian noise of std ``noise_multiplier * clip / clients_per_round`` on the average).

    Privacy is user-level (epsilon, delta)-DP of the released global adapters, accounted with Opacus'
    RDP accountant at sample rate ``clients_per_round / clients`` per round (the amplification by
    sampling assumes the server cannot choose who takes part: clients are sampled uniformly). The
    server is trusted to add the noise; secure aggregation keeps every single update from it.
    Returns the same keys as :func:`federate` plus ``secure_aggregation``."""
    import logging
    import random

    from flwr.client import ClientApp
    from flwr.client.mod import fixedclipping_mod, secaggplus_mod
    from flwr.common import Context, RecordDict, ndarrays_to_parameters
    from flwr.server import ServerConfig, SimpleClientManager
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.supercore.task_identity import TaskIdentity

    clients = [v for v in viewers if len(v.examples) > 0]
    if not clients:
        raise ConfigError("no viewer has a labelled event in the training split; nothing to learn from.")
    if not 3 <= clients_per_round <= len(clients):
        raise ConfigError(f"secure aggregation needs 3 to {len(clients)} clients per round (the viewers with labelled "
                          f"events), got {clients_per_round}.")
    q = clients_per_round / len(clients)
    sigma = noise_for(epsilon, delta, rounds, sample_rate=q)
    node_of = {i + 1: v for i, v in enumerate(clients)}          # node 0 is the server's

    def app_for(v: Viewer) -> Any:
        return ClientApp(client_fn=lambda ctx: make_client(v, epochs=epochs, lr=lr, l2=l2, clip=clip, noise_multiplier=0.0,
                                                           seed=seed, send="weights").to_client(),
                         mods=[secaggplus_mod, fixedclipping_mod])      # clipping last, on the client's own weights

    grid = _local_grid({n: app_for(v) for n, v in node_of.items()})
    rows: list[dict[str, Any]] = []
    thetas: list[np.ndarray] = []

    def judge(rnd: int, arrays: list[np.ndarray], config: dict[str, Any]) -> tuple[float, dict[str, float]]:
        theta = np.asarray(arrays[0], np.float32)
        h = HeadWeights(theta)
        row = {"round": rnd, "epsilon_spent": epsilon_spent(sigma, delta, rnd, q) if sigma > 0 else (0.0 if rnd == 0 else math.inf),
               "val.ndcg@10": _mean_ndcg(viewers, h, "val"), "ndcg@10": _mean_ndcg(viewers, h, "test")}
        rows.append(row)
        thetas.append(theta.copy())
        if on_round is not None and rnd > 0:
            on_round(row)
        return 0.0, {}

    def rounds_agree(metrics: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        got = {int(m["round"]) for _, m in metrics}
        if len(got) != 1:
            raise RuntimeError(f"updates from rounds {sorted(got)} arrived together")
        return {"round": got.pop(), "updates": len(metrics)}

    fedavg = FedAvg(fraction_fit=q, fraction_evaluate=0.0, min_fit_clients=clients_per_round,
                    min_available_clients=len(clients), initial_parameters=ndarrays_to_parameters([start.theta.astype(np.float32)]),
                    evaluate_fn=judge, on_fit_config_fn=lambda r: {"round": r}, fit_metrics_aggregation_fn=rounds_agree)
    strategy = DifferentialPrivacyClientSideFixedClipping(fedavg, noise_multiplier=sigma, clipping_norm=clip,
                                                          num_sampled_clients=clients_per_round)
    ctx = LegacyContext(context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                        config=ServerConfig(num_rounds=rounds), strategy=strategy, client_manager=SimpleClientManager())
    # SecAgg+ quantizes values in [-clipping_range, clipping_range] after scaling each by its weight /
    # max_weight (every client here weighs 1, so 1 keeps the full precision: 2 x range / 2**22 a step);
    # every neighbour set holds about half the round's clients and any 2/3 of a set can rebuild a
    # dropped client's mask
    secagg = SecAggPlusWorkflow(num_shares=0.5, reconstruction_threshold=2 / 3, max_weight=1.0,
                                clipping_range=float(max(8.0, 4 * (np.abs(start.theta).max() + clip))))
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.WARNING)                  # Flower logs every stage of every round at INFO
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)                                    # Flower samples clients with `random`,
    np.random.seed(seed)                                 # and draws the DP noise with np.random
    ident = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    # what a SuperLink would give this server task (Flower stamps every message with it)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    t0 = time.perf_counter()
    try:
        DefaultWorkflow(fit_workflow=secagg)(grid, ctx)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        flwr_log.setLevel(level)
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = ident
    if len(rows) != rounds + 1:
        raise RuntimeError(f"secure aggregation finished {len(rows) - 1} of {rounds} rounds (a round fails when too "
                           "few clients answer); see Flower's log")
    best = max(range(len(rows)), key=lambda i: rows[i]["val.ndcg@10"])
    per_round = [grid.sent[n] / len(grid.rounds_of[n]) for n in node_of if grid.rounds_of[n]]
    return {"rounds": rows, "global_head": HeadWeights(thetas[best]), "final_head": HeadWeights(thetas[-1]),
            "picked_round": best, "noise_multiplier": sigma, "clip": clip, "wire": grid.log, "bytes_per_client_round": int(np.median(per_round)),
            "seconds": time.perf_counter() - t0, "clients": len(clients), "sample_rate": q,
            "secure_aggregation": "Flower SecAgg+ (SecAggPlusWorkflow + secaggplus_mod)"}


def federate(viewers: Sequence[Viewer], start: HeadWeights, *, rounds: int, clients_per_round: int, epsilon: float,
             delta: float = 1e-5, clip: float = 0.5, epochs: int = 5, lr: float = 0.5, l2: float = 0.1,
             seed: int = 0, on_round: Any = None) -> dict[str, Any]:
    """FedAvg of the adapter over ``rounds`` with ``clients_per_round`` sampled clients per round and
    local (epsilon, delta)-DP per client (epsilon = inf: clipping only). Returns rounds[{round,
    epsilon_spent, "ndcg@10"}], the final global adapter, bytes per client per round, the noise used."""
    from flwr.common import Code, FitIns, FitRes, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    clients = [v for v in viewers if len(v.examples) > 0]
    if not clients:
        raise ConfigError("no viewer has a labelled event in the training split; nothing to learn from.")
    if clients_per_round > len(clients):
        raise ConfigError(f"--clients-per-round {clients_per_round} is more than the {len(clients)} viewers with "
                          "labelled events.")
    sigma = noise_for(epsilon, delta, rounds)
    def rounds_agree(metrics: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        # every update must say which round it answers: a stale one would be averaged into the wrong model
        got = {int(m["round"]) for _, m in metrics}
        if len(got) != 1:
            raise RuntimeError(f"updates from rounds {sorted(got)} arrived together")
        return {"round": got.pop(), "updates": len(metrics)}

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=1, min_evaluate_clients=1,
                      min_available_clients=1, fit_metrics_aggregation_fn=rounds_agree)
    rng = np.random.default_rng(seed)
    g = start.theta.astype(np.float32).copy()
    def judged(r: int, theta: np.ndarray, eps: float) -> dict[str, Any]:
        h = HeadWeights(theta)
        return {"round": r, "epsilon_spent": eps, "val.ndcg@10": _mean_ndcg(viewers, h, "val"),
                "ndcg@10": _mean_ndcg(viewers, h, "test")}

    rows = [judged(0, g, 0.0)]
    thetas = [g.copy()]
    sent_bytes: list[int] = []
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        pick = rng.choice(len(clients), clients_per_round, replace=False)
        ins = FitIns(ndarrays_to_parameters([g]), {"round": r})
        results = []
        for i in pick.tolist():
            c = make_client(clients[i], epochs=epochs, lr=lr, l2=l2, clip=clip, noise_multiplier=sigma, seed=seed).to_client()
            res: FitRes = c.fit(ins)
            if res.status.code != Code.OK:
                raise RuntimeError(f"client {clients[i].user} failed in round {r}: {res.status.message}")
            sent_bytes.append(sum(len(t) for t in res.parameters.tensors))
            results.append((None, res))
        agg, agg_metrics = strategy.aggregate_fit(r, results, [])
        if agg_metrics.get("round") != r:
            raise RuntimeError(f"round {r} aggregated updates of round {agg_metrics.get('round')}")
        g = (g + parameters_to_ndarrays(agg)[0]).astype(np.float32)
        row = judged(r, g, epsilon_spent(sigma, delta, r))
        rows.append(row)
        thetas.append(g.copy())
        if on_round is not None:
            on_round(row)
    # the adapter shipped is the round best on validation (round 0, the bundle's own, when none helps);
    # the test column of every round is reported, read once each
    best = max(range(len(rows)), key=lambda i: rows[i]["val.ndcg@10"])
    return {"rounds": rows, "global_head": HeadWeights(thetas[best]), "final_head": HeadWeights(thetas[-1]),
            "picked_round": best, "noise_multiplier": sigma, "clip": clip,
            "bytes_per_client_round": int(np.median(sent_bytes)), "seconds": time.perf_counter() - t0,
            "clients": len(clients)}


def central(viewers: Sequence[Viewer], start: HeadWeights, epochs: int = 20, lr: float = 0.5, l2: float = 0.1) -> HeadWeights:
    """The same adapter trained on every viewer's events pooled on a server (no privacy): the reference
    federated averaging tries to reach without collecting the events."""
    ex = [v.examples for v in viewers if len(v.examples)]
    pooled = Examples(np.concatenate([e.fused for e in ex]), np.concatenate([e.score for e in ex]),
                      np.concatenate([e.label for e in ex]))
    return train_head(start, pooled, epochs=epochs, lr=lr, l2=l2)[0]


def _eps_json(e: float) -> float | None:
    return None if math.isinf(e) else float(e)


PRIVACY_KINDS = {
    "central": {"what": "user-level DP of the released adapters: each client's change clipped to L2 <= clip on the "
                        "phone (Flower fixedclipping_mod), masked by Flower's SecAgg+ so the server learns only the "
                        "sum, Gaussian noise added once to the average by the server "
                        "(DifferentialPrivacyClientSideFixedClipping)",
                "sample_rate": "clients_per_round / clients (uniform sampling, amplification counted)",
                "trust": "the server adds the noise and samples the clients honestly; it never sees one client's update",
                "what_leaves_the_phone": "SecAgg+ key material and shares, the masked, quantized, clipped adapter "
                                         "(float32 [d+2] before masking) and the round number"},
    "local": {"what": "each client clips its change (L2 <= clip) and adds Gaussian noise before sending",
              "sample_rate": "1 (a client is assumed to take part in every round; no amplification claimed)",
              "trust": "none: the server and the wire see only noised updates",
              "what_leaves_the_phone": "the clipped, noised change of the adapter (float32 [d+2]) and the round number"},
}
"""What each ``--privacy`` kind protects, how it is accounted and whom it trusts (in the report)."""


def run_federate(data: str | Any, bundle: str | Any, out: str | Any, *, rounds: int = 10, clients_per_round: int = 20,
                 epsilons: Sequence[float] = (math.inf, 8.0, 2.0, 1.0), delta: float = 1e-5, clip: float = 0.5,
                 local_epochs: int = 5, max_users: int | None = None, seed: int = 0, progress: bool = True,
                 overwrite: bool = False, privacy: Sequence[str] = ("central", "local")) -> dict[str, Any]:
    """The `edge-rec federate` step: personalization, federated averaging for each privacy kind and
    epsilon (``central``: :func:`federate_secure`, secure aggregation and noise on the sum; ``local``:
    :func:`federate`, noise on each update), the central and frozen references, a plot, and
    ``out/bundle`` (the input bundle with the global adapter of the first setting and its training
    program). Writes and returns ``out/federate_report.json``."""
    from pathlib import Path

    from edge_rec._requires import requires
    from edge_rec.runtime import Reranker

    requires("flwr")                 # both before any work: a missing package is a clear error, not a crash
    requires("opacus")
    from edge_rec.policy import PostRankPolicy

    for name, v, lo in (("rounds", rounds, 1), ("clients_per_round", clients_per_round, 1),
                        ("local_epochs", local_epochs, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= {lo}, got {v!r}.")
    eps = [float(e) for e in epsilons]
    if not eps or any(not (e > 0) for e in eps):
        raise ConfigError(f"--epsilon values must be > 0 (inf for no noise), got {list(epsilons)}.")
    kinds = list(dict.fromkeys(privacy))
    if not kinds or any(k not in PRIVACY_KINDS for k in kinds):
        raise ConfigError(f"--privacy must be among {', '.join(PRIVACY_KINDS)}, got {list(privacy)}.")
    if "central" in kinds and clients_per_round < 3:
        raise ConfigError(f"--privacy central (secure aggregation) needs --clients-per-round >= 3, got {clients_per_round}.")
    if not (0 < delta < 1):
        raise ConfigError(f"--delta must be in (0, 1), got {delta!r}.")
    if not (math.isfinite(clip) and clip > 0):
        raise ConfigError(f"--clip must be a finite number > 0 (the L2 bound of an update), got {clip!r}.")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite or choose another --out.")
    ds = data if isinstance(data, Dataset) else Dataset.load(data)
    rr = Reranker.open(bundle, policy=PostRankPolicy(enabled=False))
    start = rr.global_head
    t0 = time.perf_counter()
    viewers = load_viewers(ds, rr, max_users=max_users, seed=seed, progress=progress)
    if len(viewers) < 2:
        raise ConfigError(f"the dataset has {len(viewers)} viewer(s) with a clicked validation and test request; "
                          "federated averaging needs several.")
    frozen = _mean_ndcg(viewers, start if start.theta.any() else None, "test")
    pers = personalize(viewers, start)
    cen = central(viewers, start)
    settings, runs = [], []
    for kind in kinds:
        fit = federate_secure if kind == "central" else federate
        for e in eps:
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=rounds, desc=f"federate {kind} eps={e:g}", unit="round")
            res = fit(viewers, start, rounds=rounds, clients_per_round=min(clients_per_round, len(viewers)),
                      epsilon=e, delta=delta, clip=clip, epochs=local_epochs, seed=seed,
                      on_round=(lambda row, b=bar: b.update(1)) if bar is not None else None)
            if bar is not None:
                bar.close()
            runs.append(res)
            picked = res["rounds"][res["picked_round"]]["ndcg@10"]
            settings.append({"privacy": kind, "epsilon": _eps_json(e), "delta": delta, "rounds": rounds,
                             "clients_per_round": min(clients_per_round, len(viewers)),
                             "sample_rate": res.get("sample_rate", 1.0), "ndcg@10": picked,
                             "lift_vs_frozen": picked - frozen, "picked_round": res["picked_round"],
                             "last_round.ndcg@10": res["rounds"][-1]["ndcg@10"],
                             "bytes_per_client_round": res["bytes_per_client_round"],
                             "noise_multiplier": res["noise_multiplier"], "clip": clip,
                             "epsilon_spent": res["rounds"][-1]["epsilon_spent"] if not math.isinf(e) else None,
                             "seconds": res["seconds"],
                             "rounds_detail": [{**r, "epsilon_spent": _eps_json(r["epsilon_spent"])} for r in res["rounds"]]})
    report = {
        "data": str(data) if not isinstance(data, Dataset) else ds.meta.get("name", "dataset"),
        "bundle_in": str(bundle), "engine": f"{rr.engine.name} {rr.format}/{rr.precision}",
        "viewers": len(viewers), "clients": runs[0]["clients"], "metric": "NDCG@10 on each viewer's test request, mean",
        "privacy": {k: PRIVACY_KINDS[k] for k in kinds} | {"accountant": "opacus RDP", "delta": delta},
        "settings": settings, "rounds": settings[0]["rounds_detail"],
        "frozen": {"ndcg@10": frozen}, "central": {"ndcg@10": _mean_ndcg(viewers, cen, "test")},
        "personalization": pers, "seconds": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    report["plot"] = _plot(report, out / "federate_rounds.png")
    report["bundle"] = _write_bundle(Path(bundle), out / "bundle", runs[0]["global_head"], settings[0])
    from .dataset import write_json

    write_json(out / "federate_report.json", report)
    return report


def _write_bundle(src: Any, dst: Any, head: HeadWeights, setting: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``src`` whose global adapter is ``head`` and whose training program starts from it; the
    manifest's file list is rewritten, so a signature (manifest.sig) no longer holds and is dropped."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from edge_rec.bundle import MANIFEST, file_entries, verify_bundle, write_zip
    from edge_rec.export.training import PROGRAM, write_program

    from .dataset import replace_dir, write_json

    stage = Path(tempfile.mkdtemp(prefix=f".{dst.name}.staging-", dir=dst.parent))
    try:
        shutil.copytree(src, stage, dirs_exist_ok=True)
        signed = (stage / "manifest.sig").is_file()
        if signed:
            (stage / "manifest.sig").unlink()
        manifest = json.loads((stage / MANIFEST).read_text())
        local = write_program(stage, head.d, head.theta)
        local["federated"] = {k: setting[k] for k in ("privacy", "epsilon", "delta", "rounds", "clients_per_round",
                                                      "noise_multiplier", "clip", "ndcg@10", "picked_round")}
        manifest["local_learning"] = local
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file() and p.name != MANIFEST)
        manifest["files"] = file_entries(stage, files)
        write_json(stage / MANIFEST, manifest)
        verify_bundle(stage)
        replace_dir(stage, dst)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    z = write_zip(dst, dst.with_name(dst.name + ".zip"))
    return {"path": str(dst), "zip": str(z), "signature_dropped": signed, "program": PROGRAM}


def _plot(report: dict[str, Any], path: Any) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8.0, 5.0))
    for s in report["settings"]:
        xs = [r["round"] for r in s["rounds_detail"]]
        ys = [r["ndcg@10"] for r in s["rounds_detail"]]
        lab = "ε = ∞ (clipping only)" if s["epsilon"] is None else f"ε = {s['epsilon']:g}, δ = {s['delta']:g}"
        central_dp = s.get("privacy", "local") == "central"
        ax.plot(xs, ys, marker="o" if central_dp else "x", ms=3, ls="-" if central_dp else "--",
                label=f"{'central DP + SecAgg+' if central_dp else 'local DP'}, {lab}")
    ax.axhline(report["frozen"]["ndcg@10"], color="k", ls="--", lw=1, label="frozen student")
    ax.axhline(report["central"]["ndcg@10"], color="gray", ls=":", lw=1, label="adapter trained centrally")
    ax.set_xlabel("round")
    ax.set_ylabel("NDCG@10 (test request, mean over viewers)")
    ax.set_title(f"Federated adapter, {report['clients']} clients", fontsize=10)
    ax.legend(fontsize=7, loc="best", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
