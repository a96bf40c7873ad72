"""Content featurization on videos the tests encode themselves (PyAV: frames + a tone), with the real
encoders (EfficientNet-Lite0, librosa, all-MiniLM-L6-v2), then joined with a log and trained on."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from edge_rec.cli import main  # noqa: E402
from edge_rec.errors import ConfigError, DataError  # noqa: E402
from edge_rec.distill.synth_videos import make_video  # noqa: E402
from edge_rec.runtime import decode_embedding  # noqa: E402



@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "101.mp4", "gradient", 440.0)
    shutil.copy(d / "101.mp4", d / "102.mp4")                        # the same video twice
    make_video(d / "103.mp4", "checker", 440.0)                      # another picture, the same soundtrack
    make_video(d / "104.mp4", "circles", 660.0, codec="libx265")    # HEVC
    make_video(d / "105.mp4", "checker", None)                       # no audio track
    make_video(d / "106.mp4", "circles", None, silent_track=True)    # an audio track of silence
    make_video(d / "107.mp4", "gradient", 220.0)
    (d / "108.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with (d.parent / "captions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "item_id", "caption", "hashtags"])
        w.writerow(["101.mp4", 101, "sunset timelapse over the bay", "#sunset #nature"])
        w.writerow(["102.mp4", 102, "sunset timelapse over the bay", "#sunset #nature"])
        w.writerow(["103.mp4", 103, "chess board speedrun", "chess"])
        w.writerow(["104.mp4", 104, "neon rings dance", "#edm"])
        w.writerow(["105.mp4", 105, "", ""])                          # no text
        w.writerow(["106.mp4", 106, "quiet rings", ""])
        w.writerow(["107.mp4", 107, "cooking pasta at home", "#food #recipe"])
        w.writerow(["108.mp4", 108, "broken upload", ""])
    return d


@pytest.fixture(scope="module")
def items(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fz") / "items"
    assert main(["featurize", "--videos", str(corpus), "--captions", str(corpus.parent / "captions.csv"),
                 "--out", str(out), "--dims", "visual=8,audio=6,text=5", "--no-progress"]) == 0
    return out


def _load(out: Path):
    from edge_rec.distill.featurize import load_items

    its, emb, present = load_items(out)
    row = {it["file"]: i for i, it in enumerate(its)}
    return its, emb, present, row


def test_featurize_embeds_reports_and_skips_the_broken_video(items):
    rep = json.loads((items / "featurize_report.json").read_text())
    assert rep["videos"] == 8 and rep["featurized"] == 7 and rep["failed"] == 1
    assert rep["failures"][0]["file"] == "108.mp4" and rep["failures"][0]["stage"] == "decode"
    assert rep["dims"] == {"visual": 8, "audio": 6, "text": 5}
    t = rep["timing"]
    assert t["videos_per_s"] > 0 and set(t["share"]) >= {"decode", "visual", "audio", "text"}
    assert abs(sum(t["share"].values()) - 1.0) < 0.01
    its, emb, present, row = _load(items)
    assert [it["item_id"] for it in its] == [101, 102, 103, 104, 105, 106, 107]
    assert its[row["104.mp4"]]["video_codec"] == "hevc" and present["visual"][row["104.mp4"]]
    assert its[row["101.mp4"]]["video_codec"] == "h264" and 1.9 < its[row["101.mp4"]]["duration_s"] < 2.3
    for m in ("visual", "audio", "text"):
        assert np.isfinite(emb[m].astype(np.float32)).all()


def test_identical_videos_match_and_a_new_picture_moves_only_the_visual_embedding(items):
    _, emb, present, row = _load(items)
    a, b, c = row["101.mp4"], row["102.mp4"], row["103.mp4"]
    for m in ("visual", "audio", "text"):
        np.testing.assert_array_equal(emb[m][a], emb[m][b], err_msg=m)
    vis = emb["visual"].astype(np.float32)
    assert np.linalg.norm(vis[a] - vis[c]) > 0.5                   # a different picture
    np.testing.assert_array_equal(emb["audio"][a], emb["audio"][c])  # the same soundtrack
    aud = emb["audio"].astype(np.float32)
    assert np.linalg.norm(aud[a] - aud[row["107.mp4"]]) > 0.5      # another tone is another sound


def test_missing_audio_and_text_are_marked_missing(items):
    rep = json.loads((items / "featurize_report.json").read_text())
    _, emb, present, row = _load(items)
    assert not present["audio"][row["105.mp4"]] and not present["audio"][row["106.mp4"]]   # no track; silence
    assert present["audio"][row["101.mp4"]] and present["audio"][row["104.mp4"]]
    assert not present["text"][row["105.mp4"]] and present["text"][row["106.mp4"]]
    assert not emb["audio"][row["105.mp4"]].any()                     # a missing row is zeros
    assert set(rep["missing"]["audio"]) == {"105.mp4", "106.mp4"}


def test_packed_feed_vectors_decode_to_the_embeddings(items):
    _, emb, present, row = _load(items)
    lines = [json.loads(x) for x in (items / "feed_items.jsonl").read_text().splitlines()]
    assert len(lines) == 7
    for rec in lines:
        i = row[f"{rec['item_id']}.mp4"]
        assert set(rec["embeddings"]) == {m for m in emb if present[m][i]}
        for m, packed in rec["embeddings"].items():
            got = decode_embedding(packed, m)
            want = emb[m][i].astype(np.float32)
            assert np.abs(got - want).max() <= packed["scale"] / 2 + 1e-3 * np.abs(want).max() + 1e-6


def test_saved_pca_maps_new_videos_into_the_same_space(items, corpus, tmp_path):
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(corpus / "103.mp4", more / "103.mp4")
    make_video(more / "201.mp4", "circles", 330.0)
    out = tmp_path / "items2"
    assert main(["featurize", "--videos", str(more), "--out", str(out), "--pca", str(items), "--no-progress"]) == 0
    _, emb1, _, row1 = _load(items)
    _, emb2, present2, row2 = _load(out)
    for m in ("visual", "audio"):
        np.testing.assert_allclose(emb2[m][row2["103.mp4"]].astype(np.float32),
                                   emb1[m][row1["103.mp4"]].astype(np.float32), atol=2e-3)
    assert not present2["text"].any()                                # no captions file: no text
    assert not (out / "pca.safetensors").exists()                    # reused, not refitted


def test_bad_featurize_input_is_a_typed_error(corpus, tmp_path):
    from edge_rec.distill.featurize import featurize, parse_dims

    with pytest.raises(DataError, match="not a folder"):
        featurize(tmp_path / "nope", tmp_path / "o")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,caption\nx.mp4,hi\n")
    with pytest.raises(DataError, match="'video' column"):
        featurize(corpus, tmp_path / "o", bad)
    with pytest.raises(ConfigError, match="bad --dims"):
        parse_dims("visual=sixty")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no videos here")
    with pytest.raises(DataError, match="no video files"):
        featurize(empty, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def _kuairand_log(path: Path, item_ids: list[int], users: int = 60, per_user: int = 24, seed: int = 0) -> Path:
    """A KuaiRand-style log over the featurized videos: users who like "sunset"/"cooking" items click
    them more (so the content carries signal)."""
    rng = np.random.default_rng(seed)
    liked = {101, 102, 107}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "video_id", "time_ms", "is_click", "is_like", "play_time_ms", "duration_ms", "author_id"])
        for u in range(users):
            fan = u % 2 == 0
            t = 1_700_000_000_000 + u * 1000
            for k in range(per_user):
                v = int(rng.choice(item_ids))
                p = 0.7 if (v in liked) == fan else 0.2
                click = int(rng.random() < p)
                t += int(rng.integers(5_000, 60_000)) + (3_600_000 if k % 6 == 5 else 0)
                play = int(rng.integers(3_000, 9_000)) if click else int(rng.integers(200, 2_500))
                w.writerow([u, v, t, click, int(click and rng.random() < 0.3), play, 8_000, v % 3])
    return path


@pytest.mark.slow
def test_videos_to_a_trained_student_as_a_new_user_would(items, tmp_path, capsys):
    """featurize -> data convert --items -> train-teacher -> distill, all from the CLI."""
    log = _kuairand_log(tmp_path / "log.csv", [101, 102, 103, 104, 105, 106, 107])
    ds_dir = tmp_path / "ds"
    assert main(["data", "convert", "--format", "kuairand", str(log), "--items", str(items), "--out", str(ds_dir),
                 "--n-candidates", "7"]) == 0
    rep = json.loads((ds_dir / "report.json").read_text())
    assert rep["featurized_items"]["with_features"] == 7
    assert rep["featurized_items"]["present"] == {"visual": 7, "audio": 5, "text": 6}
    from edge_rec.distill.dataset import Dataset

    ds = Dataset.load(ds_dir)
    assert ds.modalities == {"visual": 8, "audio": 6, "text": 5} and ds.captions is not None
    assert main(["train-teacher", "--data", str(ds_dir), "--out", str(tmp_path / "t"), "--preset", "tiny",
                 "--epochs", "2", "--no-ablation"]) == 0
    assert main(["distill", "--data", str(ds_dir), "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "s"),
                 "--preset", "tiny", "--epochs", "2"]) == 0
    srep = json.loads((tmp_path / "s" / "report.json").read_text())
    assert srep["models"]["student"]["params"] > 0
    assert set(srep["modalities"]["importance"]) == {"visual", "audio", "text"}


def test_a_log_without_featurized_ids_is_refused(items, tmp_path, capsys):
    log = _kuairand_log(tmp_path / "log.csv", [901, 902, 903], users=6, per_user=6)
    assert main(["data", "convert", "--format", "kuairand", str(log), "--items", str(items), "--out", str(tmp_path / "d")]) == 2
    assert "none of the dataset's 3 item ids" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_visual_encoder_is_the_pretrained_network():
    """The hand-written EfficientNet-Lite0 with the packaged weights recognises a real photo (matplotlib's
    Grace Hopper portrait): ImageNet class 652, "military uniform". Wrong padding, BN epsilon or input
    scaling would not."""
    import matplotlib
    import matplotlib.image as mpimg
    import torch

    from edge_rec.distill.encoders import load_efficientnet_lite0

    img = mpimg.imread(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        probs = load_efficientnet_lite0().logits(x).softmax(-1)[0]
    assert int(probs.argmax()) == 652 and float(probs[652]) > 0.2


def test_a_missing_encoder_names_the_extra_to_install(corpus, tmp_path, monkeypatch):
    """Without PyAV (or any encoder package) featurize stops before any work, naming the extra."""
    import sys

    from edge_rec.distill.featurize import featurize
    from edge_rec.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "librosa", None)          # makes `import librosa` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"edge-rec\[featurize\]"):
        featurize(corpus, tmp_path / "o")
    assert not (tmp_path / "o").exists()
