"""Exceptions with actionable messages; the CLI prints them as one line and exits non-zero."""
from __future__ import annotations


class AutopruneError(Exception):
    """Base of every error autoprune raises on bad input or state."""


class ConfigError(AutopruneError, ValueError):
    """A config or search-space file is invalid; the message names the file and key."""


class UnknownNameError(AutopruneError, KeyError):
    """A registry lookup failed; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BackendUnavailableError(AutopruneError, RuntimeError):
    """A device backend cannot run here (missing package or hardware); says why."""


class MissingLatencyKeyError(AutopruneError, KeyError):
    """A latency table lacks a kernel key and the device cannot be measured here."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
