"""What the Python runtime ranks for a bundle's sample feed — the reference the JVM and browser suites
compare against (int8 ONNX model, and under "fp32" the fp32 one; the default policy and the policy off).

    .venv/bin/python android_demo/python_rankings.py runs/default/bundle expected.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def python_rankings(bundle: Path, out: Path) -> Path:
    from edge_rec.policy import PostRankPolicy
    from edge_rec.runtime import Reranker

    feed = json.loads((Path(bundle) / "sample_feed.json").read_text())
    ctx = {"now": feed["now"], "history": feed["history"], "history_total": feed.get("history_total")}
    res: dict = {"fp32": {}}
    for key, pol in (("policy_on", PostRankPolicy()), ("policy_off", PostRankPolicy(enabled=False))):
        # int8 at the top level (the JVM suite runs the int8 file); fp32 too, for an app that falls back
        # to it when the int8 file did not pass its gates (the web prototype does)
        for prec, into in (("int8", res), ("fp32", res["fp32"])):
            rr = Reranker.open(bundle, backend="onnx", precision=prec, policy=pol)
            into[key] = rr.rerank(feed["candidates"], context=ctx).to_list()
    Path(out).write_text(json.dumps(res))
    return Path(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(python_rankings(Path(sys.argv[1]), Path(sys.argv[2])))
