"""Publishing Funnel-style indexing events (for `branch-operator publish`, the demo, and tests)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import nats

from branch_operator.clients.nats_bus import connect_options
from branch_operator.config import Settings
from branch_operator.contracts.funnel_encode import encode_binary, encode_structured, make_event


def build_event(
    kind: str, branch_name: str, *, indexing_id: str, records: int = 0, passed: bool = True,
    errors: Sequence[str] = (), status: str | None = None, namespace: str | None = None,
    event_id: str | None = None, started_at: datetime | None = None, completed_at: datetime | None = None,
) -> dict[str, Any]:
    if kind == "completed" and status is None:
        status = "success"
    if kind == "failed" and status is None:
        status = "failed"
    return make_event(
        kind, branch_name, indexing_id, status=status, records_indexed=records, passed=passed,
        errors=tuple(errors), started_at=started_at, completed_at=completed_at, namespace=namespace,
        event_id=event_id,
    )


def subject_for(kind: str, settings: Settings) -> str:
    return {"started": settings.subject_started, "completed": settings.subject_completed,
            "failed": settings.subject_failed}[kind]


async def publish_event(
    nats_url: str, subject: str, event: dict[str, Any], *, binary: bool = False, settings: Settings | None = None,
) -> int:
    """Publish one event into JetStream; returns the stream sequence."""
    payload, headers = encode_binary(event) if binary else encode_structured(event)
    # The operator's auth/TLS settings (OMS_NATS_*), but one attempt only: a CLI must fail, not hang
    # (nats-py reads max_reconnect_attempts=0 as "forever").
    opts = connect_options((settings or Settings()).model_copy(update={"nats_url": nats_url}))
    opts.update(allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=5)
    nc = await nats.connect(**opts)
    try:
        ack = await nc.jetstream().publish(subject, payload, headers=headers or None, timeout=5.0)
        return int(ack.seq)
    finally:
        await nc.drain()


def add_event_arguments(parser: argparse.ArgumentParser) -> None:
    """The event-describing arguments shared by `branch-operator publish` and `kubectl branch publish`."""
    parser.add_argument("kind", choices=["started", "completed", "failed"])
    parser.add_argument("branch", help="OMS branch name, e.g. feature/user-schema")
    parser.add_argument("--indexing-id", default="idx-manual")
    parser.add_argument("--records", type=int, default=0)
    parser.add_argument("--status", choices=["success", "failed"], help="for completed (default success)")
    parser.add_argument("--validation-failed", action="store_true")
    parser.add_argument("--error", action="append", help="a validation error (repeatable)")
    parser.add_argument("--id", help="CloudEvent id (default: a new uuid)")
    parser.add_argument("--binary", action="store_true", help="binary mode (ce-* headers) instead of structured")


def event_from_args(args: argparse.Namespace, *, namespace: str | None) -> dict[str, Any]:
    return build_event(
        args.kind, args.branch, indexing_id=args.indexing_id, records=args.records,
        passed=not args.validation_failed, errors=args.error or (),
        status=args.status if args.kind == "completed" else None, namespace=namespace, event_id=args.id,
    )
