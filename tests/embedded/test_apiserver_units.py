"""Unit tests of the pure parts: patches and selectors."""

from __future__ import annotations

from typing import Any

import pytest

from branch_operator.embedded.apiserver.errors import ApiError
from branch_operator.embedded.apiserver.patch import PatchError, json_equal, json_patch, merge_patch
from branch_operator.embedded.apiserver.selectors import parse_field_selector, parse_label_selector


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # The examples of RFC 7386, appendix A.
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_merge_patch_is_copy_on_write() -> None:
    untouched = {"deep": [1, 2]}
    target = {"a": {"b": 1}, "keep": untouched}
    patched = merge_patch(target, {"a": {"b": 2}})
    assert target == {"a": {"b": 1}, "keep": untouched}
    assert patched["keep"] is untouched


def test_json_patch_rfc6902_examples() -> None:
    assert json_patch({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}]) == {"foo": "bar", "baz": "qux"}
    assert json_patch({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}]) == {
        "foo": ["bar", "qux", "baz"]
    }
    assert json_patch({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}]) == {"foo": "bar"}
    assert json_patch({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}]) == {"foo": ["bar", "baz"]}
    moved = json_patch(
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
    )
    assert moved == {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}
    assert json_patch(
        {"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}]
    ) == {"foo": ["all", "cows", "eat", "grass"]}
    assert json_patch({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}]) == {"/": 9, "~1": 10}
    assert json_patch({"foo": 1}, [{"op": "replace", "path": "", "value": {"bar": 2}}]) == {"bar": 2}
    with pytest.raises(PatchError):
        json_patch({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}])
    with pytest.raises(PatchError):
        json_patch({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}])
    with pytest.raises(PatchError):
        json_patch({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/b/c"}])
    with pytest.raises(PatchError):
        json_patch({"a": [1]}, [{"op": "replace", "path": "/a/01", "value": 2}])
    with pytest.raises(ApiError) as exc:
        json_patch({}, [{"op": "frobnicate", "path": "/a"}])
    assert exc.value.code == 400


def test_json_patch_copy_does_not_alias() -> None:
    doc = {"a": {"x": 1}}
    patched = json_patch(
        doc, [{"op": "copy", "from": "/a", "path": "/b"}, {"op": "replace", "path": "/b/x", "value": 2}]
    )
    assert patched == {"a": {"x": 1}, "b": {"x": 2}} and doc == {"a": {"x": 1}}


def test_json_equality_distinguishes_booleans_from_numbers() -> None:
    assert json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not json_equal(True, 1) and not json_equal([0], [False])


def test_label_selectors() -> None:
    def match(selector: str, labels: dict[str, str]) -> bool:
        predicate = parse_label_selector(selector)
        assert predicate is not None
        return predicate({"metadata": {"labels": labels}})

    assert match("a=1", {"a": "1"}) and not match("a=1", {"a": "2"})
    assert match("a==1,b", {"a": "1", "b": ""}) and not match("a==1,b", {"a": "1"})
    assert match("a!=1", {}) and not match("a!=1", {"a": "1"})
    assert match("env in (prod, staging),!debug", {"env": "prod"})
    assert not match("env in (prod,staging)", {}) and match("env notin (prod,staging)", {})
    assert match("example.com/tier=web", {"example.com/tier": "web"})
    assert parse_label_selector("") is None
    with pytest.raises(ApiError):
        parse_label_selector("a in b")


def test_field_selectors() -> None:
    predicate = parse_field_selector("metadata.name=x,involvedObject.kind!=Pod,spec.enabled=true")
    assert predicate is not None
    assert predicate({"metadata": {"name": "x"}, "involvedObject": {"kind": "Branch"}, "spec": {"enabled": True}})
    assert not predicate({"metadata": {"name": "x"}, "involvedObject": {"kind": "Pod"}, "spec": {"enabled": True}})
    with pytest.raises(ApiError):
        parse_field_selector("metadata.name")
