"""A drain hands back what it holds, also what the server delivered after the last fetch had given up.

Against a real nats-server. The race is made to happen every time: when the consumer is told to drain,
the fetch in flight of one durable consumer gives up (a timeout, as ``fetch`` raises it) just as the
server answers its pull request, so the message lands in the subscription's buffer. After the drain,
another subscriber (the next replica in charge) must get it at once, not after the acknowledgement
timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import pytest_asyncio

from branch_operator.cli.publish import build_event
from branch_operator.clients.emitter import Emitter
from branch_operator.clients.nats_bus import NatsBus
from branch_operator.config import Settings
from branch_operator.contracts.funnel_encode import encode_structured
from branch_operator.embedded.natsserver import NatsServer, free_port
from branch_operator.ingest.consumer import IndexingConsumer

from ..waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def bus(tmp_path: Path) -> AsyncIterator[NatsBus]:
    server = NatsServer(port=free_port(), store_dir=tmp_path / "nats")
    await server.astart()
    bus = NatsBus(Settings(nats_url=server.url))  # the default ack wait: 30 s
    await bus.connect()
    await bus.ensure_streams()
    await bus.ensure_consumers()
    yield bus
    await bus.close()
    await asyncio.to_thread(server.stop)


class LateAnswer:
    """A pull subscription whose fetch, once the consumer drains, gives up while the server answers."""

    def __init__(self, sub: Any, consumer: IndexingConsumer, publish: Any) -> None:
        self.sub = sub
        self.consumer = consumer
        self.publish = publish
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sub, name)

    async def fetch(self, batch: int = 1, timeout: float | None = 5.0) -> Any:
        if self.raced:
            return await self.sub.fetch(batch, timeout=timeout)
        # Waiting, as a fetch on an empty stream does, until the drain begins; then it gives up.
        await wait_for(lambda: self.consumer._draining, 30, "the drain")
        self.raced = True
        # The pull request this fetch sent, answered by the server after the fetch stopped waiting (nats-py's
        # own subject and inbox of the subscription: what its fetch publishes to).
        await self.sub._nc.publish(self.sub._nms, json.dumps({"batch": 1}).encode(), self.sub._deliver)
        await self.publish()
        await wait_for(lambda: self.sub.pending_msgs >= 1, 5, "the late answer in the subscription's buffer")
        raise nats.errors.TimeoutError


async def test_a_drain_hands_back_a_message_delivered_after_the_last_fetch_gave_up(bus: NatsBus) -> None:
    settings = bus.settings
    consumer = IndexingConsumer(bus, processor=None, emitter=Emitter(bus, settings), settings=settings)  # type: ignore[arg-type]
    durable = settings.consumer_started

    async def publish() -> None:
        payload, headers = encode_structured(build_event("started", "feature/late", indexing_id="idx-1",
                                                         namespace="default", event_id="late-1"))
        await bus.js.publish(settings.subject_started, payload, headers=headers)

    late: list[LateAnswer] = []
    bind = bus.bind

    async def binding(name: str) -> Any:
        sub = await bind(name)
        if name != durable:
            return sub
        late.append(LateAnswer(sub, consumer, publish))
        return late[-1]

    bus.bind = binding  # type: ignore[method-assign]
    running = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: consumer.ready, 10, "the consumer bound")
        await consumer.drain(timeout=5)
        await asyncio.wait_for(running, 5)
    finally:
        bus.bind = bind  # type: ignore[method-assign]
        running.cancel()
    assert late and late[0].raced

    # The next replica's subscription: the message is there at once, handed back (delivered a second time).
    sub = await bus.bind(durable)
    try:
        msgs = await sub.fetch(1, timeout=3)
    except nats.errors.TimeoutError:
        pytest.fail("the message was not handed back: it waits for the acknowledgement timeout (30 s)")
    assert [json.loads(m.data)["id"] for m in msgs] == ["late-1"]
    assert msgs[0].metadata.num_delivered == 2
    await msgs[0].ack()
    await sub.unsubscribe()
