"""How a kopf handler reaches the running operator: the Runtime kept in kopf's memo by start-up."""

from __future__ import annotations

from typing import Any

from branch_operator.runtime import Runtime

__all__ = ["runtime_of"]


def runtime_of(memo: Any) -> Runtime | None:
    """The Runtime, or None before start-up made it (a handler then has nothing to act with)."""
    return getattr(memo, "runtime", None)
