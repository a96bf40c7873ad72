"""Typed errors. Every message says what was received, what is allowed, and how to fix it."""

from __future__ import annotations


class EdgeRecError(Exception):
    """Root of every error edge-rec raises on purpose. The CLI maps it to exit code 2."""

    exit_code = 2


class DataError(EdgeRecError):
    """A dataset on disk or in memory breaks the dataset contract."""


class ConfigError(EdgeRecError):
    """A configuration value is outside what is allowed."""


class MissingDependencyError(EdgeRecError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class BundleError(EdgeRecError):
    """An edge bundle is missing, malformed, tampered with, or does not match what the runtime expects."""


class ExportError(EdgeRecError):
    """A model could not be converted to a format; the message names the op or construct and why."""


class GateError(EdgeRecError):
    """A quality, parity or budget gate failed. The CLI maps it to exit code 1."""

    exit_code = 1


class StoreError(EdgeRecError):
    """The behaviour store cannot be opened, written or wiped as asked (a path that is not a folder, a
    read-only file, another connection holding it). The message says what holds it and whether the
    viewer's data are intact."""


class InternalError(EdgeRecError):
    """A result broke one of edge-rec's own guarantees (e.g. a ranking that is not a permutation of the
    candidates). Raised instead of returning it; it is a bug to report. The CLI maps it to exit code 3."""

    exit_code = 3
