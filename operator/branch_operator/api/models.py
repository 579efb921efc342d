"""The operator's API (group ``oms.dev``, version ``v1alpha1``), defined once.

These pydantic models are the single source of truth: the CRD YAML under ``crds/`` is rendered from
them (``branch-operator crds``), and the operator reads and writes objects through them. Field names
are the Kubernetes camelCase names (via aliases); Python code uses snake_case.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "oms.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "oms"

# Labels, annotations and the finalizer the operator owns.
LABEL_BRANCH = f"{GROUP}/branch"  # on BranchLocks: the Kubernetes name of the Branch they lock
LABEL_LOCK_TYPE = f"{GROUP}/lock-type"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "oms-branch-operator"
FINALIZER = f"{GROUP}/finalizer"  # on Branches: their locks are released and audited before they go
# Administrator requests on a Branch (domain.admin decides them, controllers.admin carries them out).
ANNOTATION_FORCE_UNLOCK = f"{GROUP}/force-unlock"
ANNOTATION_SET_STATE = f"{GROUP}/set-state"
ANNOTATION_REASON = f"{GROUP}/reason"
ANNOTATION_REQUESTED_BY = f"{GROUP}/requested-by"  # also read with a merge request
ANNOTATION_REQUEST_ID = f"{GROUP}/request-id"
# A break-glass merge, consumed by the merge reconciler; the plugin's `merge` command sets it.
ANNOTATION_MERGE_REQUEST = f"{GROUP}/merge-request"

# Bounds that keep status small and audit ids / label values well-formed.
MAX_BRANCH_NAME = 200
MAX_ERRORS = 50
MAX_ERROR_LENGTH = 1024
MAX_RECENT_EVENTS = 20
BRANCH_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"


class Phase(enum.StrEnum):
    """Branch states, with the names OMS uses."""

    ACTIVE = "ACTIVE"
    LOCKED_FOR_WRITE = "LOCKED_FOR_WRITE"
    READY = "READY"
    ERROR = "ERROR"


class LockType(enum.StrEnum):
    INDEXING = "INDEXING"
    WRITE = "WRITE"
    MERGE = "MERGE"


class IndexingResult(enum.StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    ABANDONED = "abandoned"  # an admin force-released the running run's INDEXING lock


class MergeDecision(enum.StrEnum):
    MERGED = "Merged"
    BLOCKED = "Blocked"
    DEFERRED = "Deferred"
    WOULD_MERGE = "WouldMerge"
    FAILED = "Failed"


class BlockReason(enum.StrEnum):
    VALIDATION_FAILED = "ValidationFailed"
    CONFLICTS_DETECTED = "ConflictsDetected"
    AUTO_MERGE_DISABLED = "AutoMergeDisabled"
    NO_MATCHING_POLICY = "NoMatchingPolicy"
    SELF_MERGE = "SelfMerge"  # spec.targetBranch is spec.branchName
    EXPIRED = "Expired"
    LOCK_HELD = "LockHeld"
    FROZEN = "Frozen"
    INSUFFICIENT_RECORDS = "InsufficientRecords"
    TARGET_LOCK_HELD = "TargetLockHeld"
    OUTSIDE_MERGE_WINDOW = "OutsideMergeWindow"


class ConditionType(enum.StrEnum):
    INDEXED = "Indexed"
    VALIDATED = "Validated"
    LOCKED = "Locked"
    MERGEABLE = "Mergeable"
    ACCEPTED = "Accepted"  # on AutoMergePolicies: the policy is valid and in force
    # kstatus conventions (what Flux, Argo CD and `kubectl wait` read), on Branches and AutoMergePolicies:
    # Ready has positive polarity, Reconciling and Stalled are abnormal-true.
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields tolerated when reading objects."""

    # A docstring under a field is its description in the CRD (what `kubectl explain` prints).
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore",
                              use_attribute_docstrings=True)

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)


