"""Validating admission webhooks: the embedded server calls them over HTTPS as kube-apiserver does.

The webhook is a tiny aiohttp HTTPS server in the test, with a certificate from a test CA; what it
answers is set per test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
import pytest
import pytest_asyncio
from aiohttp import web

from branch_operator.embedded.apiserver.server import EmbeddedApiServer

from .. import k8s_tools
from ..security.conftest import Pki, make_pki
from .conftest import BRANCHES, CRDS, Api, branch, crd, wait_for

KUBECTL = k8s_tools.kubectl_path()
VWC = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
NAMESPACES = "/api/v1/namespaces"


@dataclass
class Webhook:
    """What the test webhook answers, and every AdmissionReview it received."""

    url: str
    pki: Pki
    reviews: list[dict[str, Any]] = field(default_factory=list)
    allowed: bool = True
    status: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    hang: bool = False
    wrong_uid: bool = False
    on_review: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    def ca_bundle(self, other: bool = False) -> str:
        return base64.b64encode((self.pki.other_ca if other else self.pki.ca).read_bytes()).decode()

    def config(self, name: str = "check.oms.dev.test", **hook: Any) -> dict[str, Any]:
        webhook = {
            "name": name,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": f"{self.url}/validate", "caBundle": self.ca_bundle()},
            "rules": [{"apiGroups": ["oms.dev"], "apiVersions": ["v1alpha1"], "resources": ["branches"],
                       "operations": ["CREATE", "UPDATE"]}],
            **hook,
        }  # fmt: skip
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "oms-test"},
            "webhooks": [webhook],
        }


@pytest_asyncio.fixture
async def webhook(tmp_path: pathlib.Path) -> AsyncIterator[Webhook]:
    pki = make_pki(tmp_path / "pki")
    hook = Webhook("", pki)
    never = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        review = await request.json()
        hook.reviews.append(review)
        if hook.on_review is not None:
            await hook.on_review(review)
        if hook.hang:
            await never.wait()
        response: dict[str, Any] = {"uid": "nope" if hook.wrong_uid else review["request"]["uid"],
                                    "allowed": hook.allowed}  # fmt: skip
        if hook.status is not None:
            response["status"] = hook.status
        if hook.warnings:
            response["warnings"] = hook.warnings
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"https://127.0.0.1:{port}"
    try:
        yield hook
    finally:
        never.set()
        await runner.cleanup()


@pytest_asyncio.fixture
async def cluster(api: Api) -> Api:
    await api.ok("POST", CRDS, crd())
    return api


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _kubectl(server: EmbeddedApiServer, tmp: pathlib.Path, *args: str) -> tuple[int, str, str]:
    assert KUBECTL is not None
    kubeconfig = server.write_kubeconfig(tmp / "kubeconfig")
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(kubeconfig), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"HOME": str(tmp)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ------------------------------------------------------------------------------- the configuration


async def test_configurations_are_served_discovered_defaulted_and_validated(
    server: EmbeddedApiServer, api: Api, webhook: Webhook, tmp_path: pathlib.Path
) -> None:
    code, out, err = await _kubectl(server, tmp_path, "api-resources", "--api-group=admissionregistration.k8s.io")
    assert code == 0, err
    assert "validatingwebhookconfigurations" in out and "false" in out.split("validatingwebhookconfigurations")[1]

    # kopf's managed mode: create the bare object, then merge-patch the webhooks in.
    await api.ok("POST", VWC, {"apiVersion": "admissionregistration.k8s.io/v1",
                               "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "oms-test"}})  # fmt: skip
    hooks = webhook.config()["webhooks"]
    patched = await api.ok("PATCH", f"{VWC}/oms-test", {"webhooks": hooks})
    stored = patched["webhooks"][0]
    assert (stored["failurePolicy"], stored["matchPolicy"], stored["timeoutSeconds"]) == ("Fail", "Equivalent", 10)
    assert stored["namespaceSelector"] == {} and stored["objectSelector"] == {}
    assert stored["rules"][0]["scope"] == "*"
    assert patched["metadata"]["generation"] == 2
    listed = await api.ok("GET", VWC)
    assert [o["metadata"]["name"] for o in listed["items"]] == ["oms-test"]

    bad = {**hooks[0], "name": "check", "sideEffects": "Some", "clientConfig": {"url": "http://x"}}
    status, body = await api.patch(f"{VWC}/oms-test", {"webhooks": [bad]})
    assert status == 422
    assert [c["message"] for c in body["details"]["causes"]] == [
        'webhooks[0].name: Invalid value: "check": should be a domain with at least three segments separated by dots',
        'webhooks[0].sideEffects: Unsupported value: "Some": supported values: "None", "NoneOnDryRun"',
        "webhooks[0].clientConfig.url: Invalid value: \"http://x\": 'https' is the only allowed URL scheme",
    ]
    await api.ok("DELETE", f"{VWC}/oms-test")
    assert (await api.get(f"{VWC}/oms-test"))[0] == 404


# ------------------------------------------------------------------------------------- the reviews


async def test_allowed_writes_send_the_review_and_return_its_warnings(
    server: EmbeddedApiServer, cluster: Api, webhook: Webhook, tmp_path: pathlib.Path
) -> None:
    await cluster.ok("POST", VWC, webhook.config())
    webhook.warnings = ['spec.autoMerge is "deprecated"']
    async with cluster.session.post(cluster.url + BRANCHES, json=branch("a")) as r:
        assert r.status == 201
        created = await r.json()
        assert r.headers.getall("Warning") == ['299 - "spec.autoMerge is \\"deprecated\\""']
    [review] = webhook.reviews
    request = review["request"]
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    assert request["operation"] == "CREATE" and request["oldObject"] is None and request["dryRun"] is False
    assert request["kind"] == request["requestKind"] == {"group": "oms.dev", "version": "v1alpha1", "kind": "Branch"}
    assert request["resource"] == {"group": "oms.dev", "version": "v1alpha1", "resource": "branches"}
    assert (request["name"], request["namespace"]) == ("a", "default")
    assert request["options"] == {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
    assert request["userInfo"]["username"] == "system:admin"
    # The webhook judged the object as it was stored: defaults applied, the same uid.
    assert request["object"]["metadata"]["uid"] == created["metadata"]["uid"]
    assert request["object"]["spec"]["targetBranch"] == "main"

    await cluster.ok("PATCH", f"{BRANCHES}/a", {"spec": {"autoMerge": False}}, "application/merge-patch+json")
    update = webhook.reviews[-1]["request"]
    assert update["operation"] == "UPDATE" and update["options"]["kind"] == "UpdateOptions"
    assert update["oldObject"]["spec"]["autoMerge"] is True and update["object"]["spec"]["autoMerge"] is False
    assert update["object"]["metadata"]["generation"] == 2

    # Not reviewed: the status subresource and deletion, which the rules do not name.
    await cluster.ok("PATCH", f"{BRANCHES}/a/status", {"status": {"phase": "READY"}})
    await cluster.ok("DELETE", f"{BRANCHES}/a")
    assert len(webhook.reviews) == 2

    # kubectl prints the warnings.
    manifest = tmp_path / "b.yaml"
    manifest.write_text(json.dumps(branch("kb")))
    code, out, err = await _kubectl(server, tmp_path, "apply", "-f", str(manifest))
    assert code == 0 and "created" in out
    assert 'Warning: spec.autoMerge is "deprecated"\n' in err


async def test_a_denial_reaches_kubectl_in_the_servers_words(
    server: EmbeddedApiServer, cluster: Api, webhook: Webhook, tmp_path: pathlib.Path
) -> None:
    await cluster.ok("POST", VWC, webhook.config())
    webhook.allowed = False
    webhook.status = {"code": 403, "reason": "Forbidden", "message": "branch names must be approved"}
    status, body = await cluster.post(BRANCHES, branch("a"))
    assert status == 403
    message = 'admission webhook "check.oms.dev.test" denied the request: branch names must be approved'
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 403,
                    "reason": "Forbidden", "message": message}  # fmt: skip
    assert (await cluster.get(f"{BRANCHES}/a"))[0] == 404

    webhook.status = {"message": "no"}  # no code, no reason: 400, and no reason in the Status either
    status, body = await cluster.post(BRANCHES, branch("a"))
    assert status == 400 and "reason" not in body
    manifest = tmp_path / "b.yaml"
    manifest.write_text(json.dumps(branch("kb")))
    code, _, err = await _kubectl(server, tmp_path, "apply", "-f", str(manifest))
    assert code == 1
    assert err == (
        f'Error from server: error when creating "{manifest}": '
        'admission webhook "check.oms.dev.test" denied the request: no\n'
    )

    webhook.status = None
    status, body = await cluster.post(BRANCHES, branch("a"))
    assert status == 400
    assert body["message"] == 'admission webhook "check.oms.dev.test" denied the request without explanation'

    # Dry runs are reviewed too, and store nothing even when allowed.
    webhook.allowed = True
    status, _ = await cluster.post(BRANCHES + "?dryRun=All", branch("a"))
    assert status == 201 and webhook.reviews[-1]["request"]["dryRun"] is True
    assert (await cluster.get(f"{BRANCHES}/a"))[0] == 404


async def test_a_write_that_lands_while_the_webhook_judges_sends_the_write_back_to_it(
    cluster: Api, webhook: Webhook
) -> None:
    await cluster.ok("POST", BRANCHES, branch("a"))
    await cluster.ok("POST", VWC, webhook.config())

    async def meanwhile(review: dict[str, Any]) -> None:
        if len(webhook.reviews) == 1:  # another client's write lands while the first one is being judged
            assert (await cluster.patch(f"{BRANCHES}/a", {"metadata": {"labels": {"other": "write"}}}))[0] == 200

    webhook.on_review = meanwhile
    patched = await cluster.ok("PATCH", f"{BRANCHES}/a", {"spec": {"autoMerge": False}})
    # The first review judged a change of an object that no longer exists: the write was judged again.
    assert [r["request"]["object"]["spec"]["autoMerge"] for r in webhook.reviews] == [False, True, False]
    last = webhook.reviews[-1]["request"]
    assert last["oldObject"]["metadata"]["labels"] == {"other": "write"}
    assert patched["metadata"]["labels"] == {"other": "write"} and patched["spec"]["autoMerge"] is False


@pytest.mark.parametrize("failure", ["down", "timeout", "foreign-ca", "wrong-uid"])
async def test_failure_policy_decides_when_the_webhook_cannot_answer(
    cluster: Api, webhook: Webhook, failure: str
) -> None:
    config = webhook.config()
    hook = config["webhooks"][0]
    if failure == "down":
        hook["clientConfig"]["url"] = f"https://127.0.0.1:{_closed_port()}/validate"
    elif failure == "timeout":
        hook["timeoutSeconds"] = 1
        webhook.hang = True
    elif failure == "foreign-ca":
        hook["clientConfig"]["caBundle"] = webhook.ca_bundle(other=True)
    else:
        webhook.wrong_uid = True
    await cluster.ok("POST", VWC, config)
    status, body = await cluster.post(BRANCHES, branch("a"))
    assert status == 500, body
    assert body["reason"] == "InternalError"
    prefix = 'Internal error occurred: failed calling webhook "check.oms.dev.test": '
    assert body["message"].startswith(prefix), body["message"]
    detail = body["message"].removeprefix(prefix)
    expected = {
        "down": "connect",
        "timeout": "context deadline exceeded",
        "foreign-ca": "tls: failed to verify certificate: x509: ",
        "wrong-uid": 'got "nope"',
    }[failure]
    assert expected in detail, detail
    assert body["details"]["causes"] == [{"message": body["message"].removeprefix("Internal error occurred: ")}]
    assert (await cluster.get(f"{BRANCHES}/a"))[0] == 404

    await cluster.ok("PATCH", f"{VWC}/oms-test", {"webhooks": [{**hook, "failurePolicy": "Ignore"}]})
    assert (await cluster.post(BRANCHES, branch("a")))[0] == 201


async def test_service_references_fail_per_failure_policy(cluster: Api, webhook: Webhook) -> None:
    config = webhook.config(clientConfig={"service": {"namespace": "oms", "name": "operator", "path": "/v"}})
    await cluster.ok("POST", VWC, config)
    status, body = await cluster.post(BRANCHES, branch("a"))
    assert status == 500 and 'service "oms/operator" cannot be reached' in body["message"]


# ------------------------------------------------------------------------------------------ matching


async def test_selectors_and_rules_choose_what_is_reviewed(cluster: Api, webhook: Webhook) -> None:
    config = webhook.config(
        namespaceSelector={"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
        objectSelector={"matchLabels": {"review": "yes"}},
        rules=[{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["branches", "branches/status", "configmaps"],
                "operations": ["*"], "scope": "Namespaced"}],
    )  # fmt: skip
    await cluster.ok("POST", VWC, config)
    labelled = {**branch("a"), "metadata": {"name": "a", "labels": {"review": "yes"}}}
    await cluster.ok("POST", BRANCHES, labelled)
    assert webhook.reviews == []  # the namespace "default" has no team label
    await cluster.ok("PATCH", f"{NAMESPACES}/default", {"metadata": {"labels": {"team": "a"}}})
    await cluster.ok("POST", BRANCHES, branch("b"))
    assert webhook.reviews == []  # the object has no review label
    await cluster.ok("PATCH", f"{BRANCHES}/a", {"spec": {"autoMerge": False}})
    await cluster.ok("PATCH", f"{BRANCHES}/a/status", {"status": {"phase": "READY"}})
    await cluster.ok("DELETE", f"{BRANCHES}/a")
    seen = [(r["request"]["operation"], r["request"].get("subResource")) for r in webhook.reviews]
    assert seen == [("UPDATE", None), ("UPDATE", "status"), ("DELETE", None)]
    deleted = webhook.reviews[-1]["request"]
    assert deleted["object"] is None and deleted["oldObject"]["metadata"]["name"] == "a"
    assert deleted["options"]["kind"] == "DeleteOptions"
    # An old object matching the selector is enough: removing the label is still reviewed.
    await cluster.ok("POST", BRANCHES, labelled)
    webhook.allowed = False
    status, _ = await cluster.patch(f"{BRANCHES}/a", {"metadata": {"labels": {"review": None}}})
    assert status == 400
    # Cluster-scoped resources are outside a "Namespaced" rule.
    assert (await cluster.post(NAMESPACES, {"metadata": {"name": "other", "labels": {"review": "yes"}}}))[0] == 201
    # Webhook configurations are never reviewed, even by a webhook that asks for everything and refuses it.
    everything = [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "operations": ["*"]}]
    refusing = {**config["webhooks"][0], "rules": everything, "objectSelector": {}, "namespaceSelector": {}}
    reviews = len(webhook.reviews)
    await cluster.ok("PATCH", f"{VWC}/oms-test", {"webhooks": [refusing]})
    await cluster.ok("DELETE", f"{VWC}/oms-test")
    assert len(webhook.reviews) == reviews


# ---------------------------------------------------------------------------------------- real kopf


async def test_kopf_manages_its_configuration_and_its_webhook_judges_writes(
    server: EmbeddedApiServer, cluster: Api, tmp_path: pathlib.Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server.url, insecure=True)

    @kopf.on.validate("oms.dev", "v1alpha1", "branches", id="names", registry=registry)
    def names(spec: kopf.Spec, **_: Any) -> None:
        if spec.get("branchName") == "forbidden":
            raise kopf.AdmissionError("that branch name is reserved", code=422)

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    settings.admission.server = kopf.WebhookServer(
        addr="127.0.0.1", port=_closed_port(), host="127.0.0.1",
        certfile=str(pki.server_cert), pkeyfile=str(pki.server_key), cafile=str(pki.ca),
    )  # fmt: skip
    settings.admission.managed = "oms-branch-operator.oms.dev"
    stop_flag, ready_flag = threading.Event(), threading.Event()
    operator = threading.Thread(
        target=asyncio.run,
        args=(kopf.operator(registry=registry, settings=settings, namespaces=["default"], standalone=True,
                            stop_flag=stop_flag, ready_flag=ready_flag),),
        daemon=True,
    )  # fmt: skip
    operator.start()
    try:
        await wait_for(ready_flag.is_set, 10, "kopf to start")

        async def configured() -> Any:
            status, body = await cluster.get(f"{VWC}/oms-branch-operator.oms.dev")
            return status == 200 and body.get("webhooks")

        [hook] = await wait_for(configured, 20, "kopf to write its ValidatingWebhookConfiguration")
        assert hook["name"] == "names.oms-branch-operator.oms.dev"
        assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:")

        async def webhook_up() -> bool:
            return (await cluster.post(BRANCHES, branch("ok", "fine")))[0] == 201

        await wait_for(webhook_up, 20, "kopf's webhook server to answer")
        status, body = await cluster.post(BRANCHES, branch("bad", "forbidden"))
        assert (status, body["message"]) == (
            422,
            'admission webhook "names.oms-branch-operator.oms.dev" denied the request: that branch name is reserved',
        )
    finally:
        stop_flag.set()
        await asyncio.to_thread(operator.join, 10)
        assert not operator.is_alive()
