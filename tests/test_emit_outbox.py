"""The emitter's outbox memory against a real nats-server: what it re-publishes, and what it may skip."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
import pytest_asyncio

from branch_operator.api.models import Outbox
from branch_operator.clients.emitter import OUTBOX_FLUSH_WINDOW_SECONDS, Emitter, Outgoing, outbox
from branch_operator.clients.nats_bus import NatsBus
from branch_operator.config import Settings
from branch_operator.embedded.natsserver import NatsServer

NOW = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    with NatsServer(store_dir=tmp_path / "nats") as server:
        yield server.url


@pytest_asyncio.fixture
async def emitter(nats_url: str) -> AsyncIterator[Emitter]:
    settings = Settings(nats_url=nats_url)
    bus = NatsBus(settings)
    await bus.connect()
    await bus.ensure_streams()
    yield Emitter(bus, settings)
    await bus.close()


async def merged_ids(emitter: Emitter) -> list[str]:
    """Nats-Msg-Id of every message in the merged stream, in order."""
    nc = await nats.connect(emitter.settings.nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(emitter.settings.branch_events_stream)
        return [str((await js.get_msg(emitter.settings.branch_events_stream, seq)).headers.get("Nats-Msg-Id"))
                for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages]
    finally:
        await nc.close()


def message(emitter: Emitter, msg_id: str) -> Outgoing:
    return Outgoing(emitter.settings.merged_subject, msg_id, f'{{"id":"{msg_id}"}}')


def box(key: str, messages: list[Outgoing], written: datetime) -> Outbox:
    return Outbox.model_validate(outbox(key, messages, written_at=written))


async def test_an_unsent_outbox_is_flushed_once_then_remembered(emitter: Emitter) -> None:
    stored = box("event-1", [message(emitter, "m1"), message(emitter, "m2")], NOW)
    assert not emitter.box_sent(stored.wire())
    await emitter.flush_replaced(stored, new_key="event-2", now=NOW + timedelta(seconds=5))
    assert await merged_ids(emitter) == ["m1", "m2"]
    assert emitter.box_sent(stored.wire())


async def test_flush_skips_what_this_process_sent_and_what_is_too_old(emitter: Emitter) -> None:
    sent = [message(emitter, "a1")]
    await emitter.send_outbox("event-a", sent)
    await emitter.flush_replaced(box("event-a", sent, NOW), new_key="event-b", now=NOW)
    old = box("event-c", [message(emitter, "c1")], NOW)
    await emitter.flush_replaced(old, new_key="event-d", now=NOW + timedelta(seconds=OUTBOX_FLUSH_WINDOW_SECONDS + 1))
    own = box("event-e", [message(emitter, "e1")], NOW)
    await emitter.flush_replaced(own, new_key="event-e", now=NOW)  # the event's own outbox is not "replaced"
    assert await merged_ids(emitter) == ["a1"]


async def test_a_second_outbox_under_the_same_key_is_not_taken_for_the_first(emitter: Emitter) -> None:
    """A kept result commits an interim outbox under its id, and later (applied) its real one."""
    await emitter.send_outbox("result-1", [message(emitter, "pending")])
    real = box("result-1", [message(emitter, "completed"), message(emitter, "released")], NOW)
    assert not emitter.box_sent(real.wire())
    await emitter.flush_replaced(real, new_key="merge:x", now=NOW)
    assert await merged_ids(emitter) == ["pending", "completed", "released"]