class Condition(_Model):
    """The standard Kubernetes condition shape (metav1.Condition)."""

    type: Annotated[str, Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)]
    """The condition's type in CamelCase, e.g. Mergeable; unique in the list."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The metadata.generation the condition was set for."""
    last_transition_time: datetime
    """When the status last changed from one value to another."""
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    """A CamelCase word saying why the condition has its status, e.g. ValidationFailed."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Details for a person reading it; may be empty."""


# --------------------------------------------------------------------------------------------- Branch


class BranchSpec(_Model):
    branch_name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_BRANCH_NAME,
            pattern=BRANCH_NAME_PATTERN,
            description="The OMS branch name, e.g. feature/user-schema. Immutable.",
        ),
    ]
    target_branch: Annotated[
        str,
        Field(max_length=MAX_BRANCH_NAME, pattern=BRANCH_NAME_PATTERN, description="Branch merged into."),
    ] = "main"
    auto_merge: Annotated[bool, Field(description="Allow the operator to merge this branch automatically.")] = True

    # CEL rules rendered into the CRD (x-kubernetes-validations) for the spec object.
    cel_rules: ClassVar[list[dict[str, str]]] = [
        {"rule": "self.branchName == oldSelf.branchName", "message": "spec.branchName is immutable"},
        {"rule": "self.targetBranch != self.branchName",
         "message": "spec.targetBranch must differ from spec.branchName"},
    ]


class ValidationStatus(_Model):
    passed: bool
    """Whether the indexing run passed Funnel's schema validation."""
    errors: Annotated[list[Annotated[str, Field(max_length=MAX_ERROR_LENGTH)]], Field(max_length=MAX_ERRORS)] = []
    """Funnel's validation errors, the first 50 of at most 1024 characters each."""
    errors_total: Annotated[int | None, Field(
        ge=0, description="How many errors Funnel reported, when more than errors holds (the first ones)")] = None


class IndexingStatus(_Model):
    indexing_id: Annotated[str | None, Field(max_length=253)] = None
    """Funnel's id of the run (data.indexing_id of its events)."""
    event_id: Annotated[str | None, Field(max_length=253, description="CloudEvent id last applied")] = None
    started_at: datetime | None = None
    """When Funnel started the run (data.started_at of the started event)."""
    completed_at: datetime | None = None
    """When the run completed or failed (from the completed or failed event)."""
    duration_seconds: Annotated[float | None, Field(ge=0)] = None
    """How long the run took, in seconds, as Funnel reported it."""
    records_indexed: Annotated[int | None, Field(ge=0)] = None
    """How many records the run indexed."""
    result: IndexingResult | None = None
    """success, failed, or abandoned (an admin force-released the run's INDEXING lock); unset while it runs."""
    validation: ValidationStatus | None = None
    """The run's validation result."""


class MergeCheck(_Model):
    """One auto-merge check of the decision trace (see docs/policies.md)."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    """The check, e.g. validation, conflicts, locks, window (docs/policies.md lists every one)."""
    passed: bool
    """Whether the check let the merge through."""
    reason: Annotated[BlockReason | None, Field(description="What a failure of this check is reported as")] = None
    evidence: Annotated[str, Field(max_length=1024)] = ""
    """What the check looked at, in one line, e.g. run idx-7 indexed 1250 records."""


class ManualMergeRequest(_Model):
    """The last break-glass request (annotation oms.dev/merge-request) for this indexing result, and its outcome."""

    reason: Annotated[str, Field(max_length=1024)]
    """The annotation's value: why the merge was asked for."""
    requested_by: Annotated[str | None, Field(max_length=253)] = None
    """Who asked (annotation oms.dev/requested-by)."""
    outcome: MergeDecision | None = None
    """What became of the request: Merged, Blocked, Failed, ...; unset while pending."""
    message: Annotated[str | None, Field(max_length=4096)] = None
    """Why the request had that outcome."""
    at: datetime | None = None
    """When the operator decided the request."""


