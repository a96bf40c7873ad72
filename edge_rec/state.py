"""The viewer's behaviour, kept on the phone: a small SQLite store (WAL mode) that never leaves it.

Events are what the app observes on the feed: an impression, how long the video was watched, whether
it was finished, skipped, liked, shared, and the sentiment of a comment. Each event keeps the item's
modality embeddings as the server sent them (float16 blobs), so the history inputs of the model can
be rebuilt on the device without asking the server anything.

Safety: every ``record`` is one transaction. With ``durability="full"`` (the default: WAL +
``synchronous=FULL``) a committed event survives a killed process or a power cut; each commit waits
for an fsync. With ``durability="normal"`` (WAL + ``synchronous=NORMAL``) a committed event survives a
killed process or a crashed app, and a power cut or an OS crash can lose only the last commits, never
corrupt the store; a record skips its fsync, and fewer fsyncs come back when the WAL is
checkpointed (what that saves on a machine: ``benchmarks/rerank_latency.py``'s app loop runs both;
the README has the figures). Concurrent writers from several threads or processes are serialised
by SQLite's lock with a busy timeout; recording is idempotent (an event is the item shown at an
instant: the same ``(item_id, ts)`` recorded again, by a retry after a crash or a replayed log, keeps
the first copy and returns its id); retention is bounded (``max_events``, ``max_age_days``);
``forget()`` wipes everything (and VACUUMs, so nothing lingers in free pages); ``export()`` hands the
viewer their data as JSON. There is no network code in this module, nor anywhere in ``edge_rec``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from edge_rec.errors import ConfigError, DataError, StoreError
from edge_rec.validate import show, to_flag, to_id, to_number, to_vector

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        REAL    NOT NULL,             -- seconds since the epoch (UTC)
    item_id   INTEGER NOT NULL,
    creator_id INTEGER,
    watch_ms  REAL    NOT NULL DEFAULT 0,
    duration_ms REAL  NOT NULL DEFAULT 0,
    finish    INTEGER NOT NULL DEFAULT 0,
    skip      INTEGER NOT NULL DEFAULT 0,
    like      INTEGER NOT NULL DEFAULT 0,
    share     INTEGER NOT NULL DEFAULT 0,
    sentiment REAL,                         -- comment sentiment in [-1, 1], NULL = no comment
    emb       TEXT                          -- JSON {modality: hex of float16 bytes}
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
-- covers the creator signals read at every swipe (SIGNALS_QUERY): a partial index of the skipped or
-- disliked events only, so the read walks just the rows it returns and recording any other event
-- writes one index entry less. It replaces events_recent (the same columns over every event).
CREATE INDEX IF NOT EXISTS events_signals ON events(ts, creator_id, skip, sentiment) WHERE skip = 1 OR sentiment < 0;
DROP INDEX IF EXISTS events_recent;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- the feed pages the viewer was shown, as the model scored them (edge_rec.local.LocalLearner.observe):
-- the candidates the viewer did not engage with are on-device learning's negatives
CREATE TABLE IF NOT EXISTS exposures (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      REAL    NOT NULL,
    item_id INTEGER NOT NULL,
    score   REAL    NOT NULL,               -- the frozen model's score
    fused   BLOB    NOT NULL                -- its fused embedding, float32 bytes
);
CREATE INDEX IF NOT EXISTS exposures_ts ON exposures(ts);
"""
STORE_VERSION = "1"
# the creator signals of a time window; its "(skip = 1 OR sentiment < 0)" is the partial index's own
# condition, written the same, which is what lets SQLite answer it from events_signals
SIGNALS_QUERY = ("SELECT creator_id, skip, sentiment FROM events WHERE ts >= ? AND ts <= ? "
                 "AND (skip = 1 OR sentiment < 0) AND creator_id IS NOT NULL")


@dataclass
class Event:
    """One observed interaction with a feed item."""

    item_id: int
    ts: float
    watch_ms: float = 0.0
    duration_ms: float = 0.0
    finish: bool = False
    skip: bool = False
    like: bool = False
    share: bool = False
    creator_id: int | None = None
    sentiment: float | None = None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def watch_ratio(self) -> float:
        return self.watch_ms / self.duration_ms if self.duration_ms > 0 else 0.0


