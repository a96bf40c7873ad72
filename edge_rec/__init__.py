"""edge-rec: on-device multimodal reranking for short-video feeds.

The ``edge_rec`` package is the phone-side runtime (numpy + one inference engine). It never imports
torch; the training side lives in :mod:`edge_rec.distill` and the exporters in :mod:`edge_rec.export`.
"""

from edge_rec.errors import EdgeRecError

__version__ = "0.1.0"

__all__ = ["EdgeRecError", "__version__"]
