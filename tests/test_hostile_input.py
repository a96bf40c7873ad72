"""No wrong answer, ever: whatever a server, an app or an attacker hands the runtime, the outcome is a
valid ranking (a permutation of distinct input items, every score finite, the same with explanations
on or off) or an :class:`EdgeRecError` naming what was wrong — never another exception, never a
silent cast, never a repeated item.

The property tests mutate the tiny pipeline's real feed along the feed contract's grammar with
hypothesis (fixed seed, bounded examples in CI). A longer run:

    EDGE_REC_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_hostile_input.py -k property
"""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge_rec.errors import DataError, EdgeRecError  # noqa: E402
from edge_rec.runtime import Candidate, Reranker  # noqa: E402
from edge_rec.state import Event, UserState  # noqa: E402

EXAMPLES = int(os.environ.get("EDGE_REC_FUZZ_EXAMPLES", "60"))


@pytest.fixture(scope="module")
def feed(tiny_run: Path) -> dict:
    return json.loads((tiny_run / "sample_feed.json").read_text())


@pytest.fixture(scope="module")
def engines(bundle) -> dict[str, Reranker]:
    """The default engine (what `auto` picks: int8 where it passed its gates) and fp32 ONNX, each with
    the default policy on (the diversity step is where non-finite vectors used to repeat items)."""
    return {"auto": Reranker.open(bundle), "onnx-fp32": Reranker.open(bundle, backend="onnx", precision="fp32")}


def _ctx(feed: dict, history: list | None = None) -> dict:
    return {"now": feed["now"], "history": feed["history"] if history is None else history,
            "history_total": feed["history_total"]}


def check_outcome(rr: Reranker, cands: list, ctx: dict, k: int | None = None) -> str:
    """Rerank and check the contract: 'ok' (a valid ranking) or the typed error's class name."""
    try:
        plain = rr.rerank(cands, context=ctx, k=k).to_list()
    except EdgeRecError as exc:
        return type(exc).__name__
    ids = [r["item_id"] for r in plain]
    input_ids = [int(c["item_id"]) if not isinstance(c, Candidate) else c.item_id for c in cands]
    want = len(cands) if k is None else min(k, len(cands))
    assert len(ids) == want and len(set(ids)) == want and set(ids) <= set(input_ids), ids
    for r in plain:
        for key in ("score", "final_score", "p_click", "p_finish", "p_like"):
            assert np.isfinite(r[key]), (key, r)
    explained = rr.rerank(cands, context=ctx, k=k, explain=True).to_list()
    for a, b in zip(plain, explained):
        b = dict(b)
        assert all(np.isfinite(v) for v in b.pop("explanation").values())
        assert a == b                                  # explanations never move a score or the order
    return "ok"


# ---- the regression corpus: one case per class found, each failed before its fix --------------------
def _corpus(rr: Reranker, c0: dict) -> dict[str, list]:
    m = next(iter(rr.modalities))
    d = rr.modalities[m]
    return {
        # 1. finite but huge: the fused embedding overflowed while the score stayed finite -> repeats
        "huge float": [dict(c0, embeddings={m: [3.4e38] * d})],
        "huge int8 scale": [dict(c0, embeddings={m: {"int8": [127] * d, "scale": 1e36}})],
        "beyond the bundle's limit": [dict(c0, embeddings={m: [5e4] * d})],
        # 2. valid JSON that crashed with an untyped exception
        "int too large in a field": [dict(c0, duration_s=10 ** 400)],
        "int too large in a vector": [dict(c0, embeddings={m: [10 ** 400] + [0.0] * (d - 1)})],
        "int too large as a scale": [dict(c0, embeddings={m: {"int8": [1] * d, "scale": 10 ** 400}})],
        "huge digit string id": [dict(c0, item_id="9" * 5000)],
        "nested vector": [dict(c0, embeddings={m: [[0.1] * d]})],
        "deeply nested vector": [dict(c0, embeddings={m: _nested(3000)})],
        # 3. silent casts
        "strings as numbers": [dict(c0, embeddings={m: ["0.1"] * d})],
        "booleans as numbers": [dict(c0, embeddings={m: [True] * d})],
        "int8 holding a string": [dict(c0, embeddings={m: {"int8": ["5"] * d, "scale": 0.1}})],
        "int8 holding true": [dict(c0, embeddings={m: {"int8": [True] * d, "scale": 0.1}})],
        "fp16_b64 not a string": [dict(c0, embeddings={m: {"fp16_b64": 5}})],
        "fp16 inf bytes": [dict(c0, embeddings={m: {"fp16_b64": base64.b64encode(np.full(d, np.inf, np.float16).tobytes()).decode()}})],
    }


