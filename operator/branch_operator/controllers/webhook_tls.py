"""The admission webhook's serving certificate when cert-manager does not provide one.

Self-signed and its own CA (``CA:TRUE``, the serving names as SANs), so that the one PEM is both what the
webhook serves and the ``caBundle`` the API server verifies it with. With several replicas behind one
Service every replica must serve the same certificate: the first one to start keeps it in a Secret
(``OMS_WEBHOOK_CERTIFICATE_STORE``) and the others read it back, a create conflict meaning another
replica won the race. The caBundle of the chart's ValidatingWebhookConfiguration is then set to it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from branch_operator.clients.kube import Conflict, KubeError, NotFound, Obj

__all__ = ["VALIDITY", "ServingPair", "publish_ca_bundle", "self_signed", "stored_pair"]

log = logging.getLogger(__name__)

# Long, because nothing renews it: deleting the Secret and restarting the pods makes a new one.
VALIDITY = dt.timedelta(days=5 * 365)


@dataclass(frozen=True, slots=True)
class ServingPair:
    cert_pem: bytes  # also the CA bundle
    key_pem: bytes


class _Kube(Protocol):
    async def get_secret_data(self, namespace: str, name: str) -> dict[str, bytes]: ...
    async def create_tls_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None: ...
    async def get_webhook_configuration(self, name: str) -> Obj: ...
    async def patch_webhook_configuration(self, name: str, body: dict[str, Any]) -> None: ...


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def self_signed(hostnames: Sequence[str], *, now: dt.datetime | None = None) -> ServingPair:
    """A P-256 key and a self-signed certificate for ``hostnames`` (the first is the subject's CN)."""
    if not hostnames:
        raise ValueError("a serving certificate needs at least one host name")
    key = ec.generate_private_key(ec.SECP256R1())
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)  # the API server's clock may lag
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0][:64]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "oms-branch-operator")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys(hostnames)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ServingPair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


def _from_secret(data: dict[str, bytes]) -> ServingPair | None:
    cert, key = data.get("tls.crt"), data.get("tls.key")
    return ServingPair(cert, key) if cert and key else None


async def stored_pair(kube: _Kube, namespace: str, name: str, hostnames: Sequence[str]) -> ServingPair:
    """The pair kept in Secret ``name``, made and stored first if there is none yet."""
    try:
        pair = _from_secret(await kube.get_secret_data(namespace, name))
        if pair is not None:
            return pair
        raise KubeError(422, f"Secret {namespace}/{name} has no tls.crt / tls.key")
    except NotFound:
        pass
    pair = self_signed(hostnames)
    try:
        await kube.create_tls_secret(namespace, name, {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem,
                                                       "ca.crt": pair.cert_pem})
        log.info("stored a new self-signed webhook certificate in Secret %s/%s", namespace, name)
        return pair
    except Conflict:  # another replica stored one first: serve that one
        stored = _from_secret(await kube.get_secret_data(namespace, name))
        if stored is None:
            raise KubeError(422, f"Secret {namespace}/{name} has no tls.crt / tls.key") from None
        return stored


async def publish_ca_bundle(kube: _Kube, name: str, ca_pem: bytes) -> bool:
    """Set every webhook's caBundle in ValidatingWebhookConfiguration ``name``; False when it already was.

    The whole ``webhooks`` list is written with the read resourceVersion (a merge patch replaces lists),
    so a concurrent change is a Conflict the caller retries instead of a lost update.
    """
    config = await kube.get_webhook_configuration(name)
    bundle = base64.b64encode(ca_pem).decode("ascii")
    webhooks = [dict(w) for w in config.get("webhooks") or []]
    if all((w.get("clientConfig") or {}).get("caBundle") == bundle for w in webhooks):
        return False
    for webhook in webhooks:
        webhook["clientConfig"] = {**(webhook.get("clientConfig") or {}), "caBundle": bundle}
    await kube.patch_webhook_configuration(name, {
        "metadata": {"resourceVersion": config["metadata"]["resourceVersion"]}, "webhooks": webhooks})
    log.info("set the caBundle of ValidatingWebhookConfiguration %s", name)
    return True
