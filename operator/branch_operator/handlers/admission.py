"""kopf registrations for the validating admission webhook of AutoMergePolicies and Branches, and its server.

Every replica serves it, the one in charge and standbys alike: a review reads only the object and the
Branch catalog, which every replica keeps current. The handler ids are the URL paths
(``/validate-automergepolicies``, ``/validate-branches``), which the chart's ValidatingWebhookConfiguration
names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection
from typing import Any

import kopf

from branch_operator.api.models import GROUP, VERSION, AutoMergePolicy, Branch
from branch_operator.clients.kube import Conflict, KubeClient
from branch_operator.config import Settings
from branch_operator.controllers.admission import AdmissionReview
from branch_operator.controllers.webhook_tls import ServingPair, publish_ca_bundle, self_signed, stored_pair
from branch_operator.handlers.context import runtime_of
from branch_operator.kit.retry import retry

__all__ = ["BRANCH_WEBHOOK", "POLICY_WEBHOOK", "OperatorWebhookServer", "configure_admission"]

log = logging.getLogger(__name__)

POLICY_WEBHOOK = "validate-automergepolicies"
BRANCH_WEBHOOK = "validate-branches"
_OPERATIONS: Collection[Any] = ("CREATE", "UPDATE")
# A validation error the request caused, not a failure of the webhook (kopf answers 500 otherwise).
_UNPROCESSABLE = 422


class OperatorWebhookServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server, with its self-signed certificate made by ``cryptography`` (kopf's own
    way needs certbuilder/oscrypto, unmaintained) or kept in a Secret, and the client config it yields
    remembered for ``/readyz``-style introspection and the tests."""

    def __init__(self, *, pair: ServingPair | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pair = pair
        self.client_config: dict[str, Any] | None = None

    def build_certificate(self, hostnames: Collection[str], password: str | None = None) -> tuple[bytes, bytes]:  # type: ignore[override]
        if self.pair is None:
            self.pair = self_signed([h for h in hostnames if h])
        return self.pair.cert_pem, self.pair.key_pem

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for client_config in super().__call__(fn):
            self.client_config = dict(client_config)
            yield client_config


async def _no_server(fn: Any) -> AsyncIterator[Any]:
    """The webhook off: kopf refuses to start with admission handlers and no server, so it gets one that
    never listens (the operator still marks invalid objects afterwards)."""
    await asyncio.Event().wait()
    yield {}  # pragma: no cover - never reached


async def configure_admission(
    settings: kopf.OperatorSettings, config: Settings, kube: KubeClient,
) -> OperatorWebhookServer | None:
    """Point kopf at the webhook server; with a self-signed certificate, publish it as the caBundle."""
    if not config.webhook_enabled:
        settings.admission.server = _no_server
        return None
    hostnames = config.webhook_host_names
    pair: ServingPair | None = None
    files = config.webhook_tls_cert_file is not None
    if not files and config.webhook_certificate_store:
        pair = await stored_pair(kube, config.default_namespace, config.webhook_certificate_store, hostnames)
    elif not files:
        pair = self_signed(hostnames)
    server = OperatorWebhookServer(
        pair=pair, port=config.webhook_port, host=hostnames[0], extra_sans=hostnames[1:],
        certfile=config.webhook_tls_cert_file, pkeyfile=config.webhook_tls_key_file,
        cafile=config.webhook_tls_ca_file,
    )
    settings.admission.server = server
    settings.admission.managed = config.webhook_managed_configuration
    if pair is not None and config.webhook_ca_bundle_configuration:
        name = config.webhook_ca_bundle_configuration
        cert = pair.cert_pem
        await retry(lambda: publish_ca_bundle(kube, name, cert), on=Conflict, attempts=5,
                    give_up=lambda: RuntimeError(f"ValidatingWebhookConfiguration {name} kept changing"))
    return server


def _refuse(plural: str, memo: Any, namespace: str | None, name: str, kwargs: dict[str, Any]) -> None:
    runtime = runtime_of(memo)
    review = AdmissionReview(runtime.catalog if runtime is not None else None)
    refusal = review.review(plural, kwargs.get("operation"), namespace or "", name or "",
                            kwargs.get("new"), kwargs.get("old"))
    if refusal is not None:
        raise kopf.AdmissionError(str(refusal), code=_UNPROCESSABLE)


@kopf.on.validate(GROUP, VERSION, AutoMergePolicy.PLURAL, id=POLICY_WEBHOOK, operations=_OPERATIONS)
def validate_policy(memo: Any, namespace: str | None, name: str, **kwargs: Any) -> None:
    _refuse(AutoMergePolicy.PLURAL, memo, namespace, name, kwargs)


@kopf.on.validate(GROUP, VERSION, Branch.PLURAL, id=BRANCH_WEBHOOK, operations=_OPERATIONS)
def validate_branch(memo: Any, namespace: str | None, name: str, **kwargs: Any) -> None:
    _refuse(Branch.PLURAL, memo, namespace, name, kwargs)
