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
    # kopf watches Branches and keeps its finalizer and progress annotations on them; the operator reads
    # single Branches, lists them for a lookup, and patches admin-request annotations away.
    Rule("oms.dev", "branches", ("get", "list", "watch", "patch")),
    Rule("oms.dev", "branches/status", ("patch",)),
    # Its own INDEXING locks (a create conflict reads the existing one back), released and expired locks.
    Rule("oms.dev", "branchlocks", ("get", "list", "watch", "create", "delete")),
    Rule("oms.dev", "branchlocks/status", ("patch",)),  # acquiredAt / renewedAt stamps, expiresAt
    Rule("oms.dev", "automergepolicies", ("list", "watch")),  # kopf's watch feeds an in-memory index
    Rule("oms.dev", "automergepolicies/status", ("patch",)),
    # Kubernetes Events on Branches, posted by kopf and by the operator; the operator counts repeats of one
    # up on the Event posted before (count, series), as client-go's recorder does.
    Rule("", "events", ("create", "patch")),
)

# Only with leader election (OMS_LEADER_ELECTION, on whenever the chart runs more than one replica): every
# replica reads the Lease, creates it when missing, and writes it with a resourceVersion precondition to take,
# renew or release it. No list/watch: standbys poll it (controllers/leadership.py says why). The Lease lives
# in one namespace, so the chart grants these by a Role there, never cluster-wide.
LEADER_ELECTION_RULES: tuple[Rule, ...] = (
    Rule("coordination.k8s.io", "leases", ("get", "create", "update")),
)

# Only with the admission webhook (OMS_WEBHOOK_ENABLED) and a certificate the operator makes itself (no
# cert-manager): the first replica keeps it in a Secret of its namespace for the others (a Role there; get is
# limited to that Secret by name, create cannot be), and each sets it as the caBundle of the chart's
# ValidatingWebhookConfiguration (cluster-scoped, limited to that one by name).
WEBHOOK_CERTIFICATE_RULES: tuple[Rule, ...] = (
    Rule("", "secrets", ("get", "create")),
)
WEBHOOK_CONFIGURATION_RULES: tuple[Rule, ...] = (
    Rule("admissionregistration.k8s.io", "validatingwebhookconfigurations", ("get", "patch")),
)
