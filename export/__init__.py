"""Export side of edge-rec: quantization, format exporters, parity checks and bundle writing.

The exporters arrive with issue #5; this package exists so that the import root is stable.
"""
