"""The dead-letter stream, for people: ``branch-operator dlq list`` and ``branch-operator dlq replay``.

The consumer (ingest/consumer.py) parks every message it cannot process in the dead-letter stream
(``FUNNEL_INDEXING_DLQ``, subjects ``funnel.dlq.<kind>``) with the original body and headers plus
``Oms-Dlq-*`` headers that say why (their names and rules: contracts/dlq.py). This module reads them
back and re-drives them:

* ``list`` shows each parked message by its **DLQ stream sequence** (the id every other command
  takes), with the reason, the delivery count and, when the body can be read, the CloudEvent id and
  branch.
* ``replay`` publishes chosen messages again to their original subject with their original headers,
  minus the ``Oms-Dlq-*`` headers and JetStream's own publish-control headers (``Nats-*``: an old
  ``Nats-Expected-Last-Sequence`` would make the republish fail), and with ``Nats-Msg-Id:
  replay:<dlq seq>``. Once the input stream has acknowledged the publish the parked copy is
  **deleted** from the dead-letter stream. A crash between the two leaves the parked copy in place;
  replaying it again is dropped by the input stream's duplicate window (same ``Nats-Msg-Id``), and
  beyond the window the operator still recognises the CloudEvent id (``status.recentEventIds``), so a
  double replay never applies an event twice. A replayed message that fails again is parked again
  under a new sequence.

Nothing here changes Kubernetes; everything goes through NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from branch_operator.clients.nats_bus import connect_options
from branch_operator.config import Settings, mask_url
from branch_operator.contracts.dlq import (
    H_ORIGINAL_SUBJECT,
    NATS_MSG_ID,
    DeadLetter,
    header_value,
    read_dead_letter,
    replay_headers,
    replay_msg_id,
)

# Bodies larger than this are not parsed for the id/branch columns.
_PEEK_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class Parked:
    """One message in the dead-letter stream."""

    seq: int  # sequence in the dead-letter stream: the id `list` shows and `replay --id` takes
    subject: str  # its subject in the dead-letter stream (funnel.dlq.<kind>)
    headers: Mapping[str, str]
    data: bytes
    stored_at: datetime | None = None

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    @property
    def letter(self) -> DeadLetter:
        """Why and from where it was parked (its ``Oms-Dlq-*`` headers)."""
        return read_dead_letter(self.headers)

    @property
    def original_subject(self) -> str | None:
        return self.letter.original_subject

    @property
    def reason_code(self) -> str:
        return self.letter.reason_code

    @property
    def reason(self) -> str:
        return self.letter.reason

    @property
    def delivery_count(self) -> int | None:
        return self.letter.delivery_count

    @property
    def original_seq(self) -> int | None:
        return self.letter.stream_seq

    @property
    def rejected_at(self) -> str | None:
        return self.letter.rejected_at

    @property
    def event_id(self) -> str | None:
        return self._peek()[0]

    @property
    def branch_name(self) -> str | None:
        return self._peek()[1]

    def _peek(self) -> tuple[str | None, str | None]:
        """(CloudEvent id, data.branch_name) if the body or the ``ce-*`` headers let us read them."""
        event_id: str | None = None
        header_id = self.header("ce-id")
        if header_id:
            event_id = urllib.parse.unquote(header_id)
        doc: Any = None
        if len(self.data) <= _PEEK_LIMIT:
            try:
                doc = json.loads(self.data)
            except (ValueError, RecursionError):
                doc = None
        branch: Any = None
        if isinstance(doc, dict):
            if header_id:  # binary mode: the body is the data
                branch = doc.get("branch_name")
            else:  # structured mode
                if isinstance(doc.get("id"), str):
                    event_id = doc["id"]
                if isinstance(doc.get("data"), dict):
                    branch = doc["data"].get("branch_name")
        return event_id, branch if isinstance(branch, str) else None

    def replay_headers(self) -> dict[str, str]:
        """The original headers, minus ``Oms-Dlq-*`` and ``Nats-*``, plus the replay's ``Nats-Msg-Id``."""
        return replay_headers(self.headers, self.seq)

    def matches(self, wanted: str) -> bool:
        """``wanted`` is this message's DLQ sequence or its CloudEvent id."""
        return (wanted.isdigit() and int(wanted) == self.seq) or (self.event_id is not None and self.event_id == wanted)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq,
            "subject": self.subject,
            "original_subject": self.original_subject,
            "original_seq": self.original_seq,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "delivery_count": self.delivery_count,
            "rejected_at": self.rejected_at,
            "stored_at": self.stored_at.isoformat() if self.stored_at else None,
            "event_id": self.event_id,
            "branch_name": self.branch_name,
            "headers": dict(self.headers),
            "size": len(self.data),
        }
        try:
            doc["data"] = self.data.decode("utf-8")
        except UnicodeDecodeError:
            doc["data_base64"] = base64.b64encode(self.data).decode("ascii")
        return doc


