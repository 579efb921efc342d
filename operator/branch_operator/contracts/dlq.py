"""The dead-letter vocabulary: how a parked message says why it was parked, and how a replay is marked.

The consumer (``ingest/consumer.py``) writes dead letters with :func:`dead_letter_headers`;
``branch-operator dlq`` (``cli/dlq.py``) reads them back with :func:`read_dead_letter` and re-drives
them with :func:`replay_headers`. Both sides import the names from here, so they cannot drift apart.
The header names are also a documented interface (docs/delivery.md) for people reading the stream
with other tools.

A parked message keeps its original body and headers, minus its ``Nats-Msg-Id`` (the dead-letter
publish sets its own), plus the ``Oms-Dlq-*`` headers below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

__all__ = [
    "DLQ_HEADER_PREFIX",
    "H_DELIVERY_COUNT",
    "H_ORIGINAL_SUBJECT",
    "H_REASON",
    "H_REASON_CODE",
    "H_REJECTED_AT",
    "H_STREAM_SEQ",
    "MAX_REASON_LENGTH",
    "NATS_MSG_ID",
    "REJECTED_BY_API_SERVER",
    "RETRIES_EXHAUSTED",
    "UNKNOWN_SUBJECT",
    "DeadLetter",
    "dead_letter_headers",
    "dead_letter_msg_id",
    "dead_letter_subject",
    "header_value",
    "read_dead_letter",
    "replay_headers",
    "replay_msg_id",
]

DLQ_HEADER_PREFIX: Final = "Oms-Dlq-"
H_REASON_CODE: Final = "Oms-Dlq-Reason-Code"
H_REASON: Final = "Oms-Dlq-Reason"
H_ORIGINAL_SUBJECT: Final = "Oms-Dlq-Original-Subject"
H_DELIVERY_COUNT: Final = "Oms-Dlq-Delivery-Count"
H_STREAM_SEQ: Final = "Oms-Dlq-Stream-Seq"
H_REJECTED_AT: Final = "Oms-Dlq-Rejected-At"

NATS_MSG_ID: Final = "Nats-Msg-Id"
# JetStream reads these on publish (dedupe id, optimistic-concurrency expectations, TTLs, rollups):
# a replay must not carry the original's.
_NATS_CONTROL_PREFIX: Final = "nats-"

# Reason codes of the consumer's own; the rest are the event contract's (funnel_decode.RejectReason)
# and the ingest guard's.
RETRIES_EXHAUSTED: Final = "RetriesExhausted"
REJECTED_BY_API_SERVER: Final = "RejectedByApiServer"
# Captured by the input stream, but on none of the event subjects: no consumer would ever read it.
UNKNOWN_SUBJECT: Final = "UnknownSubject"

MAX_REASON_LENGTH: Final = 1024
_REJECTED_AT_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


# ------------------------------------------------------------------------------------------ writing


def dead_letter_headers(
    original: Mapping[str, str] | None,
    *,
    reason_code: str,
    reason: str,
    original_subject: str,
    delivered: int,
    stream_seq: int,
    rejected_at: datetime,
) -> dict[str, str]:
    """The headers of a message parked from ``original_subject`` (input stream sequence ``stream_seq``)."""
    headers = dict(original or {})
    headers.pop(NATS_MSG_ID, None)
    headers.update({
        H_REASON_CODE: reason_code,
        H_REASON: reason[:MAX_REASON_LENGTH],
        H_ORIGINAL_SUBJECT: original_subject,
        H_DELIVERY_COUNT: str(delivered),
        H_STREAM_SEQ: str(stream_seq),
        H_REJECTED_AT: rejected_at.strftime(_REJECTED_AT_FORMAT),
    })
    return headers


def dead_letter_subject(prefix: str, original_subject: str) -> str:
    """``<prefix>.<kind>``: the last token of the original subject names the kind."""
    token = original_subject.rsplit(".", 1)[-1] or "unknown"
    return f"{prefix}.{token}"


def dead_letter_msg_id(input_stream: str, stream_seq: int) -> str:
    """The ``Nats-Msg-Id`` of parking one input message: parking it twice is dropped as a duplicate."""
    return f"dlq:{input_stream}:{stream_seq}"


# ------------------------------------------------------------------------------------------ reading


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """The first header named ``name``, in any letter case (NATS keeps the case it was given)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class DeadLetter:
    """What a parked message's ``Oms-Dlq-*`` headers say; missing or malformed values read as empty."""

    reason_code: str
    reason: str
    original_subject: str | None
    delivery_count: int | None
    stream_seq: int | None
    rejected_at: str | None


def read_dead_letter(headers: Mapping[str, str]) -> DeadLetter:
    return DeadLetter(
        reason_code=header_value(headers, H_REASON_CODE) or "",
        reason=header_value(headers, H_REASON) or "",
        original_subject=header_value(headers, H_ORIGINAL_SUBJECT),
        delivery_count=_int_or_none(header_value(headers, H_DELIVERY_COUNT)),
        stream_seq=_int_or_none(header_value(headers, H_STREAM_SEQ)),
        rejected_at=header_value(headers, H_REJECTED_AT),
    )


# ------------------------------------------------------------------------------------------- replay


def replay_msg_id(dlq_seq: int) -> str:
    """The ``Nats-Msg-Id`` of a replay: the same for every replay of one parked message."""
    return f"replay:{dlq_seq}"


def replay_headers(headers: Mapping[str, str], dlq_seq: int) -> dict[str, str]:
    """The original headers, minus ``Oms-Dlq-*`` and ``Nats-*``, plus the replay's ``Nats-Msg-Id``."""
    replayed = {
        k: v for k, v in headers.items()
        if not k.lower().startswith((DLQ_HEADER_PREFIX.lower(), _NATS_CONTROL_PREFIX))
    }
    replayed[NATS_MSG_ID] = replay_msg_id(dlq_seq)
    return replayed
