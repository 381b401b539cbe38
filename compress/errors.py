"""Errors a user sees as one line (kept free of heavy imports so the CLI starts fast)."""

from __future__ import annotations


class StageError(RuntimeError):
    """A step could not produce a trustworthy artifact; the message says why and what is kept."""
