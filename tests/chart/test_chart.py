"""The Helm chart, kustomize base, GitOps examples, CRD copies and install docs, checked with the
real ``helm`` and ``kubectl`` binaries (see conftest.py) and the Kubernetes OpenAPI schemas.

What is validated how:
* built-in kinds: ``kubernetes-validate`` (offline OpenAPI schemas, strict: unknown fields fail),
  against the chart's minimum Kubernetes version and the newest one it knows;
* our custom resources: the openAPIV3Schema of the CRDs we ship;
  CEL rules (x-kubernetes-validations) are not evaluated here;
* ServiceMonitor: a small JSON Schema of the fields the chart uses (no Prometheus Operator CRD
  is available offline).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from branch_operator import rbac
from branch_operator.config import Settings

from .conftest import (
    BASE_DIR,
    CHART_CRDS_DIR,
    CHART_DIR,
    DOCS_INSTALL,
    GITOPS_DIR,
    NAMESPACE,
    RELEASE,
    REPO_ROOT,
    TOP_CRDS_DIR,
    Obj,
    Renderer,
    Tools,
    crd_validators,
    iter_pod_specs,
    load_docs,
    run,
)

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - CI installs it
    pytest.fail("kubernetes-validate is not installed; pip install kubernetes-validate", pytrace=False)

CHART_META = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
# The oldest Kubernetes the chart declares, and the newest kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.25", kubernetes_validate.latest_version())
CLUSTER_SCOPED_KINDS = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace",
                        "ValidatingWebhookConfiguration"}
LEASE_NAME = VALUES["leaderElection"]["leaseName"]
LEASE_ROLE = f"{RELEASE}-leader-election"  # fullname for release "oms-branch-operator", plus the suffix

NAMESPACED = {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"], "defaultNamespace": "team-a"}
SCENARIOS: dict[str, Obj] = {
    "defaults": {},
    "namespaced": NAMESPACED,
    "ha": {"replicaCount": 3},
    # The Lease's Role stays in the release namespace, which is not one of the watched ones here.
    "ha-namespaced": {**NAMESPACED, "replicaCount": 2},
    "ha-lease-namespace": {"replicaCount": 2, "leaderElection": {"namespace": "oms-leases"}},
    "single-elected": {"leaderElection": {"enabled": True}},
    "nats-tls-creds": {
        "nats": {
            "url": "tls://nats-0.nats:4222,tls://nats-1.nats:4222",
            "auth": {
                "user": "oms-operator",
                "passwordSecret": {"name": "nats-user", "key": "password"},
                "credsSecret": {"name": "nats-creds", "key": "operator.creds"},
            },
            "tls": {
                "caSecret": {"name": "nats-ca", "key": "ca.crt"},
                "clientCertSecret": {"name": "nats-client-tls", "certKey": "tls.crt", "keyKey": "tls.key"},
            },
        }
    },
    "nats-nkey-token": {
        "nats": {
            "auth": {
                "tokenSecret": {"name": "nats-token", "key": "token"},
                "nkeySeedSecret": {"name": "nats-nkey", "key": "seed.nk"},
            }
        }
    },
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "merge-webhook-notify": {
        "merge": {
            "backend": "webhook",
            "retryIntervalSeconds": 120,
            "webhook": {
                "url": "https://oms.oms.svc.cluster.local/api/v1/merge",
                "timeoutSeconds": 2.5,
                "retries": 6,
                "authHeaderSecret": {"name": "oms-merge-auth", "key": "authorization"},
            },
        },
        "notifications": {
            "blockedAfterSeconds": 0,
            "webhook": {"urlSecret": {"name": "oms-notify-webhook", "key": "url"}, "format": "slack"},
        },
        "metrics": {"port": 9090},
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True},
    },
    "metrics-off": {"metrics": {"enabled": False}},
    "webhook": {"webhook": {"enabled": True}, "replicaCount": 2},
    "webhook-cert-manager": {"webhook": {"enabled": True, "failurePolicy": "Ignore", "certManager": {
        "enabled": True, "issuerRef": {"kind": "ClusterIssuer", "name": "internal-ca"}}}},
    "webhook-cert-manager-self-signed": {"webhook": {"enabled": True, "certManager": {"enabled": True}}},
    "networkpolicy": {
        "networkPolicy": {
            "enabled": True,
            "apiServer": {"cidrs": ["10.0.0.1/32", "fd00::1/128"]},
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        }
    },
    "everything": {
        "replicaCount": 2,
        "image": {"digest": "sha256:" + "a" * 64, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "watchNamespaces": ["oms-system", "team-b"],
        "extraArgs": ["--verbose"],
        "extraEnv": [{"name": "LOG_FORMAT", "value": "json"}],
        "extraVolumes": [{"name": "extra", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
        "podAnnotations": {"example.com/team": "oms"},
        "podLabels": {"team": "oms"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
        "serviceAccount": {"annotations": {"example.com/role": "oms"}},
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "samplePolicy": {"enabled": True},
        "nats": {"stream": {"manage": False}, "delivery": {"maxEventBytes": 1048576, "ackWaitSeconds": 2.5}},
    },
}


def _scenario_values(name: str) -> Obj:
    return SCENARIOS[name]


def _replicas(values: Obj) -> int:
    return int(values.get("replicaCount", VALUES["replicaCount"]))


def _election(values: Obj) -> bool:
    """Leader election on: as set, else (null, the default) exactly when there are several replicas."""
    enabled = values.get("leaderElection", {}).get("enabled", VALUES["leaderElection"]["enabled"])
    return _replicas(values) > 1 if enabled is None else bool(enabled)


def _lease_namespace(values: Obj) -> str:
    return str(values.get("leaderElection", {}).get("namespace") or NAMESPACE)


def _deployment(objs: list[Obj]) -> Obj:
    [deployment] = [o for o in objs if o["kind"] == "Deployment"]
    return deployment


def _container(objs: list[Obj]) -> Obj:
    containers: list[Obj] = _deployment(objs)["spec"]["template"]["spec"]["containers"]
    [container] = containers
    return container


def _env(objs: list[Obj]) -> dict[str, Obj]:
    return {e["name"]: e for e in _container(objs)["env"]}


def _kustomize(tools: Tools, path: Path) -> list[Obj]:
    return load_docs(run(tools, tools.kubectl, "kustomize", str(path)).stdout)


@pytest.fixture(scope="session")
def base_objs(tools: Tools) -> list[Obj]:
    return _kustomize(tools, BASE_DIR)


# manifests/high-availability: the base as the chart renders it with these values.
HA_DIR = BASE_DIR.parent / "high-availability"
HA_VALUES: Obj = {"replicaCount": 2}


@pytest.fixture(scope="session")
def ha_objs(tools: Tools) -> list[Obj]:
    return _kustomize(tools, HA_DIR)


@pytest.fixture(scope="session")
def crd_schemas() -> dict[tuple[str, str], tuple[str, jsonschema.protocols.Validator]]:
    return crd_validators(CHART_CRDS_DIR)


# ------------------------------------------------------------------------------------------ helm lint


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
def test_helm_lint_defaults(tools: Tools, strict: bool) -> None:
    proc = run(tools, tools.helm, "lint", str(CHART_DIR), *(["--strict"] if strict else []))
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_strict_scenarios(tools: Tools, renderer: Renderer, scenario: str) -> None:
    values_file = renderer.values_file(_scenario_values(scenario))
    run(tools, tools.helm, "lint", "--strict", str(CHART_DIR), "--namespace", NAMESPACE, "--values", str(values_file))


# ------------------------------------------------------------------------------ schema validation


PROMETHEUS_RULE_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {"groups": {"type": "array", "minItems": 1}},
        },
    },
}

SERVICE_MONITOR_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^(([0-9]+)(ms|s|m|h|d|w|y))+$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(([0-9]+)(ms|s|m|h|d|w|y))+$"},
                        },
                    },
                },
            },
        },
    },
}


# cert-manager's Issuer and Certificate: the fields the chart uses (no cert-manager CRDs offline).
_CM_META = {"type": "object", "required": ["name", "namespace"]}
CERT_MANAGER_SCHEMAS: dict[str, Obj] = {
    "Issuer": {"type": "object", "required": ["spec"], "properties": {
        "metadata": _CM_META, "spec": {"type": "object", "properties": {"selfSigned": {"type": "object"}},
                                       "required": ["selfSigned"], "additionalProperties": False}}},
    "Certificate": {"type": "object", "required": ["spec"], "properties": {
        "metadata": _CM_META, "spec": {"type": "object", "additionalProperties": False,
                                       "required": ["secretName", "dnsNames", "issuerRef"], "properties": {
            "secretName": {"type": "string", "minLength": 1},
            "dnsNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "issuerRef": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                "name": {"type": "string"}, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                "group": {"type": "string"}}}}}}},
}


def _validate_objects(
    objs: list[Obj], crd_schemas: dict[tuple[str, str], tuple[str, jsonschema.protocols.Validator]]
) -> None:
    for obj in objs:
        where = f"{obj['kind']}/{obj['metadata'].get('name')}"
        key = (obj["apiVersion"], obj["kind"])
        if key in crd_schemas:
            scope, validator = crd_schemas[key]
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
            assert not errors, f"{where} does not match its CRD: {errors}"
            assert ("namespace" in obj["metadata"]) == (scope == "Namespaced"), f"{where}: namespace vs {scope}"
        elif obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        elif obj["kind"] == "PrometheusRule":
            # The rules themselves are checked by promtool (test_prometheusrule.py).
            jsonschema.validate(obj, PROMETHEUS_RULE_SCHEMA)
        elif obj["apiVersion"] == "cert-manager.io/v1":
            jsonschema.validate(obj, CERT_MANAGER_SCHEMAS[obj["kind"]])
            assert "namespace" in obj["metadata"], f"{where}: metadata.namespace"
        else:
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    pytest.fail(f"{where} is invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    pytest.fail(f"{where}: no schema to validate against: {e.message}")
            namespaced = obj["kind"] not in CLUSTER_SCOPED_KINDS
            # Explicit namespaces keep `helm template | kubectl apply` and GitOps tools from
            # dropping namespaced objects into whatever namespace the kube context points at.
            assert ("namespace" in obj["metadata"]) == namespaced, f"{where}: metadata.namespace"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_objects_are_valid(renderer: Renderer, crd_schemas: Any, scenario: str) -> None:
    objs = renderer.render(_scenario_values(scenario), include_crds=True)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "ServiceAccount", "Service", "CustomResourceDefinition"} <= kinds
    _validate_objects(objs, crd_schemas)


def test_kustomize_base_objects_are_valid(base_objs: list[Obj], crd_schemas: Any) -> None:
    _validate_objects(base_objs, crd_schemas)


def test_kustomize_ha_objects_are_valid(ha_objs: list[Obj], crd_schemas: Any) -> None:
    _validate_objects(ha_objs, crd_schemas)


def test_crd_validation_catches_bad_custom_resources(crd_schemas: Any) -> None:
    """The CR checks above are only worth something if they can fail."""
    _, validator = crd_schemas[("oms.dev/v1alpha1", "AutoMergePolicy")]
    good = {"apiVersion": "oms.dev/v1alpha1", "kind": "AutoMergePolicy", "metadata": {"name": "p"}, "spec": {}}
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "spec": {"priority": "high"}})
    assert not validator.is_valid({**good, "spec": {"timeoutHours": 0}})
    assert not validator.is_valid({**good, "spec": {"autoMerge": True}})


# ------------------------------------------------------------------------------- values.schema.json


BAD_VALUES: dict[str, tuple[Obj, str]] = {
    "replicaCount-string": ({"replicaCount": "three"}, "replicaCount"),
    "replicaCount-negative": ({"replicaCount": -1}, "replicaCount"),
    "rbac-scope-enum": ({"rbac": {"scope": "global"}}, "scope"),
    "unknown-top-level-key": ({"replicas": 2}, "replicas"),
    "unknown-nested-key": ({"nats": {"tls": {"caSecret": {"nam": "x", "key": "ca.crt"}}}}, "nam"),
    "inline-nats-password": ({"nats": {"auth": {"password": "hunter2"}}}, "password"),
    "pull-policy-enum": ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "bad-port": ({"healthPort": 0}, "healthPort"),
    "bad-namespace-name": ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    "bad-nats-url": ({"nats": {"url": "http://nats:4222"}}, "url"),
    "bad-stream-name": ({"nats": {"stream": {"name": "FUNNEL.INDEXING"}}}, "name"),
    "bad-probe-key": ({"livenessProbe": {"exec": {"command": ["true"]}}}, "exec"),
    "namespaced-without-namespaces": ({"rbac": {"scope": "namespaced"}}, "watchNamespaces"),
    # kopf peering is gone: a values file still configuring it must fail, not be silently ignored.
    "peering-removed": ({"replicaCount": 2, "peering": {"name": "oms-peers"}}, "'peering' not allowed"),
    # A Deployment's pods share one template: a fixed identity would be every replica's.
    "fixed-lease-identity": ({"leaderElection": {"identity": "replica-x"}}, "'identity' not allowed"),
    "election-enabled-string": ({"leaderElection": {"enabled": "yes"}}, "enabled"),
    # Cross-field checks done by the templates (`fail`), not the schema.
    "namespaced-default-not-watched": (
        {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a"]},
        "must be one of watchNamespaces",
    ),
    "password-without-user": ({"nats": {"auth": {"passwordSecret": {"name": "s", "key": "p"}}}}, "nats.auth.user"),
    "creds-and-nkey": (
        {"nats": {"auth": {"credsSecret": {"name": "a", "key": "c"}, "nkeySeedSecret": {"name": "b", "key": "s"}}}},
        "only one of",
    ),
    "servicemonitor-without-service": (
        {"serviceMonitor": {"enabled": True}, "service": {"enabled": False}},
        "service.enabled",
    ),
    "prometheusrule-without-metrics": (
        {"prometheusRule": {"enabled": True}, "metrics": {"enabled": False}}, "prometheusRule.enabled needs metrics",
    ),
    "replicas-without-election": (
        {"replicaCount": 2, "leaderElection": {"enabled": False}}, "replicaCount=2 needs leader election",
    ),
    "rolling-update-without-election": ({"strategy": {"type": "RollingUpdate"}}, "needs leader election"),
    "election-timings": (
        {"leaderElection": {"renewDeadlineSeconds": 0.5}}, "leaseDurationSeconds > renewDeadlineSeconds > 1.1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_rejected(renderer: Renderer, case: str) -> None:
    values, fragment = BAD_VALUES[case]
    proc = renderer.template_proc(values)
    assert proc.returncode != 0, f"helm template accepted {values}"
    assert fragment in proc.stderr, proc.stderr


def test_set_string_replica_count_is_rejected(renderer: Renderer) -> None:
    proc = renderer.template_proc(None, "--set", "replicaCount=three")
    assert proc.returncode != 0
    assert "replicaCount" in proc.stderr


# ---------------------------------------------------------------------------------- pod security


def _assert_restricted(where: str, pod: Obj) -> None:
    psc = pod.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccompProfile"
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(flag), f"{where}: {flag}"
    assert not any("hostPath" in v for v in pod.get("volumes", [])), f"{where}: hostPath volume"
    tmp_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for c in [*pod["containers"], *pod.get("initContainers", [])]:
        sc = c.get("securityContext", {})
        cw = f"{where} container {c['name']}"
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cw}: runAsNonRoot"
        assert sc.get("runAsUser", psc.get("runAsUser")) == 65532, f"{cw}: runAsUser"
        assert sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem"
        assert sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation"
        assert sc.get("privileged", False) is False, f"{cw}: privileged"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: capabilities.drop"
        assert not sc.get("capabilities", {}).get("add"), f"{cw}: capabilities.add"
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", f"{cw}: seccompProfile"
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and tmp[0]["name"] in tmp_volumes, f"{cw}: writable emptyDir at /tmp"
        assert not tmp[0].get("readOnly"), f"{cw}: /tmp must be writable"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pod_templates_are_restricted(renderer: Renderer, scenario: str) -> None:
    pods = list(iter_pod_specs(renderer.render(_scenario_values(scenario))))
    assert pods
    for where, pod in pods:
        _assert_restricted(where, pod)


@pytest.mark.parametrize("folder", ["base", "high-availability"])
def test_kustomize_pods_are_restricted(base_objs: list[Obj], ha_objs: list[Obj], folder: str) -> None:
    pods = list(iter_pod_specs(base_objs if folder == "base" else ha_objs))
    assert pods
    for where, pod in pods:
        _assert_restricted(where, pod)


# ----------------------------------------------------------------------------------------- RBAC


Grant = tuple[str, str, str]


def _grants(rules: tuple[rbac.Rule, ...]) -> set[Grant]:
    return {(r.api_group, r.resource, verb) for r in rules for verb in r.verbs}


def _rendered_grants(role: Obj) -> set[Grant]:
    grants: set[Grant] = set()
    for rule in role.get("rules", []):
        where = f"{role['kind']}/{role['metadata']['name']}"
        assert not rule.get("nonResourceURLs"), f"{where}: unexpected {rule}"
        # Names narrow only the webhook certificate's Secret and configuration (rbac.WEBHOOK_*_RULES).
        assert not rule.get("resourceNames") or set(rule["resources"]) <= {
            "secrets", "validatingwebhookconfigurations"}, f"{where}: unexpected {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"{where}: wildcard in {rule}"
                    grants.add((group, resource, verb))
    return grants


def _cluster_scoped_resources() -> set[tuple[str, str]]:
    scoped = set()
    for path in CHART_CRDS_DIR.glob("*.yaml"):
        for crd in load_docs(path.read_text()):
            if crd["spec"]["scope"] == "Cluster":
                scoped.add((crd["spec"]["group"], crd["spec"]["names"]["plural"]))
    return scoped


def _expected_grants(values: Obj) -> dict[str, set[Grant]]:
    """What the operator's ServiceAccount may do where: "" is cluster-wide, anything else a namespace."""
    scope = values.get("rbac", {}).get("scope", VALUES["rbac"]["scope"])
    expected: dict[str, set[Grant]]
    if scope == "cluster":
        expected = {"": _grants(rbac.RULES)}
    else:
        # A Role cannot grant a cluster-scoped resource.
        scoped = _cluster_scoped_resources()
        namespaced = {g for g in _grants(rbac.RULES) if (g[0], g[1].split("/")[0]) not in scoped}
        expected = {ns: set(namespaced) for ns in values["watchNamespaces"]}
    webhook = values.get("webhook", {})
    if webhook.get("enabled") and not webhook.get("certManager", {}).get("enabled"):
        expected.setdefault(NAMESPACE, set()).update(_grants(rbac.WEBHOOK_CERTIFICATE_RULES))
        expected.setdefault("", set()).update(_grants(rbac.WEBHOOK_CONFIGURATION_RULES))
    if _election(values):
        # Only in the Lease's namespace: a cluster-wide grant would let the operator rewrite any Lease.
        expected.setdefault(_lease_namespace(values), set()).update(_grants(rbac.LEADER_ELECTION_RULES))
    return expected


