"""Failures the CLI turns into exit codes, defined without importing torch (the CLI catches them early)."""
from __future__ import annotations


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""
