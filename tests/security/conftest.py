"""Shared pieces of the security tests: a throw-away PKI, NKeys and NATS JWTs made offline, nats-server
processes configured from a file, and a log capture that sees every logger at DEBUG."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from branch_operator.embedded.natsserver import NatsServer

# --------------------------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting only it must fail
    other_client_cert: Path  # a client certificate from other_ca: the server must refuse it
    other_client_key: Path
    misnamed_server_cert: Path  # signed by ca, but for another host name only
    misnamed_server_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str, usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """A CA; a server certificate for 127.0.0.1 and localhost; a client certificate for mutual TLS."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("oms-test-ca")
    server, server_key = _leaf(ca, ca_key, "nats", ExtendedKeyUsageOID.SERVER_AUTH, [
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client, client_key = _leaf(ca, ca_key, "oms-branch-operator", ExtendedKeyUsageOID.CLIENT_AUTH)
    other, other_key = _ca("some-other-ca")
    stranger, stranger_key = _leaf(other, other_key, "oms-branch-operator", ExtendedKeyUsageOID.CLIENT_AUTH)
    misnamed, misnamed_key = _leaf(ca, ca_key, "nats", ExtendedKeyUsageOID.SERVER_AUTH, [
        x509.DNSName("nats.elsewhere.invalid")])
    return Pki(
        ca=_write_cert(directory / "ca.pem", ca),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server-key.pem", server_key),
        client_cert=_write_cert(directory / "client.pem", client),
        client_key=_write_key(directory / "client-key.pem", client_key),
        other_ca=_write_cert(directory / "other-ca.pem", other),
        other_client_cert=_write_cert(directory / "other-client.pem", stranger),
        other_client_key=_write_key(directory / "other-client-key.pem", stranger_key),
        misnamed_server_cert=_write_cert(directory / "misnamed.pem", misnamed),
        misnamed_server_key=_write_key(directory / "misnamed-key.pem", misnamed_key),
    )


def tls_block(pki: Pki, *, verify: bool, misnamed: bool = False) -> str:
    """The nats-server ``tls {}`` block; ``verify``: require a client certificate signed by the CA;
    ``misnamed``: serve the certificate made out for another host."""
    cert, key = (pki.misnamed_server_cert, pki.misnamed_server_key) if misnamed else (pki.server_cert, pki.server_key)
    return (
        "tls {\n"
        f'  cert_file: "{cert}"\n  key_file: "{key}"\n  ca_file: "{pki.ca}"\n'
        f"  verify: {'true' if verify else 'false'}\n  timeout: 2\n"
        "}\n"
    )


# ------------------------------------------------------------------------------------------ NKeys


@dataclass(frozen=True)
class NKey:
    seed: bytes
    public: str

    def write_seed(self, path: Path) -> Path:
        path.write_bytes(self.seed + b"\n")
        path.chmod(0o600)
        return path

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))


def new_nkey(prefix: int) -> NKey:
    seed = bytes(nkeys.encode_seed(os.urandom(32), prefix))
    return NKey(seed, nkeys.from_seed(bytearray(seed)).public_key.decode())


# ------------------------------------------------------------------ NATS JWTs (decentralised auth)
# The nats-io/jwt v2 encoding, enough for an operator, its system account, one account and one user:
# base64url(header).base64url(claims).base64url(ed25519 signature by the issuer's NKey). What nsc
# generates, made here so the test needs no network and no extra binary.


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def encode_jwt(issuer: NKey, subject: str, name: str, nats_claims: dict[str, Any]) -> str:
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject,
                              "nats": {**nats_claims, "version": 2}}
    digest = hashlib.sha512(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()).digest()[:32]
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}.{_b64(issuer.sign(f'{head}.{body}'.encode()))}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
              "conn": -1, "leaf": -1}
_JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def creds_text(user_jwt: str, user: NKey) -> str:
    return (
        "-----BEGIN NATS USER JWT-----\n" f"{user_jwt}\n" "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n" f"{user.seed.decode()}\n" "------END USER NKEY SEED------\n"
    )