def _nested(depth: int) -> list:
    v: list = [0.0]
    for _ in range(depth):
        v = [v]
    return v


def test_regression_corpus_is_refused_by_every_engine(engines, feed):
    c0 = feed["candidates"][0]
    for name, rr in engines.items():
        for case, cands in _corpus(rr, c0).items():
            with pytest.raises(DataError):
                rr.rerank(cands + feed["candidates"][1:], context=_ctx(feed))
            # and the error is the same through the code paths an app uses
            with pytest.raises(DataError):
                rr.prepare(cands)


def test_a_huge_vector_is_named_and_the_limit_comes_from_the_manifest(engines, feed):
    rr = engines["onnx-fp32"]
    m = next(iter(rr.modalities))
    lim = rr.manifest["features"]["cand_modality"]["limit"][m]
    assert rr.embedding_limit[m] == lim and 1.0 <= lim <= 65504.0
    c = copy.deepcopy(feed["candidates"][3])
    c["embeddings"][m] = [lim * 1.01] + [0.0] * (rr.modalities[m] - 1)
    with pytest.raises(DataError, match=f"candidate {c['item_id']}: modality '{m}' has an element of magnitude"):
        rr.rerank(feed["candidates"][:3] + [c], context=_ctx(feed))
    c["embeddings"][m] = [lim] + [0.0] * (rr.modalities[m] - 1)       # the limit itself is accepted
    assert check_outcome(rr, feed["candidates"][:3] + [c], _ctx(feed)) == "ok"


def test_api_misuse_is_a_data_error(engines, feed):
    rr = engines["onnx-fp32"]
    m = next(iter(rr.modalities))
    for bad in (5, None, "abc", {"item_id": 1}):
        with pytest.raises(DataError):
            rr.rerank(bad, context=_ctx(feed))
        with pytest.raises(DataError):
            rr.prepare(bad)
    prepared = rr.prepare(feed["candidates"])
    for bad in (["abc"], "12", [1.5], None):
        with pytest.raises(DataError):
            prepared.without(bad)
    with pytest.raises(DataError, match="embeddings must be a mapping"):
        rr.rerank([Candidate(item_id=1, embeddings=[0.1] * rr.modalities[m])])


def test_events_built_in_code_are_checked_like_json_history(engines, feed, tmp_path):
    """One validation path for Event objects and JSON events, in a request and in the store."""
    rr = engines["onnx-fp32"]
    m = next(iter(rr.modalities))
    d = rr.modalities[m]
    good = Event(item_id=1, ts=feed["now"] - 60, watch_ms=3000, duration_ms=9000, embeddings={m: np.full(d, 0.1, np.float32)})
    bad = {
        "like": dataclass_replace(good, like="yes"),
        "skip": dataclass_replace(good, skip=2),
        "NaN embedding": dataclass_replace(good, embeddings={m: np.full(d, np.nan, np.float32)}),
        "inf embedding": dataclass_replace(good, embeddings={m: np.full(d, np.inf, np.float32)}),
        "NaN watch_ms": dataclass_replace(good, watch_ms=float("nan")),
        "negative watch_ms": dataclass_replace(good, watch_ms=-5.0),
        "string ts": dataclass_replace(good, ts="yesterday"),
        "string vector": dataclass_replace(good, embeddings={m: ["0.1"] * d}),
        "beyond float16": dataclass_replace(good, embeddings={m: np.full(d, 1e5, np.float32)}),
        "embeddings a list": dataclass_replace(good, embeddings=[0.1] * d),
    }
    store = UserState(tmp_path / "viewer.db")
    for name, e in bad.items():
        with pytest.raises(DataError):
            rr.rerank(feed["candidates"], context=_ctx(feed, [e]))
        with pytest.raises(DataError):                # the store refuses it too, and writes nothing
            store.record(e)
    assert store.count() == 0
    assert check_outcome(rr, feed["candidates"], _ctx(feed, [good])) == "ok"
    store.record(good)
    assert store.count() == 1
    store.close()


