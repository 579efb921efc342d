"""kopf registrations for operating the operator: admin requests, lock lifecycle, incidents, /metrics.

Imported at the end of :mod:`branch_operator.handlers.branches`, so these register after (and start after) the
core handlers. Everything here reaches the operator through the Runtime in kopf's memo.

The ``on.delete`` handler makes kopf put the finalizer ``oms.dev/finalizer`` on every Branch: deleting
a Branch then waits until its locks are released and audited. Without a running operator such a delete
waits; ``docs/operations.md`` says how to remove the finalizer by hand.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from branch_operator.api.models import GROUP, VERSION, Branch, BranchLock
from branch_operator.domain import admin
from branch_operator.ops.health import HealthServer

log = logging.getLogger(__name__)


def _runtime(memo: Any) -> Any:
    return getattr(memo, "runtime", None)


@kopf.on.startup()
async def serve_metrics(memo: kopf.Memo, **_: Any) -> None:
    """/metrics is on the health server; it gets a listener of its own when one is asked for, or when
    the health port is off (the embedded environment), on a free port then."""
    runtime = _runtime(memo)
    if runtime is None:
        raise kopf.TemporaryError("the operator runtime is not up yet", delay=1)
    settings = runtime.settings
    health = memo.get("health")
    if health is not None:
        runtime.http_url = health.url
    if not settings.metrics_enabled:
        return
    if settings.metrics_port is not None or health is None:
        port = settings.metrics_port if settings.metrics_port is not None else 0
        server = HealthServer(runtime, port)
        await server.start()
        memo.metrics_server = server
        runtime.http_url = server.url
        log.info("serving /metrics, /healthz and /readyz on %s", server.url)


@kopf.on.cleanup()
async def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    server = memo.get("metrics_server")
    if server is not None:
        await server.stop()


# ------------------------------------------------------------------------------------ admin requests


def _has_admin_request(annotations: kopf.Annotations, **_: Any) -> bool:
    return admin.has_request(annotations)


@kopf.on.event(GROUP, VERSION, Branch.PLURAL, when=_has_admin_request)
async def admin_requested(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime is None or type == "DELETED":
        return
    await runtime.admin.handle(copy.deepcopy(dict(body)))


# ------------------------------------------------------------------------- incidents from Branches


@kopf.on.event(GROUP, VERSION, Branch.PLURAL)
async def branch_incidents(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime is not None:
        runtime.incidents.observe(type, copy.deepcopy(dict(body)))


# ------------------------------------------------------------------------------------ lock lifecycle


@kopf.on.event(GROUP, VERSION, BranchLock.PLURAL)
async def lock_observed(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime is not None:
        await runtime.lock_lifecycle.observe(type, copy.deepcopy(dict(body)))


@kopf.on.delete(GROUP, VERSION, Branch.PLURAL)
async def branch_deleted(body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime is None:
        raise kopf.TemporaryError("the operator runtime is not up yet", delay=1)
    released = await runtime.lock_lifecycle.release_for_deleted_branch(copy.deepcopy(dict(body)))
    if released:
        log.info("branch %s/%s deleted: released %s", body["metadata"].get("namespace"),
                 body["metadata"].get("name"), ", ".join(released))
