"""Which Kubernetes client for the operator's own calls: `kubernetes` in worker threads, or `kubernetes_asyncio`?

Both do the same status PATCH (JSON merge patch with a resourceVersion precondition, as the processor
does) against the embedded API server running in another process, sequentially and with 16 in flight.
Prints calls/s and the CPU seconds this process spent per call.

Usage: python bench/bench_kube_client.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client as sync_client
from kubernetes import config as sync_config
from kubernetes_asyncio import client as async_client
from kubernetes_asyncio import config as async_config

ROOT = Path(__file__).resolve().parents[1]
G, V, NS, PL = "oms.dev", "v1alpha1", "default", "branches"
MERGE = {"_content_type": "application/merge-patch+json"}


def start_api() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_apiserver_proc.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    info = {}
    while len(info) < 3:
        key, _, value = proc.stdout.readline().strip().partition("=")
        info[key] = value
    return proc, info["kubeconfig"]


def body(i: int, rv: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "status": {"phase": ["READY", "ACTIVE"][i % 2]}}


async def run_async(kubeconfig: str, calls: int, concurrency: int) -> tuple[float, float]:
    cfg = async_client.Configuration()
    await async_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    api = async_client.ApiClient(cfg)
    custom = async_client.CustomObjectsApi(api)
    names = [f"a{concurrency}-{i}" for i in range(concurrency)]
    for n in names:
        await custom.create_namespaced_custom_object(G, V, NS, PL, {
            "apiVersion": f"{G}/{V}", "kind": "Branch", "metadata": {"name": n}, "spec": {"branchName": n}})

    async def worker(name: str, count: int) -> None:
        obj = await custom.get_namespaced_custom_object(G, V, NS, PL, name)
        rv = obj["metadata"]["resourceVersion"]
        for i in range(count):
            obj = await custom.patch_namespaced_custom_object_status(G, V, NS, PL, name, body(i, rv), **MERGE)
            rv = obj["metadata"]["resourceVersion"]

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n, calls // concurrency) for n in names))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await api.close()
    return calls / wall, cpu / calls


async def run_threads(kubeconfig: str, calls: int, concurrency: int) -> tuple[float, float]:
    api = sync_config.new_client_from_config(config_file=kubeconfig)
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = concurrency
    custom = sync_client.CustomObjectsApi(api)
    names = [f"t{concurrency}-{i}" for i in range(concurrency)]
    for n in names:
        custom.create_namespaced_custom_object(G, V, NS, PL, {
            "apiVersion": f"{G}/{V}", "kind": "Branch", "metadata": {"name": n}, "spec": {"branchName": n}})

    def worker(name: str, count: int) -> None:
        obj = custom.get_namespaced_custom_object(G, V, NS, PL, name)
        rv = obj["metadata"]["resourceVersion"]
        for i in range(count):
            obj = custom.patch_namespaced_custom_object_status(G, V, NS, PL, name, body(i, rv), **MERGE)
            rv = obj["metadata"]["resourceVersion"]

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(asyncio.to_thread(worker, n, calls // concurrency) for n in names))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return calls / wall, cpu / calls


async def amain(calls: int) -> dict[str, Any]:
    proc, kubeconfig = start_api()
    try:
        results: dict[str, Any] = {}
        for concurrency in (1, 16):
            rate, cpu = await run_async(kubeconfig, calls, concurrency)
            results[f"kubernetes_asyncio c={concurrency}"] = {"calls_per_s": rate, "cpu_ms_per_call": cpu * 1000}
            rate, cpu = await run_threads(kubeconfig, calls, concurrency)
            results[f"kubernetes+threads c={concurrency}"] = {"calls_per_s": rate, "cpu_ms_per_call": cpu * 1000}
        return results
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    results = asyncio.run(amain(args.calls))
    print("| client | calls/s | CPU ms per call (client side) |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['calls_per_s']:.0f} | {r['cpu_ms_per_call']:.2f} |")
    out = ROOT / "bench" / "results" / "kube_client.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
