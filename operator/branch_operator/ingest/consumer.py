"""Pulls Funnel events from the durable JetStream consumers and decides each message's fate.

A message is acknowledged only after its Kubernetes writes succeeded. Anything that can never succeed
(unparseable, wrong schema, oversized, ...) is copied to the dead-letter stream with the reason and
terminated. Transient failures are nak'ed with an explicit, growing delay (a bare nak would redeliver
at once) until the retry budget is spent, then dead-lettered too. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from branch_operator.clients.emitter import Emitter
from branch_operator.clients.kube import Invalid, KubeError
from branch_operator.clients.nats_bus import OTHER_SUBJECTS, NatsBus
from branch_operator.config import Settings
from branch_operator.contracts.dlq import (
    MAX_REASON_LENGTH,
    REJECTED_BY_API_SERVER,
    RETRIES_EXHAUSTED,
    UNKNOWN_SUBJECT,
    dead_letter_headers,
    dead_letter_msg_id,
    dead_letter_subject,
)
from branch_operator.contracts.funnel import EventRejected, parse_message, subjects_from_settings
from branch_operator.contracts.funnel_decode import show
from branch_operator.controllers.indexing import EventProcessor, Outcome, Result
from branch_operator.domain.audit import AuditAction, AuditRecord
from branch_operator.ingest import guard
from branch_operator.kit.backoff import Backoff

log = logging.getLogger(__name__)


# How long one pull waits for a message. It bounds how long a drain (a hand-over to another replica)
# waits for the pull in flight; when messages are there a pull returns at once, so it costs no latency.
POLL_SECONDS = 0.5


class Disposition(enum.StrEnum):
    ACKED = "acked"
    RETRY = "retry"
    DEAD_LETTERED = "dead_lettered"


# Jittered (kit.backoff), so that messages failing together, or replicas restarted together, come back apart.
REDELIVERY = Backoff(base=0.5, cap=30.0, attempts=0)
WAITING_FOR_START = Backoff(base=0.25, cap=2.0, attempts=0)
RECONNECT = Backoff(base=0.5, cap=10.0, attempts=0)


class IndexingConsumer:
    def __init__(
        self, bus: NatsBus, processor: EventProcessor, emitter: Emitter, settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.bus = bus
        self.processor = processor
        self.emitter = emitter
        self.settings = settings
        self.clock = clock
        self.attached: dict[str, bool] = {}
        self.results: list[Callable[[str, Result | None, Disposition], None]] = []
        # (event kind, seconds from receipt to acknowledgement after the Kubernetes writes)
        self.timings: list[Callable[[str, float], None]] = []
        # (event id, event kind) for every message that parsed, before anything is decided about it
        self.received: list[Callable[[str, str], None]] = []
        self._subjects: dict[str, str] = {str(k): v for k, v in subjects_from_settings(settings).items()}
        self._draining = False
        self._stopped = asyncio.Event()

    @property
    def ready(self) -> bool:
        return bool(self.attached) and all(self.attached.values()) and self.bus.connected

    async def run(self) -> None:
        """Consume all the durable consumers until cancelled or drained."""
        self._draining = False
        self._stopped.clear()
        tasks = [
            asyncio.create_task(self._loop(kind, durable), name=f"consume-{kind}")
            for kind, (durable, _subject) in self.bus.consumer_names().items()
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._stopped.set()

    async def drain(self, timeout: float) -> None:
        """Stop fetching and finish the messages in hand (acked or nak'ed), then :meth:`run` returns.

        For handing over to another replica: a message fetched and then abandoned would wait for its
        acknowledgement timeout before anyone else could have it. After ``timeout`` the caller cancels
        what is left; those messages are nak'ed, without delay, on the way out.
        """
        self._draining = True
        if self._stopped.is_set() or not self.attached:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._stopped.wait()

    async def _loop(self, kind: str, durable: str) -> None:
        self.attached[durable] = False
        failures = 0
        while True:
            try:
                sub = await self.bus.bind(durable)
                epoch = self.bus.epoch
                self.attached[durable] = True
                failures = 0
                log.info("consuming %s via durable consumer %s", kind, durable)
                await self._pump(sub, epoch, self.handle_other if kind == OTHER_SUBJECTS else None)
                await self._hand_back(sub, durable)
                if self._draining:
                    self.attached[durable] = False
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    return
                # Reconnected: the old pull subscription may be dead (nats-py can lose one silently across a
                # server restart); bind again.
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            except asyncio.CancelledError:
                self.attached[durable] = False
                raise
            except (nats.errors.Error, NotFoundError, OSError, TimeoutError) as exc:
                self.attached[durable] = False
                failures += 1
                delay = RECONNECT.delay(failures)
                log.warning("consumer %s unavailable (%s: %s); retrying in %.1fs",
                            durable, type(exc).__name__, exc, delay, exc_info=log.isEnabledFor(logging.DEBUG))
                try:
                    await asyncio.wait_for(self.bus.reconnected.wait(), timeout=delay)
                except TimeoutError:
                    pass
                self.bus.reconnected.clear()
                if self.settings.manage_streams and self.bus.connected:
                    with contextlib.suppress(Exception):
                        await self.bus.ensure_streams()
                        await self.bus.ensure_consumers()

    async def _hand_back(self, sub: Any, durable: str) -> int:
        """Nak, without delay, the messages the server delivered after the last fetch had given up.

        A pull request can still be answered when its fetch has already timed out here (the server's expiry
        runs from when it got the request); the message then waits in the subscription's buffer for the next
        fetch. Unsubscribed with it there, it would wait for its acknowledgement timeout (30 s by default)
        before anyone else could have it: on a hand-over to another replica, for instance.
        """
        nc = self.bus.nc
        if nc is None or nc.is_closed:
            return 0
        with contextlib.suppress(Exception):
            # What the server sent before it answered this ping is in the buffer now, and the last pull request
            # has expired on the server by then.
            await nc.flush(timeout=1)
        handed = 0
        # Bounded: a buffer holding only status messages makes the fetch ask the server once more.
        for _ in range(2 * max(1, self.settings.fetch_batch)):
            if not sub.pending_msgs:
                break
            try:
                msgs: list[Msg] = await sub.fetch(1, timeout=0.05)
            except Exception:
                break
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak()
                    handed += 1
        if handed:
            log.info("handed back %d buffered message(s) of durable consumer %s for redelivery", handed, durable)
        return handed

    async def _pump(
        self, sub: Any, epoch: int, handler: Callable[[Msg], Coroutine[Any, Any, Disposition]] | None = None,
    ) -> None:
        """Keep up to ``fetch_batch`` messages in hand at once, fetching more as each one finishes.

        Waiting for a whole batch before fetching the next would leave the operator idle behind the
        slowest message of each batch (a conflict re-read, a slow write); events of one branch are still
        applied one at a time (EventProcessor serialises them).
        """
        in_flight: dict[asyncio.Task[Disposition], Msg] = {}
        try:
            while self.bus.epoch == epoch and not self._draining:
                room = max(1, self.settings.fetch_batch) - len(in_flight)
                if room <= 0:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for msg in await self._next_batch(sub, room):
                    # Looked up per message, not bound once: tests wrap handle_msg on the instance.
                    task = asyncio.create_task((handler or self.handle_msg)(msg))
                    in_flight[task] = msg
                    task.add_done_callback(lambda t: in_flight.pop(t, None))
                    task.add_done_callback(_report_crash)
        except BaseException:
            # Stopping (or a failed fetch): messages in hand are cancelled with the loop and handed back at
            # once, so that another replica (or this one, later) need not wait for their ack wait.
            abandoned = list(in_flight.values())
            for task in list(in_flight):
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            for msg in abandoned:
                with contextlib.suppress(Exception):
                    await msg.nak()
            raise
        finally:
            # After a reconnect, messages in hand are finished (acked or nak'ed), not left to their ack wait.
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _next_batch(self, sub: Any, room: int) -> list[Msg]:
        """Wait for one message, then take whatever else (up to ``room``) is already queued.

        A single fetch of N waits until N messages arrived or it expired, which would hold a lone event
        for the whole poll interval; fetching one first keeps latency low under light load.
        """
        try:
            msgs: list[Msg] = await sub.fetch(1, timeout=POLL_SECONDS)
        except (nats.errors.TimeoutError, TimeoutError):  # nothing within the poll interval
            return []
        if room > 1:
            try:
                msgs += await sub.fetch(room - 1, timeout=0.01)
            except (nats.errors.TimeoutError, TimeoutError):
                pass
        return msgs

    async def handle_msg(self, msg: Msg) -> Disposition:
        delivered = _delivered(msg)
        try:
            event = parse_message(msg.subject, msg.data, msg.headers, max_bytes=self.settings.max_event_bytes,
                                  subjects=self._subjects)
            guard.check_event(event, self.settings)  # only the watched namespaces
        except EventRejected as rejected:
            return await self._dead_letter(msg, rejected.reason_code, str(rejected), delivered,
                                           event_id=rejected.event_id, branch_name=rejected.branch_name)

        for seen in self.received:
            seen(event.id, event.kind)
        started = time.monotonic()
        try:
            result = await self.processor.handle(event, may_wait=delivered < self.settings.early_event_retries)
        except Invalid as exc:
            # The API server refused what the event asks for (e.g. a value the CRD forbids): retrying won't help.
            return await self._dead_letter(msg, REJECTED_BY_API_SERVER, str(exc), delivered, event_id=event.id,
                                           branch_name=event.data.branch_name)
        except (KubeError, nats.errors.Error, OSError, TimeoutError) as exc:
            return await self._retry(msg, delivered, f"{type(exc).__name__}: {exc}", event.id,
                                     event.data.branch_name)
        except Exception as exc:  # a bug must not crash-loop the operator, nor lose the message
            log.exception("processing event %s failed", event.id, extra={"event_id": event.id})
            return await self._retry(msg, delivered, f"{type(exc).__name__}: {exc}", event.id,
                                     event.data.branch_name)
        if result.outcome is Outcome.WAIT:
            # Possibly ahead of its run's started event (another subject, another consumer): ask again soon.
            delay = WAITING_FOR_START.delay(delivered)
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
            self._notify(event.id, result, Disposition.RETRY)
            return Disposition.RETRY
        await msg.ack()
        for timing in self.timings:
            timing(event.kind, time.monotonic() - started)
        self._notify(event.id, result, Disposition.ACKED)
        return Disposition.ACKED

    async def handle_other(self, msg: Msg) -> Disposition:
        """A message of the consumer that reads the whole stream.

        One on an event subject belongs to that subject's consumer, which processes it exactly once:
        here it is only acknowledged. Any other subject is read by nobody, so it is dead-lettered.
        """
        if msg.subject in self._subjects.values():
            with contextlib.suppress(Exception):  # if the ack is lost, it comes again and is acked again
                await msg.ack()
            return Disposition.ACKED
        reason = (f"subject {show(msg.subject, 200)} is captured by stream {self.settings.stream} but is none "
                  f"of the event subjects ({', '.join(sorted(self._subjects.values()))}): no consumer reads it")
        event_id = branch_name = None
        try:  # only for what the body says (event id, branch): parsing fails on an unknown subject
            parse_message(msg.subject, msg.data, msg.headers, max_bytes=self.settings.max_event_bytes,
                          subjects=self._subjects)
        except EventRejected as rejected:
            event_id, branch_name = rejected.event_id, rejected.branch_name
        return await self._dead_letter(msg, UNKNOWN_SUBJECT, reason, _delivered(msg), event_id=event_id,
                                       branch_name=branch_name)

    async def _retry(
        self, msg: Msg, delivered: int, reason: str, event_id: str, branch_name: str | None = None,
    ) -> Disposition:
        if delivered >= self.settings.max_deliver:
            return await self._dead_letter(msg, RETRIES_EXHAUSTED, reason, delivered, event_id=event_id,
                                           branch_name=branch_name)
        delay = REDELIVERY.delay(delivered)
        log.warning("event %s: %s; redelivery %d in %.1fs", event_id, reason, delivered + 1, delay,
                    extra={"event_id": event_id})
        with contextlib.suppress(Exception):  # if the nak is lost, ack_wait redelivers anyway
            await msg.nak(delay=delay)
        self._notify(event_id, None, Disposition.RETRY)
        return Disposition.RETRY

    async def _dead_letter(
        self, msg: Msg, code: str, message: str, delivered: int, *, event_id: str | None = None,
        branch_name: str | None = None,
    ) -> Disposition:
        seq = _stream_seq(msg)
        headers = dead_letter_headers(
            msg.headers, reason_code=code, reason=message, original_subject=msg.subject, delivered=delivered,
            stream_seq=seq, rejected_at=self.clock(),
        )
        try:
            await self.bus.publish(
                dead_letter_subject(self.settings.dlq_subject_prefix, msg.subject), msg.data, headers=headers,
                msg_id=dead_letter_msg_id(self.settings.stream, seq),
            )
            # The stream's timestamp, not the clock: a re-run after a crash yields the same audit id.
            await self.emitter.audit(AuditRecord.build(
                AuditAction.EVENT_REJECTED, branch_name=branch_name, when=_stored_at(msg) or self.clock(),
                seed=f"rejected|{self.settings.stream}|{seq}", actor=self.settings.operator_id,
                correlation_id=event_id, reason=code,
                details={"message": message[:MAX_REASON_LENGTH], "subject": msg.subject, "stream_seq": seq,
                         "delivered": delivered},
            ))
        except Exception as exc:
            # Parking failed: keep the message in the input stream rather than lose it.
            log.error("could not dead-letter message seq %s (%s); will retry", seq, exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=REDELIVERY.delay(delivered))
            return Disposition.RETRY
        log.warning("dead-lettered message seq %s on %s: %s: %s", seq, msg.subject, code, message)
        await msg.term()
        self._notify(event_id, None, Disposition.DEAD_LETTERED)
        return Disposition.DEAD_LETTERED

    def _notify(self, event_id: str | None, result: Result | None, disposition: Disposition) -> None:
        for cb in self.results:
            cb(event_id or "", result, disposition)


def _report_crash(task: asyncio.Task[Disposition]) -> None:
    # handle_msg decides every message's fate itself; anything escaping it is a bug, to be seen in the log
    # (the message is redelivered after its ack wait).
    if not task.cancelled() and task.exception() is not None:
        log.error("handling a message failed", exc_info=task.exception())


def _delivered(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:
        return 1


def _stream_seq(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return 0


def _stored_at(msg: Msg) -> datetime | None:
    try:
        ts = msg.metadata.timestamp
    except Exception:
        return None
    return ts if isinstance(ts, datetime) else None
