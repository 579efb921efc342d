"""NATS authentication and TLS against a real nats-server: the operator's own connection code
(``nats_io.connect_options`` + ``NatsBus``) with user/password, token, NKey, ``.creds`` (JWT) and TLS
with and without client certificates, each one also with the wrong secret or the wrong CA."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest

from branch_operator.clients.kube import KubeClient
from branch_operator.clients.nats_bus import NatsBus, connect_options
from branch_operator.config import Settings
from branch_operator.contracts.funnel_encode import encode_structured, make_event
from branch_operator.embedded.env import EmbeddedEnv, OperatorHandle
from branch_operator.embedded.natsserver import NatsServer

from ..waiting import poll as _poll
from .conftest import LogCapture, NatsFactory, Pki, make_operator_mode, make_pki, new_nkey, tls_block

PASSWORD = "pw-Zq8#n!4rT"
TOKEN = "tok-9Xv2kLmQ"


@dataclass
class Case:
    """A nats-server configuration and the operator settings that should (or should not) get in."""

    server: str
    settings: dict[str, Any]
    tls: bool = False


CaseFactory = Callable[[Path, Pki], Case]


def user_password(_: Path, __: Pki) -> Case:
    return Case(f'authorization {{ users = [{{user: oms, password: "{PASSWORD}"}}] }}\n',
                {"nats_user": "oms", "nats_password": PASSWORD})


def token(_: Path, __: Pki) -> Case:
    return Case(f'authorization {{ token: "{TOKEN}" }}\n', {"nats_token": TOKEN})


def nkey(tmp: Path, _: Pki) -> Case:
    user = new_nkey(nkeys.PREFIX_BYTE_USER)
    return Case(f"authorization {{ users = [{{nkey: {user.public}}}] }}\n",
                {"nats_nkey_seed_file": user.write_seed(tmp / "operator.nk")})


def creds(tmp: Path, _: Pki) -> Case:
    mode = make_operator_mode(tmp / "jwt")
    return Case(mode.config, {"nats_creds_file": mode.creds})


def tls_server_auth(tmp: Path, pki: Pki) -> Case:
    case = user_password(tmp, pki)
    return Case(tls_block(pki, verify=False) + case.server, {**case.settings, "nats_tls_ca_file": pki.ca}, tls=True)


def mutual_tls(tmp: Path, pki: Pki) -> Case:
    case = nkey(tmp, pki)
    return Case(tls_block(pki, verify=True) + case.server, {
        **case.settings, "nats_tls_ca_file": pki.ca, "nats_tls_cert_file": pki.client_cert,
        "nats_tls_key_file": pki.client_key}, tls=True)


def mutual_tls_creds(tmp: Path, pki: Pki) -> Case:
    case = creds(tmp, pki)
    return Case(tls_block(pki, verify=True) + case.server, {
        **case.settings, "nats_tls_ca_file": pki.ca, "nats_tls_cert_file": pki.client_cert,
        "nats_tls_key_file": pki.client_key}, tls=True)


CASES: dict[str, CaseFactory] = {
    "user-password": user_password,
    "token": token,
    "nkey": nkey,
    "creds-jwt": creds,
    "tls": tls_server_auth,
    "mutual-tls+nkey": mutual_tls,
    "mutual-tls+creds-jwt": mutual_tls_creds,
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def settings_for(server: NatsServer, case: Case, **changes: Any) -> Settings:
    scheme = "tls" if case.tls else "nats"
    values = {"nats_url": f"{scheme}://{server.host}:{server.port}", "nats_connect_timeout": 3.0, **case.settings}
    values.update(changes)
    return Settings(**values)


async def connect_fails(settings: Settings, logs: LogCapture, expected: str) -> str:
    """The real NatsBus keeps retrying (the operator stays up, not ready); each attempt logs why it failed."""
    bus = NatsBus(settings)
    task = asyncio.create_task(bus.connect())
    try:
        line = await logs.wait_for(lambda text: "NATS error" in text and expected in text)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not bus.connected
    assert not task.done() or task.cancelled()
    return line


# ------------------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("name", sorted(CASES))
async def test_operator_connection_works(name: str, nats_server: NatsFactory, pki: Pki, tmp_path: Path) -> None:
    case = CASES[name](tmp_path, pki)
    server = nats_server(case.server)
    settings = settings_for(server, case)
    bus = NatsBus(settings)
    await bus.connect()
    try:
        assert bus.connected
        await bus.ensure_streams()
        await bus.ensure_consumers()
        await bus.publish(settings.audit_subject, b'{"audit_id":"x"}', msg_id="x")
        info = await bus.js.stream_info(settings.audit_stream)
        assert info.state.messages == 1
        assert {s.config.name for s in [await bus.js.stream_info(n) for n in (
            settings.stream, settings.audit_stream, settings.dlq_stream)]} == {
            settings.stream, settings.audit_stream, settings.dlq_stream}
        if case.tls:
            # The server requires TLS (it announces tls_required), so being connected means the session is TLS.
            assert bus.nc is not None and bus.nc._server_info.get("tls_required") is True
    finally:
        await bus.close()


def test_connect_options_shapes(tmp_path: Path, pki: Pki) -> None:
    opts = connect_options(Settings(
        nats_url="tls://a:4222, tls://b:4222", nats_user="oms", nats_password=PASSWORD,
        nats_tls_ca_file=pki.ca, nats_tls_cert_file=pki.client_cert, nats_tls_key_file=pki.client_key))
    assert opts["servers"] == ["tls://a:4222", "tls://b:4222"]
    assert (opts["user"], opts["password"]) == ("oms", PASSWORD)
    assert "token" not in opts and "user_credentials" not in opts and "nkeys_seed" not in opts
    ctx = opts["tls"]
    assert ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"
    # No TLS settings: no context of our own (nats-py's default, system CAs, applies to tls:// servers).
    assert "tls" not in connect_options(Settings(nats_url="nats://a:4222"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nats_password": PASSWORD}, "OMS_NATS_PASSWORD is set but OMS_NATS_USER is not"),
        ({"nats_tls_key_file": "/k.pem"}, "OMS_NATS_TLS_KEY_FILE is set but OMS_NATS_TLS_CERT_FILE is not"),
        ({"nats_tls_ca_file": "/nowhere/ca.pem"}, "cannot load the NATS TLS files (CA /nowhere/ca.pem"),
    ],
)
def test_half_a_configuration_is_an_error_not_ignored(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        connect_options(Settings(**changes))
    assert message in str(info.value)
    assert PASSWORD not in str(info.value)


async def test_a_missing_tls_file_is_named_when_connecting(tmp_path: Path) -> None:
    """NatsBus.connect fails at once, naming the file; the runtime logs it and retries (operator not ready)."""
    bus = NatsBus(Settings(nats_url="tls://127.0.0.1:1", nats_tls_ca_file=tmp_path / "missing-ca.pem"))
    with pytest.raises(ValueError, match=r"missing-ca\.pem"):
        await bus.connect()
    assert not bus.connected


# ------------------------------------------------------------------------------------------- refused


async def test_wrong_password_is_refused(nats_server: NatsFactory, pki: Pki, tmp_path: Path,
                                         logs: LogCapture) -> None:
    case = user_password(tmp_path, pki)
    server = nats_server(case.server)
    line = await connect_fails(settings_for(server, case, nats_password="not-the-password"), logs,
                               "Authorization Violation")
    assert "not-the-password" not in line


async def test_wrong_token_is_refused(nats_server: NatsFactory, pki: Pki, tmp_path: Path, logs: LogCapture) -> None:
    case = token(tmp_path, pki)
    server = nats_server(case.server)
    await connect_fails(settings_for(server, case, nats_token="not-the-token"), logs, "Authorization Violation")
    # And no credentials at all.
    await connect_fails(settings_for(server, case, nats_token=None), logs, "Authorization Violation")


async def test_unknown_nkey_is_refused(nats_server: NatsFactory, pki: Pki, tmp_path: Path, logs: LogCapture) -> None:
    case = nkey(tmp_path, pki)
    server = nats_server(case.server)
    stranger = new_nkey(nkeys.PREFIX_BYTE_USER).write_seed(tmp_path / "stranger.nk")
    await connect_fails(settings_for(server, case, nats_nkey_seed_file=stranger), logs, "Authorization Violation")


async def test_creds_of_an_untrusted_account_are_refused(nats_server: NatsFactory, tmp_path: Path,
                                                         logs: LogCapture) -> None:
    mode = make_operator_mode(tmp_path / "jwt")
    server = nats_server(mode.config)
    case = Case(mode.config, {"nats_creds_file": mode.untrusted_creds})
    await connect_fails(settings_for(server, case), logs, "Authorization Violation")


async def test_wrong_ca_is_refused(nats_server: NatsFactory, pki: Pki, tmp_path: Path, logs: LogCapture) -> None:
    case = tls_server_auth(tmp_path, pki)
    server = nats_server(case.server)
    line = await connect_fails(settings_for(server, case, nats_tls_ca_file=pki.other_ca), logs,
                               "CERTIFICATE_VERIFY_FAILED")
    assert "certificate verify failed" in line
    # Without a CA of its own the client trusts only the system CAs, which did not sign this server either.
    await connect_fails(settings_for(server, case, nats_tls_ca_file=None), logs, "CERTIFICATE_VERIFY_FAILED")


async def test_wrong_server_name_is_refused(nats_server: NatsFactory, pki: Pki, tmp_path: Path,
                                            logs: LogCapture) -> None:
    """A certificate from the trusted CA, but made out for another host: the hostname check refuses it."""
    server = nats_server(tls_block(pki, verify=False, misnamed=True) + user_password(tmp_path, pki).server)
    line = await connect_fails(settings_for(server, tls_server_auth(tmp_path, pki)), logs,
                               "CERTIFICATE_VERIFY_FAILED")
    assert "mismatch" in line or "match" in line, line


async def test_mutual_tls_needs_a_client_certificate_from_the_ca(
    nats_server: NatsFactory, pki: Pki, tmp_path: Path, logs: LogCapture
) -> None:
    case = mutual_tls(tmp_path, pki)
    server = nats_server(case.server)
    # No client certificate: the server ends the handshake.
    without = settings_for(server, case, nats_tls_cert_file=None, nats_tls_key_file=None)
    await connect_fails(without, logs, "")
    # A certificate from another CA: refused too.
    stranger = settings_for(server, case, nats_tls_cert_file=pki.other_client_cert,
                            nats_tls_key_file=pki.other_client_key)
    await connect_fails(stranger, logs, "")
    # The server says why.
    log_text = server.log_path.read_text()
    assert "TLS handshake error" in log_text, log_text[-2000:]


# -------------------------------------------------------------------------------------------- e2e


async def test_operator_applies_an_event_over_mutual_tls_with_password(
    pki: Pki, tmp_path: Path, logs: LogCapture
) -> None:
    """The whole operator (kopf, consumer, processor) against a nats-server that requires mutual TLS and
    a password: a started event moves the Branch to LOCKED_FOR_WRITE and its audit record is stored."""
    env = EmbeddedEnv(workdir=tmp_path / "env")
    conf = tmp_path / "nats.conf"
    conf.write_text(tls_block(pki, verify=True) + user_password(tmp_path, pki).server)
    env.nats = NatsServer(store_dir=env.workdir / "nats", config_file=conf)
    await env.start()
    settings = env.settings(
        nats_url=f"tls://localhost:{env.nats.port}", nats_user="oms", nats_password=PASSWORD,
        nats_tls_ca_file=pki.ca, nats_tls_cert_file=pki.client_cert, nats_tls_key_file=pki.client_key,
        default_namespace="default")
    operator = OperatorHandle(settings, env.kubeconfig)
    kube = await KubeClient.connect(str(env.kubeconfig))
    try:
        await operator.start()
        await kube.create("branches", "default", {
            "apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "metadata": {"name": "feature-tls"},
            "spec": {"branchName": "feature/tls"}})
        payload, headers = encode_structured(make_event("started", "feature/tls", "idx-tls"))
        nc = await nats.connect(**{**connect_options(settings), "allow_reconnect": False})
        try:
            await nc.jetstream().publish(settings.subject_started, payload, headers=headers)
        finally:
            await nc.close()

        async def locked() -> dict[str, Any] | None:
            obj = await kube.get_branch("default", "feature-tls")
            return obj if (obj.get("status") or {}).get("phase") == "LOCKED_FOR_WRITE" else None

        obj = await _poll(locked, "the Branch to be LOCKED_FOR_WRITE")
        assert obj["status"]["conditions"]
        assert await kube.list_locks("default", "feature-tls")
        async def audited() -> bool:  # published just after the status write
            return "indexing.started" in {a["action"] for a in await _audit_records(settings)}
        await _poll(audited, "the indexing.started audit record in OMS_AUDIT")
        assert "connected to NATS at localhost:" in logs.text()
    finally:
        await kube.close()
        await operator.stop()
        await env.stop()




async def _audit_records(settings: Settings) -> list[dict[str, Any]]:
    nc = await nats.connect(**{**connect_options(settings), "allow_reconnect": False})
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.audit_stream)
        if not info.state.messages:
            return []
        return [json.loads((await js.get_msg(settings.audit_stream, seq)).data or b"{}")
                for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()
