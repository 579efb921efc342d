"""kopf registrations for the operator's own lifecycle: login, start-up, clean-up, probes, /metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from branch_operator.api.models import FINALIZER, GROUP
from branch_operator.clients.kube import KubeClient
from branch_operator.clients.nats_bus import NatsBus
from branch_operator.config import Settings
from branch_operator.handlers.admission import configure_admission
from branch_operator.handlers.context import runtime_of
from branch_operator.ops import gc_tuning
from branch_operator.ops.health import HealthServer
from branch_operator.runtime import Runtime

log = logging.getLogger(__name__)


def configure_kopf(settings: kopf.OperatorSettings, config: Settings) -> None:
    # Resources are known up front (our CRDs); scanning would need cluster-wide list on CRDs and namespaces.
    settings.scanning.disabled = True
    # Our own Events come from the operator's client; kopf should only post its warnings and errors.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Never kopf peering: with equal priorities every replica pauses every other, and peering does not
    # cover the JetStream consumers. Several replicas coordinate through a Lease (see runtime.py).
    settings.peering.standalone = True


@kopf.on.login()
def login(memo: Any, logger: Any, settings: kopf.OperatorSettings, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """An explicit kubeconfig (``--kubeconfig``, the embedded server) or else kopf's usual in-cluster/kubeconfig."""
    path = memo.get("kubeconfig") if memo is not None else None
    if not path:
        return kopf.login_via_client(logger=logger, settings=settings, **kwargs)
    # The kubernetes client resolves $KUBECONFIG at import time, so the path must be passed explicitly.
    from kubernetes import client as sync_client
    from kubernetes import config as sync_config

    cfg = sync_client.Configuration()
    sync_config.load_kube_config(config_file=path, client_configuration=cfg)  # type: ignore[no-untyped-call]
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl, scheme=scheme, token=token,
        username=cfg.username or None, password=cfg.password or None,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    config: Settings = memo.get("config") or Settings()
    configure_kopf(settings, config)
    kube = await KubeClient.connect(memo.get("kubeconfig"))
    runtime = Runtime(config, kube, NatsBus(config), policies=kwargs.get("policies_by_ns"),
                      **({"clock": memo["clock"]} if memo.get("clock") else {}))
    # Fail start-up early (kopf retries the handler) if the API server or our RBAC is not usable. The
    # lists also prime the catalog: kopf starts watching only after start-up handlers are done, so every
    # handler finds the catalog complete, as it found kopf's indices before. The policy status keeper is
    # primed from the same list, so its first pass counts every Branch, not those seen so far.
    watched: list[str | None] = list(config.namespaces) or [None]
    listed: list[dict[str, Any]] = []
    for ns in watched:
        listed += await kube.list_branches(ns)
    runtime.prime(listed)
    runtime.webhook = await configure_admission(settings, config, kube)
    memo.runtime = runtime
    runtime.start()
    if memo.get("tune_gc"):  # branch-operator run only (gc_tuning.py says why)
        gc_tuning.tune()
        runtime.tasks.append(asyncio.create_task(gc_tuning.collect_periodically(), name="oms-gc"))
    if config.health_port:
        memo.health = HealthServer(runtime, config.health_port)
        await memo.health.start()
    on_runtime = memo.get("on_runtime")
    if on_runtime is not None:
        on_runtime(runtime)


@kopf.on.startup()
async def serve_metrics(memo: kopf.Memo, **_: Any) -> None:
    """/metrics is on the health server; it gets a listener of its own when one is asked for, or when
    the health port is off (the embedded environment), on a free port then."""
    runtime = runtime_of(memo)
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
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = runtime_of(memo)
    if runtime is not None:
        await runtime.stop()
    for server in (memo.get("health"), memo.get("metrics_server")):
        if server is not None:
            await server.stop()


@kopf.on.probe(id="ready")
def probe_ready(memo: kopf.Memo, **_: Any) -> dict[str, bool]:
    runtime = runtime_of(memo)
    return dict(runtime.readiness()) if runtime else {}
