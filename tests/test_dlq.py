"""`branch-operator dlq list|replay` (branch_operator.cli.dlq) against a real nats-server, without the operator.

Messages are parked the way the consumer parks them (original body and headers + Oms-Dlq-* headers);
the end-to-end path through the operator is in tests/e2e/test_delivery.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api as js_api

from branch_operator.cli import dlq
from branch_operator.cli.main import main
from branch_operator.config import Settings
from branch_operator.contracts.dlq import (
    H_REASON,
    H_REASON_CODE,
    dead_letter_headers,
    dead_letter_msg_id,
    dead_letter_subject,
    read_dead_letter,
    replay_headers,
)
from branch_operator.contracts.funnel_encode import encode_binary, encode_structured, make_event
from branch_operator.embedded.natsserver import NatsServer, free_port

BIN = Path(sys.executable).parent
SETTINGS = Settings()
INPUT, DLQ = SETTINGS.stream, SETTINGS.dlq_stream
REJECTED_AT = datetime(2025, 6, 26, 10, 30, tzinfo=UTC)


def parked(seq: int = 7, data: bytes = b"", **headers: str) -> dlq.Parked:
    return dlq.Parked(seq=seq, subject="funnel.dlq.completed", headers=headers, data=data)


def dlq_headers(code: str, subject: str, original_seq: int, **extra: str) -> dict[str, str]:
    return dead_letter_headers(
        extra, reason_code=code, reason=f"{code}: because", original_subject=subject,
        delivered=3 if code == "RetriesExhausted" else 1, stream_seq=original_seq, rejected_at=REJECTED_AT,
    )


# ------------------------------------------------------------------------------------- pure parts


def test_dead_letter_headers_keep_the_original_minus_its_msg_id_and_say_why() -> None:
    original = {"Content-Type": "application/json", "Nats-Msg-Id": "funnel-1", "X-Trace": "t-1"}
    headers = dead_letter_headers(
        original, reason_code="InvalidJSON", reason="r" * 2000, original_subject="funnel.indexing.completed",
        delivered=2, stream_seq=41, rejected_at=datetime(2025, 6, 26, 10, 30, 5, 123456, tzinfo=UTC))
    assert headers == {  # the wire format docs/delivery.md documents
        "Content-Type": "application/json", "X-Trace": "t-1",
        "Oms-Dlq-Reason-Code": "InvalidJSON",
        "Oms-Dlq-Reason": "r" * 1024,
        "Oms-Dlq-Original-Subject": "funnel.indexing.completed",
        "Oms-Dlq-Delivery-Count": "2",
        "Oms-Dlq-Stream-Seq": "41",
        "Oms-Dlq-Rejected-At": "2025-06-26T10:30:05Z",
    }
    assert original["Nats-Msg-Id"] == "funnel-1"  # the caller's headers are not changed
    assert dead_letter_subject("funnel.dlq", "funnel.indexing.completed") == "funnel.dlq.completed"
    assert dead_letter_subject("funnel.dlq", "funnel.indexing.") == "funnel.dlq.unknown"
    assert dead_letter_msg_id("FUNNEL_INDEXING", 41) == "dlq:FUNNEL_INDEXING:41"


def test_what_the_writer_parks_the_reader_reads_back_and_replay_restores() -> None:
    original = {"Content-Type": "application/cloudevents+json", "X-Trace": "t-1"}
    headers = dead_letter_headers(
        {**original, "Nats-Msg-Id": "funnel-1"}, reason_code="RetriesExhausted", reason="503",
        original_subject="funnel.indexing.started", delivered=10, stream_seq=7, rejected_at=REJECTED_AT)
    letter = read_dead_letter({k.lower(): v for k, v in headers.items()})  # header case is not kept everywhere
    assert (letter.reason_code, letter.reason, letter.original_subject, letter.delivery_count, letter.stream_seq,
            letter.rejected_at) == ("RetriesExhausted", "503", "funnel.indexing.started", 10, 7,
                                    "2025-06-26T10:30:00Z")
    assert replay_headers(headers, 3) == {**original, "Nats-Msg-Id": "replay:3"}
    assert read_dead_letter({H_REASON_CODE: "X", "Oms-Dlq-Stream-Seq": "seven"}).stream_seq is None


def test_structured_body_gives_event_id_and_branch() -> None:
    event = make_event("completed", "feature/user-schema", "idx-1", event_id="ev-1")
    body, headers = encode_structured(event)
    p = parked(data=body, **dlq_headers("RetriesExhausted", "funnel.indexing.completed", 12, **headers))
    assert (p.event_id, p.branch_name) == ("ev-1", "feature/user-schema")
    assert (p.reason_code, p.original_subject, p.delivery_count, p.original_seq) == (
        "RetriesExhausted", "funnel.indexing.completed", 3, 12)
    assert p.rejected_at == "2025-06-26T10:30:00Z"


def test_binary_mode_gives_event_id_from_the_header_and_branch_from_the_body() -> None:
    event = make_event("started", "feature/bin", "idx-1", event_id="ev 2/ü")
    body, headers = encode_binary(event)
    p = parked(data=body, **dlq_headers("RetriesExhausted", "funnel.indexing.started", 3, **headers))
    assert (p.event_id, p.branch_name) == ("ev 2/ü", "feature/bin")  # ce-id is percent-encoded on the wire


@pytest.mark.parametrize("body", [b'{"id": "broken", "type": ', b"\xff\xfe", b"[1, 2]", b'{"id": 5, "data": "x"}'])
def test_unreadable_bodies_have_no_event_id(body: bytes) -> None:
    p = parked(data=body, **dlq_headers("InvalidJSON", "funnel.indexing.started", 1))
    assert (p.event_id, p.branch_name) == (None, None)
    doc = p.to_json()
    assert doc["seq"] == 7 and doc["reason_code"] == "InvalidJSON" and doc["size"] == len(body)
    if body == b"\xff\xfe":
        assert doc["data_base64"] == "//4=" and "data" not in doc
    else:
        assert doc["data"] == body.decode()


def test_replay_headers_drop_dlq_and_jetstream_control_headers() -> None:
    original = {"Content-Type": "application/cloudevents+json", "ce-id": "ev-1", "X-Trace": "abc",
                "Nats-Expected-Last-Sequence": "41", "nats-msg-id": "funnel-1"}
    p = parked(seq=42, **dlq_headers("RetriesExhausted", "funnel.indexing.started", 9, **original))
    assert p.replay_headers() == {
        "Content-Type": "application/cloudevents+json", "ce-id": "ev-1", "X-Trace": "abc",
        "Nats-Msg-Id": "replay:42"}


def test_select_by_dlq_seq_or_event_id_and_by_reason() -> None:
    a = parked(1, json.dumps({"id": "ev-a"}).encode(), **{H_REASON_CODE: "RetriesExhausted"})
    b = parked(2, json.dumps({"id": "ev-b"}).encode(), **{H_REASON_CODE: "InvalidData"})
    c = parked(3, b"junk", **{H_REASON_CODE: "InvalidJSON"})
    assert dlq.select([a, b, c], ids=["3", "ev-a"]) == ([a, c], [])
    assert dlq.select([a, b, c], ids=["ev-b", "9", "ev-z"]) == ([b], ["9", "ev-z"])
    assert dlq.select([a, b, c], all_=True) == ([a, b, c], [])
    assert dlq.select([a, b, c], all_=True, reasons=["RetriesExhausted", "InvalidJSON"]) == ([a, c], [])
    assert dlq.select([a, b, c], ids=["1", "2"], reasons=["InvalidData"]) == ([b], [])


def test_table_has_one_row_per_message_and_no_control_characters() -> None:
    event = make_event("completed", "feature/t", "idx-1", event_id="ev-t")
    rows = [
        parked(5, encode_structured(event)[0], **dlq_headers("RetriesExhausted", "funnel.indexing.completed", 8)),
        parked(6, b"{", **{**dlq_headers("InvalidJSON", "funnel.indexing.started", 9),
                           H_REASON: "line one\nline two\t" + "x" * 200}),
    ]
    lines = dlq.format_table(rows).splitlines()
    assert lines[0].split() == ["SEQ", "SUBJECT", "CODE", "DELIVERIES", "REJECTED", "AT", "EVENT", "ID", "BRANCH",
                                "REASON"]
    assert len(lines) == 3
    assert lines[1].split()[:7] == ["5", "funnel.indexing.completed", "RetriesExhausted", "3",
                                    "2025-06-26T10:30:00Z", "ev-t", "feature/t"]
    assert lines[2].split()[:7] == ["6", "funnel.indexing.started", "InvalidJSON", "1", "2025-06-26T10:30:00Z",
                                    "-", "-"]
    assert "line one line two" in lines[2] and lines[2].endswith("…")


# ------------------------------------------------------------------------------ against nats-server


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    with NatsServer(store_dir=tmp_path / "nats") as server:
        yield server.url


async def _setup(url: str, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """The operator's streams, and ``messages`` parked in the DLQ in this order (DLQ seq 1, 2, ...)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=INPUT, subjects=[SETTINGS.stream_subjects], duplicate_window=120)
        await js.add_stream(name=DLQ, subjects=[f"{SETTINGS.dlq_subject_prefix}.>"])
        for subject, body, headers in messages:
            await js.publish(subject, body, headers=headers)
    finally:
        await nc.close()