@dataclass(frozen=True)
class ReplayResult:
    parked: Parked
    published: bool = False
    duplicate: bool = False  # the input stream had this replay already (a second replay)
    input_seq: int | None = None
    removed: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ------------------------------------------------------------------------------------ operations


async def read_parked(js: JetStreamContext, settings: Settings) -> list[Parked]:
    """Every message in the dead-letter stream, oldest first. A missing stream holds nothing."""
    subjects = f"{settings.dlq_subject_prefix}.>"
    out: list[Parked] = []
    seq = 1
    while True:
        try:
            # "next message at or after seq on these subjects": skips deleted sequences in one request.
            raw = await js.get_msg(settings.dlq_stream, seq=seq, subject=subjects, next=True)
        except NotFoundError:
            return out
        if raw.seq is None:
            return out
        out.append(Parked(
            seq=int(raw.seq), subject=raw.subject or "", headers=dict(raw.headers or {}),
            data=raw.data or b"", stored_at=raw.time,
        ))
        seq = int(raw.seq) + 1


def select(
    parked: Sequence[Parked], *, ids: Sequence[str] = (), all_: bool = False, reasons: Sequence[str] = (),
) -> tuple[list[Parked], list[str]]:
    """(chosen messages in DLQ order, ids that matched nothing). ``reasons`` filters by reason code."""
    chosen = list(parked) if all_ else [p for p in parked if any(p.matches(i) for i in ids)]
    missing = [i for i in ids if not any(p.matches(i) for p in parked)]
    if reasons:
        chosen = [p for p in chosen if p.reason_code in reasons]
    return chosen, missing


async def replay(js: JetStreamContext, settings: Settings, chosen: Iterable[Parked]) -> list[ReplayResult]:
    """Publish each message to its original subject, then delete it from the dead-letter stream."""
    results = []
    for p in chosen:
        subject = p.original_subject
        if not subject:
            results.append(ReplayResult(p, error=f"no {H_ORIGINAL_SUBJECT} header: nowhere to replay it to"))
            continue
        try:
            ack = await js.publish(subject, p.data, headers=p.replay_headers(), timeout=5.0)
        except Exception as exc:
            results.append(ReplayResult(p, error=f"publishing to {subject} failed: {type(exc).__name__}: {exc}"))
            continue
        published = ReplayResult(p, published=True, duplicate=bool(ack.duplicate), input_seq=int(ack.seq))
        try:
            await js.delete_msg(settings.dlq_stream, p.seq)
        except NotFoundError:
            pass  # removed concurrently (another replay): the goal is reached either way
        except Exception as exc:
            results.append(ReplayResult(
                p, published=True, duplicate=published.duplicate, input_seq=published.input_seq,
                error=f"replayed, but not removed from {settings.dlq_stream} ({type(exc).__name__}: {exc}); "
                      "replaying it again is harmless"))
            continue
        results.append(ReplayResult(p, published=True, duplicate=published.duplicate,
                                    input_seq=published.input_seq, removed=True))
    return results


# ------------------------------------------------------------------------------------ rendering


def _cell(value: Any, width: int | None = None) -> str:
    text = "-" if value is None or value == "" else str(value)
    text = "".join(c if c.isprintable() else " " for c in text)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def format_table(parked: Sequence[Parked], *, reason_width: int = 80) -> str:
    header = ["SEQ", "SUBJECT", "CODE", "DELIVERIES", "REJECTED AT", "EVENT ID", "BRANCH", "REASON"]
    rows = [[
        _cell(p.seq), _cell(p.original_subject or p.subject), _cell(p.reason_code), _cell(p.delivery_count),
        _cell(p.rejected_at), _cell(p.event_id, 64), _cell(p.branch_name, 64), _cell(p.reason, reason_width),
    ] for p in parked]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def describe(result: ReplayResult, settings: Settings) -> str:
    p = result.parked
    what = f"dlq seq {p.seq} ({p.reason_code or 'no reason'}; event {p.event_id or '-'})"
    if not result.published:
        return f"FAILED   {what}: {result.error}"
    target = f"{p.original_subject} as {settings.stream} seq {result.input_seq}"
    dup = " (already there: duplicate dropped)" if result.duplicate else ""
    if result.error:
        return f"PARTIAL  {what} -> {target}{dup}: {result.error}"
    return f"replayed {what} -> {target}{dup}; removed from {settings.dlq_stream}"