class MergeStatus(_Model):
    decision: MergeDecision | None = None
    """The last auto-merge decision: Merged, Blocked, Deferred, WouldMerge (dry run) or Failed."""
    reasons: Annotated[list[BlockReason], Field(max_length=16)] = []
    """Every reason the branch is not merging; empty when it merged."""
    message: Annotated[str | None, Field(max_length=4096)] = None
    """The decision in one sentence, for a person."""
    policy: Annotated[str | None, Field(max_length=253)] = None
    """The AutoMergePolicy that governed the decision (the highest priority match)."""
    merged_at: datetime | None = None
    """When the branch was merged."""
    target_branch: Annotated[str | None, Field(max_length=MAX_BRANCH_NAME)] = None
    """The branch it was merged into."""
    evaluated_at: datetime | None = None
    """When the decision was made."""
    policy_generation: Annotated[int | None, Field(ge=0)] = None
    """The governing policy's metadata.generation at the decision."""
    event_id: Annotated[str | None, Field(max_length=253, description="Indexing CloudEvent id decided on")] = None
    checks: Annotated[list[MergeCheck], Field(max_length=16)] = []
    """One entry per check of the governing policy, with its evidence (the decision trace)."""
    next_evaluation_time: Annotated[
        datetime | None, Field(description="When the decision may change by the clock alone (window, freeze, expiry)")
    ] = None
    merge_id: Annotated[str | None, Field(max_length=253, description="Idempotency key of the merge")] = None
    announced_at: Annotated[datetime | None, Field(
        description="Deprecated: set by earlier builds once a merge was announced; no longer written")] = None
    attempts: Annotated[int | None, Field(ge=0, description="Failed merge executions for mergeId")] = None
    manual_request: ManualMergeRequest | None = None


class Conflict(_Model):
    """A merge conflict reported by OMS."""

    path: Annotated[str, Field(max_length=1024)]
    """Where OMS found the conflict, e.g. an object type or property path."""
    message: Annotated[str, Field(max_length=MAX_ERROR_LENGTH)] = ""
    """What conflicts, as OMS reported it."""


class OutboxMessage(_Model):
    """A NATS message to publish (audit record, notification) with its de-duplication id."""

    subject: Annotated[str, Field(min_length=1, max_length=253)]
    """The NATS subject to publish to."""
    msg_id: Annotated[str, Field(min_length=1, max_length=512)]
    """The Nats-Msg-Id header: JetStream drops a second message with the same id."""
    data: Annotated[str, Field(max_length=32768)]
    """The message body (JSON)."""


class Outbox(_Model):
    """The messages owed for the last event applied to this Branch.

    Written in the same status update as the state change they describe, published after it, and
    re-published (same ids, dropped by JetStream as duplicates) when the event is redelivered — so a
    crash between the state change and the publish loses nothing and doubles nothing. The next event to
    replace it publishes it once more first, while writtenAt is inside JetStream's duplicate window.
    """

    key: Annotated[str, Field(min_length=1, max_length=253, description="the CloudEvent id these messages belong to")]
    messages: Annotated[list[OutboxMessage], Field(max_length=32)] = []
    """The messages owed, in publishing order."""
    written_at: Annotated[datetime | None, Field(description="When the status write holding it was made")] = None


class AdminActionStatus(_Model):
    """The last administrator request the operator handled (oms.dev/force-unlock, oms.dev/set-state)."""

    action: Annotated[str, Field(max_length=63, description="force-unlock or set-state")]
    requested_by: Annotated[str, Field(max_length=253, description="oms.dev/requested-by, else the last manager")]
    reason: Annotated[str, Field(max_length=1024)] = ""
    """Why the admin asked (annotation oms.dev/reason)."""
    at: datetime
    """When the operator handled the request."""
    result: Annotated[str, Field(max_length=1024, description="What the operator did")] = ""
    request_id: Annotated[str | None, Field(max_length=63, description="oms.dev/request-id, if one was set")] = None


