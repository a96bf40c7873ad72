"""A synthetic short-video world whose right answers are known.

What it plants (and records in ``meta.json["planted"]`` and ``planted.safetensors``):

* **items** with a topic, a creator, a duration, an upload time and latent factors:
  ``z`` (topic-driven content, k dims), ``energetic`` in {-1, +1} (visual style, e.g. dance),
  ``beat`` in {-1, +1} (fast vs slow soundtrack), ``quality``, ``tags`` (hashtag factors), and
  audio-only factors that nobody cares about;
* **users** with a main topic, a personal taste vector and a hashtag taste; some switch their main
  topic at a *drift event* (time, from, to) during the log;
* **four modalities** as views of those factors with different worth:

  ======== ===================================================== ==========================
  visual   z, energetic, quality, little noise                   strong
  text     the topic centre and the hashtags, heavy noise        weak, but carries the tags
  audio    beat and audio-only factors                           useful only with visual:
                                                                 utility has energetic x beat,
                                                                 which is zero-mean given either
  motion   nothing: i.i.d. noise                                 the planted noise modality
  ======== ===================================================== ==========================

* **utility** of item i for user u at time t::

      u = θ_u(t)·z_i / sqrt(k) + 0.5 ψ_u·tags_i + quality_i + cross · energetic_i · beat_i
          + creator_bias + 0.3 · log-popularity + ε

* **exposure** (what an existing feed showed): popularity, a little relevance and a freshness
  boost; long-tail popularity (Zipf); **cold-start items** are uploaded after ``train_end`` and so
  appear only in each user's last two sessions (the val / test requests);
* **implicit feedback** from the utility: watch ratio with a duration bias (long videos are watched
  to a smaller fraction), finish, skip (< 3 s), click (watch ratio >= 0.5), like, share, and
  negative comments on items a user hates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_rec.errors import ConfigError
from edge_rec.distill.dataset import Dataset
from edge_rec.distill.splits import finalize

DAY = 86_400.0
HOUR = 3_600.0
NOISE_MODALITY = "motion"


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and strengths of a synthetic world. Presets: ``tiny``, ``default``, ``large``."""

    preset: str = "default"
    seed: int = 0
    n_users: int = 2000
    n_items: int = 3000
    n_creators: int = 300
    n_topics: int = 16
    latent_dim: int = 16
    n_tags: int = 4
    sessions_per_user: float = 16.0
    impressions_per_session: int = 8
    n_candidates: int = 32
    days: float = 60.0
    train_frac: float = 0.8
    cold_frac: float = 0.12
    drift_frac: float = 0.5
    cross_strength: float = 0.9
    base_utility: float = -2.5
    dims: dict[str, int] = field(default_factory=lambda: {"visual": 64, "audio": 32, "text": 48, "motion": 32})
    missing: dict[str, float] = field(default_factory=lambda: {"visual": 0.02, "audio": 0.15, "text": 0.10, "motion": 0.05})

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_users", "n_items", "n_creators", "n_topics", "latent_dim", "impressions_per_session"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.sessions_per_user < 4:
            problems.append(f"sessions_per_user={self.sessions_per_user} must be >= 4 (train, val and test need sessions)")
        if not 0 < self.train_frac < 1:
            problems.append(f"train_frac={self.train_frac} must be in (0, 1)")
        if not 0 <= self.cold_frac < 1:
            problems.append(f"cold_frac={self.cold_frac} must be in [0, 1)")
        if self.n_candidates <= self.impressions_per_session:
            problems.append(f"n_candidates={self.n_candidates} must exceed impressions_per_session={self.impressions_per_session}")
        if set(self.dims) != {"visual", "audio", "text", NOISE_MODALITY}:
            problems.append(f"dims must name visual, audio, text and {NOISE_MODALITY}; got {sorted(self.dims)}")
        if problems:
            raise ConfigError("invalid WorldConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_users=240, n_items=400, n_creators=40, n_topics=8, sessions_per_user=10,
                 impressions_per_session=6, n_candidates=16,
                 dims={"visual": 32, "audio": 16, "text": 24, "motion": 16}),
    "default": {},
    "large": dict(n_users=20000, n_items=20000, n_creators=2000, n_topics=32, sessions_per_user=24,
                  impressions_per_session=10, n_candidates=64),
}


