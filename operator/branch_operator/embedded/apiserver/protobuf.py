"""Kubernetes protobuf request bodies (``application/vnd.kubernetes.protobuf``) for a few built-in types.

kubectl's typed commands (``kubectl create namespace``, ``kubectl create secret``, ``kubectl create
configmap``) send protobuf, as to any real server. Without the Go types' generated schemas, each type
decoded here has its field numbers written out (from ``k8s.io/api/core/v1/generated.proto``); other
types, and fields not listed (managedFields, ownerReferences...), are refused or dropped rather than guessed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

from branch_operator.embedded.apiserver.errors import ApiError, bad_request

PROTOBUF = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"

Fields = list[tuple[int, int, Any]]  # (field number, wire type, int value or bytes)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise bad_request("the protobuf body is truncated")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise bad_request("the protobuf body is truncated")
            yield number, wire, data[pos : pos + size]
            pos += size
        elif wire in (1, 5):  # fixed64/fixed32: no field decoded here uses them
            pos += 8 if wire == 1 else 4
        else:
            raise bad_request(f"unsupported protobuf wire type {wire}")


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _entry(value: bytes) -> tuple[str, bytes]:
    key, item = "", b""
    for number, _, v in _fields(value):
        if number == 1:
            key = _text(v)
        elif number == 2:
            item = v
    return key, item


def _metadata(data: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    names = {1: "name", 2: "generateName", 3: "namespace", 6: "resourceVersion"}
    for number, _, value in _fields(data):
        if number in names:
            meta[names[number]] = _text(value)
        elif number in (11, 12):
            key, item = _entry(value)
            meta.setdefault("labels" if number == 11 else "annotations", {})[key] = _text(item)
        elif number == 14:
            meta.setdefault("finalizers", []).append(_text(value))
    return meta


def _namespace(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, _, value in _fields(data):
        if number == 1:
            obj["metadata"] = _metadata(value)
        elif number == 2:
            finalizers = [_text(v) for n, _, v in _fields(value) if n == 1]
            obj["spec"] = {"finalizers": finalizers} if finalizers else {}
    return obj


def _secret(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        if number == 1:
            obj["metadata"] = _metadata(value)
        elif number in (2, 4):
            key, item = _entry(value)
            if number == 2:
                obj.setdefault("data", {})[key] = base64.b64encode(item).decode()
            else:
                obj.setdefault("stringData", {})[key] = _text(item)
        elif number == 3:
            obj["type"] = _text(value)
        elif number == 5 and wire == 0:
            obj["immutable"] = bool(value)
    return obj


def _configmap(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        if number == 1:
            obj["metadata"] = _metadata(value)
        elif number in (2, 3):
            key, item = _entry(value)
            if number == 2:
                obj.setdefault("data", {})[key] = _text(item)
            else:
                obj.setdefault("binaryData", {})[key] = base64.b64encode(item).decode()
        elif number == 4 and wire == 0:
            obj["immutable"] = bool(value)
    return obj


_DECODERS: dict[tuple[str, str], Callable[[bytes], dict[str, Any]]] = {
    ("v1", "Namespace"): _namespace,
    ("v1", "Secret"): _secret,
    ("v1", "ConfigMap"): _configmap,
}


def decode(raw: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object: the ``k8s\\0`` magic, then a ``runtime.Unknown``
    envelope (type meta, raw object bytes)."""
    if not raw.startswith(_MAGIC):
        raise bad_request("the protobuf body does not start with the Kubernetes magic number")
    api_version = kind = ""
    body = b""
    for number, _, value in _fields(raw[len(_MAGIC) :]):
        if number == 1:
            for n, _, v in _fields(value):
                if n == 1:
                    api_version = _text(v)
                elif n == 2:
                    kind = _text(v)
        elif number == 2:
            body = value
    decoder = _DECODERS.get((api_version, kind))
    if decoder is None:
        raise ApiError(
            415,
            f"the body of the request was in an unknown format ({PROTOBUF} for {api_version}/{kind}) - "
            "accepted media types include: application/json, application/yaml",
        )
    return {"apiVersion": api_version, "kind": kind, **decoder(body)}
