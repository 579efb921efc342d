"""Lock lifecycle arithmetic and notification sinks (no cluster needed); the scheduler in tests/test_deadlines.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from branch_operator.clients.notify import Notifier, WebhookSink, webhook_payload
from branch_operator.controllers.locks import expires_at, expiry_patch, last_renewal, stamp_patch
from branch_operator.domain.incidents import Incident, blocked_since, merge_failed_incident
from branch_operator.embedded.natsserver import free_port

T0 = datetime(2025, 6, 26, 10, 0, tzinfo=UTC)


def lock(**status: str) -> dict[str, Any]:
    return {"metadata": {"name": "l", "creationTimestamp": "2025-06-26T10:00:00Z"},
            "spec": {"branch": "b", "lockType": "WRITE", "holder": "h", "ttlSeconds": 60}, "status": status}


# -------------------------------------------------------------------------------------- lock lifecycle


def test_stamp_uses_the_creation_time() -> None:
    assert stamp_patch(lock(), T0 + timedelta(minutes=5)) == {"acquiredAt": "2025-06-26T10:00:00Z",
                                                             "renewedAt": "2025-06-26T10:00:00Z"}
    assert stamp_patch(lock(renewedAt="2025-06-26T10:01:00Z"), T0) == {"acquiredAt": "2025-06-26T10:00:00Z"}
    assert stamp_patch(lock(acquiredAt="2025-06-26T10:00:00Z"), T0) is None


def test_expiry_patch_keeps_expires_at_in_line_with_the_lease() -> None:
    assert expiry_patch(lock(acquiredAt="2025-06-26T10:00:00Z")) == {"expiresAt": "2025-06-26T10:01:00Z"}
    assert expiry_patch(lock(renewedAt="2025-06-26T10:05:00Z", expiresAt="2025-06-26T10:01:00Z")) == {
        "expiresAt": "2025-06-26T10:06:00Z"}
    assert expiry_patch(lock(renewedAt="2025-06-26T10:05:00Z", expiresAt="2025-06-26T10:06:00.000Z")) == {}
    forever = lock(expiresAt="2025-06-26T10:01:00Z")
    del forever["spec"]["ttlSeconds"]
    assert expiry_patch(forever) == {"expiresAt": None}  # the TTL was removed: no expiry to show


def test_a_lock_without_a_ttl_is_not_stamped() -> None:
    forever = lock()
    del forever["spec"]["ttlSeconds"]
    assert stamp_patch(forever, T0) is None  # no lease to start: readers use its creationTimestamp


def test_expiry_counts_from_the_last_renewal() -> None:
    assert expires_at(lock()) == T0 + timedelta(seconds=60)  # unstamped: from creation
    assert expires_at(lock(acquiredAt="2025-06-26T10:00:00Z", renewedAt="2025-06-26T10:10:00Z")) == \
        T0 + timedelta(minutes=10, seconds=60)
    # A renewal "before" the acquisition cannot shorten the lock.
    assert last_renewal(lock(acquiredAt="2025-06-26T10:05:00Z", renewedAt="2025-06-26T10:01:00Z")) == \
        T0 + timedelta(minutes=5)
    no_ttl = lock()
    del no_ttl["spec"]["ttlSeconds"]
    assert expires_at(no_ttl) is None


# ------------------------------------------------------------------------------------------ notifications


def incident(key: str = "k1", kind: str = "lock_expired") -> Incident:
    return Incident(kind=kind, key=key, namespace="oms", branch="b", branch_name="feature/b", title="Lock expired",
                    message="Lock l expired", at=T0, severity="critical")


def test_payloads() -> None:
    plain = webhook_payload(incident(), "json")
    assert plain["incident"] == "k1" and plain["branch_name"] == "feature/b" and plain["at"] == "2025-06-26T10:00:00Z"
    slack = webhook_payload(incident(), "slack")
    assert slack["text"] == ":rotating_light: *Lock expired*: Lock l expired"
    assert slack["blocks"][0]["type"] == "section" and "`feature/b`" in str(slack["blocks"][1])


class Receiver:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[Any] = []

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}/"

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def no_sleep(_seconds: float) -> None:
    return None


async def test_webhook_retries_transient_failures() -> None:
    receiver = Receiver([503, 429])
    async with receiver as url:
        sink = WebhookSink(url, retries=3, sleep=no_sleep)
        await sink.send(incident())
        await sink.close()
    assert len(receiver.bodies) == 3 and receiver.bodies[-1]["incident"] == "k1"


async def test_webhook_gives_up_on_client_errors_and_after_retries() -> None:
    receiver = Receiver([400])
    async with receiver as url:
        sink = WebhookSink(url, retries=3, sleep=no_sleep)
        try:
            await sink.send(incident())
            raise AssertionError("a 400 must fail")
        except RuntimeError as exc:
            assert "HTTP 400" in str(exc) and "1 attempt" in str(exc)
        await sink.close()
    assert len(receiver.bodies) == 1
    dead = WebhookSink(f"http://127.0.0.1:{free_port()}/", retries=2, sleep=no_sleep)
    try:
        await dead.send(incident())
        raise AssertionError("an unreachable webhook must fail")
    except RuntimeError as exc:
        assert "3 attempt(s)" in str(exc)
    await dead.close()


class Recorder:
    name = "rec"

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, incident: Incident) -> None:
        self.sent.append(incident.key)


async def test_notifier_sends_each_incident_once_and_respects_skips() -> None:
    rec = Recorder()
    notifier = Notifier([rec], remember=2)
    task = asyncio.create_task(notifier.run())
    try:
        assert notifier.submit(incident("a"))
        assert not notifier.submit(incident("a"))  # a redelivery of the same incident
        notifier.submit(Incident(**{**incident("b").__dict__, "skip_sinks": frozenset({"rec"})}))
        notifier.submit(incident("c"))
        await notifier.join()
    finally:
        task.cancel()
    assert rec.sent == ["a", "c"]


def test_blocked_since_and_failed_merge() -> None:
    obj: dict[str, Any] = {
        "metadata": {"name": "b", "namespace": "oms", "uid": "u1"}, "spec": {"branchName": "feature/b"},
        "status": {"phase": "READY", "indexing": {"eventId": "e1"},
                   "merge": {"decision": "Blocked", "reasons": ["LockHeld"], "evaluatedAt": "2025-06-26T10:05:00Z"},
                   "conditions": [{"type": "Mergeable", "status": "False",
                                   "lastTransitionTime": "2025-06-26T10:01:00Z"}]},
    }
    assert blocked_since(obj) == T0 + timedelta(minutes=1)
    obj["status"]["conditions"] = []
    assert blocked_since(obj) == T0 + timedelta(minutes=5)
    obj["status"]["merge"]["decision"] = "Failed"
    assert blocked_since(obj) is None
    failed = merge_failed_incident(obj, T0)
    assert failed is not None and failed.key == "merge_failed:u1:e1" and failed.severity == "critical"
