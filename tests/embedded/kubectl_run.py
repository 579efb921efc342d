"""Runs the real kubectl 1.33 (``tests/k8s_tools.py``) against an embedded API server on the test's own event
loop, with an isolated HOME so no user configuration or cache leaks in."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .. import k8s_tools


class Kubectl:
    def __init__(self, server: EmbeddedApiServer, tmp_path: pathlib.Path, namespace: str = "default") -> None:
        self.kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace)
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        self.env = {"HOME": str(home), "PATH": os.environ.get("PATH", ""), "KUBECONFIG": str(self.kubeconfig)}
        binary = k8s_tools.kubectl_path()
        assert binary is not None
        self.binary = binary

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            self.binary, "--kubeconfig", str(self.kubeconfig), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env,
        )  # fmt: skip

    async def __call__(self, *args: str) -> str:
        proc = await self.start(*args)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, f"kubectl {' '.join(args)} failed: {err.decode()}"
        return out.decode()


def parse_table(output: str) -> tuple[list[str], list[list[str]]]:
    """kubectl's aligned table as (header, rows). Cells are cut at the header's column starts, since an
    empty cell is only blank space: kubectl's tabwriter pads every column to the same start."""
    lines = [line for line in output.splitlines() if line.strip()]
    header_line = lines[0]
    names = list(re.finditer(r"\S+(?: \S+)*", header_line))  # "LAST SEEN" is one column
    starts = [m.start() for m in names]
    ends = [*starts[1:], None]
    rows = [[line[a:b].strip() for a, b in zip(starts, ends, strict=True)] for line in lines[1:]]
    return [m.group(0) for m in names], rows