def dataclass_replace(e: Event, **kw) -> Event:
    """An Event with fields replaced without the dataclass machinery checking anything (as app code may)."""
    c = copy.copy(e)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_history_rows_are_not_reused_across_stores(engines, feed, tmp_path):
    """Same item ids and times, other embeddings (an account switch, a corrected vector): one Reranker
    reading store A then store B must score B exactly as a fresh Reranker does."""
    rr = engines["onnx-fp32"]
    now = feed["now"]
    rng = np.random.default_rng(0)
    stores = []
    for name in ("a", "b"):
        st_ = UserState(tmp_path / f"{name}.db")
        st_.record_many([Event(item_id=10 + i, ts=now - 600 + i, watch_ms=5000, duration_ms=8000,
                               embeddings={m: rng.normal(size=d).astype(np.float32) for m, d in rr.modalities.items()})
                         for i in range(6)])
        stores.append(st_)
    ctx = {"now": now}
    rr.rerank(feed["candidates"], context=ctx, state=stores[0])
    got_b = rr.rerank(feed["candidates"], context=ctx, state=stores[1]).to_list()
    fresh = Reranker.open(rr.root, backend="onnx", precision="fp32")
    want_b = fresh.rerank(feed["candidates"], context=ctx, state=stores[1]).to_list()
    assert got_b == want_b
    for s in stores:
        s.close()


# ---- property-based: the feed grammar, mutated ---------------------------------------------------------
HOSTILE = [None, True, False, "0.1", "abc", "", 10 ** 400, -(10 ** 400), -1, 0, 1.5, 1e308, -1e308, 3.4e38,
           float("nan"), float("inf"), -float("inf"), [], {}, [[1.0]], "9" * 5000, 2 ** 70, -(2 ** 63), {"int8": [1]}]
FIELDS = ["item_id", "creator_id", "duration_s", "upload_ts", "clicks", "embeddings"]


def _vector_mutations(d: int) -> st.SearchStrategy:
    el = st.sampled_from(HOSTILE) | st.floats(allow_nan=True, allow_infinity=True, width=32)
    return st.one_of(
        st.lists(el, min_size=0, max_size=d + 2),
        st.builds(lambda v, s: {"int8": v, "scale": s}, st.lists(st.integers(-300, 300) | el, min_size=d, max_size=d),
                  st.sampled_from(HOSTILE) | st.floats(min_value=1e-40, max_value=1e40)),
        st.builds(lambda b: {"fp16_b64": base64.b64encode(b).decode()}, st.binary(min_size=0, max_size=2 * d + 1)),
        st.builds(lambda x, i: [x if j == i else 0.0 for j in range(d)], st.floats(width=32), st.integers(0, d - 1)),
        st.sampled_from(HOSTILE),
    )


