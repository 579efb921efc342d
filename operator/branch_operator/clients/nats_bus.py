"""NATS / JetStream plumbing: connection, the streams and durable consumers the operator relies on,
and publishing with de-duplication ids. No event semantics here (see consumer.py / processor.py)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from branch_operator.config import Settings

log = logging.getLogger(__name__)


def connect_options(settings: Settings) -> dict[str, Any]:
    """nats.connect() keyword arguments for the configured auth and TLS (pure, so it is testable)."""
    opts: dict[str, Any] = {
        "servers": [s.strip() for s in settings.nats_url.split(",") if s.strip()],
        "name": settings.operator_id,
        "connect_timeout": settings.nats_connect_timeout,
        # Never give up: the operator stays up and reports not-ready while NATS is away.
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
    }
    # Half a configuration would otherwise be dropped silently (and the connection tried without it).
    if settings.nats_password and not settings.nats_user:
        raise ValueError("OMS_NATS_PASSWORD is set but OMS_NATS_USER is not")
    if settings.nats_tls_key_file and not settings.nats_tls_cert_file:
        raise ValueError("OMS_NATS_TLS_KEY_FILE is set but OMS_NATS_TLS_CERT_FILE is not")
    if settings.nats_user:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password.get_secret_value() if settings.nats_password else ""
    if settings.nats_token:
        opts["token"] = settings.nats_token.get_secret_value()
    if settings.nats_creds_file:
        opts["user_credentials"] = str(settings.nats_creds_file)
    if settings.nats_nkey_seed_file:
        opts["nkeys_seed"] = str(settings.nats_nkey_seed_file)
    if settings.nats_tls_ca_file or settings.nats_tls_cert_file:
        try:
            ctx = ssl.create_default_context(
                cafile=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None)
            if settings.nats_tls_cert_file:
                ctx.load_cert_chain(
                    str(settings.nats_tls_cert_file),
                    str(settings.nats_tls_key_file) if settings.nats_tls_key_file else None,
                )
        except (OSError, ssl.SSLError) as exc:  # name the files: the bare error often names none
            raise ValueError(
                f"cannot load the NATS TLS files (CA {settings.nats_tls_ca_file}, certificate "
                f"{settings.nats_tls_cert_file}, key {settings.nats_tls_key_file}): {exc}") from exc
        opts["tls"] = ctx
    return opts


# The consumer_names() key of the consumer that reads every subject the input stream captures.
OTHER_SUBJECTS = "other"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    duplicate_window: float = 120.0


class NatsBus:
    """One NATS connection shared by the consumers and every publisher in the operator."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        # Bumped on every reconnect so consumer loops know to re-bind (nats.py pull subscriptions can
        # die silently across a server restart).
        self.epoch = 0
        self.reconnected = asyncio.Event()
        self._closing = False

    # ------------------------------------------------------------------------------- connection

    async def connect(self) -> None:
        opts = connect_options(self.settings)
        opts.update(
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            closed_cb=self._closed,
        )
        self.nc = await nats.connect(**opts)
        self._js = self.nc.jetstream()
        url = self.nc.connected_url
        # Host and port only: the URL's netloc may carry user:password@.
        log.info("connected to NATS at %s", f"{url.hostname}:{url.port}" if url else "?")

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("NATS is not connected")
        return self._js

    async def close(self) -> None:
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            # Not drain(): it waits on pull subscriptions' queues that never empty. The consumers are
            # stopped by now, so nothing is in flight; publishes were awaited with their acks.
            await self.nc.close()

    async def _disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS disconnected")

    async def _reconnected(self) -> None:
        self.epoch += 1
        self.reconnected.set()
        log.info("NATS reconnected (epoch %d)", self.epoch)

    async def _error(self, exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    async def _closed(self) -> None:
        log.info("NATS connection closed")

    # ---------------------------------------------------------------------------- streams etc.

    def streams(self) -> list[StreamSpec]:
        s = self.settings
        specs = [
            StreamSpec(s.audit_stream, [_wildcard(s.audit_subject)]),
            StreamSpec(s.branch_events_stream, [_wildcard(s.merged_subject)]),
            StreamSpec(s.notifications_stream, [_wildcard(s.notifications_subject)]),
            StreamSpec(s.dlq_stream, [f"{s.dlq_subject_prefix}.>"]),
        ]
        return specs

    async def ensure_streams(self) -> None:
        """The input stream (unless managed elsewhere) and every stream the operator publishes to."""
        s = self.settings
        wanted = list(self.streams())
        if s.manage_streams:
            wanted.insert(0, StreamSpec(s.stream, [s.stream_subjects]))
        else:
            await self.js.stream_info(s.stream)  # NotFoundError tells the operator's log what is missing
        for spec in wanted:
            await self._ensure_stream(spec)

    async def _ensure_stream(self, spec: StreamSpec) -> None:
        try:
            info = await self.js.stream_info(spec.name)
        except NotFoundError:
            await self.js.add_stream(
                name=spec.name,
                subjects=spec.subjects,
                storage=js_api.StorageType.FILE,
                duplicate_window=spec.duplicate_window,
            )
            log.info("created JetStream stream %s on %s", spec.name, spec.subjects)
            return
        if info.config.subjects != spec.subjects:
            log.warning("stream %s has subjects %s, expected %s; leaving it as it is",
                        spec.name, info.config.subjects, spec.subjects)

    def consumer_names(self) -> dict[str, tuple[str, str | None]]:
        """kind -> (durable name, filter subject); the :data:`OTHER_SUBJECTS` consumer has no filter.

        JetStream filters cannot say "everything but these three" (no negation, and ``filter_subjects``
        may not overlap), so the fourth consumer reads the whole stream: it acknowledges what is on the
        three event subjects (theirs to process) and dead-letters the rest. That needs a stream whose
        retention allows overlapping consumers (limits, as the operator creates it, or interest; not
        work-queue).
        """
        s = self.settings
        return {
            "started": (s.consumer_started, s.subject_started),
            "completed": (s.consumer_completed, s.subject_completed),
            "failed": (s.consumer_failed, s.subject_failed),
            OTHER_SUBJECTS: (s.consumer_other, None),
        }

    async def ensure_consumers(self) -> None:
        """Durable pull consumers shared by all replicas (a pull consumer is JetStream's queue group)."""
        s = self.settings
        for durable, subject in self.consumer_names().values():
            try:
                await self.js.consumer_info(s.stream, durable)
                continue
            except NotFoundError:
                pass
            await self.js.add_consumer(
                s.stream,
                js_api.ConsumerConfig(
                    durable_name=durable,
                    filter_subject=subject,
                    ack_policy=js_api.AckPolicy.EXPLICIT,
                    # For the other-subjects consumer on an existing stream too: what was stranded before it
                    # existed is dead-lettered now.
                    deliver_policy=js_api.DeliverPolicy.ALL,
                    ack_wait=s.ack_wait_seconds,
                    # The operator dead-letters after its own retry budget; the server limit is a backstop.
                    max_deliver=-1,
                    max_ack_pending=1000,
                ),
            )
            log.info("created durable consumer %s on %s", durable, subject or f"all of {s.stream}")

    async def bind(self, durable: str) -> JetStreamContext.PullSubscription:
        return await self.js.pull_subscribe_bind(durable, stream=self.settings.stream)

    # ---------------------------------------------------------------------------------- publish

    async def publish(
        self, subject: str, payload: bytes, *, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """Publish into a stream and wait for the ack; ``msg_id`` makes a re-publish a no-op."""
        hdrs = dict(headers or {})
        if msg_id:
            hdrs["Nats-Msg-Id"] = msg_id
        await self.js.publish(subject, payload, headers=hdrs or None, timeout=5.0)


def _wildcard(subject: str) -> str:
    """`oms.audit.branch` -> `oms.audit.>`: the stream takes the whole family of subjects."""
    head = subject.rsplit(".", 1)[0] if "." in subject else subject
    return f"{head}.>"
