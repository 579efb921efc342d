"""Reading a branch's audit trail back from the JetStream audit stream (`kubectl branch audit`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import nats
import nats.errors
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from branch_operator.config import mask_url

FETCH_BATCH = 256


class AuditUnavailable(Exception):
    """NATS or the audit stream cannot be read; the message says which."""


def matches(record: Mapping[str, Any], *, namespace: str | None, name: str, branch_name: str | None) -> bool:
    """A record about this Branch: by Kubernetes name in its namespace, or (e.g. an event that found no
    Branch, which has no Kubernetes name) by its OMS name."""
    if namespace is not None and record.get("namespace") not in (namespace, None):
        return False
    if record.get("branch") == name:
        return record.get("namespace") == namespace or namespace is None
    return bool(branch_name) and record.get("branch") is None and record.get("branch_name") == branch_name


async def connect(nats_url: str, timeout: float) -> Any:
    """Connect once or fail: nats-py retries a refused server forever with max_reconnect_attempts=0 (its
    ``> 0`` check), so one retry is allowed and the whole attempt is bounded."""
    return await asyncio.wait_for(
        nats.connect(nats_url, connect_timeout=timeout, max_reconnect_attempts=1, reconnect_time_wait=0.1,
                     allow_reconnect=False), timeout * 2)


async def read_audit(nats_url: str, stream: str, subject: str, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every audit record on ``subject`` in ``stream``, oldest first (an ephemeral, unacknowledged consumer)."""
    try:
        nc = await connect(nats_url, timeout)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise AuditUnavailable(f"cannot connect to NATS at {mask_url(nats_url)}: {exc or type(exc).__name__}") from exc
    records: list[dict[str, Any]] = []
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except NotFoundError as exc:
            raise AuditUnavailable(f"no JetStream stream {stream} at {mask_url(nats_url)}") from exc
        if not info.state.messages:
            return []
        sub = await js.pull_subscribe(subject, stream=stream, config=js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.NONE, deliver_policy=js_api.DeliverPolicy.ALL, inactive_threshold=30.0))
        try:
            # Fetch exactly what is there (a short fetch would wait out its timeout for a full batch).
            remaining = (await sub.consumer_info()).num_pending or 0
            while remaining > 0:
                try:
                    msgs = await sub.fetch(min(FETCH_BATCH, remaining), timeout=timeout)
                except (nats.errors.TimeoutError, TimeoutError):
                    break  # the stream was trimmed meanwhile
                for msg in msgs:
                    try:
                        records.append(json.loads(msg.data))
                    except ValueError:
                        continue  # not ours to judge; the stream only holds what the operator wrote
                remaining = msgs[-1].metadata.num_pending if msgs else 0
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return records
