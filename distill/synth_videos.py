"""Small synthetic clips for trying and testing ``edge-rec featurize`` without videos of one's own:
moving patterns and a sine soundtrack, encoded with PyAV (H.264 or HEVC video, AAC audio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_rec._requires import requires

SR = 16_000
PATTERNS = ("gradient", "checker", "circles")


def make_video(path: str | Path, pattern: str, tone: float | None = 440.0, codec: str = "libx264", seconds: float = 2.0,
               fps: int = 12, size: tuple[int, int] = (128, 96), silent_track: bool = False) -> Path:
    """Encode a small clip: a moving ``pattern`` and (unless ``tone`` is None) a sine soundtrack; with
    ``silent_track`` the audio stream exists but holds zeros."""
    av = requires("av")
    w, h = size
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if codec == "libx265":
            vs.options = {"x265-params": "log-level=error"}
        aus = None
        if tone is not None or silent_track:
            aus = c.add_stream("aac", rate=SR)
            aus.layout = "mono"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(int(seconds * fps)):
            if pattern == "gradient":
                img = np.stack([(xx * 2 + i * 8) % 256, (yy * 2) % 256, np.full_like(xx, 60)], -1)
            elif pattern == "checker":
                img = (((xx + i * 3) // 16 + yy // 16) % 2)[..., None] * np.array([250, 250, 250])
            elif pattern == "circles":
                r = np.hypot(xx - w / 2 - i, yy - h / 2)
                img = np.stack([np.zeros_like(r), (np.sin(r / 4) > 0) * 200, np.full_like(r, 220)], -1)
            else:
                raise ValueError(f"unknown pattern {pattern!r}; choose one of {PATTERNS}")
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if aus is not None:
            t = np.arange(int(seconds * SR)) / SR
            y = np.zeros_like(t) if silent_track else 0.3 * np.sin(2 * np.pi * tone * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
            for k in range(0, len(y), 1024):
                chunk = y[k:k + 1024].astype(np.float32)[None, :]
                fr = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                fr.sample_rate = SR
                fr.pts = k
                for p in aus.encode(fr):
                    c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return path
