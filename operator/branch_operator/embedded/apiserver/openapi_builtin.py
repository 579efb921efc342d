"""OpenAPI schemas of the built-in kinds the embedded server serves, and of the meta types they refer to.

Abridged from kube-apiserver's: the fields the server keeps and kubectl shows, with kube-apiserver's
descriptions shortened, so ``kubectl explain`` reads like the real thing. Definition names are
kube-apiserver's, so a client that looks one up by name finds it.
"""

from __future__ import annotations

from typing import Any

Doc = dict[str, Any]

_REF = "#/components/schemas/"
_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
OBJECT_META = _META + "ObjectMeta"
TIME = _META + "Time"
MICRO_TIME = _META + "MicroTime"


def _s(description: str, type_: str = "string", **extra: Any) -> Doc:
    return {"type": type_, "description": description, **extra}


def _ref(name: str, description: str) -> Doc:
    return {"allOf": [{"$ref": _REF + name}], "description": description}


def _time(description: str) -> Doc:
    return _ref(TIME, description)


def _map(description: str) -> Doc:
    return {"type": "object", "description": description, "additionalProperties": {"type": "string", "default": ""}}


def _obj(description: str, properties: dict[str, Doc], **extra: Any) -> Doc:
    return {"type": "object", "description": description, "properties": properties, **extra}


def _preserve(description: str) -> Doc:
    return {"type": "object", "description": description, "x-kubernetes-preserve-unknown-fields": True}


_OBJECT_REFERENCE = _obj("ObjectReference contains enough information to let you inspect or modify the referred "
                         "object.", {
    "apiVersion": _s("API version of the referent."),
    "fieldPath": _s("If referring to a piece of an object instead of an entire object, the field of it."),
    "kind": _s("Kind of the referent."),
    "name": _s("Name of the referent."),
    "namespace": _s("Namespace of the referent."),
    "resourceVersion": _s("Specific resourceVersion to which this reference is made, if any."),
    "uid": _s("UID of the referent."),
}, **{"x-kubernetes-map-type": "atomic"})

