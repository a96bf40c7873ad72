"""Featurization throughput on a generated corpus of short vertical clips (no videos of your own needed).

    .venv/bin/python benchmarks/featurize_throughput.py [--videos 12] [--seconds 10] [--out runs/featurize-bench]

Encodes ``--videos`` clips (360 x 640, 30 fps, 8 s by default; half H.264, half HEVC; AAC soundtracks,
every fourth without audio) with PyAV, writes a captions CSV, runs ``edge-rec featurize`` on them and
prints videos per second and the share of time per stage (decode, visual, audio, text, reduce) from the
report it writes. Numbers are measured on this machine in this run; nothing is assumed.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--out", default="runs/featurize-bench")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from edge_rec.distill.featurize import featurize
    from edge_rec.distill.synth_videos import PATTERNS, make_video

    root = Path(args.out)
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with (root / "captions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "item_id", "caption", "hashtags"])
        for i in range(args.videos):
            name = f"{1000 + i}.mp4"
            if not (vids / name).exists():
                make_video(vids / name, PATTERNS[i % 3], None if i % 4 == 3 else 220.0 * (1 + i % 5),
                           codec="libx265" if i % 2 else "libx264", seconds=args.seconds, fps=30, size=(360, 640))
            w.writerow([name, 1000 + i, f"clip {i} with a {PATTERNS[i % 3]} look", f"#demo #{PATTERNS[i % 3]}"])
    print(f"corpus: {args.videos} clips of {args.seconds:.0f} s at 360x640/30 fps in {vids} ({time.perf_counter() - t:.1f} s to encode)")
    rep = featurize(vids, root / "items", root / "captions.csv", overwrite=True, threads=args.threads)
    tm = rep["timing"]
    print(json.dumps({"featurized": rep["featurized"], "failed": rep["failed"], "videos_per_s": tm["videos_per_s"],
                      "total_s": tm["total_s"], "encoder_load_s": tm["encoder_load_s"], "seconds": tm["seconds"],
                      "share": tm["share"]}, indent=2))


if __name__ == "__main__":
    main()