@dataclass(frozen=True)
class OperatorMode:
    config: str  # nats-server configuration lines
    creds: Path  # a user of the trusted account
    untrusted_creds: Path  # a user of an account the operator never signed


def make_operator_mode(directory: Path) -> OperatorMode:
    directory.mkdir(parents=True, exist_ok=True)
    operator, system, account = (new_nkey(nkeys.PREFIX_BYTE_OPERATOR), new_nkey(nkeys.PREFIX_BYTE_ACCOUNT),
                                 new_nkey(nkeys.PREFIX_BYTE_ACCOUNT))
    operator_jwt = encode_jwt(operator, operator.public, "oms-test-operator",
                              {"type": "operator", "system_account": system.public})
    system_jwt = encode_jwt(operator, system.public, "SYS", {"type": "account", "limits": _UNLIMITED})
    account_jwt = encode_jwt(operator, account.public, "oms", {
        "type": "account", "limits": {**_UNLIMITED, **_JETSTREAM}})

    def user_creds(issuer: NKey, path: Path) -> Path:
        user = new_nkey(nkeys.PREFIX_BYTE_USER)
        user_jwt = encode_jwt(issuer, user.public, "oms-branch-operator", {
            "type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1})
        path.write_text(creds_text(user_jwt, user))
        path.chmod(0o600)
        return path

    (directory / "operator.jwt").write_text(operator_jwt)
    config = (
        f'operator: "{directory / "operator.jwt"}"\n'
        f"system_account: {system.public}\n"
        "resolver: MEMORY\n"
        f'resolver_preload: {{\n  {system.public}: "{system_jwt}"\n  {account.public}: "{account_jwt}"\n}}\n'
    )
    return OperatorMode(config, user_creds(account, directory / "operator.creds"),
                        user_creds(new_nkey(nkeys.PREFIX_BYTE_ACCOUNT), directory / "untrusted.creds"))


# ------------------------------------------------------------------------------------ nats-server


NatsFactory = Callable[[str], NatsServer]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsFactory]:
    """Start nats-server processes from configuration text; all are stopped after the test."""
    servers: list[NatsServer] = []

    def start(config: str) -> NatsServer:
        n = len(servers)
        conf = tmp_path / f"nats-{n}.conf"
        conf.write_text(config)
        server = NatsServer(store_dir=tmp_path / f"nats-{n}", config_file=conf)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.close()


# ------------------------------------------------------------------------------------ log capture


class LogCapture(logging.Handler):
    """Every record of every logger, rendered with its arguments and any traceback, while installed.

    ``wait_for`` lets async tests wait for a record instead of sleeping.
    """

    LOGGERS = ("", "kopf", "nats", "aiohttp", "asyncio", "kubernetes_asyncio", "kubernetes", "urllib3",
               "branch_operator", "oms.audit")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self._waiters: list[tuple[Callable[[str], bool], asyncio.Future[str]]] = []
        self._saved: list[tuple[logging.Logger, int, bool]] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as exc:  # pragma: no cover - a broken log call is itself worth seeing
            text = f"<unformattable record {record.msg!r} {record.args!r}: {exc}>"
        # Extra fields that structured formatters would print, too.
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        if extra:
            text = f"{text} {extra!r}"
        self.records.append(record)
        self.lines.append(text)
        for predicate, future in list(self._waiters):
            if not future.done() and predicate(text):
                future.get_loop().call_soon_threadsafe(_resolve, future, text)

    def text(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        for line in self.lines:
            if predicate(line):
                return line
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AssertionError(f"no log line matched within {timeout}s; last lines:\n"
                                 + "\n".join(self.lines[-20:])) from None
        finally:
            self._waiters.remove(entry)

    def install(self) -> LogCapture:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level, logger.disabled))
            logger.setLevel(logging.DEBUG)
            logger.disabled = False
        logging.getLogger().addHandler(self)
        return self

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)
        for logger, level, disabled in reversed(self._saved):
            logger.setLevel(level)
            logger.disabled = disabled
        self._saved.clear()


def _resolve(future: asyncio.Future[str], text: str) -> None:
    if not future.done():
        future.set_result(text)


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture().install()
    yield capture
    capture.uninstall()
