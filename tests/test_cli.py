"""The console scripts as a user runs them: real subprocesses, real NATS, the embedded API server."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env or os.environ.copy())


def test_demo_plays_three_scenarios_and_exits_zero() -> None:
    proc = run(str(BIN / "branch-operator"), "demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "=> phase ACTIVE" in out and "=> phase ERROR" in out and 'merge ["ValidationFailed"]' in out
    assert out.count("[OK]") == 3
    assert "audit-oms:branch:feature-user-schema:indexing.completed:" in out
    assert "audit-oms:branch:problematic-branch:indexing.failed:" in out
    assert "All three scenarios ended" in out


def test_crds_command_matches_committed_files(tmp_path: Path) -> None:
    proc = run(str(BIN / "branch-operator"), "crds")
    assert proc.returncode == 0, proc.stderr
    kinds = [d["spec"]["names"]["kind"] for d in yaml.safe_load_all(proc.stdout) if d]
    assert kinds == ["Branch", "BranchLock", "AutoMergePolicy"]
    assert run(str(BIN / "branch-operator"), "crds", "--check", str(ROOT / "crds")).returncode == 0
    (tmp_path / "oms.dev_branches.yaml").write_text("# edited by hand\n")
    drift = run(str(BIN / "branch-operator"), "crds", "--check", str(tmp_path))
    assert drift.returncode == 1 and drift.stderr


class DevServer:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "branch-operator"), "dev", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.info: dict[str, str] = {}

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_info(self, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while len(self.info) < 4:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"dev did not print its endpoints: {self.info}, rc={self.proc.poll()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            key, _, value = line.partition("=")
            if key in ("api", "nats", "kubeconfig", "export KUBECONFIG"):
                self.info[key] = value
        return self.info

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


@pytest.fixture(scope="module")
def dev() -> Iterator[dict[str, str]]:
    server = DevServer()
    try:
        yield server.wait_info()
    finally:
        assert server.stop() == 0


def _wait_phase(api: k8s.CustomObjectsApi, name: str, phase: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    obj: dict = {}
    while time.monotonic() < deadline:
        obj = api.get_namespaced_custom_object("oms.dev", "v1alpha1", "default", "branches", name)
        if (obj.get("status") or {}).get("phase") == phase:
            return obj
        time.sleep(0.05)  # polling with a deadline
    raise AssertionError(f"{name} never reached {phase}: {obj.get('status')}")


def test_dev_publish_and_kubectl_branch_list(dev: dict[str, str]) -> None:
    """The dev workflow of the README: kubernetes client + `branch-operator publish` + `kubectl branch list`."""
    assert dev["api"].startswith("http://") and dev["nats"].startswith("nats://")
    assert dev["export KUBECONFIG"] == dev["kubeconfig"]
    api = k8s.CustomObjectsApi(k8s_config.new_client_from_config(config_file=dev["kubeconfig"]))
    api.create_namespaced_custom_object("oms.dev", "v1alpha1", "default", "branches", {
        "apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": "cli-branch"},
        "spec": {"branchName": "feature/cli", "autoMerge": False}})
    _wait_phase(api, "cli-branch", "ACTIVE")

    env = {**os.environ, "NATS_URL": dev["nats"]}
    started = run(str(BIN / "branch-operator"), "publish", "started", "feature/cli", "--indexing-id", "idx-cli",
                  env=env)
    assert started.returncode == 0, started.stderr
    assert "com.oms.indexing.started" in started.stdout
    _wait_phase(api, "cli-branch", "LOCKED_FOR_WRITE")
    done = run(str(BIN / "branch-operator"), "publish", "completed", "feature/cli", "--indexing-id", "idx-cli",
               "--records", "42", "--binary", env=env)
    assert done.returncode == 0, done.stderr
    ready = _wait_phase(api, "cli-branch", "READY")
    assert ready["status"]["indexing"]["recordsIndexed"] == 42

    listing = run(str(BIN / "kubectl-branch"), "--kubeconfig", dev["kubeconfig"], "list")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["NAME", "BRANCH", "PHASE", "RECORDS", "VALID", "MERGEABLE", "REASONS", "LOCKS", "AGE"]
    row = next(r.split() for r in rows if r.startswith("cli-branch"))
    assert row[1:5] == ["feature/cli", "READY", "42", "true"]

    all_ns = run(str(BIN / "kubectl-branch"), "--kubeconfig", dev["kubeconfig"], "-A", "list")
    assert all_ns.stdout.splitlines()[0].split()[0] == "NAMESPACE"


def test_dev_without_operator_serves_a_separately_run_operator() -> None:
    """`dev --no-operator` + `branch-operator run` pointed at it, as the README shows."""
    server = DevServer("--no-operator")
    operator: subprocess.Popen[str] | None = None
    try:
        info = server.wait_info()
        assert info["export KUBECONFIG"] == info["kubeconfig"]
        api = k8s.CustomObjectsApi(k8s_config.new_client_from_config(config_file=info["kubeconfig"]))
        assert api.list_cluster_custom_object("oms.dev", "v1alpha1", "automergepolicies")["items"] == []
        api.create_namespaced_custom_object("oms.dev", "v1alpha1", "default", "branches", {
            "apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": "solo-branch"},
            "spec": {"branchName": "feature/solo", "autoMerge": False}})
        # No operator yet: nothing gives the Branch a phase.
        assert not (api.get_namespaced_custom_object(
            "oms.dev", "v1alpha1", "default", "branches", "solo-branch").get("status") or {}).get("phase")
        env = {**os.environ, "OMS_HEALTH_PORT": "0"}
        operator = subprocess.Popen(
            [str(BIN / "branch-operator"), "run", "--kubeconfig", info["kubeconfig"], "--nats", info["nats"]],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        _wait_phase(api, "solo-branch", "ACTIVE", timeout=60)
        published = run(str(BIN / "branch-operator"), "publish", "started", "feature/solo", "--indexing-id",
                        "idx-solo", env={**os.environ, "NATS_URL": info["nats"]})
        assert published.returncode == 0, published.stderr
        _wait_phase(api, "solo-branch", "LOCKED_FOR_WRITE")
        operator.send_signal(signal.SIGTERM)
        assert operator.wait(timeout=30) == 0
    finally:
        if operator is not None and operator.poll() is None:
            operator.kill()
        assert server.stop() == 0


def test_kubectl_branch_without_cluster_fails_clearly(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    proc = run(str(BIN / "kubectl-branch"), "--kubeconfig", str(kubeconfig), "list", timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