def _copy_event(e: Event) -> Event:
    """A shallow copy (its own embeddings dict; the arrays are shared and read-only), cheaper than
    :func:`copy.copy`: the caller may change its copy without touching the store's."""
    c = object.__new__(Event)
    c.__dict__.update(e.__dict__)
    c.embeddings = dict(e.embeddings)
    return c


def _check_event(e: Event) -> None:
    """What an event must hold before it is stored or used as history, whether it came as JSON or as an
    :class:`Event` built in code (one path for both): ids that are whole numbers in 64 bits, finite
    non-negative times, flags that are true/false, a sentiment in [-1, 1], embeddings that are finite
    flat vectors of numbers within float16 range (the store keeps float16: a larger value would be
    stored as inf). A :class:`DataError` otherwise, raised before any write."""
    if not isinstance(e, Event):
        raise DataError(f"an event must be an Event, got {show(e)}.")
    to_id(e.item_id, "an event's item_id")
    where = f"event for item {e.item_id}"
    if e.creator_id is not None:
        to_id(e.creator_id, f"{where}: creator_id")
    nums = {k: to_number(getattr(e, k), f"{where}: {k}") for k in ("ts", "watch_ms", "duration_ms")}
    bad = [k for k, v in nums.items() if not math.isfinite(v) or v < 0]
    if bad:
        raise DataError(f"{where}: {', '.join(bad)} must be finite and >= 0 (got "
                        + ", ".join(f"{k}={nums[k]!r}" for k in bad) + ").")
    for k in ("finish", "skip", "like", "share"):
        to_flag(getattr(e, k), f"{where}: {k}")
    if e.sentiment is not None:
        s = to_number(e.sentiment, f"{where}: sentiment")
        if not (math.isfinite(s) and -1.0 <= s <= 1.0):
            raise DataError(f"{where}: sentiment must be in [-1, 1], got {e.sentiment!r}.")
    if not isinstance(e.embeddings, Mapping):
        raise DataError(f"{where}: embeddings must be a mapping {{modality: vector}}, got {show(e.embeddings)}.")
    for m, v in e.embeddings.items():
        if not isinstance(m, str):
            raise DataError(f"{where}: modality names must be strings, got {show(m)}.")
        to_vector(v, f"{where}: embedding {m!r}")


def _stored_event(row: tuple[Any, ...], emb16: Mapping[str, np.ndarray]) -> Event:
    """The event a stored row stands for: ``row`` = (ts, item_id, creator_id, watch_ms, duration_ms,
    finish, skip, like, share, sentiment) as the table holds them, ``emb16`` its float16 embeddings
    (given to the reader as read-only float32 arrays)."""
    ts, item, creator, w, d, fin, sk, lk, sh, sent = row[:10]
    embs = {}
    for m, v in emb16.items():
        a = v.astype(np.float32)
        a.flags.writeable = False
        embs[m] = a
    return Event(item_id=item, ts=ts, watch_ms=w, duration_ms=d, finish=bool(fin), skip=bool(sk), like=bool(lk),
                 share=bool(sh), creator_id=creator, sentiment=sent, embeddings=embs)


def sum_signals(rows: Iterable[tuple[int, Any, float | None]]) -> dict[int, dict[str, float]]:
    """``{creator_id: {"skips", "negative_comments"}}`` from (creator_id, skip, sentiment) of the
    events in a window that were skipped or disliked (the store's rows, or a request's history)."""
    out: dict[int, dict[str, float]] = {}
    for c, sk, sent in rows:            # per swipe over every such event of the last hour: no dict built per row
        s = out.get(c)
        if s is None:
            s = out[int(c)] = {"skips": 0.0, "negative_comments": 0.0}
        if sk:
            s["skips"] += 1.0
        if sent is not None and sent < 0:
            s["negative_comments"] += 1.0
    return out


