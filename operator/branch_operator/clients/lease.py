"""The Lease calls leader election makes: get, create, and replace with a resourceVersion precondition.

Bodies go out and come back as plain JSON: the generated models would turn ``renewTime`` into a
``datetime`` and back with ``isoformat()``, which drops the fractional digits of a whole-second instant
and then the API server refuses the ``MicroTime``. Errors are :mod:`branch_operator.clients.kube`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from branch_operator.clients.kube import Conflict, Invalid, KubeClient, KubeError, NotFound, Transient
from branch_operator.domain.leadership import LeaseRecord

__all__ = ["Lease", "LeaseClient"]

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Lease:
    """A Lease as read or written: its record, and the object (metadata included) a replace starts from."""

    obj: Obj

    @property
    def record(self) -> LeaseRecord:
        return LeaseRecord.from_spec(self.obj.get("spec"))

    @property
    def resource_version(self) -> str:
        return str(self.obj["metadata"]["resourceVersion"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


def _error(status: int, text: str) -> KubeError:
    if status == 404:
        return NotFound(status, text)
    if status == 409:
        return Conflict(status, text)
    if status in (0, 408, 429) or status >= 500:
        return Transient(status, text)
    return Invalid(status, text)


class LeaseClient:
    def __init__(self, api: k8s.ApiClient) -> None:
        self.coordination = k8s.CoordinationV1Api(api)

    @classmethod
    def of(cls, kube: KubeClient) -> LeaseClient:
        """Over the operator's own connection (and so its user agent and session settings)."""
        return cls(kube.api)

    async def _call(self, coro: Any) -> Lease:
        try:
            response = await coro
            try:
                data = await response.read()
            finally:
                response.release()
        except ApiException as exc:
            raise _error(int(exc.status or 0), f"{exc.reason}: {str(exc.body)[:500]}") from exc
        except (OSError, TimeoutError) as exc:
            raise Transient(0, f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # aiohttp's client errors are not OSError subclasses in every version.
            if type(exc).__module__.startswith("aiohttp"):
                raise Transient(0, f"{type(exc).__name__}: {exc}") from exc
            raise
        if not 200 <= response.status <= 299:
            raise _error(int(response.status), f"{response.reason}: {data[:500]!r}")
        return Lease(cast(Obj, json.loads(data)))

    async def get(self, namespace: str, name: str) -> Lease:
        """Raises NotFound when there is no such Lease."""
        return await self._call(self.coordination.read_namespaced_lease(name, namespace, _preload_content=False))

    async def create(self, namespace: str, name: str, record: LeaseRecord) -> Lease:
        """Raises Conflict when the Lease exists already (someone else created it first)."""
        body: Obj = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": record.to_spec(),
        }
        return await self._call(self.coordination.create_namespaced_lease(
            namespace, cast(Any, body), _preload_content=False))

    async def replace(self, current: Lease, record: LeaseRecord) -> Lease:
        """Write ``record`` over ``current``, only if nobody has written it since: Conflict otherwise.

        The rest of the object (labels, annotations) is kept as it was read.
        """
        meta = current.obj["metadata"]
        body: Obj = {**current.obj, "metadata": {**meta, "resourceVersion": current.resource_version},
                     "spec": record.to_spec()}
        return await self._call(self.coordination.replace_namespaced_lease(
            current.name, current.namespace, cast(Any, body), _preload_content=False))