async def _stream(url: str, stream: str) -> list[js_api.RawStreamMsg]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out: list[js_api.RawStreamMsg] = []
        if not info.state.messages:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                out.append(await js.get_msg(stream, seq))
            except nats.js.errors.NotFoundError:
                continue
        return out
    finally:
        await nc.close()


def _three() -> tuple[list[tuple[str, bytes, dict[str, str]]], dict[str, Any]]:
    started = make_event("started", "feature/replay", "idx-1", event_id="ev-started")
    completed = make_event("completed", "feature/replay", "idx-1", event_id="ev-completed")
    s_body, s_headers = encode_structured(started)
    c_body, c_headers = encode_binary(completed)
    messages = [
        ("funnel.dlq.started", s_body,
         dlq_headers("RetriesExhausted", "funnel.indexing.started", 4, **s_headers, **{"X-Trace": "t-1"})),
        ("funnel.dlq.completed", b'{"id": "broken", ', dlq_headers("InvalidJSON", "funnel.indexing.completed", 5)),
        ("funnel.dlq.completed", c_body, dlq_headers("RetriesExhausted", "funnel.indexing.completed", 6, **c_headers)),
    ]
    return messages, {"started": (s_body, s_headers), "completed": (c_body, c_headers)}


def test_list_reads_every_parked_message_in_order(nats_url: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    messages, _ = _three()
    asyncio.run(_setup(nats_url, messages))
    monkeypatch.setenv("NATS_URL", nats_url)  # the default when --nats is not given

    assert main(["dlq", "list", "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["seq"] for d in docs] == [1, 2, 3]
    assert [d["reason_code"] for d in docs] == ["RetriesExhausted", "InvalidJSON", "RetriesExhausted"]
    assert [d["event_id"] for d in docs] == ["ev-started", None, "ev-completed"]
    assert [d["original_subject"] for d in docs] == [
        "funnel.indexing.started", "funnel.indexing.completed", "funnel.indexing.completed"]
    assert docs[0]["branch_name"] == "feature/replay" and docs[0]["headers"]["X-Trace"] == "t-1"
    assert docs[0]["data"] == messages[0][1].decode()

    assert main(["dlq", "list", "--reason", "InvalidJSON"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 and table[1].split()[:3] == ["2", "funnel.indexing.completed", "InvalidJSON"]


def test_list_of_an_empty_or_missing_stream(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "list", "--nats", nats_url]) == 0  # no stream at all yet
    assert "no parked messages" in capsys.readouterr().out
    asyncio.run(_setup(nats_url, []))
    assert main(["dlq", "list", "--nats", nats_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_replay_publishes_to_the_original_subject_then_removes_from_the_dlq(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    messages, sent = _three()
    asyncio.run(_setup(nats_url, messages))

    # By DLQ seq and by CloudEvent id; replayed in DLQ order.
    assert main(["dlq", "replay", "--nats", nats_url, "--id", "ev-completed", "--id", "1"]) == 0
    out = capsys.readouterr().out
    assert "replayed dlq seq 1" in out and "replayed dlq seq 3" in out

    replayed = asyncio.run(_stream(nats_url, INPUT))
    assert [(m.subject, m.data) for m in replayed] == [
        ("funnel.indexing.started", sent["started"][0]), ("funnel.indexing.completed", sent["completed"][0])]
    assert replayed[0].headers == {**sent["started"][1], "X-Trace": "t-1", "Nats-Msg-Id": "replay:1"}
    assert replayed[1].headers == {**sent["completed"][1], "Nats-Msg-Id": "replay:3"}
    assert [m.seq for m in asyncio.run(_stream(nats_url, DLQ))] == [2]  # only the one not replayed is left

    # Already replayed (gone from the DLQ): an error, and nothing is published.
    assert main(["dlq", "replay", "--nats", nats_url, "--id", "1"]) == 1
    assert "no parked message with DLQ seq or CloudEvent id '1'" in capsys.readouterr().err
    assert len(asyncio.run(_stream(nats_url, INPUT))) == 2


def test_unknown_id_replays_nothing(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    messages, _ = _three()
    asyncio.run(_setup(nats_url, messages))
    assert main(["dlq", "replay", "--nats", nats_url, "--id", "1", "--id", "ev-nope"]) == 1
    assert "ev-nope" in capsys.readouterr().err
    assert asyncio.run(_stream(nats_url, INPUT)) == []
    assert len(asyncio.run(_stream(nats_url, DLQ))) == 3


def test_dry_run_changes_nothing(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    messages, _ = _three()
    asyncio.run(_setup(nats_url, messages))
    assert main(["dlq", "replay", "--nats", nats_url, "--all", "--reason", "RetriesExhausted", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[4] for line in out] == ["1", "3"]
    assert "Nats-Msg-Id replay:1" in out[0]
    assert asyncio.run(_stream(nats_url, INPUT)) == []
    assert len(asyncio.run(_stream(nats_url, DLQ))) == 3


def test_replay_all_of_one_reason(nats_url: str) -> None:
    messages, _ = _three()
    asyncio.run(_setup(nats_url, messages))
    assert main(["dlq", "replay", "--nats", nats_url, "--all", "--reason", "RetriesExhausted"]) == 0
    assert [m.headers["Nats-Msg-Id"] for m in asyncio.run(_stream(nats_url, INPUT))] == ["replay:1", "replay:3"]
    assert [m.headers["Oms-Dlq-Reason-Code"] for m in asyncio.run(_stream(nats_url, DLQ))] == ["InvalidJSON"]


def test_message_without_original_subject_is_reported_not_guessed(nats_url: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_setup(nats_url, [("funnel.dlq.started", b"{}", {H_REASON_CODE: "InvalidCloudEvent"})]))
    assert main(["dlq", "replay", "--nats", nats_url, "--id", "1"]) == 1
    assert "no Oms-Dlq-Original-Subject header" in capsys.readouterr().err
    assert asyncio.run(_stream(nats_url, INPUT)) == [] and len(asyncio.run(_stream(nats_url, DLQ))) == 1


async def test_a_second_replay_after_a_crash_before_the_delete_is_dropped_as_duplicate(nats_url: str) -> None:
    messages, _ = _three()
    await _setup(nats_url, messages)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        chosen, _missing = dlq.select(await dlq.read_parked(js, SETTINGS), ids=["1"])

        async def crash(stream: str, seq: int) -> bool:
            raise ConnectionResetError("killed between publish and delete")
        original_delete = js.delete_msg
        js.delete_msg = crash  # type: ignore[method-assign]
        [first] = await dlq.replay(js, SETTINGS, chosen)
        assert first.published and not first.duplicate and not first.removed
        assert first.error is not None and "replaying it again is harmless" in first.error

        js.delete_msg = original_delete  # type: ignore[method-assign]
        chosen, _missing = dlq.select(await dlq.read_parked(js, SETTINGS), ids=["1"])
        [second] = await dlq.replay(js, SETTINGS, chosen)
        assert second.ok and second.duplicate and second.removed and second.input_seq == first.input_seq
    finally:
        await nc.close()
    assert len(await _stream(nats_url, INPUT)) == 1  # one copy for the operator to see
    assert [m.seq for m in await _stream(nats_url, DLQ)] == [2, 3]


def test_console_script_and_unreachable_nats(nats_url: str) -> None:
    asyncio.run(_setup(nats_url, _three()[0]))
    env = {**os.environ, "NATS_URL": nats_url}
    listing = subprocess.run([str(BIN / "branch-operator"), "dlq", "list"], capture_output=True, text=True,
                             timeout=60, env=env)
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == ["SEQ", "1", "2", "3"]

    down = f"nats://127.0.0.1:{free_port()}"
    proc = subprocess.run([str(BIN / "branch-operator"), "dlq", "list", "--nats", down], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
