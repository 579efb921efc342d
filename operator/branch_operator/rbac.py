"""The Kubernetes permissions the operator needs, declared once.

The Helm chart and the kustomize base grant exactly these rules, and tests check both directions:
the operator's client layer only calls what is listed here, and the chart grants nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    api_group: str
    resource: str
    verbs: tuple[str, ...]


# What kopf itself and the operator's own client (kube.py) do.
RULES: tuple[Rule, ...] = (
    # kopf watches Branches; the operator patches admin annotations away.
    Rule("oms.dev", "branches", ("get", "list", "watch", "patch")),
    Rule("oms.dev", "branches/status", ("get", "patch")),
    Rule("oms.dev", "branchlocks", ("get", "list", "watch", "create", "patch", "delete")),
    Rule("oms.dev", "branchlocks/status", ("get", "patch")),
    Rule("oms.dev", "automergepolicies", ("get", "list", "watch")),
    Rule("oms.dev", "automergepolicies/status", ("get", "patch")),
    # Kubernetes Events on Branches, posted by kopf and by the NATS consumer.
    Rule("", "events", ("create", "patch")),
)

# Only when running more than one replica with kopf peering.
PEERING_RULES: tuple[Rule, ...] = (
    Rule("kopf.dev", "clusterkopfpeerings", ("get", "list", "watch", "patch")),
    Rule("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch")),
)