class PendingResult(_Model):
    """A result (completed/failed) that arrived before its run's started event, kept until it does.

    Funnel's subjects are consumed independently, so a result can overtake its started event by longer
    than the consumer's short redelivery wait (a crash, a backlog, API errors). Instead of losing it,
    the operator keeps it here and applies it right after the started event of the same run.
    """

    event_id: Annotated[str, Field(min_length=1, max_length=253)]
    """The CloudEvent id of the kept result."""
    indexing_id: Annotated[str, Field(min_length=1, max_length=253)]
    """The run the result belongs to."""
    subject: Annotated[str, Field(min_length=1, max_length=253)]
    """The NATS subject the result arrived on."""
    event: Annotated[str, Field(max_length=65536, description="the CloudEvent, structured JSON")]
    received_at: datetime | None = None
    """When the operator received it."""


class BranchStatus(_Model):
    phase: Phase | None = None
    """The branch's state: ACTIVE, LOCKED_FOR_WRITE (indexing), READY (indexed, awaiting merge) or ERROR."""
    phase_transition_time: datetime | None = None
    """When the branch entered its current phase."""
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The metadata.generation the operator last acted on."""
    indexing: IndexingStatus | None = None
    """The last indexing run, as Funnel reported it."""
    merge: MergeStatus | None = None
    """The last auto-merge decision and every reason for it."""
    conflicts: Annotated[list[Conflict], Field(max_length=256)] = []
    """Merge conflicts, written by OMS; any blocks auto-merge while the policy says blockOnConflicts."""
    last_admin_action: AdminActionStatus | None = None
    conditions: Annotated[list[Condition], Field(max_length=16)] = []
    """Indexed, Validated, Locked and Mergeable."""
    recent_event_ids: Annotated[
        list[Annotated[str, Field(max_length=253)]],
        Field(max_length=MAX_RECENT_EVENTS, description="CloudEvent ids recently applied (idempotency)"),
    ] = []
    outbox: Outbox | None = None
    """Audit records and notifications owed for the last event applied (published after the status write)."""
    pending_result: PendingResult | None = None
    """A completed or failed event that arrived before its run's started event, kept until it does."""