@st.composite
def mutated_feeds(draw, feed: dict, modalities: dict[str, int]):
    cands = copy.deepcopy(feed["candidates"])
    keep = draw(st.lists(st.integers(0, len(cands) - 1), min_size=0, max_size=len(cands), unique=True))
    cands = [cands[i] for i in keep] or cands[:1]
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(cands) - 1))
        if draw(st.booleans()):
            m = draw(st.sampled_from(sorted(modalities)))
            emb = cands[i].get("embeddings")
            emb = dict(emb) if isinstance(emb, dict) else {}          # an earlier mutation may have replaced it
            emb[m] = draw(_vector_mutations(modalities[m]))
            cands[i] = dict(cands[i], embeddings=emb)
        else:
            cands[i] = dict(cands[i], **{draw(st.sampled_from(FIELDS)): draw(st.sampled_from(HOSTILE))})
    if draw(st.booleans()) and len(cands) > 1:
        cands.append(dict(cands[0]))                                    # a duplicate id
    hist = copy.deepcopy(feed["history"])
    if hist and draw(st.booleans()):
        j = draw(st.integers(0, len(hist) - 1))
        key = draw(st.sampled_from(["item_id", "ts", "watch_ms", "duration_ms", "like", "skip", "sentiment", "embeddings"]))
        hist[j] = dict(hist[j], **{key: draw(st.sampled_from(HOSTILE))})
    k = draw(st.none() | st.integers(0, 40))
    return cands, hist, k


@pytest.mark.parametrize("engine", ["auto", "onnx-fp32"])
def test_property_any_mutated_feed_gives_a_valid_ranking_or_a_typed_error(engines, feed, engine):
    rr = engines[engine]
    outcomes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated_feeds(feed, rr.modalities))
    def run(case):
        cands, hist, k = case
        try:
            res = check_outcome(rr, cands, _ctx(feed, hist), k)
        except EdgeRecError as exc:              # raised outside rerank (none expected), still typed
            res = type(exc).__name__
        outcomes[res] = outcomes.get(res, 0) + 1

    run()
    # both kinds of outcome occur: the mutations are neither all harmless nor all refused
    assert outcomes.get("ok", 0) > 0 and outcomes.get("DataError", 0) > 0, outcomes


# ---- the behaviour store ---------------------------------------------------------------------------------
def _files_hold(folder: Path, needle: bytes) -> dict[str, bool]:
    return {p.name: needle in p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_forget_under_a_concurrent_reader_removes_the_bytes_or_says_what_holds_them(tmp_path):
    import sqlite3

    from edge_rec.errors import StoreError

    emb = np.full(8, 0.123, np.float32)
    needle = np.asarray(emb, np.float16).tobytes().hex().encode()        # how the store writes the vector
    store = UserState(tmp_path / "viewer.db", timeout_s=0.5)
    store.record_many([Event(item_id=987654321, ts=100.0 + i, embeddings={"visual": emb}) for i in range(50)])
    assert any(_files_hold(tmp_path, needle).values())
    reader = sqlite3.connect(str(tmp_path / "viewer.db"))
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 50          # holds a read snapshot
    with pytest.raises(StoreError, match="another connection holds a read"):
        store.forget()
    assert store.count() == 0                         # deleted for everyone; only the reader's snapshot remains
    reader.rollback()
    reader.close()
    store.forget()
    assert not any(_files_hold(tmp_path, needle).values()), _files_hold(tmp_path, needle)
    assert not any(_files_hold(tmp_path, b"987654321").values())
    store.close()


def test_store_path_errors_are_typed_and_keep_the_data(tmp_path):
    from edge_rec.errors import StoreError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="cannot create the folder"):
        UserState(tmp_path / "afile" / "viewer.db")
    with pytest.raises(StoreError, match="is a folder"):
        UserState(tmp_path)
    (tmp_path / "junk.db").write_bytes(b"not sqlite" * 100)
    with pytest.raises(DataError, match="damaged or not a store"):
        UserState(tmp_path / "junk.db")
    if os.geteuid() == 0:
        pytest.skip("read-only files and folders do not stop root; the rest ran")
    ro = tmp_path / "ro"
    ro.mkdir()
    with UserState(ro / "viewer.db") as s:
        s.record(Event(item_id=1, ts=1.0))
    os.chmod(ro / "viewer.db", 0o444)
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(StoreError, match="events are intact"):
            UserState(ro / "viewer.db")
    finally:
        os.chmod(ro, 0o755)
        os.chmod(ro / "viewer.db", 0o644)
    with UserState(ro / "viewer.db") as s:
        assert s.count() == 1


