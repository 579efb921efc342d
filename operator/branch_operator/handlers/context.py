"""How a kopf handler reaches the running operator: the Runtime kept in kopf's memo by start-up."""

from __future__ import annotations

from typing import Any

from branch_operator.runtime import Runtime

__all__ = ["acting_runtime", "runtime_of"]


def runtime_of(memo: Any) -> Runtime | None:
    """The Runtime, or None before start-up made it (a handler then has nothing to act with)."""
    return getattr(memo, "runtime", None)


def acting_runtime(memo: Any) -> Runtime | None:
    """The Runtime if this replica is in charge, else None: a standby keeps its state current and acts
    on nothing (the replica in charge does, and a replica taking charge catches up from the API server)."""
    runtime = runtime_of(memo)
    return runtime if runtime is not None and runtime.in_charge else None