META_DEFINITIONS: dict[str, Doc] = {
    OBJECT_META: _obj("ObjectMeta is metadata that all persisted resources must have, which includes all objects "
                      "users must create.", {
        "annotations": _map("Annotations is an unstructured key value map stored with a resource that may be set "
                            "by external tools to store and retrieve arbitrary metadata."),
        "creationTimestamp": _time("CreationTimestamp is a timestamp representing the server time when this "
                                   "object was created. Populated by the system. Read-only."),
        "deletionGracePeriodSeconds": _s("Number of seconds allowed for this object to gracefully terminate.",
                                         "integer", format="int64"),
        "deletionTimestamp": _time("DeletionTimestamp is the time after which this resource will be deleted. "
                                   "Set by the server when a graceful deletion is requested. Read-only."),
        "finalizers": {"type": "array", "items": {"type": "string", "default": ""},
                       "description": "Must be empty before the object is deleted from the registry.",
                       "x-kubernetes-list-type": "set"},
        "generateName": _s("GenerateName is an optional prefix, used by the server, to generate a unique name "
                           "ONLY IF the Name field has not been provided."),
        "generation": _s("A sequence number representing a specific generation of the desired state. Populated "
                         "by the system. Read-only.", "integer", format="int64"),
        "labels": _map("Map of string keys and values that can be used to organize and categorize (scope and "
                       "select) objects."),
        "managedFields": {"type": "array", "description": "ManagedFields maps workflow-id and version to the set "
                          "of fields that are managed by that workflow.",
                          "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        "name": _s("Name must be unique within a namespace. Cannot be updated."),
        "namespace": _s("Namespace defines the space within which each name must be unique. Cannot be updated."),
        "ownerReferences": {"type": "array", "description": "List of objects depended by this object.",
                            "items": {"$ref": _REF + _META + "OwnerReference"},
                            "x-kubernetes-list-map-keys": ["uid"], "x-kubernetes-list-type": "map"},
        "resourceVersion": _s("An opaque value that represents the internal version of this object. Populated by "
                              "the system. Read-only."),
        "selfLink": _s("Deprecated: selfLink is a legacy read-only field that is no longer populated."),
        "uid": _s("UID is the unique in time and space value for this object. Populated by the system. "
                  "Read-only."),
    }),
    _META + "OwnerReference": _obj("OwnerReference contains enough information to let you identify an owning "
                                   "object.", {
        "apiVersion": _s("API version of the referent."),
        "blockOwnerDeletion": _s("If true, the owner cannot be deleted from the key-value store until this "
                                 "reference is removed.", "boolean"),
        "controller": _s("If true, this reference points to the managing controller.", "boolean"),
        "kind": _s("Kind of the referent."),
        "name": _s("Name of the referent."),
        "uid": _s("UID of the referent."),
    }, required=["apiVersion", "kind", "name", "uid"], **{"x-kubernetes-map-type": "atomic"}),
    _META + "ListMeta": _obj("ListMeta describes metadata that synthetic resources must have.", {
        "continue": _s("continue may be set if the user set a limit on the number of items returned."),
        "remainingItemCount": _s("The number of subsequent items in the list which are not included in this "
                                 "list response.", "integer", format="int64"),
        "resourceVersion": _s("String that identifies the server's internal version of this object."),
        "selfLink": _s("Deprecated: selfLink is a legacy read-only field that is no longer populated."),
    }),
    TIME: {"type": "string", "format": "date-time",
           "description": "Time is a wrapper around time.Time which supports correct marshaling to YAML and JSON."},
    MICRO_TIME: {"type": "string", "format": "date-time",
                 "description": "MicroTime is version of Time with microsecond level precision."},
    _META + "Status": _obj("Status is a return value for calls that don't return other objects.", {
        "apiVersion": _s("APIVersion defines the versioned schema of this representation of an object."),
        "code": _s("Suggested HTTP return code for this status, 0 if not set.", "integer", format="int32"),
        "details": _preserve("Extended data associated with the reason."),
        "kind": _s("Kind is a string value representing the REST resource this object represents."),
        "message": _s("A human-readable description of the status of this operation."),
        "metadata": _ref(_META + "ListMeta", "Standard list metadata."),
        "reason": _s("A machine-readable description of why this operation is in the \"Failure\" status."),
        "status": _s("Status of the operation. One of: \"Success\" or \"Failure\"."),
    }),
    _META + "Patch": {"type": "object",
                      "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH "
                                     "request body."},
    _META + "DeleteOptions": _obj("DeleteOptions may be provided when deleting an API object.", {
        "apiVersion": _s("APIVersion defines the versioned schema of this representation of an object."),
        "dryRun": {"type": "array", "items": {"type": "string", "default": ""},
                   "description": "When present, indicates that modifications should not be persisted."},
        "gracePeriodSeconds": _s("The duration in seconds before the object should be deleted.", "integer",
                                 format="int64"),
        "kind": _s("Kind is a string value representing the REST resource this object represents."),
        "preconditions": _preserve("Must be fulfilled before a deletion is carried out."),
        "propagationPolicy": _s("Whether and how garbage collection will be performed."),
    }),
}

_EVENT_SOURCE = _obj("EventSource contains information for an event.", {
    "component": _s("Component from which the event is generated."),
    "host": _s("Node name on which the event is generated."),
})

BUILTIN_DEFINITIONS: dict[str, Doc] = {
    "io.k8s.api.core.v1.Namespace": _obj("Namespace provides a scope for Names. Use of multiple namespaces is "
                                         "optional.", {
        "spec": _obj("Spec defines the behavior of the Namespace.", {
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""},
                           "description": "Finalizers is an opaque list of values that must be empty to "
                                          "permanently remove object from storage."},
        }),
        "status": _obj("Status describes the current status of a Namespace.", {
            "phase": _s("Phase is the current lifecycle phase of the namespace.", enum=["Active", "Terminating"]),
        }),
    }),
    "io.k8s.api.core.v1.Event": _obj("Event is a report of an event somewhere in the cluster.", {
        "action": _s("What action was taken/failed regarding to the Regarding object."),
        "count": _s("The number of times this event has occurred.", "integer", format="int32"),
        "eventTime": _ref(MICRO_TIME, "Time when this Event was first observed."),
        "firstTimestamp": _time("The time at which the event was first recorded."),
        "involvedObject": {**_OBJECT_REFERENCE, "description": "The object that this event is about."},
        "lastTimestamp": _time("The time at which the most recent occurrence of this event was recorded."),
        "message": _s("A human-readable description of the status of this operation."),
        "reason": _s("This should be a short, machine understandable string that gives the reason for the "
                     "transition into the object's current status."),
        "related": {**_OBJECT_REFERENCE, "description": "Optional secondary object for more complex actions."},
        "reportingComponent": _s("Name of the controller that emitted this Event."),
        "reportingInstance": _s("ID of the controller instance."),
        "series": _obj("Data about the Event series this event represents.", {
            "count": _s("Number of occurrences in this series up to the last heartbeat time.", "integer",
                        format="int32"),
            "lastObservedTime": _ref(MICRO_TIME, "Time of the last occurrence observed."),
        }),
        "source": {**_EVENT_SOURCE, "description": "The component reporting this event."},
        "type": _s("Type of this event (Normal, Warning), new types could be added in the future."),
    }, required=["metadata", "involvedObject"]),
    "io.k8s.api.events.v1.Event": _obj("Event is a report of an event somewhere in the cluster.", {
        "action": _s("What action was taken/failed regarding to the regarding object."),
        "eventTime": _ref(MICRO_TIME, "The time at which the event was first recorded."),
        "note": _s("A human-readable description of the status of this operation."),
        "reason": _s("Why the action was taken."),
        "regarding": {**_OBJECT_REFERENCE, "description": "The object this Event is about."},
        "related": {**_OBJECT_REFERENCE, "description": "Optional secondary object for more complex actions."},
        "reportingController": _s("The name of the controller that emitted this Event."),
        "reportingInstance": _s("The ID of the controller instance."),
        "series": _preserve("Data about the Event series this event represents."),
        "type": _s("The type of this event (Normal, Warning)."),
    }, required=["eventTime"]),
    "io.k8s.api.core.v1.ConfigMap": _obj("ConfigMap holds configuration data for pods to consume.", {
        "binaryData": _map("BinaryData contains the binary data, base64-encoded."),
        "data": _map("Data contains the configuration data."),
        "immutable": _s("Immutable, if set to true, ensures that data stored in the ConfigMap cannot be updated.",
                        "boolean"),
    }),
    "io.k8s.api.core.v1.Secret": _obj("Secret holds secret data of a certain type.", {
        "data": _map("Data contains the secret data, base64-encoded."),
        "immutable": _s("Immutable, if set to true, ensures that data stored in the Secret cannot be updated.",
                        "boolean"),
        "stringData": _map("stringData allows specifying non-binary secret data in string form (write-only)."),
        "type": _s("Used to facilitate programmatic handling of secret data."),
    }),
    "io.k8s.api.coordination.v1.Lease": _obj("Lease defines a lease concept.", {
        "spec": _obj("spec contains the specification of the Lease.", {
            "acquireTime": _ref(MICRO_TIME, "acquireTime is a time when the current lease was acquired."),
            "holderIdentity": _s("holderIdentity contains the identity of the holder of a current lease."),
            "leaseDurationSeconds": _s("leaseDurationSeconds is a duration that candidates for a lease need to "
                                       "wait to force acquire it.", "integer", format="int32"),
            "leaseTransitions": _s("leaseTransitions is the number of transitions of a lease between holders.",
                                   "integer", format="int32"),
            "renewTime": _ref(MICRO_TIME, "renewTime is a time when the current holder of a lease has last "
                                          "updated the lease."),
        }),
    }),
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition": _obj(
        "CustomResourceDefinition represents a resource that should be exposed on the API server.", {
            "spec": _preserve("spec describes how the user wants the resources to appear."),
            "status": _preserve("status indicates the actual state of the CustomResourceDefinition."),
        }, required=["spec"]),
    "io.k8s.api.admissionregistration.v1.ValidatingWebhookConfiguration": _obj(
        "ValidatingWebhookConfiguration describes the configuration of an admission webhook that accepts or "
        "rejects an object without changing it.", {
            "webhooks": {"type": "array", "description": "Webhooks is a list of webhooks and the affected "
                         "resources and operations.",
                         "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }),
}

# (group, version, kind) of built-ins outside the core group → kube-apiserver's definition name.
BUILTIN_KINDS: dict[tuple[str, str, str], str] = {
    ("events.k8s.io", "v1", "Event"): "io.k8s.api.events.v1.Event",
    ("coordination.k8s.io", "v1", "Lease"): "io.k8s.api.coordination.v1.Lease",
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"):
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
    ("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration"):
        "io.k8s.api.admissionregistration.v1.ValidatingWebhookConfiguration",
}
