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


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields tolerated when reading objects."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)


class Condition(_Model):
    """The standard Kubernetes condition shape (metav1.Condition)."""

    type: Annotated[str, Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)]
    status: Literal["True", "False", "Unknown"]
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    last_transition_time: datetime
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    message: Annotated[str, Field(max_length=32768)] = ""


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
    errors: Annotated[list[Annotated[str, Field(max_length=MAX_ERROR_LENGTH)]], Field(max_length=MAX_ERRORS)] = []
    errors_total: Annotated[int | None, Field(
        ge=0, description="How many errors Funnel reported, when more than errors holds (the first ones)")] = None


class IndexingStatus(_Model):
    indexing_id: Annotated[str | None, Field(max_length=253)] = None
    event_id: Annotated[str | None, Field(max_length=253, description="CloudEvent id last applied")] = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: Annotated[float | None, Field(ge=0)] = None
    records_indexed: Annotated[int | None, Field(ge=0)] = None
    result: IndexingResult | None = None
    validation: ValidationStatus | None = None


class MergeCheck(_Model):
    """One auto-merge check of the decision trace (see docs/policies.md)."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    passed: bool
    reason: Annotated[BlockReason | None, Field(description="What a failure of this check is reported as")] = None
    evidence: Annotated[str, Field(max_length=1024)] = ""


class ManualMergeRequest(_Model):
    """The last break-glass request (annotation oms.dev/merge-request) for this indexing result, and its outcome."""

    reason: Annotated[str, Field(max_length=1024)]
    requested_by: Annotated[str | None, Field(max_length=253)] = None
    outcome: MergeDecision | None = None
    message: Annotated[str | None, Field(max_length=4096)] = None
    at: datetime | None = None


class MergeStatus(_Model):
    decision: MergeDecision | None = None
    reasons: Annotated[list[BlockReason], Field(max_length=16)] = []
    message: Annotated[str | None, Field(max_length=4096)] = None
    policy: Annotated[str | None, Field(max_length=253)] = None
    merged_at: datetime | None = None
    target_branch: Annotated[str | None, Field(max_length=MAX_BRANCH_NAME)] = None
    evaluated_at: datetime | None = None
    policy_generation: Annotated[int | None, Field(ge=0)] = None
    event_id: Annotated[str | None, Field(max_length=253, description="Indexing CloudEvent id decided on")] = None
    checks: Annotated[list[MergeCheck], Field(max_length=16)] = []
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
    message: Annotated[str, Field(max_length=MAX_ERROR_LENGTH)] = ""


class OutboxMessage(_Model):
    """A NATS message to publish (audit record, notification) with its de-duplication id."""

    subject: Annotated[str, Field(min_length=1, max_length=253)]
    msg_id: Annotated[str, Field(min_length=1, max_length=512)]
    data: Annotated[str, Field(max_length=32768)]


class Outbox(_Model):
    """The messages owed for the last event applied to this Branch.

    Written in the same status update as the state change they describe, published after it, and
    re-published (same ids, dropped by JetStream as duplicates) when the event is redelivered — so a
    crash between the state change and the publish loses nothing and doubles nothing. The next event to
    replace it publishes it once more first, while ``writtenAt`` is inside JetStream's duplicate window.
    """

    key: Annotated[str, Field(min_length=1, max_length=253, description="the CloudEvent id these messages belong to")]
    messages: Annotated[list[OutboxMessage], Field(max_length=32)] = []
    written_at: Annotated[datetime | None, Field(description="When the status write holding it was made")] = None


class AdminActionStatus(_Model):
    """The last administrator request the operator handled (``oms.dev/force-unlock``, ``oms.dev/set-state``)."""

    action: Annotated[str, Field(max_length=63, description="force-unlock or set-state")]
    requested_by: Annotated[str, Field(max_length=253, description="oms.dev/requested-by, else the last manager")]
    reason: Annotated[str, Field(max_length=1024)] = ""
    at: datetime
    result: Annotated[str, Field(max_length=1024, description="What the operator did")] = ""
    request_id: Annotated[str | None, Field(max_length=63, description="oms.dev/request-id, if one was set")] = None


class PendingResult(_Model):
    """A result (completed/failed) that arrived before its run's started event, kept until it does.

    Funnel's subjects are consumed independently, so a result can overtake its started event by longer
    than the consumer's short redelivery wait (a crash, a backlog, API errors). Instead of losing it,
    the operator keeps it here and applies it right after the started event of the same run.
    """

    event_id: Annotated[str, Field(min_length=1, max_length=253)]
    indexing_id: Annotated[str, Field(min_length=1, max_length=253)]
    subject: Annotated[str, Field(min_length=1, max_length=253)]
    event: Annotated[str, Field(max_length=65536, description="the CloudEvent, structured JSON")]
    received_at: datetime | None = None


class BranchStatus(_Model):
    phase: Phase | None = None
    phase_transition_time: datetime | None = None
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    indexing: IndexingStatus | None = None
    merge: MergeStatus | None = None
    conflicts: Annotated[list[Conflict], Field(max_length=256)] = []
    last_admin_action: AdminActionStatus | None = None
    conditions: Annotated[list[Condition], Field(max_length=16)] = []
    recent_event_ids: Annotated[
        list[Annotated[str, Field(max_length=253)]],
        Field(max_length=MAX_RECENT_EVENTS, description="CloudEvent ids recently applied (idempotency)"),
    ] = []
    outbox: Outbox | None = None
    pending_result: PendingResult | None = None


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
    holder: Annotated[str, Field(min_length=1, max_length=253)]
    reason: Annotated[str, Field(max_length=1024)] = ""
    indexing_id: Annotated[str | None, Field(max_length=253)] = None
    ttl_seconds: Annotated[int | None, Field(ge=1, le=7 * 24 * 3600)] = None


class BranchLockStatus(_Model):
    acquired_at: datetime | None = None
    renewed_at: datetime | None = None


class BranchLock(_Model):
    KIND: ClassVar[str] = "BranchLock"
    PLURAL: ClassVar[str] = "branchlocks"
    SINGULAR: ClassVar[str] = "branchlock"
    SHORT_NAMES: ClassVar[list[str]] = ["brl"]
    PRINTER_COLUMNS: ClassVar[list[dict[str, str | int]]] = [
        {"name": "Branch", "type": "string", "jsonPath": ".spec.branch"},
        {"name": "Type", "type": "string", "jsonPath": ".spec.lockType"},
        {"name": "Holder", "type": "string", "jsonPath": ".spec.holder"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]

    spec: BranchLockSpec
    status: BranchLockStatus = BranchLockStatus()


# ------------------------------------------------------------------------------------ AutoMergePolicy


class LabelSelectorRequirement(_Model):
    key: Annotated[str, Field(min_length=1, max_length=317)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[Annotated[str, Field(max_length=63)]] = []


class LabelSelector(_Model):
    match_labels: dict[str, str] = {}
    match_expressions: list[LabelSelectorRequirement] = []


# Go-style, each number short enough to say at most 31 days (2678400s): an absurd one is refused up front.
DURATION_PATTERN = r"^([0-9]{1,7}(\.[0-9]{1,9})?(h|m|s))+$"
# Five whitespace-separated fields or a macro: the count only (cron field ranges are the webhook's to check).
CRON_PATTERN = r"^\s*((?i:@(yearly|annually|monthly|weekly|daily|midnight|hourly))|[^\s@]+(\s+[^\s@]+){4})\s*$"
# Longer than any sensible timeout, and far from where adding it to a time overflows.
MAX_TIMEOUT_HOURS = 10 * 8760


class MergeWindow(_Model):
    """When merging is allowed or denied, like an Argo CD sync window."""

    kind: Literal["allow", "deny"]
    schedule: Annotated[
        str, Field(min_length=1, max_length=128, pattern=CRON_PATTERN,
                   description="Cron (5 fields) for the window starts, e.g. 0 9 * * 1-5")
    ]
    duration: Annotated[
        str, Field(max_length=32, pattern=DURATION_PATTERN, description="e.g. 9h, 1h30m (max 31 days)")
    ]
    time_zone: Annotated[str, Field(min_length=1, max_length=64, description="IANA time zone, e.g. Asia/Seoul")] = "UTC"


class MergeFreeze(_Model):
    """No auto-merge for any matching branch while set (until ``until``, if given)."""

    reason: Annotated[str, Field(min_length=1, max_length=1024)]
    until: datetime | None = None


class AutoMergePolicySpec(_Model):
    enabled: bool = True
    require_validation: Annotated[bool, Field(description="Block when indexing validation failed")] = True
    block_on_conflicts: Annotated[bool, Field(description="Block when OMS reports conflicts")] = True
    timeout_hours: Annotated[
        float | None,
        Field(gt=0, le=MAX_TIMEOUT_HOURS,
              description="Auto-merge only within this many hours of indexing completion (at most 10 years)"),
    ] = 24
    branch_selector: LabelSelector | None = None
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
    matched_branches: Annotated[int | None, Field(ge=0)] = None
    governed_branches: Annotated[
        int | None, Field(ge=0, description="Matched branches this policy wins (highest priority)")
    ] = None
    last_evaluation_time: datetime | None = None
    conditions: Annotated[list[Condition], Field(max_length=16)] = []


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
