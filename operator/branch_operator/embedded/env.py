"""The embedded default: a local Kubernetes API server, a real nats-server, the CRDs, and the operator
running in-process. Shared by ``branch-operator demo``, ``branch-operator dev`` and the tests."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kopf

from branch_operator.api.crdgen import render_crds
from branch_operator.config import Settings
from branch_operator.embedded.apiserver.server import EmbeddedApiServer
from branch_operator.embedded.natsserver import NatsServer

log = logging.getLogger(__name__)

T = TypeVar("T")


async def install_crds(api_url: str) -> None:
    """POST the operator's CRDs (rendered from the models) to an API server; existing ones are kept."""
    async with aiohttp.ClientSession() as session:
        for crd in render_crds():
            url = f"{api_url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
            async with session.post(url, json=crd) as resp:
                if resp.status not in (200, 201, 409):
                    raise RuntimeError(f"installing CRD {crd['metadata']['name']}: {resp.status} {await resp.text()}")


class EmbeddedEnv:
    """API server + NATS + CRDs; ``kubeconfig`` points the clients (and kubectl) at the API server."""

    def __init__(self, *, api_port: int = 0, nats_port: int = 0, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="oms-embedded-"))
        self.api = EmbeddedApiServer()
        self.nats = NatsServer(port=nats_port, store_dir=self.workdir / "nats")
        self.api_port = api_port
        self.kubeconfig = self.workdir / "kubeconfig"
        self.api_url = ""

    @property
    def nats_url(self) -> str:
        return self.nats.url

    async def start(self) -> None:
        (self.workdir / "nats").mkdir(parents=True, exist_ok=True)
        self.api_url = await self.api.start(port=self.api_port)
        self.api.write_kubeconfig(self.kubeconfig)
        await self.nats.astart()
        await self.install_crds()

    async def install_crds(self) -> None:
        await install_crds(self.api_url)

    async def stop(self) -> None:
        await asyncio.to_thread(self.nats.stop)
        await self.api.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # The ValidatingWebhookConfiguration the in-process operator registers itself in (kopf's managed mode:
    # a url clientConfig with its self-signed CA), so that an invalid object is refused at apply time here
    # as in a cluster with the chart.
    WEBHOOK_CONFIGURATION = "oms-branch-operator.oms.dev"

    def webhook_settings(self) -> dict[str, Any]:
        """Overrides that turn on the operator's admission webhook, registered with the API server."""
        return {"webhook_enabled": True, "webhook_port": 0,
                "webhook_managed_configuration": self.WEBHOOK_CONFIGURATION}

    def settings(self, **overrides: Any) -> Settings:
        # No fixed health port: several embedded environments may run on one machine.
        values: dict[str, Any] = {"nats_url": self.nats_url, "reconcile_interval_seconds": 30.0, "health_port": 0}
        values.update(overrides)
        return Settings(**values)


class OperatorHandle:
    """The real operator (kopf + handlers.py), in a thread of its own with its own event loop.

    Why a thread: when kopf stops, it cancels every task its loop gained since it started, assuming
    the loop is its own. Sharing a loop with the embedded API server, a test, or a second operator
    would make stopping one operator kill the others' tasks (and wait 5 s for them first).
    Objects of the running operator (``runtime``) belong to that loop: read plain attributes and append
    observers freely, but run coroutines on it with :meth:`call`.
    """

    def __init__(
        self, settings: Settings, kubeconfig: Path, *, namespaces: list[str] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces if namespaces is not None else settings.namespaces
        self.clock = clock
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.runtime: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._runtime_ready = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self, timeout: float = 30.0) -> None:
        import branch_operator.handlers  # noqa: F401  (registers the kopf handlers)

        self._thread = threading.Thread(target=self._main, name="oms-operator", daemon=True)
        self._thread.start()
        if not await asyncio.to_thread(self._runtime_ready.wait, timeout):
            raise TimeoutError(f"operator did not start within {timeout}s: {self.error!r}")
        await self.wait_ready(timeout)

    def _main(self) -> None:
        memo = kopf.Memo(config=self.settings, kubeconfig=str(self.kubeconfig), on_runtime=self._got_runtime)
        if self.clock is not None:
            memo["clock"] = self.clock
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(kopf.operator(
                clusterwide=not self.namespaces,
                namespaces=self.namespaces or (),
                standalone=True,
                memo=memo,
                stop_flag=self.stop_flag,
                ready_flag=self.ready_flag,
            ))
        except BaseException as exc:  # reported through wait_ready / stop
            self.error = exc
        finally:
            self._runtime_ready.set()
            loop.close()

    def _got_runtime(self, runtime: Any) -> None:
        self.runtime = runtime
        self._runtime_ready.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until kopf is up and the NATS consumers are attached."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.ready_flag.is_set() and self.runtime is not None and self.runtime.ready):
            if not self.alive:
                raise RuntimeError(f"operator exited: {self.error!r}")
            if loop.time() > deadline:
                raise TimeoutError(f"operator not ready: {self.runtime.readiness() if self.runtime else 'no runtime'}")
            await asyncio.sleep(0.02)  # polling a readiness condition with a deadline

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the operator's own loop (e.g. ``runtime.reconciler.reconcile(obj)``)."""
        if self.loop is None:
            raise RuntimeError("operator not started")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def stop(self, timeout: float = 30.0) -> None:
        self.stop_flag.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)
            if self._thread.is_alive():
                log.warning("operator thread did not stop within %ss", timeout)
