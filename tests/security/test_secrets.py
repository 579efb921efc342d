"""No secret value ever leaves the operator: not in a log line (any logger, DEBUG included, tracebacks
included), not in an audit record, a dead-lettered message or its headers, a notification, a merge
announcement, nor in anything written to the Kubernetes API; and ``Settings`` never shows them.

The operator runs for real with a NATS password and token and a kubeconfig bearer token, through a
busy scenario: a merge, a failure with notification, an unknown branch, a dead-lettered message, a
Kubernetes API error that is retried, and a NATS server restart with re-authentication.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
import yaml

from branch_operator.clients.kube import KubeClient
from branch_operator.clients.nats_bus import connect_options
from branch_operator.config import Settings
from branch_operator.contracts.funnel_encode import encode_structured, make_event
from branch_operator.domain.audit import AuditRecord
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle
from branch_operator.embedded.natsserver import NatsServer

from .conftest import LogCapture

NATS_PASSWORD = "natspw-" + secrets.token_hex(12)
NATS_TOKEN = "natstok-" + secrets.token_hex(12)
KUBE_TOKEN = "kubetok-" + secrets.token_hex(12)
SECRETS = (NATS_PASSWORD, NATS_TOKEN, KUBE_TOKEN)

def assert_clean(what: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret[:8]}...) appears in {what}"


# ------------------------------------------------------------------------------------- settings


def test_settings_never_show_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    built = Settings(nats_user="oms", nats_password=NATS_PASSWORD, nats_token=NATS_TOKEN)
    monkeypatch.setenv("OMS_NATS_USER", "oms")
    monkeypatch.setenv("OMS_NATS_PASSWORD", NATS_PASSWORD)
    monkeypatch.setenv("OMS_NATS_TOKEN", NATS_TOKEN)
    from_env = Settings()
    for settings in (built, from_env):
        assert_clean("repr(Settings)", repr(settings))
        assert_clean("str(Settings)", str(settings))
        assert_clean("Settings.model_dump()", repr(settings.model_dump()))
        assert_clean("Settings.model_dump(mode=json)", json.dumps(settings.model_dump(mode="json")))
        assert_clean("Settings.model_dump_json()", settings.model_dump_json())
        # The values are there for the one place that needs them.
        opts = connect_options(settings)
        assert (opts["user"], opts["password"], opts["token"]) == ("oms", NATS_PASSWORD, NATS_TOKEN)


# -------------------------------------------------------------------------------- the operator


class Run:
    def __init__(self, env: EmbeddedEnv, operator: OperatorHandle, kube: KubeClient, logs: LogCapture) -> None:
        self.env, self.operator, self.kube, self.logs = env, operator, kube, logs
        self.audits: list[AuditRecord] = []

    @property
    def settings(self) -> Settings:
        return self.operator.settings

    async def nc(self, user: str = "admin") -> Any:
        """The harness's own connections: Funnel's user to publish, an admin to read every stream."""
        return await nats.connect(self.env.nats_url, user=user, password=HARNESS_PASSWORD, allow_reconnect=False)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        nc = await self.nc("funnel")
        try:
            await nc.jetstream().publish(subject, payload, headers=headers)
        finally:
            await nc.close()

    async def event(self, kind: str, branch_name: str, indexing_id: str, **kw: Any) -> dict[str, Any]:
        event = make_event(kind, branch_name, indexing_id, **kw)
        payload, headers = encode_structured(event)
        await self.publish(getattr(self.settings, f"subject_{kind}"), payload, headers)
        return event

    async def stream(self, name: str) -> list[tuple[dict[str, str], bytes]]:
        nc = await self.nc()
        try:
            js = nc.jetstream()
            info = await js.stream_info(name)
            if not info.state.messages:
                return []
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(name, seq)
                out.append((dict(msg.headers or {}), msg.data or b""))
            return out
        finally:
            await nc.close()

    async def phase(self, name: str, phase: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            obj = await self.kube.get_branch("default", name)
            return obj if (obj.get("status") or {}).get("phase") == phase else None
        found: dict[str, Any] = await poll(check, f"{name} to reach {phase}")
        return found

    async def branch(self, name: str, branch_name: str) -> None:
        await self.kube.create("branches", "default", {
            "apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": name},
            "spec": {"branchName": branch_name}})
        await self.phase(name, "ACTIVE")


async def poll(check: Any, what: str, timeout: float = 15.0) -> Any:
    """Poll with a deadline: nothing notifies the test when the operator has written."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


HARNESS_PASSWORD = "harness"  # not one of the operator's secrets


def nats_users_config(operator_password: str, harness_password: str) -> str:
    """The operator's NATS user with the least permissions it needs (as docs/installation.md shows them):
    JetStream API and acks, its four output subject families, replies on its inbox. Funnel may only
    publish indexing events; the harness reads with an admin user."""
    return f"""
authorization {{
  users = [
    {{user: oms, password: "{operator_password}", permissions: {{
      publish: ["$JS.API.>", "$JS.ACK.>", "oms.audit.>", "oms.branch.>", "oms.notifications.>", "funnel.dlq.>"]
      subscribe: ["_INBOX.>"]
    }}}}
    {{user: funnel, password: "{harness_password}", permissions: {{
      publish: ["funnel.indexing.>"], subscribe: ["_INBOX.>"]
    }}}}
    {{user: admin, password: "{harness_password}"}}
  ]
}}
"""