class Branch(_Model):
    KIND: ClassVar[str] = "Branch"
    PLURAL: ClassVar[str] = "branches"
    SINGULAR: ClassVar[str] = "branch"
    SHORT_NAMES: ClassVar[list[str]] = ["br"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, str | int]]] = [
        {"name": "Branch", "type": "string", "jsonPath": ".spec.branchName"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Records", "type": "integer", "jsonPath": ".status.indexing.recordsIndexed"},
        {"name": "Valid", "type": "boolean", "jsonPath": ".status.indexing.validation.passed"},
        {"name": "Mergeable", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Mergeable\")].status"},
        # Every reason a READY branch is not merging; kubectl prints the list as compact JSON.
        {"name": "Reasons", "type": "string", "jsonPath": ".status.merge.reasons", "priority": 0},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    spec: BranchSpec
    status: BranchStatus = BranchStatus()


# ----------------------------------------------------------------------------------------- BranchLock


class BranchLockSpec(_Model):
    branch: Annotated[
        str,
        Field(min_length=1, max_length=253, description="Kubernetes name of the locked Branch (same namespace)"),
    ]
    lock_type: LockType
    """INDEXING (taken by the operator while Funnel indexes), WRITE or MERGE (taken by other services)."""
    holder: Annotated[str, Field(min_length=1, max_length=253)]
    """Who holds the lock, e.g. funnel or oms-editor."""
    reason: Annotated[str, Field(max_length=1024)] = ""
    """Why the lock is held, for a person."""
    indexing_id: Annotated[str | None, Field(max_length=253)] = None
    """For INDEXING locks: the run that holds it."""
    ttl_seconds: Annotated[int | None, Field(ge=1, le=7 * 24 * 3600)] = None
    """The lease: the operator releases the lock this many seconds after its last renewal (status.renewedAt);
    without it the lock never expires."""


class BranchLockStatus(_Model):
    acquired_at: datetime | None = None
    """When the lease started (the lock's creation), stamped by the operator."""
    renewed_at: datetime | None = None
    """The holder's last renewal; the holder patches it to keep the lock, like a Lease's renewTime."""
    expires_at: datetime | None = None
    """When the lock expires unless renewed (renewedAt + ttlSeconds), kept up to date by the operator."""


class BranchLock(_Model):
    KIND: ClassVar[str] = "BranchLock"
    PLURAL: ClassVar[str] = "branchlocks"
    SINGULAR: ClassVar[str] = "branchlock"
    SHORT_NAMES: ClassVar[list[str]] = ["brl"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, str | int]]] = [
        {"name": "Branch", "type": "string", "jsonPath": ".spec.branch"},
        {"name": "Type", "type": "string", "jsonPath": ".spec.lockType"},
        {"name": "Holder", "type": "string", "jsonPath": ".spec.holder"},
        {"name": "TTL", "type": "integer", "jsonPath": ".spec.ttlSeconds"},
        # A string, not a date: the API server prints a date column as the age since it, and a time in the
        # future (every live lock's expiry) as <invalid>.
        {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    spec: BranchLockSpec
    status: BranchLockStatus = BranchLockStatus()


# ------------------------------------------------------------------------------------ AutoMergePolicy


class LabelSelectorRequirement(_Model):
    key: Annotated[str, Field(min_length=1, max_length=317)]
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """In, NotIn, Exists or DoesNotExist."""
    values: list[Annotated[str, Field(max_length=63)]] = []
    """The label values for In and NotIn; empty for Exists and DoesNotExist."""

    # As Kubernetes' own label selectors: In/NotIn without values, or Exists with some, can mean nothing.
    cel_rules: ClassVar[list[dict[str, str]]] = [
        {"rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
         "message": "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"},
    ]


class LabelSelector(_Model):
    match_labels: dict[str, str] = {}
    """Labels the Branch must have, each with exactly this value."""
    match_expressions: list[LabelSelectorRequirement] = []
    """Label requirements the Branch must meet, all of them."""


# Go-style, each number short enough to say at most 31 days (2678400s): an absurd one is refused up front.
DURATION_PATTERN = r"^([0-9]{1,7}(\.[0-9]{1,9})?(h|m|s))+$"
# Five whitespace-separated fields or a macro: the count only (cron field ranges are the webhook's to check).
CRON_PATTERN = r"^\s*((?i:@(yearly|annually|monthly|weekly|daily|midnight|hourly))|[^\s@]+(\s+[^\s@]+){4})\s*$"
# Longer than any sensible timeout, and far from where adding it to a time overflows.
MAX_TIMEOUT_HOURS = 10 * 8760


class MergeWindow(_Model):
    """When merging is allowed or denied, like an Argo CD sync window."""

    kind: Literal["allow", "deny"]
    """allow: merges only inside such windows; deny: never inside one (deny wins)."""
    schedule: Annotated[
        str, Field(min_length=1, max_length=128, pattern=CRON_PATTERN,
                   description="Cron (5 fields) for the window starts, e.g. 0 9 * * 1-5")
    ]
    duration: Annotated[
        str, Field(max_length=32, pattern=DURATION_PATTERN, description="e.g. 9h, 1h30m (max 31 days)")
    ]
    time_zone: Annotated[str, Field(min_length=1, max_length=64, description="IANA time zone, e.g. Asia/Seoul")] = "UTC"

    cel_rules: ClassVar[list[dict[str, str]]] = [
        {"rule": "duration(self.duration) > duration('0s') && duration(self.duration) <= duration('744h')",
         "message": "duration must be more than 0s and at most 744h (31 days)"},
    ]


class MergeFreeze(_Model):
    """No auto-merge for any matching branch while set (until the time in until, if given)."""

    reason: Annotated[str, Field(min_length=1, max_length=1024)]
    """Why merging is frozen, shown in the Frozen reason."""
    until: datetime | None = None
    """When the freeze lifts by itself (RFC 3339); without it, only removing the freeze lifts it."""


class AutoMergePolicySpec(_Model):
    enabled: bool = True
    """Whether the policy merges at all; false blocks the branches it governs with AutoMergeDisabled."""
    require_validation: Annotated[bool, Field(description="Block when indexing validation failed")] = True
    block_on_conflicts: Annotated[bool, Field(description="Block when OMS reports conflicts")] = True
    timeout_hours: Annotated[
        float | None,
        Field(gt=0, le=MAX_TIMEOUT_HOURS,
              description="Auto-merge only within this many hours of indexing completion (at most 10 years)"),
    ] = 24
    branch_selector: LabelSelector | None = None
    """Label selector on Branches; with branchNamePatterns, a branch must match both."""
    branch_name_patterns: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_BRANCH_NAME)]],
        Field(description="Globs on spec.branchName, e.g. feature/*"),
    ] = []
    target_branches: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_BRANCH_NAME)]],
        Field(description="Target branches this policy applies to; empty = any"),
    ] = []
    priority: Annotated[int, Field(ge=-1000, le=1000, description="Highest priority wins")] = 0
    dry_run: Annotated[bool, Field(description="Record WouldMerge instead of merging")] = False
    block_on_locks: Annotated[bool, Field(description="Block while another lock is held on the branch")] = True
    block_on_target_locks: Annotated[
        bool, Field(description="Block while a lock is held on the target branch's Branch")
    ] = True
    min_records_indexed: Annotated[
        int | None, Field(ge=0, description="Block when the indexing run indexed fewer records")
    ] = None
    merge_windows: Annotated[
        list[MergeWindow], Field(max_length=32, description="Allow/deny windows; deny beats allow")
    ] = []
    freeze: MergeFreeze | None = None
    allow_manual_merge_with_failed_validation: Annotated[
        bool, Field(description="Let an oms.dev/merge-request merge a branch whose validation failed")
    ] = False