def world_config(preset: str = "default", **overrides: Any) -> WorldConfig:
    """The config of a named preset, with keyword overrides (e.g. ``seed=3``)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    return WorldConfig(preset=preset, **{**PRESETS[preset], **overrides})


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _zipf(n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return rng.permutation(w / w.sum())


def generate_world(config: WorldConfig | None = None, *, progress: bool = False) -> Dataset:
    """Simulate a world and return it as a validated :class:`Dataset` (planted truth in ``meta``)."""
    cfg = config or WorldConfig()
    rng = np.random.default_rng(cfg.seed)
    k, T = cfg.latent_dim, cfg.days * DAY
    train_end = cfg.train_frac * T

    # ---- topics, creators, items -------------------------------------------------------------
    topic_p = _zipf(cfg.n_topics, 0.7, rng)
    centers = rng.normal(size=(cfg.n_topics, k))
    creator_topic = rng.choice(cfg.n_topics, size=cfg.n_creators, p=topic_p)
    creator_bias = rng.normal(0, 0.3, size=cfg.n_creators)
    creator = rng.choice(cfg.n_creators, size=cfg.n_items, p=_zipf(cfg.n_creators, 1.0, rng))
    own = rng.random(cfg.n_items) < 0.7
    topic = np.where(own, creator_topic[creator], rng.choice(cfg.n_topics, size=cfg.n_items, p=topic_p))
    z = 0.8 * centers[topic] + 0.6 * rng.normal(size=(cfg.n_items, k))
    energetic = rng.choice([-1.0, 1.0], size=cfg.n_items)
    beat = rng.choice([-1.0, 1.0], size=cfg.n_items)
    quality = rng.normal(0, 0.5, size=cfg.n_items)
    tags = rng.normal(size=(cfg.n_items, cfg.n_tags))
    audio_own = rng.normal(size=(cfg.n_items, 6))
    duration_s = np.clip(rng.lognormal(np.log(20.0), 0.7, size=cfg.n_items), 3.0, 300.0)
    pop = _zipf(cfg.n_items, 1.0, rng)
    log_pop = np.log(pop)
    log_pop_std = (log_pop - log_pop.mean()) / log_pop.std()
    n_cold = int(round(cfg.cold_frac * cfg.n_items))
    is_cold = np.zeros(cfg.n_items, dtype=bool)
    is_cold[rng.choice(cfg.n_items, size=n_cold, replace=False)] = True
    upload_ts = np.where(is_cold, rng.uniform(train_end, T - 2 * DAY, cfg.n_items),
                         rng.uniform(-20 * DAY, train_end - 5 * DAY, cfg.n_items))
    item_static = quality + creator_bias[creator] + 0.3 * log_pop_std + cfg.cross_strength * energetic * beat

    # ---- users and drift -----------------------------------------------------------------------
    main_topic = rng.choice(cfg.n_topics, size=cfg.n_users, p=topic_p)
    personal = rng.normal(size=(cfg.n_users, k))
    tag_taste = rng.normal(size=(cfg.n_users, cfg.n_tags))
    drifts = rng.random(cfg.n_users) < cfg.drift_frac
    drift_ts = np.where(drifts, rng.uniform(0.25 * T, 0.95 * T, cfg.n_users), np.inf)
    new_topic = (main_topic + rng.integers(1, cfg.n_topics, cfg.n_users)) % cfg.n_topics
    n_sessions = np.maximum(4, rng.poisson(cfg.sessions_per_user, cfg.n_users))

    # ---- sessions, exposure, feedback ------------------------------------------------------------
    cols: dict[str, list[np.ndarray]] = {c: [] for c in
                                         ("user", "item", "req", "ts", "watch_ms", "duration_ms", "click",
                                          "finish", "like", "share", "skip", "comment")}
    users = range(cfg.n_users)
    if progress:
        from tqdm.auto import tqdm

        users = tqdm(users, desc="world: users", unit="user")
    req_id = 0
    m = cfg.impressions_per_session
    for u in users:
        s = int(n_sessions[u])
        # sessions start on distinct hours (a session lasts < 1 h), so they never overlap
        early = rng.choice(int((train_end - DAY) // HOUR), size=s - 2, replace=False)
        late = rng.choice(int((T - train_end - DAY / 2) // HOUR), size=2, replace=False)
        ts = np.concatenate([np.sort(early) * HOUR, train_end + np.sort(late) * HOUR])
        cur = np.where(ts < drift_ts[u], main_topic[u], new_topic[u])            # [S]
        theta = 0.75 * centers[cur] + 0.5 * personal[u]                         # [S, k]
        rel = theta @ z.T / np.sqrt(k)                                           # [S, I]
        util_mean = rel + 0.5 * (tags @ tag_taste[u]) / np.sqrt(cfg.n_tags) + item_static
        age_days = (ts[:, None] - upload_ts[None, :]) / DAY
        fresh = 2.0 * np.exp(-np.clip(age_days, 0, None) / 4.0)
        key = log_pop[None, :] + 0.5 * rel + fresh
        key[age_days < 0] = -np.inf                                              # not uploaded yet
        key = key + rng.gumbel(size=key.shape)
        shown = np.argpartition(-key, m, axis=1)[:, :m]                           # [S, m]
        util = np.take_along_axis(util_mean, shown, 1) + rng.normal(0, 0.7, size=shown.shape) + cfg.base_utility
        dur = duration_s[shown]
        logit_w = 1.3 * util - 0.6 * np.log(dur / 20.0) + rng.normal(0, 0.3, size=shown.shape)
        ratio = np.minimum(1.25 * _sigmoid(logit_w), 1.2)
        watch_s = ratio * dur
        finish = watch_s >= dur
        skip = watch_s < 3.0
        click = (ratio >= 0.5) & ~skip
        like = click & (rng.random(shown.shape) < _sigmoid(1.5 * util - 3.5))
        share = click & (rng.random(shown.shape) < _sigmoid(1.5 * util - 5.5))
        neg = rng.random(shown.shape) < _sigmoid(-1.5 * util - 6.5)
        posc = click & (rng.random(shown.shape) < _sigmoid(util - 4.0))
        comment = np.where(neg, -1, np.where(posc, 1, 0))
        # impressions within a session follow each other by the time watched plus a swipe
        offs = np.cumsum(np.concatenate([np.zeros((s, 1)), watch_s[:, :-1] + 1.0], axis=1), axis=1)
        cols["user"].append(np.full(s * m, u))
        cols["item"].append(shown.ravel())
        cols["req"].append(np.repeat(np.arange(req_id, req_id + s), m))
        cols["ts"].append((ts[:, None] + offs).ravel())
        cols["watch_ms"].append((watch_s * 1000.0).ravel())
        cols["duration_ms"].append((dur * 1000.0).ravel())
        for name, arr in (("click", click), ("finish", finish), ("like", like), ("share", share),
                          ("skip", skip), ("comment", comment)):
            cols[name].append(arr.ravel())
        req_id += s

    inter = {c: np.concatenate(v) for c, v in cols.items()}
    for c in ("user", "item", "req"):
        inter[c] = inter[c].astype(np.int64)
    for c in ("ts", "watch_ms", "duration_ms"):
        inter[c] = inter[c].astype(np.float64)
    for c in ("click", "finish", "like", "share", "skip", "comment"):
        inter[c] = inter[c].astype(np.int8)

    # ---- modalities: views of the latent factors ---------------------------------------------------
    def view(factors: np.ndarray, dim: int, noise: float) -> np.ndarray:
        w = rng.normal(size=(factors.shape[1], dim)) / np.sqrt(factors.shape[1])
        x = factors @ w + noise * rng.normal(size=(factors.shape[0], dim))
        return (x - x.mean(0)) / (x.std(0) + 1e-8)

    d = cfg.dims
    raw = {
        "visual": view(np.column_stack([z, 1.5 * energetic, 2.0 * quality]), d["visual"], 0.3),
        "audio": view(np.column_stack([2.0 * beat, audio_own]), d["audio"], 0.3),
        "text": view(np.column_stack([0.8 * centers[topic], 1.5 * tags]), d["text"], 1.2),
        NOISE_MODALITY: rng.normal(size=(cfg.n_items, d[NOISE_MODALITY])),
    }
    embeddings, present = {}, {}
    for mod in ("visual", "audio", "text", NOISE_MODALITY):
        p = rng.random(cfg.n_items) >= cfg.missing.get(mod, 0.0)
        embeddings[mod] = np.where(p[:, None], raw[mod], 0.0).astype(np.float16)
        present[mod] = p

    drift_events = [
        {"user": int(u), "ts": float(drift_ts[u]), "from_topic": int(main_topic[u]), "to_topic": int(new_topic[u])}
        for u in np.flatnonzero(drifts)
    ]
    meta = {
        "name": f"synthetic-{cfg.preset}-seed{cfg.seed}",
        "source": "synthetic",
        "config": cfg.to_dict(),
        "train_end": float(train_end),
        "time_unit": "s",
        "planted": {
            "noise_modality": NOISE_MODALITY,
            "strong_modality": "visual",
            "weak_modality": "text",
            "interaction_modalities": ["visual", "audio"],
            "cold_items_uploaded_after": float(train_end),
            "drift_events": drift_events,
            "arrays": "planted.safetensors: item_topic, item_energetic, item_beat, item_quality, item_pop, user_main_topic, user_new_topic, user_drift_ts",
        },
    }
    ds = finalize(
        meta=meta,
        users={"user_id": np.arange(cfg.n_users, dtype=np.int64)},
        items={"item_id": np.arange(cfg.n_items, dtype=np.int64), "creator_id": creator.astype(np.int64),
               "duration_s": duration_s.astype(np.float64), "upload_ts": upload_ts.astype(np.float64)},
        interactions=inter, embeddings=embeddings, present=present,
        n_candidates=cfg.n_candidates, seed=cfg.seed + 1, progress=progress,
    )
    ds.planted = {
        "item_topic": topic.astype(np.int64), "item_energetic": energetic, "item_beat": beat,
        "item_quality": quality, "item_pop": pop, "user_main_topic": main_topic.astype(np.int64),
        "user_new_topic": new_topic.astype(np.int64), "user_drift_ts": drift_ts,
    }
    return ds
