"""Errors a user sees as one line (kept free of heavy imports so the CLI starts fast)."""

from __future__ import annotations


class RecipeError(ValueError):
    """A problem with the recipe or its inputs that the user can fix; shown as one line, no traceback."""


class StageError(RuntimeError):
    """A step could not produce a trustworthy artifact; the message says why and what is kept."""
