"""Operator configuration, read from the environment (``OMS_*``, plus ``NATS_URL``) and CLI flags.

Every setting has a production-sensible default; the Helm chart sets these variables.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MASK = "***"


def mask_url(url: str) -> str:
    """``url`` (or a comma-separated list of URLs, as ``NATS_URL`` allows) with any password in its
    ``user:password@`` replaced by ``***``. The user name stays; a lone ``token@`` is masked too, since NATS
    reads a user with no password as a token. Unparseable parts are masked whole after the scheme."""
    return ",".join(_mask_one(part) for part in url.split(","))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:  # nats-py reads "host:port" (and "user:pass@host") as nats://
        scheme, rest = "", url
    netloc_end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    if "@" not in netloc:
        return url
    userinfo, host = netloc.rsplit("@", 1)  # the last @: an unencoded @ in a password stays on the masked side
    user, has_password, _ = userinfo.partition(":")
    return f"{scheme}{sep}{f'{user}:{MASK}' if has_password else MASK}@{host}{tail}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMS_", extra="ignore", populate_by_name=True)

    # --- NATS connection
    nats_url: str = Field(
        "nats://localhost:4222", validation_alias=AliasChoices("NATS_URL", "OMS_NATS_URL", "nats_url")
    )
    nats_user: str | None = None
    # SecretStr: masked in repr(), str() and model_dump(); only connect_options() reads the value.
    nats_password: SecretStr | None = Field(None, repr=False)
    nats_token: SecretStr | None = Field(None, repr=False)
    nats_creds_file: Path | None = None  # NATS decentralised-auth .creds file
    nats_nkey_seed_file: Path | None = None
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = None
    nats_connect_timeout: float = 5.0

    # --- JetStream: where Funnel events come from
    stream: str = "FUNNEL_INDEXING"
    stream_subjects: str = "funnel.indexing.>"
    # false: the stream is managed elsewhere (e.g. by NACK); the operator only checks it exists.
    manage_streams: bool = True
    consumer_started: str = "funnel-indexing-started-consumer"
    consumer_completed: str = "funnel-indexing-consumer"
    consumer_failed: str = "funnel-indexing-failed-consumer"
    # Reads the whole stream, so that a message on a subject none of the three reads (a typo, a new
    # version of a subject) is dead-lettered as UnknownSubject instead of staying in the stream unseen.
    consumer_other: str = "funnel-indexing-other-subjects-consumer"
    subject_started: str = "funnel.indexing.started"
    subject_completed: str = "funnel.indexing.completed"
    subject_failed: str = "funnel.indexing.failed"
    # A message held by a replica that died comes back after this long: within the 15 s failover budget,
    # and still far longer than applying one event takes (a slower one is redelivered and found applied).
    ack_wait_seconds: float = 10.0
    max_deliver: int = 10
    # A result event that may have overtaken its started event is redelivered this many times (short
    # backoff) before it counts as unexpected.
    early_event_retries: int = 4
    fetch_batch: int = 32
    max_event_bytes: int = 256 * 1024

    # --- JetStream: what the operator emits (each kept in its own stream so nothing is lost)
    audit_stream: str = "OMS_AUDIT"
    audit_subject: str = "oms.audit.branch"
    branch_events_stream: str = "OMS_BRANCH_EVENTS"
    merged_subject: str = "oms.branch.merged"
    notifications_stream: str = "OMS_NOTIFICATIONS"
    notifications_subject: str = "oms.notifications.branch"
    dlq_stream: str = "FUNNEL_INDEXING_DLQ"
    dlq_subject_prefix: str = "funnel.dlq"

    # --- Kubernetes
    default_namespace: str = Field(
        "default",
        validation_alias=AliasChoices("OMS_DEFAULT_NAMESPACE", "POD_NAMESPACE", "default_namespace"),
    )
    # Comma-separated namespaces to watch; empty = the whole cluster.
    watch_namespaces: str = ""
    operator_id: str = "oms-branch-operator"
    reconcile_interval_seconds: float = 60.0

    # --- Leader election: one replica in charge at a time, by a coordination.k8s.io Lease (the timings are
    # justified in controllers/leadership.py: takeover within 12 s of a crash, within ~1 s of a graceful stop)
    leader_election: bool = False
    # None: the pod's namespace (POD_NAMESPACE), else default_namespace; see lease_namespace.
    leader_election_namespace: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "OMS_LEADER_ELECTION_NAMESPACE", "POD_NAMESPACE", "leader_election_namespace"
        ),
    )
    leader_election_lease_name: str = "oms-branch-operator"
    # None: the pod's name (POD_NAME), else the host name and a random suffix; see lease_identity.
    leader_election_identity: str | None = Field(
        None,
        validation_alias=AliasChoices("OMS_LEADER_ELECTION_IDENTITY", "POD_NAME", "leader_election_identity"),
    )
    leader_election_lease_duration_seconds: float = 10.0
    leader_election_renew_deadline_seconds: float = 7.0
    leader_election_retry_period_seconds: float = 0.5

    # --- Merge execution: "event" announces com.oms.branch.merged; "webhook" POSTs to OMS first
    merge_backend: Literal["event", "webhook"] = "event"
    merge_webhook_url: str | None = None
    merge_webhook_timeout_seconds: float = 10.0
    merge_webhook_retries: int = 3  # attempts after the first, on 5xx/408/429/transport errors
    merge_webhook_backoff_seconds: float = 1.0  # the first backoff window, doubled per retry (jittered)
    merge_webhook_backoff_max_seconds: float = 30.0
    merge_webhook_auth_header_file: Path | None = None  # file holding the Authorization header value
    merge_retry_interval_seconds: float = 300.0  # a Failed merge is tried again after this long

    # --- Validating admission webhook (docs/installation.md, "Admission webhook"): refuses at apply time the
    # AutoMergePolicies and Branches the operator would mark Accepted=False / never merge. Every replica
    # serves it (validation needs no leadership).
    webhook_enabled: bool = False
    webhook_port: int = 9443  # HTTPS; 0 = any free port (the embedded environment)
    # Comma-separated DNS names / IPs the self-signed certificate is for; the first is the host of the URL a
    # managed configuration points at. Empty: 127.0.0.1 (the embedded environment).
    webhook_hostnames: str = ""
    # A serving certificate from a mounted Secret (cert-manager's tls.crt / tls.key / ca.crt); re-read when
    # the files change. Unset: the operator makes a self-signed one.
    webhook_tls_cert_file: Path | None = None
    webhook_tls_key_file: Path | None = None
    webhook_tls_ca_file: Path | None = None
    # Self-signed only: the Secret (in the pod's namespace) that keeps the certificate, so every replica
    # serves the same one; unset = a new one per process (one replica, or the embedded environment).
    webhook_certificate_store: str | None = None
    # Self-signed only: a ValidatingWebhookConfiguration (the chart's) whose caBundle the operator sets to
    # its certificate at start-up.
    webhook_ca_bundle_configuration: str | None = None
    # A ValidatingWebhookConfiguration kopf creates and keeps pointing at this process's URL (the embedded
    # environment: demo, dev, tests); the chart ships its own configuration instead.
    webhook_managed_configuration: str | None = None

    # --- Health / metrics
    health_port: int = 8080
    # Prometheus /metrics: on the health port; a separate listener when set (0 = any free port). With the
    # health port off (0, as in the embedded environment) metrics get a listener on a free port anyway.
    metrics_enabled: bool = True
    metrics_port: int | None = None
    # The event loop blocked this long (a long callback, a garbage collection) is logged as a WARNING.
    stall_warning_ms: float = 100.0
    # "json": every log line is one JSON object (kopf's, ours, the audit trail's); read by the command line
    # before anything logs, declared here so a bad value is refused and the chart's value is checked.
    log_format: Literal["text", "json"] = "text"

    # --- Operations: notifications and locks
    # Generic JSON webhook for incidents (indexing failures, merges blocked too long, expired locks,
    # failed merges); unset = NATS notifications only.
    notify_webhook_url: str | None = Field(None, repr=False)
    notify_webhook_format: str = "json"  # "json" or "slack" (a Slack incoming-webhook payload)
    notify_webhook_retries: int = 5
    notify_webhook_timeout_seconds: float = 5.0
    # A READY branch whose merge stays blocked this long is an incident (0 = never notify).
    notify_blocked_after_seconds: float = 3600.0

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # repr() and str() (and so any log line that formats Settings) show NATS_URL without its password;
        # the field itself keeps the real value for connect_options().
        for name, value in super().__repr_args__():
            yield name, (mask_url(value) if name == "nats_url" and isinstance(value, str) else value)

    @field_validator("watch_namespaces")
    @classmethod
    def _strip(cls, v: str) -> str:
        return ",".join(p.strip() for p in v.split(",") if p.strip())

    @model_validator(mode="after")
    def _leader_election_timings(self) -> Settings:
        # client-go's rule (see domain/leadership.check_durations), checked here so a bad chart value
        # fails at start-up rather than when the elector is built. 1.1: the standby's retry jitter.
        lease, renew, retry = (self.leader_election_lease_duration_seconds,
                               self.leader_election_renew_deadline_seconds,
                               self.leader_election_retry_period_seconds)
        if min(lease, renew, retry) <= 0 or not lease > renew > retry * 1.1:
            raise ValueError(
                "leader election needs lease duration > renew deadline > 1.1 x retry period, all positive "
                f"(got {lease}s, {renew}s, {retry}s)"
            )
        return self

    @property
    def lease_namespace(self) -> str:
        return self.leader_election_namespace or self.default_namespace

    @cached_property
    def lease_identity(self) -> str:
        """Who this replica is in the Lease: unique per process, stable for its lifetime."""
        return self.leader_election_identity or f"{socket.gethostname()}_{secrets.token_hex(4)}"

    @property
    def webhook_host_names(self) -> list[str]:
        return [p.strip() for p in self.webhook_hostnames.split(",") if p.strip()] or ["127.0.0.1"]

    @model_validator(mode="after")
    def _webhook_tls_files(self) -> Settings:
        given = [f is not None for f in (self.webhook_tls_cert_file, self.webhook_tls_key_file)]
        if any(given) and not all(given):
            raise ValueError("the webhook certificate needs OMS_WEBHOOK_TLS_CERT_FILE and OMS_WEBHOOK_TLS_KEY_FILE")
        return self

    @property
    def namespaces(self) -> list[str]:
        return [p for p in self.watch_namespaces.split(",") if p]
