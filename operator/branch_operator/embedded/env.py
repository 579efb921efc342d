"""The embedded default: a local Kubernetes API server, a real nats-server, the CRDs, and the operator
running in-process. Shared by ``branch-operator demo``, ``branch-operator dev`` and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from ..api.crdgen import render_crds
from ..config import Settings
from .apiserver import EmbeddedApiServer
from .natsserver import NatsServer

log = logging.getLogger(__name__)


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
        async with aiohttp.ClientSession() as session:
            for crd in render_crds():
                async with session.post(
                    f"{self.api_url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd
                ) as resp:
                    if resp.status not in (200, 201, 409):
                        raise RuntimeError(
                            f"installing CRD {crd['metadata']['name']}: {resp.status} {await resp.text()}")

    async def stop(self) -> None:
        await asyncio.to_thread(self.nats.stop)
        await self.api.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def settings(self, **overrides: Any) -> Settings:
        # No fixed health port: several embedded environments may run on one machine.
        values: dict[str, Any] = {"nats_url": self.nats_url, "reconcile_interval_seconds": 30.0, "health_port": 0}
        values.update(overrides)
        return Settings(**values)


class OperatorHandle:
    """The real operator (kopf + handlers.py) running as a task in this event loop."""

    def __init__(
        self, settings: Settings, kubeconfig: Path, *, namespaces: list[str] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces if namespaces is not None else settings.namespaces
        self.clock = clock
        self.stop_flag: asyncio.Event = asyncio.Event()
        self.ready_flag: asyncio.Event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.runtime: Any = None
        self._runtime_ready = asyncio.Event()

    async def start(self, timeout: float = 30.0) -> None:
        from .. import handlers  # noqa: F401  (registers the kopf handlers)

        memo = kopf.Memo(config=self.settings, kubeconfig=str(self.kubeconfig), on_runtime=self._got_runtime)
        if self.clock is not None:
            memo["clock"] = self.clock
        self.task = asyncio.create_task(kopf.operator(
            clusterwide=not self.namespaces,
            namespaces=self.namespaces or (),
            standalone=self.settings.peering is None,
            peering_name=self.settings.peering,
            memo=memo,
            stop_flag=self.stop_flag,
            ready_flag=self.ready_flag,
        ))
        await asyncio.wait_for(self._runtime_ready.wait(), timeout)
        await self.wait_ready(timeout)

    def _got_runtime(self, runtime: Any) -> None:
        self.runtime = runtime
        self._runtime_ready.set()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until kopf is up and the NATS consumers are attached."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.wait_for(self.ready_flag.wait(), timeout)
        while not (self.runtime is not None and self.runtime.ready):
            if self.task is not None and self.task.done():
                self.task.result()
            if loop.time() > deadline:
                raise TimeoutError(f"operator not ready: {self.runtime.readiness() if self.runtime else 'no runtime'}")
            await asyncio.sleep(0.02)  # polling a readiness condition with a deadline

    async def stop(self) -> None:
        self.stop_flag.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.task, 20)
            if not self.task.done():
                self.task.cancel()
                with contextlib.suppress(BaseException):
                    await self.task