# ------------------------------------------------------------------------------------------- CLI


async def _connect(settings: Settings) -> NatsClient:
    opts = connect_options(settings)

    async def quiet(_exc: Exception) -> None:  # the final error is reported once, by the caller
        return None

    # A command, not a daemon: give up after a second attempt per server (nats-py retries forever when
    # max_reconnect_attempts is 0 or less, even on the first connect) and never reconnect later.
    opts.update(name=f"{settings.operator_id}-dlq", allow_reconnect=False, max_reconnect_attempts=1,
                reconnect_time_wait=0.5, error_cb=quiet)
    return await nats.connect(**opts)


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    nc = await _connect(settings)
    try:
        parked = await read_parked(nc.jetstream(timeout=5.0), settings)
    finally:
        await nc.close()
    if args.reason:
        parked = [p for p in parked if p.reason_code in args.reason]
    if args.json:
        print(json.dumps([p.to_json() for p in parked], indent=2, ensure_ascii=False))
    elif parked:
        print(format_table(parked))
    else:
        print(f"no parked messages in {settings.dlq_stream}")
    return 0


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    nc = await _connect(settings)
    try:
        js = nc.jetstream(timeout=5.0)
        parked = await read_parked(js, settings)
        chosen, missing = select(parked, ids=args.id or (), all_=args.all, reasons=args.reason or ())
        for wanted in missing:
            print(f"error: no parked message with DLQ seq or CloudEvent id {wanted!r} in {settings.dlq_stream}",
                  file=sys.stderr)
        if missing:
            return 1  # nothing replayed: a typo should not half-run a batch
        if not chosen:
            print("nothing to replay")
            return 0
        if args.dry_run:
            for p in chosen:
                print(f"would replay dlq seq {p.seq} ({p.reason_code}; event {p.event_id or '-'}) -> "
                      f"{p.original_subject or '?'} with {NATS_MSG_ID} {replay_msg_id(p.seq)}")
            return 0
        results = await replay(js, settings, chosen)
    finally:
        await nc.close()
    for result in results:
        print(describe(result, settings), file=sys.stdout if result.ok else sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def _cmd_dlq(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.nats:
        overrides["nats_url"] = args.nats
    settings = Settings(**overrides)
    action = _list if args.dlq_command == "list" else _replay
    try:
        return asyncio.run(action(args, settings))
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        print(f"error: {mask_url(settings.nats_url)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def add_parser(sub: Any) -> None:
    """Register ``dlq list`` and ``dlq replay`` on the ``branch-operator`` subcommand parser."""
    dlq = sub.add_parser("dlq", help="show and re-drive messages parked in the dead-letter stream")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)

    ls = dlq_sub.add_parser("list", help="the parked messages, oldest first (SEQ is the id replay takes)")
    ls.add_argument("--json", action="store_true", help="full records (headers, body) as JSON")
    ls.add_argument("--reason", action="append", metavar="CODE", help="only this reason code (repeatable)")
    ls.add_argument("--nats", help="NATS URL (default $NATS_URL)")
    ls.set_defaults(fn=_cmd_dlq)

    rp = dlq_sub.add_parser(
        "replay", help="publish parked messages to their original subject again, then remove them from the DLQ")
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", metavar="ID",
                       help="DLQ seq (as `dlq list` shows) or CloudEvent id (repeatable)")
    which.add_argument("--all", action="store_true", help="every parked message (narrow it with --reason)")
    rp.add_argument("--reason", action="append", metavar="CODE", help="only messages with this reason code")
    rp.add_argument("--dry-run", action="store_true", help="show what would be replayed; change nothing")
    rp.add_argument("--nats", help="NATS URL (default $NATS_URL)")
    rp.set_defaults(fn=_cmd_dlq)