def _granted(objs: list[Obj]) -> dict[str, set[Grant]]:
    """The same, from the rendered bindings and the roles they point at; every role must be bound."""
    sa = _deployment(objs)["spec"]["template"]["spec"]["serviceAccountName"]
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}
    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
             for o in objs if o["kind"] in ("ClusterRole", "Role")}
    granted: dict[str, set[Grant]] = {}
    bound = set()
    for binding in (o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        where = binding["metadata"].get("namespace", "")
        assert binding["subjects"] == [subject], binding["metadata"]["name"]
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        key = (ref["kind"], "" if ref["kind"] == "ClusterRole" else where, ref["name"])
        assert key in roles, f"{binding['kind']}/{binding['metadata']['name']} points at a missing {key}"
        bound.add(key)
        granted.setdefault(where, set()).update(_rendered_grants(roles[key]))
    assert bound == set(roles), f"roles nobody is bound to: {sorted(set(roles) - bound)}"
    return granted


def _assert_rbac(objs: list[Obj], values: Obj) -> None:
    assert _granted(objs) == _expected_grants(values)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rbac_grants_exactly_rbac_py(renderer: Renderer, scenario: str) -> None:
    values = _scenario_values(scenario)
    _assert_rbac(renderer.render(values), values)


def test_kustomize_base_rbac_grants_exactly_rbac_py(base_objs: list[Obj]) -> None:
    _assert_rbac(base_objs, {})


def test_kustomize_ha_rbac_grants_exactly_rbac_py(ha_objs: list[Obj]) -> None:
    _assert_rbac(ha_objs, HA_VALUES)


def test_rbac_check_detects_extra_and_missing_grants(renderer: Renderer) -> None:
    objs = renderer.render({})
    [role] = [o for o in objs if o["kind"] == "ClusterRole"]
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    with pytest.raises(AssertionError):
        _assert_rbac(objs, {})
    role["rules"] = role["rules"][1:-1]
    with pytest.raises(AssertionError):
        _assert_rbac(objs, {})


def test_rbac_check_detects_a_cluster_wide_lease_grant(renderer: Renderer) -> None:
    values = {"replicaCount": 2}
    objs = renderer.render(values)
    _assert_rbac(objs, values)
    [cluster_role] = [o for o in objs if o["kind"] == "ClusterRole"]
    [lease_role] = [o for o in objs if o["kind"] == "Role"]
    cluster_role["rules"] += lease_role["rules"]
    with pytest.raises(AssertionError):
        _assert_rbac(objs, values)
    objs = [o for o in objs if o is not lease_role]  # the RoleBinding now points at nothing
    with pytest.raises(AssertionError):
        _assert_rbac(objs, values)


# ------------------------------------------------------------------------ HA / leader election wiring


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_leader_election_follows_replica_count(renderer: Renderer, scenario: str) -> None:
    values = _scenario_values(scenario)
    objs = renderer.render(values)
    env = _env(objs)
    deployment = _deployment(objs)
    lease_rbac = [o for o in objs if o["metadata"]["name"] == LEASE_ROLE]
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert deployment["spec"]["replicas"] == _replicas(values)
    # kopf peering is gone in every mode: every replica runs kopf standalone.
    assert "OMS_PEERING" not in env
    assert not [o for o in objs if o["apiVersion"].startswith("kopf.dev/")]
    if _election(values):
        ns = _lease_namespace(values)
        election_env = {n: v for n, v in env.items() if n.startswith("OMS_LEADER_ELECTION")}
        assert election_env == {
            "OMS_LEADER_ELECTION": {"name": "OMS_LEADER_ELECTION", "value": "true"},
            "OMS_LEADER_ELECTION_NAMESPACE": {"name": "OMS_LEADER_ELECTION_NAMESPACE", "value": ns},
            "OMS_LEADER_ELECTION_LEASE_NAME": {"name": "OMS_LEADER_ELECTION_LEASE_NAME", "value": LEASE_NAME},
            # Unique per pod, also between the old and the new pod of a rollout.
            "OMS_LEADER_ELECTION_IDENTITY": {
                "name": "OMS_LEADER_ELECTION_IDENTITY", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            "OMS_LEADER_ELECTION_LEASE_DURATION_SECONDS": {
                "name": "OMS_LEADER_ELECTION_LEASE_DURATION_SECONDS", "value": "10",
            },
            "OMS_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": {
                "name": "OMS_LEADER_ELECTION_RENEW_DEADLINE_SECONDS", "value": "7",
            },
            "OMS_LEADER_ELECTION_RETRY_PERIOD_SECONDS": {
                "name": "OMS_LEADER_ELECTION_RETRY_PERIOD_SECONDS", "value": "0.5",
            },
        }
        # The new pod is a warm standby before the old one stops and hands the Lease back.
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
        [role] = [o for o in lease_rbac if o["kind"] == "Role"]
        [binding] = [o for o in lease_rbac if o["kind"] == "RoleBinding"]
        assert len(lease_rbac) == 2 and role["metadata"]["namespace"] == binding["metadata"]["namespace"] == ns
        assert _rendered_grants(role) == _grants(rbac.LEADER_ELECTION_RULES)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEASE_ROLE}
        sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    else:
        assert not [n for n in env if n.startswith("OMS_LEADER_ELECTION")]
        # Two unelected operators must never overlap during a rollout.
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert not lease_rbac
    if _replicas(values) > 1:
        [pdb] = pdbs
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    else:
        assert not pdbs  # minAvailable 1 of 1 would block every node drain


# --------------------------------------------------------------------------------- wiring checks


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_objects_are_wired_together(renderer: Renderer, scenario: str) -> None:
    objs = renderer.render(_scenario_values(scenario))
    deployment = _deployment(objs)
    container = _container(objs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert container["command"] == ["branch-operator"] and container["args"][0] == "run"

    [port] = [p for p in container["ports"] if p["name"] == "http"]
    assert _env(objs)["OMS_HEALTH_PORT"]["value"] == str(port["containerPort"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert set(mounts) <= set(volumes)
    # Every *_FILE setting must point into a mounted volume.
    for name, var in _env(objs).items():
        if name.endswith("_FILE"):
            assert any(var["value"].startswith(m["mountPath"] + "/") for m in mounts.values()), name

    # /metrics is on the health port ("http") unless metrics.port gives it a container port of its own.
    metrics_port = "metrics" if _scenario_values(scenario).get("metrics", {}).get("port") else "http"
    webhook = bool(_scenario_values(scenario).get("webhook", {}).get("enabled"))
    assert {p["name"] for p in container["ports"]} == {"http", metrics_port} | ({"webhook"} if webhook else set())
    services = [o for o in objs if o["kind"] == "Service" and not o["metadata"]["name"].endswith("-webhook")]
    for svc in services:
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert all(p["targetPort"] == metrics_port for p in svc["spec"]["ports"])
    for svc in (o for o in objs if o["kind"] == "Service" and o not in services):
        assert svc["spec"]["selector"].items() <= pod_labels.items() and webhook
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["webhook"]
    for vwc in (o for o in objs if o["kind"] == "ValidatingWebhookConfiguration"):
        refs = [w["clientConfig"]["service"] for w in vwc["webhooks"]]
        assert {(r["name"], r["namespace"]) for r in refs} == {(f"{RELEASE}-webhook", NAMESPACE)}
        # kopf serves each handler at /<handler id>.
        assert sorted(r["path"] for r in refs) == ["/validate-automergepolicies", "/validate-branches"]
        assert all(w["sideEffects"] == "None" for w in vwc["webhooks"])
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        [svc] = services
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
        assert all(e["path"] == "/metrics" for e in sm["spec"]["endpoints"])
    for np in (o for o in objs if o["kind"] == "NetworkPolicy"):
        assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert [p["port"] for r in np["spec"]["ingress"] for p in r["ports"]] == sorted({"http", metrics_port})
        egress_ports = {p["port"] for r in np["spec"]["egress"] for p in r["ports"]}
        assert {4222, 443, 6443, 53} <= egress_ports


# ------------------------------------------------------------------------------ operator settings


def _settings_env_names() -> dict[str, str]:
    """Environment variable -> Settings field, as pydantic-settings resolves them."""
    names: dict[str, str] = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names.update({c.upper(): field for c in choices if isinstance(c, str) and c.isupper()})
        else:
            names[f"OMS_{field.upper()}"] = field
    return names


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_env_vars_are_operator_settings(renderer: Renderer, scenario: str) -> None:
    known = _settings_env_names()
    extra = {e["name"] for e in _scenario_values(scenario).get("extraEnv", [])}
    for name in _env(renderer.render(_scenario_values(scenario))):
        if name.startswith("OMS_") or name.startswith("NATS_") or name == "POD_NAMESPACE":
            assert name in known, f"{name} is not a branch_operator.config.Settings field"
        else:
            assert name in extra | {"HOME"}, f"unexpected env var {name}"


@pytest.mark.parametrize("replicas", [1, 2], ids=["single", "ha"])
def test_chart_defaults_equal_operator_defaults(
    renderer: Renderer, monkeypatch: pytest.MonkeyPatch, replicas: int
) -> None:
    """values.yaml mirrors Settings' defaults, so installing with defaults changes no behaviour; with several
    replicas, leader election is on with the operator's own timings."""
    env = _env(renderer.render({"replicaCount": replicas} if replicas > 1 else {}))
    for name in list(_settings_env_names()):
        monkeypatch.delenv(name, raising=False)
    builtin = Settings().model_dump()
    for name, var in env.items():
        if "value" in var:
            monkeypatch.setenv(name, var["value"])
    from_chart = Settings().model_dump()
    # The one intended difference: localhost means nothing inside a cluster.
    assert from_chart.pop("nats_url") == VALUES["nats"]["url"]
    builtin.pop("nats_url")
    if replicas > 1:
        assert (from_chart.pop("leader_election"), builtin.pop("leader_election")) == (True, False)
        # The release namespace, which is also POD_NAMESPACE's (the operator's own fallback).
        assert from_chart.pop("leader_election_namespace") == NAMESPACE
        builtin.pop("leader_election_namespace")
    assert from_chart == builtin


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_env_parses_as_settings(renderer: Renderer, scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(renderer.render(_scenario_values(scenario)))
    for name in list(_settings_env_names()):
        monkeypatch.delenv(name, raising=False)
    for name, var in env.items():
        if "value" in var:
            monkeypatch.setenv(name, var["value"])
    settings = Settings()
    assert settings.namespaces == _scenario_values(scenario).get("watchNamespaces", [])


# Every Settings field -> (the chart value that sets it, values that set it to something other than the
# operator's default). A field the chart deliberately does not expose goes in SETTINGS_NOT_IN_CHART with
# the reason instead (extraEnv still reaches it). A new Settings field fails the test until it is in one.
def _secret(name: str, key: str) -> Obj:
    return {"name": name, "key": key}


SETTINGS_IN_CHART: dict[str, tuple[str, Obj]] = {
    "nats_url": ("nats.url", {"nats": {"url": "tls://nats-0.example:4222"}}),
    "nats_user": ("nats.auth.user", {"nats": {"auth": {"user": "oms-operator"}}}),
    "nats_password": (
        "nats.auth.passwordSecret",
        {"nats": {"auth": {"user": "oms", "passwordSecret": _secret("nats-user", "password")}}},
    ),
    "nats_token": ("nats.auth.tokenSecret", {"nats": {"auth": {"tokenSecret": _secret("nats-token", "token")}}}),
    "nats_creds_file": ("nats.auth.credsSecret", {"nats": {"auth": {"credsSecret": _secret("nats-creds", "x.creds")}}}),
    "nats_nkey_seed_file": (
        "nats.auth.nkeySeedSecret", {"nats": {"auth": {"nkeySeedSecret": _secret("nats-nkey", "seed.nk")}}},
    ),
    "nats_tls_ca_file": ("nats.tls.caSecret", {"nats": {"tls": {"caSecret": _secret("nats-ca", "ca.crt")}}}),
    "nats_tls_cert_file": (
        "nats.tls.clientCertSecret",
        {"nats": {"tls": {"clientCertSecret": {"name": "nats-client", "certKey": "tls.crt", "keyKey": "tls.key"}}}},
    ),
    "nats_tls_key_file": (
        "nats.tls.clientCertSecret",
        {"nats": {"tls": {"clientCertSecret": {"name": "nats-client", "certKey": "tls.crt", "keyKey": "tls.key"}}}},
    ),
    "nats_connect_timeout": ("nats.connectTimeoutSeconds", {"nats": {"connectTimeoutSeconds": 12}}),
    "stream": ("nats.stream.name", {"nats": {"stream": {"name": "FUNNEL_X"}}}),
    "stream_subjects": ("nats.stream.subjects", {"nats": {"stream": {"subjects": "funnel.x.>"}}}),
    "manage_streams": ("nats.stream.manage", {"nats": {"stream": {"manage": False}}}),
    "consumer_started": ("nats.consumers.started", {"nats": {"consumers": {"started": "c-s"}}}),
    "consumer_completed": ("nats.consumers.completed", {"nats": {"consumers": {"completed": "c-c"}}}),
    "consumer_failed": ("nats.consumers.failed", {"nats": {"consumers": {"failed": "c-f"}}}),
    "consumer_other": ("nats.consumers.other", {"nats": {"consumers": {"other": "c-o"}}}),
    "subject_started": ("nats.subjects.started", {"nats": {"subjects": {"started": "x.started"}}}),
    "subject_completed": ("nats.subjects.completed", {"nats": {"subjects": {"completed": "x.completed"}}}),
    "subject_failed": ("nats.subjects.failed", {"nats": {"subjects": {"failed": "x.failed"}}}),
    "ack_wait_seconds": ("nats.delivery.ackWaitSeconds", {"nats": {"delivery": {"ackWaitSeconds": 45}}}),
    "max_deliver": ("nats.delivery.maxDeliver", {"nats": {"delivery": {"maxDeliver": 3}}}),
    "early_event_retries": ("nats.delivery.earlyEventRetries", {"nats": {"delivery": {"earlyEventRetries": 7}}}),
    "fetch_batch": ("nats.delivery.fetchBatch", {"nats": {"delivery": {"fetchBatch": 8}}}),
    "max_event_bytes": ("nats.delivery.maxEventBytes", {"nats": {"delivery": {"maxEventBytes": 4096}}}),
    "audit_stream": ("nats.outputs.audit", {"nats": {"outputs": {"audit": {"stream": "A", "subject": "a.b"}}}}),
    "audit_subject": ("nats.outputs.audit", {"nats": {"outputs": {"audit": {"stream": "A", "subject": "a.b"}}}}),
    "branch_events_stream": (
        "nats.outputs.branchEvents", {"nats": {"outputs": {"branchEvents": {"stream": "B", "mergedSubject": "b.m"}}}},
    ),
    "merged_subject": (
        "nats.outputs.branchEvents", {"nats": {"outputs": {"branchEvents": {"stream": "B", "mergedSubject": "b.m"}}}},
    ),
    "notifications_stream": (
        "nats.outputs.notifications", {"nats": {"outputs": {"notifications": {"stream": "NOTIFY", "subject": "n.b"}}}},
    ),
    "notifications_subject": (
        "nats.outputs.notifications", {"nats": {"outputs": {"notifications": {"stream": "NOTIFY", "subject": "n.b"}}}},
    ),
    "dlq_stream": (
        "nats.outputs.deadLetter", {"nats": {"outputs": {"deadLetter": {"stream": "D", "subjectPrefix": "d"}}}},
    ),
    "dlq_subject_prefix": (
        "nats.outputs.deadLetter", {"nats": {"outputs": {"deadLetter": {"stream": "D", "subjectPrefix": "d"}}}},
    ),
    "default_namespace": ("defaultNamespace", {"defaultNamespace": "team-a"}),
    "watch_namespaces": ("watchNamespaces", {"watchNamespaces": ["team-a", "team-b"]}),
    "operator_id": ("operatorId", {"operatorId": "oms-operator-2"}),
    "reconcile_interval_seconds": ("reconcileIntervalSeconds", {"reconcileIntervalSeconds": 120}),
    "leader_election": ("leaderElection.enabled", {"leaderElection": {"enabled": True}}),
    "leader_election_namespace": (
        "leaderElection.namespace", {"replicaCount": 2, "leaderElection": {"namespace": "oms-ha"}},
    ),
    "leader_election_lease_name": (
        "leaderElection.leaseName", {"replicaCount": 2, "leaderElection": {"leaseName": "oms-leader"}},
    ),
    "leader_election_lease_duration_seconds": (
        "leaderElection.leaseDurationSeconds", {"replicaCount": 2, "leaderElection": {"leaseDurationSeconds": 15}},
    ),
    "leader_election_renew_deadline_seconds": (
        "leaderElection.renewDeadlineSeconds", {"replicaCount": 2, "leaderElection": {"renewDeadlineSeconds": 5}},
    ),
    "leader_election_retry_period_seconds": (
        "leaderElection.retryPeriodSeconds", {"replicaCount": 2, "leaderElection": {"retryPeriodSeconds": 2}},
    ),
    "merge_backend": ("merge.backend", {"merge": {"backend": "webhook", "webhook": {"url": "https://oms/merge"}}}),
    "merge_webhook_url": ("merge.webhook.url", {"merge": {"webhook": {"url": "https://oms/merge"}}}),
    "merge_webhook_timeout_seconds": ("merge.webhook.timeoutSeconds", {"merge": {"webhook": {"timeoutSeconds": 3}}}),
    "merge_webhook_retries": ("merge.webhook.retries", {"merge": {"webhook": {"retries": 0}}}),
    "merge_webhook_backoff_seconds": ("merge.webhook.backoffSeconds", {"merge": {"webhook": {"backoffSeconds": 0.5}}}),
    "merge_webhook_backoff_max_seconds": (
        "merge.webhook.backoffMaxSeconds", {"merge": {"webhook": {"backoffMaxSeconds": 60}}},
    ),
    "merge_webhook_auth_header_file": (
        "merge.webhook.authHeaderSecret",
        {"merge": {"webhook": {"authHeaderSecret": _secret("oms-merge-auth", "authorization")}}},
    ),
    "merge_retry_interval_seconds": ("merge.retryIntervalSeconds", {"merge": {"retryIntervalSeconds": 30}}),
    "stall_warning_ms": ("stallWarningMs", {"stallWarningMs": 250}),
    "log_format": ("logFormat", {"logFormat": "json"}),
    "webhook_enabled": ("webhook.enabled", {"webhook": {"enabled": True}}),
    "webhook_port": ("webhook.port", {"webhook": {"enabled": True, "port": 10250}}),
    "webhook_hostnames": ("webhook.enabled", {"webhook": {"enabled": True}}),
    "webhook_certificate_store": ("webhook.certManager.secretName",
                                  {"webhook": {"enabled": True, "certManager": {"secretName": "oms-webhook-tls"}}}),
    "webhook_ca_bundle_configuration": ("webhook.enabled", {"webhook": {"enabled": True}}),
    **{f"webhook_tls_{part}_file": ("webhook.certManager.enabled", {"webhook": {
        "enabled": True, "certManager": {"enabled": True, "secretName": "oms-webhook-tls"}}})
       for part in ("cert", "key", "ca")},
    "health_port": ("healthPort", {"healthPort": 8081}),
    "metrics_enabled": ("metrics.enabled", {"metrics": {"enabled": False}}),
    "metrics_port": ("metrics.port", {"metrics": {"port": 9090}}),
    "notify_webhook_url": (
        "notifications.webhook.urlSecret",
        {"notifications": {"webhook": {"urlSecret": _secret("oms-notify-webhook", "url")}}},
    ),
    "notify_webhook_format": ("notifications.webhook.format", {"notifications": {"webhook": {"format": "slack"}}}),
    "notify_webhook_retries": ("notifications.webhook.retries", {"notifications": {"webhook": {"retries": 1}}}),
    "notify_webhook_timeout_seconds": (
        "notifications.webhook.timeoutSeconds", {"notifications": {"webhook": {"timeoutSeconds": 9}}},
    ),
    "notify_blocked_after_seconds": (
        "notifications.blockedAfterSeconds", {"notifications": {"blockedAfterSeconds": 600}},
    ),
}

# Settings the chart deliberately does not expose, with the reason. Keep reasons concrete (e.g. "internal
# tuning, tests only").
SETTINGS_NOT_IN_CHART: dict[str, str] = {
    "webhook_managed_configuration": "kopf's managed mode, for the embedded environment: the chart ships its "
    "own ValidatingWebhookConfiguration (failurePolicy, timeout, namespaceSelector) instead",
    "leader_election_identity": "always the pod's name (downward API): all pods of a Deployment share one "
    "template, so a fixed identity would let every replica, and the old and new pod of a rollout, believe "
    "it holds the Lease",
}


def _env_names_of(field: str) -> set[str]:
    return {name for name, f in _settings_env_names().items() if f == field}


def test_every_setting_is_a_chart_value_or_allowlisted() -> None:
    fields = set(Settings.model_fields)
    mapped, allowed = set(SETTINGS_IN_CHART), set(SETTINGS_NOT_IN_CHART)
    assert not mapped & allowed, f"both mapped and allowlisted: {sorted(mapped & allowed)}"
    missing = sorted(fields - mapped - allowed)
    assert not missing, (
        f"Settings fields neither settable through the chart nor allowlisted: {missing} "
        f"(env {sorted(n for f in missing for n in _env_names_of(f))}); add a value to values.yaml, "
        "values.schema.json, templates/deployment.yaml and docs/installation.md, or allowlist it with a reason"
    )
    assert not (mapped | allowed) - fields, f"stale entries: {sorted((mapped | allowed) - fields)}"
    assert all(reason.strip() for reason in SETTINGS_NOT_IN_CHART.values())
    leaves = _leaf_paths(VALUES)
    documented = _documented_keys()
    for field, (path, _) in SETTINGS_IN_CHART.items():
        assert path in leaves, f"{field}: {path} is not in values.yaml"
        ancestors = {".".join(path.split(".")[:i]) for i in range(1, path.count(".") + 2)}
        # Its own row, or a row for the object holding it (e.g. `nats.consumers` covers all three names).
        assert (ancestors - {path.split(".")[0]}) & documented or path in documented, (
            f"{field}: {path} has no row in docs/installation.md"
        )


@pytest.mark.parametrize("field", sorted(SETTINGS_IN_CHART))
def test_chart_value_reaches_setting(
    renderer: Renderer, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting the named chart value renders the field's env var, and the operator reads a non-default
    value from it (secrets: a secretKeyRef to the named Secret, or a file in that Secret's read-only mount)."""
    _, values = SETTINGS_IN_CHART[field]
    objs = renderer.render(values)
    env = _env(objs)
    # POD_NAMESPACE (downward API) is always rendered as default_namespace's fallback; the value sets the other.
    rendered = sorted(_env_names_of(field) & set(env) - {"POD_NAMESPACE"})
    assert len(rendered) == 1, f"{field}: expected one of {sorted(_env_names_of(field))} for {values}, got {rendered}"
    [name] = rendered
    var = env[name]
    if "valueFrom" in var:
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] in json.dumps(values) and ref["key"] in json.dumps(values)
        return
    if name.endswith("_FILE"):
        pod = _deployment(objs)["spec"]["template"]["spec"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        [mount] = [m for m in _container(objs)["volumeMounts"] if var["value"].startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] and secrets[mount["name"]] in json.dumps(values)
    for other in list(_settings_env_names()):
        monkeypatch.delenv(other, raising=False)
    default = getattr(Settings(), field)
    for n, v in env.items():
        if "value" in v:
            monkeypatch.setenv(n, v["value"])
    assert getattr(Settings(), field) != default, f"{field}: {values} did not change it"


# -------------------------------------------------------------------------------------- secrets


# NOTIFY_WEBHOOK_URL: a Slack incoming-webhook URL is itself a credential; AUTH: the merge webhook's header.
SENSITIVE = re.compile(r"PASSWORD|TOKEN|SECRET|CREDS|SEED|KEY|AUTH|NOTIFY_WEBHOOK_URL", re.IGNORECASE)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_secret_values_inline(renderer: Renderer, scenario: str) -> None:
    objs = renderer.render(_scenario_values(scenario))
    assert not [o for o in objs if o["kind"] == "Secret"], "the chart must only reference existing Secrets"
    pod = _deployment(objs)["spec"]["template"]["spec"]
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    container = _container(objs)
    secret_mounts = [m for m in container["volumeMounts"] if m["name"] in secret_volumes]
    assert all(m.get("readOnly") for m in secret_mounts)
    for var in container["env"]:
        if not SENSITIVE.search(var["name"]):
            continue
        if var["name"].endswith("_FILE"):
            assert any(var["value"].startswith(m["mountPath"] + "/") for m in secret_mounts), var
        else:
            assert "value" not in var and "secretKeyRef" in var.get("valueFrom", {}), var


# ---------------------------------------------------------------------------- CRD copies in sync


def _yaml_files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.yaml"))}


@pytest.mark.parametrize("copy_dir", [CHART_CRDS_DIR, BASE_DIR / "crds"], ids=["chart", "kustomize-base"])
def test_crd_copies_identical_to_top_level(copy_dir: Path) -> None:
    top = _yaml_files(TOP_CRDS_DIR)
    assert {"oms.dev_branches.yaml", "oms.dev_branchlocks.yaml", "oms.dev_automergepolicies.yaml"} <= set(top)
    copies = _yaml_files(copy_dir)
    stale = sorted(name for name in top if copies.get(name) != top[name])
    assert not stale, (
        f"{copy_dir.relative_to(REPO_ROOT)} differs from crds/ for {stale}; "
        f"run: cp crds/*.yaml {CHART_CRDS_DIR.relative_to(REPO_ROOT)}/ && cp crds/*.yaml manifests/base/crds/"
    )
    # Only ours: kopf's peering CRDs are no longer shipped (several replicas elect a leader by Lease).
    assert set(copies) == set(top)


@pytest.mark.parametrize("crd_dir", [CHART_CRDS_DIR, BASE_DIR / "crds"], ids=["chart", "kustomize-base"])
def test_no_kopf_peering_crds_shipped(crd_dir: Path) -> None:
    groups = {crd["spec"]["group"] for p in crd_dir.glob("*.yaml") for crd in load_docs(p.read_text())}
    assert groups == {"oms.dev"}, groups
    assert not [r for r in (*rbac.RULES, *rbac.LEADER_ELECTION_RULES) if r.api_group == "kopf.dev"]


# ------------------------------------------------------------------------------- kustomize base


def _normalised(obj: Obj) -> Obj:
    # The only intended differences: Helm's own labels vs kustomize's managed-by.
    labels = obj["metadata"].get("labels", {})
    for key in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
        labels.pop(key, None)
    return obj


@pytest.mark.parametrize("folder", ["base", "high-availability"])
def test_kustomize_matches_chart(renderer: Renderer, base_objs: list[Obj], ha_objs: list[Obj], folder: str) -> None:
    """manifests/base is the chart's defaults; manifests/high-availability is the chart with HA_VALUES."""
    def key(o: Obj) -> tuple[str, str, str]:
        return (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", ""))

    values, objs = ({}, base_objs) if folder == "base" else (HA_VALUES, ha_objs)
    chart = {key(o): _normalised(o) for o in renderer.render(values, include_crds=True)}
    kustomized = {key(o): _normalised(o) for o in objs}
    assert sorted(kustomized) == sorted(chart)
    for k in chart:
        assert kustomized[k] == chart[k], f"manifests/{folder} differs from the chart's {k} with {values}"


# ------------------------------------------------------------------------------- GitOps examples


def _argo_applications() -> list[Obj]:
    return [
        o
        for p in sorted((GITOPS_DIR / "argocd").glob("*.yaml"))
        for o in load_docs(p.read_text())
        if o.get("kind") == "Application"
    ]


def test_gitops_folders_build(tools: Tools) -> None:
    for folder in ("argocd", "flux", "policies"):
        assert _kustomize(tools, GITOPS_DIR / folder), folder


def test_gitops_policies_are_valid(tools: Tools, crd_schemas: Any) -> None:
    policies = _kustomize(tools, GITOPS_DIR / "policies")
    assert policies and {p["kind"] for p in policies} == {"AutoMergePolicy"}
    _validate_objects(policies, crd_schemas)
    assert len({p["metadata"]["name"] for p in policies}) == len(policies)


def test_argocd_applications_point_at_this_repository(renderer: Renderer) -> None:
    apps = _argo_applications()
    paths = {app["spec"]["source"]["path"] for app in apps}
    assert paths == {"helm/oms-branch-operator", "manifests/gitops/policies"}
    for app in apps:
        assert app["apiVersion"] == "argoproj.io/v1alpha1"
        assert (REPO_ROOT / app["spec"]["source"]["path"]).is_dir()
        helm = app["spec"]["source"].get("helm")
        if helm:
            proc = renderer.template_proc(helm.get("valuesObject", {}))
            assert proc.returncode == 0, f"Argo CD values rejected by the chart:\n{proc.stderr}"


def test_flux_helmrelease_matches_chart(tools: Tools, renderer: Renderer) -> None:
    objs = _kustomize(tools, GITOPS_DIR / "flux")
    [repo] = [o for o in objs if o["kind"] == "HelmRepository"]
    [release] = [o for o in objs if o["kind"] == "HelmRelease"]
    chart = release["spec"]["chart"]["spec"]
    assert chart["chart"] == CHART_META["name"]
    assert (chart["sourceRef"]["kind"], chart["sourceRef"]["name"]) == ("HelmRepository", repo["metadata"]["name"])
    assert chart["sourceRef"]["namespace"] == repo["metadata"]["namespace"]
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "CreateReplace"
    proc = renderer.template_proc(release["spec"].get("values", {}))
    assert proc.returncode == 0, f"Flux values rejected by the chart:\n{proc.stderr}"


# -------------------------------------------------------------------------------- docs & metadata


def _leaf_paths(values: Obj, prefix: str = "") -> set[str]:
    paths = set()
    for k, v in values.items():
        path = f"{prefix}{k}"
        paths.add(path)
        if isinstance(v, dict) and v:
            paths |= _leaf_paths(v, f"{path}.")
    return paths


def _documented_keys() -> set[str]:
    keys = set()
    for line in DOCS_INSTALL.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if cells and (m := re.fullmatch(r"`([A-Za-z0-9_.]+)`", cells[0])):
            keys.add(m.group(1))
    return keys


def test_docs_table_covers_every_top_level_value() -> None:
    documented = _documented_keys()
    missing = sorted(k for k in VALUES if k not in documented)
    assert not missing, f"docs/installation.md configuration table lacks {missing}"


def test_docs_table_has_no_stale_keys() -> None:
    stale = sorted(_documented_keys() - _leaf_paths(VALUES))
    assert not stale, f"docs/installation.md documents keys values.yaml does not have: {stale}"


def test_chart_app_version_matches_package() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert str(CHART_META["appVersion"]) == pyproject["project"]["version"]


def test_chart_packages_with_its_crds(tools: Tools, tmp_path: Path) -> None:
    run(tools, tools.helm, "package", str(CHART_DIR), "--destination", str(tmp_path))
    [package] = tmp_path.glob("*.tgz")
    assert package.name == f"{CHART_META['name']}-{CHART_META['version']}.tgz"
    with tarfile.open(package) as tgz:
        packaged = {Path(n).name for n in tgz.getnames() if "/crds/" in n}
    assert packaged == {p.name for p in CHART_CRDS_DIR.glob("*.yaml")}


def test_dockerfile_builds_a_slim_non_root_image() -> None:
    lines = []
    for raw in (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw.strip())
    stages = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    assert len(stages) == 2, "a build stage and a runtime stage"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines[: stages[0]]
    final = lines[stages[1] :]
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    assert "pip wheel" in " ".join(lines[stages[0] : stages[1]])
    runtime = " ".join(final)
    assert "--no-index" in runtime and "apt-get" not in runtime and "gcc" not in runtime
    assert [line for line in final if line.startswith("USER ")] == ["USER 65532:65532"]
    assert final[-2:] == ['ENTRYPOINT ["branch-operator"]', 'CMD ["run"]']


def test_notes_explain_how_to_check(tools: Tools) -> None:
    proc = run(tools, tools.helm, "install", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, "--dry-run=client")
    notes = proc.stdout.split("NOTES:", 1)[1]
    for expected in ("kubectl get branches", "logs deployment/oms-branch-operator", "/readyz", "rollout status"):
        assert expected in notes
