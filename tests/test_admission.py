"""The admission checks (domain/admission.py), the CRD rules that go with them, and the webhook's
self-signed certificate (controllers/webhook_tls.py)."""

from __future__ import annotations

import base64
import re
import ssl
from typing import Any

import pytest
from cryptography import x509

from branch_operator.api.crdgen import render_crds
from branch_operator.api.models import LabelSelector
from branch_operator.clients.kube import Conflict, NotFound
from branch_operator.controllers.webhook_tls import publish_ca_bundle, self_signed, stored_pair
from branch_operator.domain.admission import branch_refusal, policy_refusal
from branch_operator.domain.merge.selection import selector_problems
from branch_operator.domain.merge.trace import policy_statuses


def _selector(**kwargs: Any) -> LabelSelector:
    return LabelSelector.model_validate(kwargs)


@pytest.mark.parametrize(("selector", "matches_something"), [
    ({"matchLabels": {"team": "a"}}, True),
    ({"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
     True),
    ({"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "team", "operator": "In", "values": ["b"]}]},
     False),
    ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["a"]},
                           {"key": "t", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["a", "b"]},
                           {"key": "t", "operator": "NotIn", "values": ["a"]}]}, True),
    ({"matchExpressions": [{"key": "t", "operator": "Exists"}, {"key": "t", "operator": "DoesNotExist"}]}, False),
    ({"matchLabels": {"t": "x"}, "matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, False),
    ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["a"]},
                           {"key": "t", "operator": "DoesNotExist"}]}, True),
    ({"matchExpressions": [{"key": "t", "operator": "In", "values": []}]}, False),
])
def test_selector_that_matches_nothing(selector: dict[str, Any], matches_something: bool) -> None:
    assert (not selector_problems(_selector(**selector))) is matches_something


def test_policy_condition_and_refusal_say_the_same() -> None:
    spec = {"mergeWindows": [{"kind": "allow", "schedule": "0 25 * * *", "duration": "1h", "timeZone": "Mars/X"}]}
    refusal = policy_refusal(spec)
    assert refusal is not None and refusal.reason == "InvalidSpec"
    assert refusal.message == ("mergeWindows[0]: hour: '25' is outside 0-23; mergeWindows[0]: unknown time zone "
                               "'Mars/X' (expected an IANA name such as Asia/Seoul)")
    view = policy_statuses([{"metadata": {"name": "p"}, "spec": spec}], [])["p"]
    assert (view.accepted, view.reason, view.message) == (False, "InvalidSpec", f"Ignored: {refusal.message}")


def test_branch_refusals() -> None:
    assert branch_refusal({"branchName": "a"}, name="x") is None
    assert branch_refusal({"branchName": "a"}, name="x", claimants=["x"]) is None  # itself
    shadow = branch_refusal({"branchName": "a"}, name="x", claimants=["b"])
    assert shadow is not None and shadow.reason == "BranchNameShadowed"
    self_merge = branch_refusal({"branchName": "a", "targetBranch": "a"}, name="x")
    assert self_merge is not None and self_merge.reason == "SelfMerge"


# ------------------------------------------------------------------------------- CRD rules, evaluated


def _policy_schema() -> dict[str, Any]:
    [crd] = [c for c in render_crds() if c["spec"]["names"]["kind"] == "AutoMergePolicy"]
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def test_schedule_pattern_counts_fields() -> None:
    pattern = _policy_schema()["properties"]["mergeWindows"]["items"]["properties"]["schedule"]["pattern"]
    for text in ("0 9 * * 1-5", "@daily", "@Hourly", "*/15 8-18 * JAN-MAR MON"):
        assert re.fullmatch(pattern, text), text
    for text in ("0 9 *", "0 9 * * * *", "@reboot", "@daily 0"):
        assert not re.fullmatch(pattern, text), text


# --------------------------------------------------------------------------------- the certificate


def test_self_signed_certificate_verifies_for_its_names() -> None:
    pair = self_signed(["oms-webhook.oms.svc", "127.0.0.1"])
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["oms-webhook.oms.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The one PEM is the CA bundle: a client context trusting it loads it as a CA.
    context = ssl.create_default_context(cadata=pair.cert_pem.decode())
    assert context.cert_store_stats()["x509_ca"] == 1


class FakeKube:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, bytes]] = {}
        self.race: dict[str, bytes] | None = None  # another replica's create, landing just before ours
        self.config: dict[str, Any] = {"metadata": {"resourceVersion": "7"}, "webhooks": [
            {"name": "a", "clientConfig": {"service": {"name": "s"}}}, {"name": "b", "clientConfig": {}}]}
        self.patches: list[dict[str, Any]] = []

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        if (namespace, name) not in self.secrets:
            raise NotFound(404, "not found")
        return self.secrets[(namespace, name)]

    async def create_tls_secret(self, namespace: str, name: str, data: dict[str, bytes]) -> None:
        if self.race is not None:
            self.secrets[(namespace, name)] = self.race
        if (namespace, name) in self.secrets:
            raise Conflict(409, "exists")
        self.secrets[(namespace, name)] = dict(data)

    async def get_webhook_configuration(self, name: str) -> dict[str, Any]:
        return self.config

    async def patch_webhook_configuration(self, name: str, body: dict[str, Any]) -> None:
        self.patches.append(body)
        self.config = {**self.config, "webhooks": body["webhooks"]}


async def test_replicas_share_the_stored_certificate() -> None:
    kube = FakeKube()
    first = await stored_pair(kube, "oms", "tls", ["svc"])
    assert await stored_pair(kube, "oms", "tls", ["svc"]) == first
    racing = FakeKube()
    other = self_signed(["svc"])
    racing.race = {"tls.crt": other.cert_pem, "tls.key": other.key_pem}
    assert await stored_pair(racing, "oms", "tls", ["svc"]) == other


async def test_ca_bundle_is_set_on_every_webhook_once() -> None:
    kube = FakeKube()
    pem = self_signed(["svc"]).cert_pem
    assert await publish_ca_bundle(kube, "vwc", pem)
    [patch] = kube.patches
    assert patch["metadata"] == {"resourceVersion": "7"}
    bundle = base64.b64encode(pem).decode()
    assert [w["clientConfig"] for w in patch["webhooks"]] == [
        {"service": {"name": "s"}, "caBundle": bundle}, {"caBundle": bundle}]
    assert not await publish_ca_bundle(kube, "vwc", pem)
    assert len(kube.patches) == 1
