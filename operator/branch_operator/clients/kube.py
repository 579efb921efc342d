"""The operator's own Kubernetes API calls, all in one place.

kopf watches and serves handlers; everything the operator writes outside a kopf handler (the NATS
consumer above all) goes through :class:`KubeClient`. It uses ``kubernetes_asyncio`` so no call ever
blocks the event loop, and it works unchanged in-cluster, with a kubeconfig, or against the embedded
API server. Errors are mapped to a small hierarchy so callers decide retry vs. give-up by type.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from branch_operator import __version__
from branch_operator.api.models import (
    GROUP,
    LABEL_BRANCH,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    VERSION,
    AutoMergePolicy,
    Branch,
    BranchLock,
)

log = logging.getLogger(__name__)

USER_AGENT = f"oms-branch-operator/{__version__}"

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
# The generated client picks JSON Patch for dict bodies unless told otherwise.
_MERGE: dict[str, Any] = {"_content_type": MERGE_PATCH}


class KubeError(Exception):
    """Base for API errors; ``status`` is the HTTP status (0 for transport errors)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: stale resourceVersion (re-read and re-decide) or AlreadyExists."""


class Invalid(KubeError):
    """422 or another 4xx that retrying won't fix."""


class Transient(KubeError):
    """5xx, 429, timeouts, connection errors: retry with backoff."""


def _map(exc: BaseException) -> KubeError:
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        text = exc.reason or ""
        if exc.body:
            text = f"{text}: {str(exc.body)[:500]}"
        if status == 404:
            return NotFound(status, text)
        if status == 409:
            return Conflict(status, text)
        if status in (408, 429) or status >= 500 or status == 0:
            return Transient(status, text)
        return Invalid(status, text)
    return Transient(0, f"{type(exc).__name__}: {exc}")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_name(object_name: str, key: str) -> str:
    """The name of the one Event about ``object_name`` for ``key`` (at most 253 characters)."""
    suffix = "." + hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{object_name[: 253 - len(suffix)]}{suffix}"


def event_body(
    obj: Mapping[str, Any], *, type_: str, reason: str, message: str, action: str, component: str,
    instance: str, timestamp: str, name: str | None = None,
) -> Obj:
    """The core/v1 Event about ``obj``; every Event the operator posts is built here.

    Without ``name`` the API server generates one (``<object>.<random>``).
    """
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    metadata: Obj = ({"name": name} if name is not None
                     else {"generateName": f"{meta.get('name', 'oms')}."})
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {**metadata, "namespace": namespace},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "action": action,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance[:128],
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "count": 1,
    }