@contextlib.contextmanager
def _store_errors(path: Path, what: str) -> Iterator[None]:
    """SQLite's operational errors (locked past the timeout, read-only, disk full) as :class:`StoreError`."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreError(f"could not {what} the behaviour store {path} ({exc}); nothing was changed. Check that the "
                         "file and its folder are writable and that no other process holds the store.") from exc


DURABILITY = {"full": "FULL", "normal": "NORMAL"}   # UserState(durability=...) -> SQLite's synchronous


class UserState:
    """A viewer's local behaviour store. Open one per process (or thread); all of them may write.

    ``durability``: ``"full"`` (default; a committed event survives a power cut) or ``"normal"`` (it
    survives a killed process; a power cut may lose the last commits, never corrupting the store; each
    record skips an fsync). See the module docstring."""

    def __init__(self, path: str | os.PathLike[str], *, max_events: int = 5000, max_age_days: float = 90.0,
                 timeout_s: float = 30.0, durability: str = "full") -> None:
        if durability not in DURABILITY:
            raise ConfigError(f"durability={durability!r} is not one of {sorted(DURABILITY)}: 'full' survives a power "
                              "cut (an fsync per record), 'normal' survives a killed process (no fsync per record).")
        self.durability = durability
        self.path = Path(path)
        self.max_events, self.max_age_days = int(max_events), float(max_age_days)
        self.timeout_s = float(timeout_s)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder; give the path of the store file inside it (e.g. {self.path / 'viewer.db'}).")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for the behaviour store {self.path}: {exc.strerror or exc} "
                             f"(is a parent a file, or read-only?). Choose a path in a writable folder.") from exc
        existed = self.path.exists()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None,
                                       check_same_thread=False)
            # deleted rows are overwritten with zeros, so forget() leaves no readable copy in free pages
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
            self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            self._db.executescript(SCHEMA)
            ok = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if ok == "ok":
                self._ensure_event_key()
        except sqlite3.OperationalError as exc:
            # permissions, a locked file, a full disk: the store itself may be healthy, keep it
            intact = "its events are intact; " if existed else ""
            raise StoreError(f"cannot open the behaviour store {self.path} for writing ({exc}): {intact}make the file and "
                             "its folder writable by the app (SQLite also writes -wal and -shm files beside it), "
                             "or close the process that locks it.") from exc
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path} is not a readable behaviour store ({exc}): it is damaged or not a store; "
                            "move it aside (keep it for recovery) and start a new one.") from exc
        if ok != "ok":
            raise DataError(f"{self.path} failed SQLite's integrity check ({ok}).")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('store_version', ?)", (STORE_VERSION,))
        self._lock = threading.Lock()
        self._decoded: dict[int, Event] = {}        # row id -> decoded event (see events())

    def _ensure_event_key(self) -> None:
        """One row per ``(item_id, ts)``. A store written before the key existed may hold a replayed
        event twice: the later copies go (the first is kept, as :meth:`record_many` would have), then the
        unique index is built, in one transaction so that a concurrent opener sees either state."""
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND name='events_key'").fetchone():
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM events WHERE id NOT IN (SELECT MIN(id) FROM events GROUP BY item_id, ts)")
            self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events(item_id, ts)")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # ---- writing --------------------------------------------------------------------------------
    def record(self, event: Event) -> int:
        """Append one event (one committed transaction); returns its id (the stored copy's id when the
        same ``(item_id, ts)`` is already there). Retention is applied as it goes."""
        return self.record_many([event])[-1]

    def record_many(self, events: Iterable[Event]) -> list[int]:
        """Append events in one transaction (all or none); returns their ids, in order. An event whose
        ``(item_id, ts)`` is already stored (or earlier in ``events``) is not stored again: its id is the
        stored copy's, so replaying a log or retrying after a crash never duplicates the history."""
        events = list(events)
        for e in events:
            _check_event(e)
        emb16 = [{m: np.asarray(v, np.float16) for m, v in e.embeddings.items()} for e in events]
        rows = [(float(e.ts), to_id(e.item_id, "item_id"), None if e.creator_id is None else to_id(e.creator_id, "creator_id"),
                 float(e.watch_ms), float(e.duration_ms), int(bool(e.finish)), int(bool(e.skip)), int(bool(e.like)), int(bool(e.share)),
                 None if e.sentiment is None else float(e.sentiment),
                 json.dumps({m: v.tobytes().hex() for m, v in em.items()}))
                for e, em in zip(events, emb16)]
        ids, inserted = [], []
        with self._lock, _store_errors(self.path, "record events into"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for em, r in zip(emb16, rows):
                    cur = self._db.execute(
                        "INSERT INTO events (ts, item_id, creator_id, watch_ms, duration_ms, finish, skip, like, share, "
                        "sentiment, emb) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (item_id, ts) DO NOTHING", r)
                    if cur.rowcount == 1:
                        ids.append(int(cur.lastrowid))
                        inserted.append((ids[-1], r, em))
                    else:                                      # already stored: the first copy stands
                        ids.append(int(self._db.execute("SELECT id FROM events WHERE item_id = ? AND ts = ?",
                                                        (r[1], r[0])).fetchone()[0]))
                self._retain()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            # the app records a swipe and reranks at once: what was just written is known already, so
            # the next read finds it decoded (the same values a read of the row gives: float16 rounded)
            for rid, r, em in inserted[-64:]:              # a bulk import is read (and decoded) when asked
                self._decoded[rid] = _stored_event(r, em)
            if len(self._decoded) > self.max_events + 1024:  # bounded even for a writer that never reads
                self._decoded = dict(sorted(self._decoded.items())[-self.max_events:])
        return ids

    def _retain(self) -> None:
        """Keep the newest ``max_events`` (by time, then id) within ``max_age_days`` of the newest.
        Both deletes walk the time index from the old end, so a record at the cap costs the rows it
        drops, not a scan of the whole store."""
        newest = self._db.execute("SELECT MAX(ts) FROM events").fetchone()[0]
        if newest is not None:
            self._db.execute("DELETE FROM events WHERE ts < ?", (newest - self.max_age_days * 86400.0,))
        over = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0] - self.max_events
        if over > 0:
            self._db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY ts, id LIMIT ?)", (over,))

    # ---- reading --------------------------------------------------------------------------------
    def events(self, limit: int | None = None, before: float | None = None) -> list[Event]:
        """Events oldest first: the last ``limit`` ones strictly before ``before`` (default: all).

        The reranker asks for the last L events at every swipe, and between two swipes at most one is
        new: rows are decoded once and kept by row id (a row never changes once written, and ids are
        never reused), so a swipe costs one index query plus the rows it has not seen. Each call
        returns fresh :class:`Event` objects; their embeddings are read-only arrays."""
        return [_copy_event(e) for e in self._events(limit, before)]

    def _events(self, limit: int | None, before: float | None) -> list[Event]:
        """:meth:`events` without the copies: the store's own decoded objects, for readers that never
        change them (the reranker)."""
        q = "SELECT id FROM events"
        args: list[Any] = []
        if before is not None:
            q += " WHERE ts < ?"
            args.append(float(before))
        q += " ORDER BY ts DESC, id DESC"
        if limit is not None:
            q += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            ids = [r[0] for r in self._db.execute(q, args).fetchall()]
            new = [i for i in ids if i not in self._decoded]
            for c0 in range(0, len(new), 500):                     # SQLite caps the parameters of one query
                chunk = new[c0:c0 + 500]
                rows = self._db.execute(
                    "SELECT id, ts, item_id, creator_id, watch_ms, duration_ms, finish, skip, like, share, sentiment, emb "
                    f"FROM events WHERE id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                for rid, ts, item, creator, w, d, fin, sk, lk, sh, sent, emb in rows:
                    self._decoded[rid] = _stored_event(
                        (ts, item, creator, w, d, fin, sk, lk, sh, sent),
                        {m: np.frombuffer(bytes.fromhex(h), np.float16) for m, h in json.loads(emb or "{}").items()})
            out = [self._decoded[i] for i in reversed(ids)]
            if len(self._decoded) > self.max_events + 1024:          # rows retention deleted: keep what is in use
                keep = set(ids)
                self._decoded = {i: e for i, e in self._decoded.items() if i in keep}
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def creator_signals(self, now: float, window_s: float = 3600.0) -> dict[int, dict[str, float]]:
        """Skips and negative comments per creator in ``[now - window_s, now]`` (for the post-ranking
        penalty): ``{creator_id: {"skips", "negative_comments"}}``, only creators with at least one.

        Read at every swipe: the partial covering index ``events_signals`` answers it without touching
        the rows or any other event, and only the few skipped or disliked events come back (summed
        here rather than by a GROUP BY, whose temporary B-tree cost ~4x more at 5,000 events)."""
        with self._lock:
            rows = self._db.execute(SIGNALS_QUERY, (now - window_s, now)).fetchall()
        return sum_signals(rows)

    def profile(self, modalities: Mapping[str, int], now: float, half_life_h: float = 72.0) -> dict[str, np.ndarray]:
        """Long-term interest: per modality, the recency-decayed mean embedding of engaged items
        (weight = 2^(-age / half_life) x (watch ratio + like + share - skip), floored at 0)."""
        acc = {m: np.zeros(d, np.float64) for m, d in modalities.items()}
        tot = {m: 0.0 for m in modalities}
        for e in self.events(before=now + 1e-6):
            w = 2.0 ** (-max(now - e.ts, 0.0) / 3600.0 / half_life_h)
            w *= max(0.0, min(e.watch_ratio, 1.5) + e.like + e.share - e.skip)
            for m, v in e.embeddings.items():
                if m in acc and w > 0 and len(v) == len(acc[m]):
                    acc[m] += w * v
                    tot[m] += w
        return {m: (acc[m] / tot[m]).astype(np.float32) if tot[m] > 0 else acc[m].astype(np.float32) for m in acc}

    # ---- the viewer's rights --------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """Everything stored about the viewer, as JSON-ready data (embeddings as float lists)."""
        evs = self.events()
        return {"store": str(self.path), "store_version": STORE_VERSION, "exported_utc": time.time(),
                "retention": {"max_events": self.max_events, "max_age_days": self.max_age_days},
                "events": [{"ts": e.ts, "item_id": e.item_id, "creator_id": e.creator_id, "watch_ms": e.watch_ms,
                            "duration_ms": e.duration_ms, "finish": e.finish, "skip": e.skip, "like": e.like,
                            "share": e.share, "sentiment": e.sentiment,
                            "embeddings": {m: [round(float(x), 5) for x in v] for m, v in e.embeddings.items()}}
                           for e in evs]}

    def forget(self) -> None:
        """Delete every event and make sure no byte of them is left in the store's files: the rows are
        deleted with SQLite's secure delete (overwritten), the file is VACUUMed, and the write-ahead log
        is checkpointed and truncated. Another connection reading the store keeps the old pages alive;
        the checkpoint is retried until ``timeout_s`` and then this raises :class:`StoreError` saying so
        (the events are deleted for every reader either way; their bytes go when it closes and
        ``forget()`` is called again). Returns only when the bytes are gone."""
        with self._lock, _store_errors(self.path, "forget the events in"):
            self._db.execute("DELETE FROM events")
            # what was learned from the events goes with them: the feed pages scored for on-device
            # learning and the personal adapter (edge_rec.local)
            self._db.execute("DELETE FROM exposures")
            self._db.execute("DELETE FROM meta WHERE key = 'personal_head'")
            self._decoded.clear()
            self._db.execute("VACUUM")
            deadline = time.monotonic() + self.timeout_s
            while True:
                busy, log, done = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy == 0 and log in (0, -1) or (busy == 0 and done == log):
                    break
                if time.monotonic() >= deadline:
                    raise StoreError(f"forget() deleted every event of {self.path}, but another connection holds a read "
                                     f"on the store, so {max(log, 0)} page(s) with their bytes are still in its "
                                     f"{self.path.name}-wal; close the other readers and call forget() again.")
                time.sleep(0.05)

    # ---- small named values kept beside the events (the personal adapter of edge_rec.local) ----------
    def _record_exposures(self, ts: float, item_ids: np.ndarray, scores: np.ndarray, fused: np.ndarray) -> None:
        """One feed page as the model scored it (see edge_rec.local), kept under the events' retention:
        pages older than ``max_age_days`` and beyond ``max_events`` rows go first."""
        rows = [(float(ts), int(i), float(s), np.asarray(f, np.float32).tobytes())
                for i, s, f in zip(item_ids.tolist(), scores.tolist(), fused)]
        with self._lock, _store_errors(self.path, "write to"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO exposures (ts, item_id, score, fused) VALUES (?, ?, ?, ?)", rows)
                self._db.execute("DELETE FROM exposures WHERE ts < ?", (float(ts) - self.max_age_days * 86400.0,))
                over = self._db.execute("SELECT COUNT(*) FROM exposures").fetchone()[0] - self.max_events
                if over > 0:
                    self._db.execute("DELETE FROM exposures WHERE id IN (SELECT id FROM exposures ORDER BY ts, id LIMIT ?)",
                                     (over,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _exposures(self) -> list[tuple[float, int, float, bytes]]:
        with self._lock, _store_errors(self.path, "read"):
            return self._db.execute("SELECT ts, item_id, score, fused FROM exposures ORDER BY ts, id").fetchall()

    def _get_meta(self, key: str) -> str | None:
        with self._lock, _store_errors(self.path, "read"):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        with self._lock, _store_errors(self.path, "write to"):
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _delete_meta(self, key: str) -> None:
        with self._lock, _store_errors(self.path, "write to"):
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "UserState":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