# ---- bundles: zips and manifests from an unknown source --------------------------------------------------
def test_zip_bombs_and_corrupt_zips_are_refused_with_bounded_disk_and_memory(bundle, tmp_path):
    import resource
    import zipfile

    from edge_rec.bundle import extract_bundle
    from edge_rec.errors import BundleError

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", "{}")
        with z.open("models/huge.onnx", "w", force_zip64=True) as f:          # 2 GB of zeros, ~2 MB zipped
            block = bytes(1 << 20)
            for _ in range(2048):
                f.write(block)
    assert bomb.stat().st_size < 8 << 20
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BundleError, match="compressed .*x, more than 100x"):
        extract_bundle(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 64 * 1024    # KB: nothing inflated
    # a 1 GB manifest (declared) is refused before it is read
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("manifest.json", "w", force_zip64=True) as f:
            for _ in range(64):
                f.write(b" " * (1 << 20))
    with pytest.raises(BundleError, match="manifest.json.*more than"):
        extract_bundle(big, tmp_path / "out2")
    # a bad CRC: a typed error and nothing left behind (was exit 3 with a traceback)
    good = tmp_path / "good.zip"
    shutil_copy(bundle.with_name("bundle.zip"), good)
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
    raw[start] ^= 0xFF
    good.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="damaged, nothing extracted"):
        extract_bundle(good, tmp_path / "out3")
    assert not (tmp_path / "out3").exists()
    assert main_rc(["bundle", "extract", str(good), str(tmp_path / "out4")]) == 2
    assert main_rc(["bundle", "extract", str(bundle.with_name("bundle.zip")), str(tmp_path / "out5")]) == 0


def shutil_copy(a: Path, b: Path) -> None:
    import shutil

    shutil.copyfile(a, b)


def main_rc(argv: list[str]) -> int:
    from edge_rec.cli import main

    return main(argv)


def _rewrite(bundle: Path, dest: Path, change) -> Path:
    """A copy of the bundle whose manifest ``change`` edits (checksums stay valid: the manifest is not
    among its own listed files)."""
    import shutil

    shutil.copytree(bundle, dest)
    man = json.loads((dest / "manifest.json").read_text())
    change(man)
    (dest / "manifest.json").write_text(json.dumps(man))
    return dest


@pytest.mark.parametrize("name,change,msg", [
    ("zero std", lambda m: m["features"]["cand_dense"]["duration"].__setitem__("std", 0), "duration.std must be a finite number > 0"),
    ("negated std", lambda m: m["features"]["cand_dense"]["popularity"].__setitem__("std", -1.2), "popularity.std"),
    ("huge hist_len", lambda m: m["model"].__setitem__("hist_len", 10 ** 9), "hist_len must be a whole number"),
    ("removed key", lambda m: m["features"]["cand_dense"].pop("freshness"), "lacks features.cand_dense.freshness"),
    ("dims disagree", lambda m: m["modalities"]["dims"].__setitem__(next(iter(m["modalities"]["dims"])), 7), "signature input"),
    ("string limit", lambda m: m["features"]["cand_modality"].__setitem__("limit", {"visual": "big"}), "limit"),
])
def test_manifest_values_the_runtime_uses_are_checked(bundle, tmp_path, name, change, msg):
    from edge_rec.errors import BundleError

    bad = _rewrite(bundle, tmp_path / "b", change)
    with pytest.raises(BundleError, match=msg):
        Reranker.open(bad)


def test_a_replaced_model_file_is_a_bundle_error_and_auto_falls_back(bundle, tmp_path):
    """A model file replaced by garbage with the manifest's hash updated: opening that format by name is a
    BundleError naming it; `auto` goes on to the next engine."""
    from edge_rec.bundle import sha256_file
    from edge_rec.errors import BundleError

    rr = Reranker.open(bundle)
    first = next(a for a in rr.manifest["artifacts"] if (a["format"], a["precision"]) == (rr.format, rr.precision))
    path = first["path"]

    def change(m):
        return None

    bad = _rewrite(bundle, tmp_path / "b", change)
    (bad / path).write_bytes(b"\x00" * 4096)
    man = json.loads((bad / "manifest.json").read_text())
    for f in man["files"]:
        if f["path"] == path:
            f["sha256"], f["size"] = sha256_file(bad / path), 4096
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match=f"{rr.format}/{rr.precision}"):
        Reranker.open(bad, backend=rr.format, precision=rr.precision)
    other = Reranker.open(bad)
    assert (other.format, other.precision) != (rr.format, rr.precision)