class AutoMergePolicyStatus(_Model):
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The metadata.generation the status describes."""
    matched_branches: Annotated[int | None, Field(ge=0)] = None
    """Branches the policy matches."""
    governed_branches: Annotated[
        int | None, Field(ge=0, description="Matched branches this policy wins (highest priority)")
    ] = None
    last_evaluation_time: datetime | None = None
    """When the operator last evaluated the policy."""
    conditions: Annotated[list[Condition], Field(max_length=16)] = []
    """Accepted: the policy is valid and in force (invalid or conflicting policies are ignored whole)."""


class AutoMergePolicy(_Model):
    KIND: ClassVar[str] = "AutoMergePolicy"
    PLURAL: ClassVar[str] = "automergepolicies"
    SINGULAR: ClassVar[str] = "automergepolicy"
    SHORT_NAMES: ClassVar[list[str]] = ["amp"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, str | int]]] = [
        {"name": "Enabled", "type": "boolean", "jsonPath": ".spec.enabled"},
        {"name": "Priority", "type": "integer", "jsonPath": ".spec.priority"},
        {"name": "DryRun", "type": "boolean", "jsonPath": ".spec.dryRun"},
        {"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"},
        {"name": "Matched", "type": "integer", "jsonPath": ".status.matchedBranches"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    spec: AutoMergePolicySpec
    status: AutoMergePolicyStatus = AutoMergePolicyStatus()


KINDS: tuple[type[Branch] | type[BranchLock] | type[AutoMergePolicy], ...] = (Branch, BranchLock, AutoMergePolicy)
