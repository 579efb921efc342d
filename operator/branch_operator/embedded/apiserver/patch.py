"""Patch documents: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

Both are copy-on-write: the target is never mutated, untouched subtrees are shared with the result.
The store relies on that: stored objects are immutable, so a status patch costs a few shallow copies
rather than a deep copy of the whole object, and "did this section change?" is an identity check.
"""

from __future__ import annotations

from typing import Any

from branch_operator.embedded.apiserver.errors import ApiError, bad_request, cause, invalid

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = frozenset({MERGE_PATCH, JSON_PATCH, STRATEGIC_PATCH, APPLY_PATCH})
# In the real server's order: it lists them in its 415 message. Custom resources have no Go types for
# strategic merge to read patch strategies from, so their handler leaves it out.
_BUILTIN_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH)
_CUSTOM_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)


class PatchError(ApiError):
    """The patch is well-formed but cannot be applied (failed ``test``, missing path): 422 like the server."""

    def __init__(self, message: str) -> None:
        super().__init__(422, f"the server rejected our request due to an error in our request: {message}")


def check_patch_request(custom: bool, content_type: str, field_manager: str | None, force: bool) -> None:
    """What the real PATCH handler checks before it reads the body: the media type, then PatchOptions."""
    accepted = _CUSTOM_PATCH_TYPES if custom else _BUILTIN_PATCH_TYPES
    if content_type not in accepted:
        message = "the body of the request was in an unknown format - accepted media types include: "
        raise ApiError(415, message + ", ".join(accepted))
    causes: list[dict[str, str]] = []
    if content_type == APPLY_PATCH and not field_manager:
        causes.append(cause("FieldValueRequired", "fieldManager", "Required value: is required for apply patch"))
    if content_type != APPLY_PATCH and force:
        causes.append(cause("FieldValueForbidden", "force", "Forbidden: may not be specified for non-apply patch"))
    if causes:
        raise invalid("PatchOptions", "meta.k8s.io", "", causes)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strip_strategic_directives(patch: Any) -> Any:
    """Drop ``$patch``/``$setElementOrder/...`` keys so a strategic patch can be applied as a merge patch.

    List merging by merge keys is not emulated: lists are replaced, as with a merge patch.
    """
    if isinstance(patch, dict):
        return {k: strip_strategic_directives(v) for k, v in patch.items() if not k.startswith("$")}
    return patch


# ------------------------------------------------------------------------------------------ RFC 6902

_MISSING: Any = object()


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise bad_request(f"invalid JSON pointer: {path!r}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer: {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(token: str, size: int, *, for_add: bool) -> int:
    if for_add and token == "-":
        return size
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(f"invalid array index: {token!r}")
    idx = int(token)
    if idx > size or (idx == size and not for_add):
        raise PatchError(f"array index out of range: {idx}")
    return idx


def _get(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, dict):
            if token not in doc:
                return _MISSING
            doc = doc[token]
        elif isinstance(doc, list):
            try:
                doc = doc[_index(token, len(doc), for_add=False)]
            except PatchError:
                return _MISSING
        else:
            return _MISSING
    return doc


def _apply_at(doc: Any, tokens: list[str], op: str, value: Any) -> Any:
    """Return a copy of ``doc`` with ``op`` (add/remove/replace) applied at ``tokens``; copies the path only."""
    if not tokens:
        if op == "remove":
            raise PatchError("cannot remove the whole document")
        return value
    head, rest = tokens[0], tokens[1:]
    if isinstance(doc, dict):
        copy = dict(doc)
        if rest:
            if head not in copy:
                raise PatchError(f"path not found: /{head}")
            copy[head] = _apply_at(copy[head], rest, op, value)
        elif op == "add":
            copy[head] = value
        elif head not in copy:
            raise PatchError(f"path not found: /{head}")
        elif op == "remove":
            del copy[head]
        else:
            copy[head] = value
        return copy
    if isinstance(doc, list):
        items = list(doc)
        idx = _index(head, len(items), for_add=(op == "add" and not rest))
        if rest:
            items[idx] = _apply_at(items[idx], rest, op, value)
        elif op == "add":
            items.insert(idx, value)
        elif op == "remove":
            del items[idx]
        else:
            items[idx] = value
        return items
    raise PatchError(f"cannot traverse into a scalar at {head!r}")


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: unlike ``==``, ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def json_patch(doc: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be a list of operations")
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation:
            raise bad_request(f"invalid JSON patch operation: {operation!r}")
        op = operation["op"]
        tokens = _pointer(operation.get("path"))
        if op in ("add", "replace", "test"):
            if "value" not in operation:
                raise bad_request(f"JSON patch {op!r} needs a value")
            value = operation["value"]
        if op in ("add", "remove", "replace"):
            doc = _apply_at(doc, tokens, op, value if op != "remove" else None)
        elif op == "test":
            current = _get(doc, tokens)
            if current is _MISSING or not json_equal(current, value):
                raise PatchError(f"test failed at {operation['path']!r}")
        elif op in ("move", "copy"):
            source = _pointer(operation.get("from"))
            value = _get(doc, source)
            if value is _MISSING:
                raise PatchError(f"path not found: {operation.get('from')!r}")
            if op == "move":
                if tokens[: len(source)] == source and len(tokens) > len(source):
                    raise PatchError("cannot move a value into its own child")
                doc = _apply_at(doc, source, "remove", None)
            # Sharing ``value`` between two places is safe: every later change copies the path it touches.
            doc = _apply_at(doc, tokens, "add", value)
        else:
            raise bad_request(f"unsupported JSON patch operation: {op!r}")
    return doc