async def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (``$KUBECONFIG`` or ~/.kube/config)."""
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
        return k8s.ApiClient()
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=kubeconfig, context=context, client_configuration=configuration
    )
    return k8s.ApiClient(configuration=configuration)


class KubeClient:
    """Typed-ish wrapper over the calls listed in :mod:`branch_operator.rbac`."""

    def __init__(self, api: k8s.ApiClient, *, component: str = "oms-branch-operator", instance: str = "") -> None:
        self.api = api
        # Lets audit logs and tests tell the operator's own calls from kopf's and from people's.
        api.user_agent = USER_AGENT
        # kubernetes_asyncio's session trusts the environment, so aiohttp looks up proxy variables and
        # ~/.netrc in a worker thread on every request (a third of the operator's CPU in the benchmark).
        # API server proxies come from the kubeconfig (configuration.proxy), which still applies.
        session = getattr(api.rest_client, "pool_manager", None)
        if session is not None and hasattr(session, "_trust_env"):
            session._trust_env = False
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.admission = k8s.AdmissionregistrationV1Api(api)
        self.component = component
        self.instance = instance or os.environ.get("HOSTNAME", "local")

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
        return cls(await load_api_client(kubeconfig, context))

    async def close(self) -> None:
        await self.api.close()

    # ----------------------------------------------------------------------------------- generic

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except ApiException as exc:
            raise _map(exc) from exc
        except (OSError, TimeoutError) as exc:
            raise _map(exc) from exc
        except Exception as exc:
            # aiohttp's client errors are not OSError subclasses in every version.
            if type(exc).__module__.startswith("aiohttp"):
                raise _map(exc) from exc
            raise

    async def get(self, plural: str, namespace: str, name: str) -> Obj:
        return cast(Obj, await self._call(self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name)))

    async def list_objects(
        self, plural: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Obj]:
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if namespace:
            result = await self._call(self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, **kwargs))
        else:
            result = await self._call(self.custom.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs))
        return cast(list[Obj], result.get("items", []))

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any], *, resource_version: str | None
    ) -> Obj:
        """JSON merge patch of ``status``; with a resourceVersion the write fails with Conflict if stale."""
        body: Obj = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return cast(Obj, await self._call(self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, body, **_MERGE)))

    async def patch(self, plural: str, namespace: str, name: str, body: Mapping[str, Any]) -> Obj:
        return cast(Obj, await self._call(self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, dict(body), **_MERGE)))

    async def create(self, plural: str, namespace: str, body: Mapping[str, Any]) -> Obj:
        return cast(Obj, await self._call(self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, dict(body))))

    async def delete(self, plural: str, namespace: str, name: str) -> bool:
        """True if deleted now, False if it was already gone."""
        try:
            await self._call(self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name))
            return True
        except NotFound:
            return False

    # ---------------------------------------------------------------------------------- specific

    async def get_branch(self, namespace: str, name: str) -> Obj:
        return await self.get(Branch.PLURAL, namespace, name)

    async def list_branches(self, namespace: str | None = None) -> list[Obj]:
        return await self.list_objects(Branch.PLURAL, namespace)

    async def patch_branch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, resource_version: str | None
    ) -> Obj:
        return await self.patch_status(Branch.PLURAL, namespace, name, status, resource_version=resource_version)

    async def list_locks(self, namespace: str, branch: str) -> list[Obj]:
        return await self.list_objects(BranchLock.PLURAL, namespace, label_selector=f"{LABEL_BRANCH}={branch}")

    async def create_lock(self, namespace: str, body: Mapping[str, Any]) -> tuple[Obj, bool]:
        """Create a lock; if one of that name exists already, return it (idempotent). -> (lock, created)."""
        try:
            return await self.create(BranchLock.PLURAL, namespace, body), True
        except Conflict:
            name = body["metadata"]["name"]
            return await self.get(BranchLock.PLURAL, namespace, name), False

    async def delete_lock(self, namespace: str, name: str) -> bool:
        return await self.delete(BranchLock.PLURAL, namespace, name)

    async def list_policies(self, namespace: str | None) -> list[Obj]:
        return await self.list_objects(AutoMergePolicy.PLURAL, namespace)

    async def post_event(
        self, obj: Mapping[str, Any], *, type_: str, reason: str, message: str, action: str = "Reconcile",
        once_per: str | None = None,
    ) -> None:
        """A core/v1 Event about ``obj``. Failures are logged, never raised: an Event is best-effort.

        ``once_per``: a key the Event is posted once for (its name is derived from it); posting it again
        is an AlreadyExists, taken as posted.
        """
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        body = event_body(obj, type_=type_, reason=reason, message=message, action=action,
                          component=self.component, instance=self.instance, timestamp=now_rfc3339(),
                          name=None if once_per is None else event_name(str(meta.get("name", "oms")), once_per))
        try:
            await self.create_event(namespace, body)
        except KubeError as exc:
            if once_per is not None and isinstance(exc, Conflict):
                return  # posted before
            log.warning("could not post Event %s on %s/%s: %s", reason, namespace, meta.get("name"), exc)

    # ------------------------------------------------------------------- the admission webhook's TLS

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        """A Secret's data, decoded; NotFound when there is none."""
        secret = await self._call(self.core.read_namespaced_secret(name, namespace))
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    async def create_tls_secret(self, namespace: str, name: str, data: Mapping[str, bytes]) -> None:
        """A ``kubernetes.io/tls`` Secret; Conflict when one of that name exists."""
        body = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
            "data": {k: base64.b64encode(v).decode("ascii") for k, v in data.items()},
        }
        await self._call(self.core.create_namespaced_secret(namespace, cast(Any, body)))

    async def get_webhook_configuration(self, name: str) -> Obj:
        obj = await self._call(self.admission.read_validating_webhook_configuration(name))
        return cast(Obj, self.api.sanitize_for_serialization(obj))

    async def patch_webhook_configuration(self, name: str, body: Mapping[str, Any]) -> None:
        """JSON merge patch (``webhooks`` is replaced whole: send every webhook, with a resourceVersion)."""
        await self._call(self.admission.patch_validating_webhook_configuration(name, dict(body), **_MERGE))

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create a core/v1 Event; raises KubeError (Conflict for a name that exists).

        The response is read but not turned into a V1Event: parsing its timestamps with dateutil was a
        visible share of the operator's CPU per indexing event, for a body nobody looks at.
        """
        response = await self._call(self.core.create_namespaced_event(
            namespace, cast(Any, body), _preload_content=False))
        try:
            data = await response.read()
        except Exception as exc:
            raise _map(exc) from exc
        finally:
            response.release()
        if not 200 <= response.status <= 299:
            raise _map(ApiException(status=response.status, reason=f"{response.reason}: {data[:500]!r}"))