# ---- authenticity: signed bundles ------------------------------------------------------------------------
def test_signed_bundles_sign_verify_tamper_wrong_key_unsigned(bundle, tmp_path, capsys):
    import shutil

    pytest.importorskip("cryptography")
    from edge_rec.bundle import sha256_file
    from edge_rec.errors import BundleError

    keys = tmp_path / "keys"
    assert main_rc(["sign", "--generate-key", str(keys / "release")]) == 0
    assert main_rc(["sign", "--generate-key", str(keys / "other")]) == 0
    assert main_rc(["sign", "--generate-key", str(keys / "release")]) == 2           # never overwrites a key
    assert oct((keys / "release.pem").stat().st_mode & 0o777) == "0o600"
    pub, other = keys / "release.pub.pem", keys / "other.pub.pem"
    signed = tmp_path / "signed"
    shutil.copytree(bundle, signed)
    unsigned = tmp_path / "unsigned"
    shutil.copytree(bundle, unsigned)
    assert main_rc(["sign", str(signed), "--key", str(keys / "release.pem")]) == 0
    capsys.readouterr()
    # verified with the right key, through the API and the CLI
    assert Reranker.open(signed, public_key=pub).rerank([]) == []
    assert main_rc(["verify", str(signed), "--no-golden", "--public-key", str(pub)]) == 0
    # unsigned, when a key is required
    with pytest.raises(BundleError, match="not signed"):
        Reranker.open(unsigned, public_key=pub)
    assert Reranker.open(unsigned) is not None                                         # no key asked: opens
    # the wrong key
    with pytest.raises(BundleError, match="signed with another key"):
        Reranker.open(signed, public_key=other)
    assert main_rc(["verify", str(signed), "--no-golden", "--public-key", str(other)]) == 2
    # tampered consistently: a model file changed and the manifest's checksum rewritten to match
    target = next(p for p in sorted((signed / "models").glob("*.onnx")))
    target.write_bytes(target.read_bytes() + b"\0")
    man = json.loads((signed / "manifest.json").read_text())
    rel = target.relative_to(signed).as_posix()
    for f in man["files"]:
        if f["path"] == rel:
            f["sha256"], f["size"] = sha256_file(target), target.stat().st_size
    (signed / "manifest.json").write_text(json.dumps(man))
    from edge_rec.bundle import verify_bundle

    verify_bundle(signed)                                      # the checksums alone pass ...
    with pytest.raises(BundleError, match="manifest changed"):  # ... the signature does not
        Reranker.open(signed, public_key=pub)
    assert main_rc(["rerank", "--bundle", str(signed), "--feed", str(bundle.parent / "sample_feed.json"),
                    "--public-key", str(pub)]) == 2


def test_a_checked_event_changed_in_place_is_checked_again(engines, feed):
    """Events are checked once and remembered while unchanged (a swipe hands the same history again);
    a field changed in place, or a writeable array, is checked at the next call."""
    rr = engines["onnx-fp32"]
    hist = rr.parse_history(feed["history"])
    assert rr.rerank(feed["candidates"], context=_ctx(feed, hist))
    assert all(rr._event_seen(e) for e in hist)
    hist[0].like = "yes"
    with pytest.raises(DataError, match="like must be true or false"):
        rr.rerank(feed["candidates"], context=_ctx(feed, hist))
    hist[0].like = False
    m = next(iter(rr.modalities))
    hist[1].embeddings = dict(hist[1].embeddings, **{m: np.full(rr.modalities[m], np.nan, np.float32)})
    with pytest.raises(DataError):
        rr.rerank(feed["candidates"], context=_ctx(feed, hist))
