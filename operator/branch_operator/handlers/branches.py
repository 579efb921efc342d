"""kopf registrations: the Branch catalog, watches that trigger merge reconciliation, and the lifecycle.

Branch reactions are ``on.event`` handlers: level-triggered on the object as it is now, with no
per-object state in annotations. The one exception is the deletion handler in admin_handlers.py, which
makes kopf put the finalizer ``oms.dev/finalizer`` on Branches so that their locks are released and
audited before a Branch goes away.

Branches are looked up in ``runtime.catalog`` (catalog.py), not in kopf indices: kopf's readiness
bookkeeping for indexed objects cost minutes of CPU at start-up with 10,000 Branches.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from branch_operator.api.models import GROUP, VERSION, AutoMergePolicy, AutoMergePolicySpec, Branch, BranchLock
from branch_operator.clients.kube import Conflict, KubeClient, KubeError, NotFound
from branch_operator.clients.nats_bus import NatsBus
from branch_operator.config import Settings
from branch_operator.domain.lifecycle import initial_status
from branch_operator.domain.merge.policy import PolicyRef
from branch_operator.ops import gc_tuning
from branch_operator.runtime import Runtime

log = logging.getLogger(__name__)


def configure_kopf(settings: kopf.OperatorSettings, config: Settings) -> None:
    # Resources are known up front (our CRDs); scanning would need cluster-wide list on CRDs and namespaces.
    settings.scanning.disabled = True
    # Our own Events come from the operator's client; kopf should only post its warnings and errors.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.standalone = False
        settings.peering.mandatory = True
    else:
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


def _runtime(memo: Any) -> Runtime | None:
    return getattr(memo, "runtime", None)


# -------------------------------------------------------------------------------------- lifecycle


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    config: Settings = memo.get("config") or Settings()
    configure_kopf(settings, config)
    kube = await KubeClient.connect(memo.get("kubeconfig"))
    runtime = Runtime(config, kube, NatsBus(config), **({"clock": memo["clock"]} if memo.get("clock") else {}))
    runtime.lookup.policies_by_ns = kwargs.get("policies_by_ns")
    # Fail start-up early (kopf retries the handler) if the API server or our RBAC is not usable. The
    # lists also prime the catalog: kopf starts watching only after start-up handlers are done, so every
    # handler finds the catalog complete, as it found kopf's indices before.
    watched: list[str | None] = list(config.namespaces) or [None]
    listed: list[dict[str, Any]] = []
    for ns in watched:
        listed += await kube.list_branches(ns)
    runtime.catalog.prime(listed)
    runtime.watching = True
    memo.runtime = runtime
    # And the policy status keeper, so that its first pass counts every Branch, not those seen so far.
    policy_handlers.prime(memo, listed)
    runtime.start()
    if memo.get("tune_gc"):  # branch-operator run only (gc_tuning.py says why)
        gc_tuning.tune()
        runtime.tasks.append(asyncio.create_task(gc_tuning.collect_periodically(), name="oms-gc"))
    if config.health_port:
        from branch_operator.ops.health import HealthServer

        memo.health = HealthServer(runtime, config.health_port)
        await memo.health.start()
    on_runtime = memo.get("on_runtime")
    if on_runtime is not None:
        on_runtime(runtime)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime is not None:
        await runtime.stop()
    health = memo.get("health")
    if health is not None:
        await health.stop()


@kopf.on.probe(id="ready")
def probe_ready(memo: kopf.Memo, **_: Any) -> dict[str, bool]:
    runtime = _runtime(memo)
    return dict(runtime.readiness()) if runtime else {}


# ----------------------------------------------------------------------------------------- indices


# The only kopf index: AutoMergePolicies are few, so kopf's per-object readiness toggles cost nothing.
@kopf.index(GROUP, VERSION, AutoMergePolicy.PLURAL)
def policies_by_ns(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[str, PolicyRef] | None:
    namespace = namespace or ""
    try:
        parsed = AutoMergePolicySpec.model_validate(copy.deepcopy(dict(spec)))
    except ValueError as exc:
        # An invalid policy is ignored as a whole, never half-applied.
        log.warning("ignoring AutoMergePolicy %s/%s: %s", namespace, name, exc)
        return None
    return {namespace: PolicyRef(name=name, generation=int(meta.get("generation") or 0), spec=parsed)}


# ---------------------------------------------------------------------------------------- watches


@kopf.on.event(GROUP, VERSION, Branch.PLURAL)
async def branch_catalog(type: str | None, body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    """Keeps ``runtime.catalog`` current with every Branch event, DELETED included.

    Registered before every other Branch handler (kopf runs one object's handlers in registration
    order), so they all look things up in a catalog that already knows this event.
    """
    runtime = _runtime(memo)
    if runtime is None:
        return
    claimed = runtime.catalog.observe(type, body)
    if not claimed or namespace is None:
        return
    branch_name = str((body.get("spec") or {}).get("branchName", ""))
    if runtime.catalog.find(namespace, branch_name) != body["metadata"]["name"]:
        return  # another Branch already answers to that name: READY Branches' targets are unchanged
    # READY Branches merging into this name were decided without its locks (target unknown then). At
    # start-up the primed catalog knows every target already, so this is for Branches created or renamed
    # later.
    await policy_handlers.reevaluate_merging_into(runtime, namespace, branch_name)


# Imported here, not at the top: its Branch handler must register after branch_catalog (see there).
from branch_operator.handlers import policies as policy_handlers  # noqa: E402  (issue 4: policy status, target-branch locks, merge requests)


@kopf.on.event(GROUP, VERSION, Branch.PLURAL)
async def branch_changed(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime is None or type == "DELETED":
        return
    obj = copy.deepcopy(dict(body))
    status = obj.get("status") or {}
    if not status.get("phase"):
        await _initialise(runtime.kube, obj)
    elif runtime.reconciler.wants(obj):  # READY, a merge request, or a merge to announce
        await _reconcile(runtime, obj, watched=True)


@kopf.on.event(GROUP, VERSION, AutoMergePolicy.PLURAL)
async def policy_changed(type: str | None, body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> None:
    """A policy applied, changed or deleted by GitOps: re-decide the READY branches it may affect."""
    runtime = _runtime(memo)
    if runtime is None or not policy_handlers.spec_changed(memo, type, body):  # not for status-only writes
        return
    for ns, name in runtime.lookup.ready():
        if ns == namespace:
            await _reconcile_key(runtime, ns, name)


@kopf.on.event(GROUP, VERSION, BranchLock.PLURAL)
async def lock_changed(namespace: str | None, spec: kopf.Spec, memo: Any, **_: Any) -> None:
    """A lock taken or released can block or unblock a READY branch's merge."""
    runtime = _runtime(memo)
    if runtime is None:
        return
    branch = str(spec.get("branch", ""))
    if namespace is None or not runtime.catalog.is_ready(namespace, branch):
        return
    await _reconcile_key(runtime, namespace, branch)


