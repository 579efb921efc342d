{{/* vim: set filetype=mustache: */}}

{{- define "oms-branch-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or just <release> when it already contains the chart name, so that
`helm install oms-branch-operator ...` gives plain `oms-branch-operator` objects (as in manifests/base).
*/}}
{{- define "oms-branch-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "oms-branch-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "oms-branch-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oms-branch-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "oms-branch-operator.labels" -}}
helm.sh/chart: {{ include "oms-branch-operator.chart" . }}
{{ include "oms-branch-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: oms-branch-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "oms-branch-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "oms-branch-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "oms-branch-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Several replicas: a PodDisruptionBudget and spreading over nodes make sense only then. */}}
{{- define "oms-branch-operator.multiReplica" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/*
Leader election is what makes several replicas safe: only the Lease holder consumes and acts.
null (the default) follows replicaCount; an explicit false with several replicas is refused in validate.
*/}}
{{- define "oms-branch-operator.leaderElection" -}}
{{- $enabled := .Values.leaderElection.enabled }}
{{- if kindIs "invalid" $enabled }}
{{- include "oms-branch-operator.multiReplica" . }}
{{- else if $enabled }}true{{ end }}
{{- end }}

{{/* Where the Lease lives, and so where its Role is granted. */}}
{{- define "oms-branch-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{- define "oms-branch-operator.defaultNamespace" -}}
{{- default .Release.Namespace .Values.defaultNamespace }}
{{- end }}

{{/*
RBAC rules: a transcription of branch_operator.rbac.RULES. tests/chart/test_chart.py fails if the
chart grants any more or any less than that module, so edit both together.
*/}}
{{- define "oms-branch-operator.rules" -}}
- apiGroups: ["oms.dev"]
  resources: ["branches"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["oms.dev"]
  resources: ["branches/status"]
  verbs: ["patch"]
- apiGroups: ["oms.dev"]
  resources: ["branchlocks"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["oms.dev"]
  resources: ["branchlocks/status"]
  verbs: ["patch"]
- apiGroups: ["oms.dev"]
  resources: ["automergepolicies"]
  verbs: ["list", "watch"]
- apiGroups: ["oms.dev"]
  resources: ["automergepolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
branch_operator.rbac.LEADER_ELECTION_RULES, granted by a Role in the Lease's namespace only: the
operator never needs a Lease anywhere else.
*/}}
{{- define "oms-branch-operator.leaderElectionRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

{{/*
branch_operator.rbac.WEBHOOK_CERTIFICATE_RULES and WEBHOOK_CONFIGURATION_RULES: only with the admission
webhook and an operator-made certificate, each limited to the one object by name.
*/}}
{{- define "oms-branch-operator.webhookCertificateRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
  resourceNames: [{{ include "oms-branch-operator.webhookSecretName" . | quote }}]
# create cannot be limited by name (the object does not exist yet when it is authorized).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
{{- end }}
{{- define "oms-branch-operator.webhookConfigurationRules" -}}
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["validatingwebhookconfigurations"]
  verbs: ["get", "patch"]
  resourceNames: [{{ include "oms-branch-operator.fullname" . | quote }}]
{{- end }}

{{/* Cross-field checks that values.schema.json cannot express, failing early with a clear message. */}}
{{- define "oms-branch-operator.validate" -}}
{{- if eq .Values.rbac.scope "namespaced" }}
{{- if not .Values.watchNamespaces }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the operator has no rights outside them" }}
{{- end }}
{{- $default := include "oms-branch-operator.defaultNamespace" . }}
{{- if not (has $default .Values.watchNamespaces) }}
{{- fail (printf "rbac.scope=namespaced: the default namespace %q (defaultNamespace, else the release namespace) must be one of watchNamespaces %v, or events without a namespace would fail with 403" $default .Values.watchNamespaces) }}
{{- end }}
{{- end }}
{{- if and .Values.nats.auth.passwordSecret.name (not .Values.nats.auth.user) }}
{{- fail "nats.auth.passwordSecret needs nats.auth.user" }}
{{- end }}
{{- if and .Values.nats.auth.credsSecret.name .Values.nats.auth.nkeySeedSecret.name }}
{{- fail "set only one of nats.auth.credsSecret and nats.auth.nkeySeedSecret (a .creds file already holds the NKey seed)" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled needs service.enabled: the ServiceMonitor scrapes through the Service" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled needs metrics.enabled: there would be no /metrics to scrape" }}
{{- end }}
{{- $metricsPort := include "oms-branch-operator.metricsPort" . }}
{{- if and $metricsPort (eq $metricsPort (.Values.healthPort | int64 | toString)) }}
{{- fail "metrics.port must differ from healthPort (leave it null to serve /metrics on healthPort)" }}
{{- end }}
{{- $election := include "oms-branch-operator.leaderElection" . }}
{{- if and (include "oms-branch-operator.multiReplica" .) (not $election) }}
{{- fail (printf "replicaCount=%v needs leader election (leave leaderElection.enabled unset or true): without it every replica consumes the event streams and acts, so each event would be applied by several operators at once" .Values.replicaCount) }}
{{- end }}
{{- if and (eq (.Values.strategy.type | default "") "RollingUpdate") (not $election) }}
{{- fail "strategy RollingUpdate needs leader election (leaderElection.enabled or replicaCount > 1): without it the old and new pod would both act during a rollout" }}
{{- end }}
{{- with .Values.leaderElection }}
{{- if not (and (gt (float64 .leaseDurationSeconds) (float64 .renewDeadlineSeconds)) (gt (float64 .renewDeadlineSeconds) (mulf 1.1 .retryPeriodSeconds))) }}
{{- fail (printf "leaderElection needs leaseDurationSeconds > renewDeadlineSeconds > 1.1 x retryPeriodSeconds (got %v, %v, %v); the operator would refuse to start" .leaseDurationSeconds .renewDeadlineSeconds .retryPeriodSeconds) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.merge.backend "webhook") (not .Values.merge.webhook.url) }}
{{- fail "merge.backend=webhook needs merge.webhook.url (the OMS merge endpoint)" }}
{{- end }}
{{- end }}

{{/*
The separate /metrics port as a string, or "" when /metrics is served on healthPort (metrics.port null)
or metrics are off.
*/}}
{{- define "oms-branch-operator.metricsPort" -}}
{{- if and .Values.metrics.enabled (not (kindIs "invalid" .Values.metrics.port)) -}}
{{- .Values.metrics.port | int64 | toString -}}
{{- end -}}
{{- end }}

{{/* The PrometheusRule: null follows serviceMonitor.enabled (the rules need the scrape it sets up). */}}
{{- define "oms-branch-operator.prometheusRuleEnabled" -}}
{{- $enabled := .Values.prometheusRule.enabled }}
{{- if kindIs "invalid" $enabled }}
{{- if .Values.serviceMonitor.enabled }}true{{ end }}
{{- else if $enabled }}true{{ end }}
{{- end }}

{{/*
The `job` label of the operator's targets: the Prometheus Operator names a ServiceMonitor's job after
the Service (the chart sets no jobLabel), so by default the Service's name.
*/}}
{{- define "oms-branch-operator.alertJob" -}}
{{- default (include "oms-branch-operator.fullname" .) .Values.prometheusRule.job }}
{{- end }}

{{/* PromQL label matchers selecting this release's targets, for every alert expression. */}}
{{- define "oms-branch-operator.alertSelector" -}}
job="{{ include "oms-branch-operator.alertJob" . }}",namespace="{{ .Release.Namespace }}"
{{- end }}

{{/* The Secret with the admission webhook's certificate: cert-manager's, or the one the operator keeps. */}}
{{- define "oms-branch-operator.webhookSecretName" -}}
{{- .Values.webhook.certManager.secretName | default (printf "%s-webhook-tls" (include "oms-branch-operator.fullname" .)) -}}
{{- end }}