def bearer_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": KUBE_TOKEN}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
    }))
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    tmp = tmp_path_factory.mktemp("secrets")
    logs = LogCapture().install()  # before anything starts: start-up and login are covered too
    env = EmbeddedEnv(workdir=tmp / "env")
    conf = tmp / "nats.conf"
    conf.write_text(nats_users_config(NATS_PASSWORD, HARNESS_PASSWORD))
    env.nats = NatsServer(store_dir=env.workdir / "nats", config_file=conf)
    await env.start()
    kubeconfig = bearer_kubeconfig(tmp / "kubeconfig", env.api_url)
    settings = env.settings(nats_user="oms", nats_password=NATS_PASSWORD, nats_token=NATS_TOKEN,
                            default_namespace="default")
    operator = OperatorHandle(settings, kubeconfig)
    # The harness's own client uses the embedded (dummy-token) kubeconfig.
    kube = await KubeClient.connect(str(env.kubeconfig))
    try:
        await operator.start()
        r = Run(env, operator, kube, logs)
        operator.runtime.emitter.audit_observers.append(r.audits.append)
        yield r
    finally:
        await kube.close()
        await operator.stop()
        await env.stop()
        logs.uninstall()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_busy_run_leaks_no_secret(run: Run) -> None:
    s = run.settings
    await run.kube.create("automergepolicies", "default", {
        "apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy", "metadata": {"name": "all"},
        "spec": {"enabled": True, "branchNamePatterns": ["**"]}})
    # A merge.
    await run.branch("feature-ok", "feature/ok")
    await run.event("started", "feature/ok", "idx-1")
    await run.phase("feature-ok", "LOCKED_FOR_WRITE")
    await run.event("completed", "feature/ok", "idx-1", records_indexed=10)
    merged = await run.phase("feature-ok", "ACTIVE")
    assert merged["status"]["merge"]["decision"] == "Merged"
    # A failure (notification), after one injected API error that the consumer retries.
    await run.branch("feature-bad", "feature/bad")
    await run.event("started", "feature/bad", "idx-2")
    await run.phase("feature-bad", "LOCKED_FOR_WRITE")
    run.env.api.inject_fault(method="PATCH", path_regex=r"/branches/feature-bad/status$", status=500, times=1)
    await run.event("failed", "feature/bad", "idx-2", errors=["boom"], passed=False)
    await run.phase("feature-bad", "ERROR")
    # An unknown branch and a dead-lettered message.
    unknown = await run.event("started", "feature/nobody", "idx-3")
    await run.publish(s.subject_started, b"{not json", {"Content-Type": "application/cloudevents+json"})
    await poll(lambda: _has_dlq(run), "the dead-lettered message")
    await poll(lambda: _async(any(a.correlation_id == unknown["id"] for a in run.audits)), "the unknown-branch audit")
    # NATS goes away and comes back: the operator re-authenticates and carries on.
    await asyncio.to_thread(run.env.nats.stop)
    await run.logs.wait_for(lambda line: "NATS disconnected" in line)
    await run.env.nats.astart()
    await run.logs.wait_for(lambda line: "NATS reconnected" in line)
    await run.branch("feature-after", "feature/after")
    await run.event("started", "feature/after", "idx-4")
    await run.phase("feature-after", "LOCKED_FOR_WRITE")

    # The operator did all of it with the narrow NATS permissions of nats_users_config.
    assert "Permissions Violation" not in run.logs.text()

    # --- and now look everywhere.
    assert_clean("the log", run.logs.text())
    for record in run.logs.records:
        assert_clean(f"log record args of {record.name}", repr(record.args) + repr(record.msg))
    assert len(run.logs.records) > 50  # DEBUG from kopf, nats, aiohttp, the operator: a real capture
    assert {r.name.split(".")[0] for r in run.logs.records} >= {"kopf", "branch_operator", "oms"}

    assert run.audits
    for audit in run.audits:
        assert_clean(f"audit record {audit.audit_id}", audit.to_json())
    for stream in (s.audit_stream, s.dlq_stream, s.notifications_stream, s.branch_events_stream):
        messages = await run.stream(stream)
        assert messages, stream
        for headers, body in messages:
            assert_clean(f"a message in {stream}", json.dumps(headers) + body.decode("utf-8", "replace"))
    dlq = await run.stream(s.dlq_stream)
    assert any(h.get("Oms-Dlq-Reason-Code") == "InvalidJSON" for h, _ in dlq)

    written = [r for r in run.env.api.requests if r.raw_body]
    assert written
    for request in written:
        assert_clean(f"{request.method} {request.path}", (request.raw_body or b"").decode("utf-8", "replace"))
    for namespace_obj in (await run.kube.core.list_namespaced_event("default")).items:
        assert_clean("a Kubernetes Event", json.dumps(run.kube.api.sanitize_for_serialization(namespace_obj)))


async def _has_dlq(run: Run) -> bool:
    return bool(await run.stream(run.settings.dlq_stream))


async def _async(value: bool) -> bool:
    return value