async def _reconcile_key(runtime: Runtime, namespace: str, name: str) -> None:
    """Reconcile by name: the reconciler reads the Branch itself (a read here first would be a second one)."""
    try:
        await runtime.reconciler.reconcile_key((namespace, name))
    except KubeError as exc:
        log.warning("merge reconciliation of %s/%s failed: %s", namespace, name, exc)


async def _reconcile(runtime: Runtime, obj: dict[str, Any], *, watched: bool = False) -> None:
    try:
        await runtime.reconciler.reconcile(obj, watched=watched)
    except KubeError as exc:
        # The periodic resync retries; an on.event handler has no retry of its own.
        log.warning("merge reconciliation of %s failed: %s", obj["metadata"]["name"], exc)


async def _initialise(kube: KubeClient, obj: dict[str, Any]) -> None:
    """A new Branch starts ACTIVE, with its conditions known."""
    meta = obj["metadata"]
    patch = initial_status(meta.get("generation"), _now())
    try:
        await kube.patch_branch_status(meta["namespace"], meta["name"], patch,
                                       resource_version=meta.get("resourceVersion"))
    except (Conflict, NotFound):
        return  # someone wrote first (e.g. a started event); that write initialised it


def _now() -> datetime:
    return datetime.now(UTC)


# Operating it (issue 5): admin requests, lock lifecycle, incidents and /metrics register after the above.
from branch_operator.handlers import operations as admin_handlers  # noqa: E402, F401
