"""The server's JSONPath against client-go's own jsonpath test cases (k8s.io/client-go/util/jsonpath), and the
tableconvertor's cell rules."""

from __future__ import annotations

from typing import Any

import pytest

from branch_operator.embedded.apiserver.jsonpath import JsonPath, JsonPathError, go_float, go_json
from branch_operator.embedded.apiserver.tables import CrdPrinter, human_duration

STORE: dict[str, Any] = {
    "Name": "jsonpath",
    "Book": [
        {"Category": "reference", "Author": "Nigel Rees", "Title": "Sayings of the Centurey", "Price": 8.95},
        {"Category": "fiction", "Author": "Evelyn Waugh", "Title": "Sword of Honour", "Price": 12.99},
        {"Category": "fiction", "Author": "Herman Melville", "Title": "Moby Dick", "Price": 8.99},
    ],
    "Bicycle": [
        {"Color": "red", "Price": 19.95, "IsNew": True},
        {"Color": "green", "Price": 20.01, "IsNew": False},
    ],
    "Labels": {"engieer": 10, "web/html": 15, "k8s-app": 20},
    "Employees": {"jason": "manager", "dan": "clerk"},
}

CASES = [
    ("plain", "hello jsonpath", None, "hello jsonpath"),
    ("filter", "{[?(@<5)]}", [2, 6, 3, 7], "2 3"),
    ("quote", '{"{"}', None, "{"),
    ("union", "{[1,3,4]}", [0, 1, 2, 3, 4], "1 3 4"),
    ("array", "{[0:2]}", ["Monday", "Tudesday"], "Monday Tudesday"),
    ("variable", "hello {.Name}", STORE, "hello jsonpath"),
    ("dict/", "{$.Labels.web/html}", STORE, "15"),
    ("dict/", "{$.Employees.jason}", STORE, "manager"),
    ("dict-", "{.Labels.k8s-app}", STORE, "20"),
    ("nest", "{.Bicycle[*].Color}", STORE, "red green"),
    ("allarray", "{.Book[*].Author}", STORE, "Nigel Rees Evelyn Waugh Herman Melville"),
    ("allfields", "{.Bicycle.*.Color}", STORE, "red green"),
    ("recurfields", "{..Price}", STORE, "8.95 12.99 8.99 19.95 20.01"),
    ("recurdotfields", "{...Price}", STORE, "8.95 12.99 8.99 19.95 20.01"),
    ("lastarray", "{.Book[-1:].Author}", STORE, "Herman Melville"),
    ("recurarray", "{..Book[2].Title}", STORE, "Moby Dick"),
    ("bool", "{.Bicycle[?(@.IsNew==true)].Color}", STORE, "red"),
    ("dictkey", "{.Employees['dan']}", STORE, "clerk"),
    ("filter-string", '{.Book[?(@.Category=="fiction")].Author}', STORE, "Evelyn Waugh Herman Melville"),
    ("filter-float", "{.Book[?(@.Price>9.5)].Title}", STORE, "Sword of Honour"),
    ("exists", "{.Bicycle[?(@.IsNew)].Color}", STORE, "red green"),
    ("escaped-dot", "{.a\\.b}", {"a.b": "dotted", "a": {"b": "nested"}}, "dotted"),
    ("map-as-json", "{.Labels}", STORE, '{"engieer":10,"k8s-app":20,"web/html":15}'),
]


@pytest.mark.parametrize(("name", "template", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_client_go_cases(name: str, template: str, data: Any, expected: str) -> None:
    assert JsonPath(template).execute(data) == expected


@pytest.mark.parametrize(
    ("template", "data"),
    [
        ("{.Missing}", STORE),  # without AllowMissingKeys a missing key is an error
        ("{.Book[5]}", STORE),  # array index out of bounds
        ("{.Name[0]}", STORE),  # not an array
        ('{.Book[?(@.Price=="8.95")]}', STORE),  # Go templates refuse to compare a float with a string
        ("{.Book[?(@.Category=", STORE),
        ("{.Book[x]}", STORE),
    ],
)
def test_client_go_errors(template: str, data: Any) -> None:
    with pytest.raises(JsonPathError):
        JsonPath(template).execute(data)


def test_missing_keys_allowed_yield_nothing() -> None:
    path = JsonPath("{.status.conditions[?(@.type==\"Ready\")].status}", allow_missing_keys=True)
    assert path.find_results({"metadata": {}}) == [[]]
    assert path.find_results({"status": {"conditions": [{"type": "Other"}, {"status": "x"}]}}) == [[]]
    assert path.find_results({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}) == [["True"]]


def test_go_spellings() -> None:
    assert go_json({"b": [1, 2.5], "a": "<&>"}) == '{"a":"\\u003c\\u0026\\u003e","b":[1,2.5]}'
    assert [go_float(x, json_style=False) for x in (1250.0, 0.5, 1e6, 123456.0, 1e-5, -2.5)] == [
        "1250", "0.5", "1e+06", "123456", "1e-05", "-2.5"]  # fmt: skip
    assert [go_float(x, json_style=True) for x in (1e6, 1e21, 1e-7, 1e-6)] == ["1000000", "1e+21", "1e-7", "0.000001"]


def test_human_duration() -> None:
    # k8s.io/apimachinery/pkg/util/duration's test table.
    cases = {1: "1s", 70: "70s", 190: "3m10s", 300: "5m", 601: "10m", 3 * 3600 + 20 * 60: "3h20m",
             8 * 3600: "8h", 47 * 3600: "47h", 49 * 3600: "2d1h", 8 * 86400: "8d", 367 * 86400: "367d",
             (2 * 365 + 1) * 86400: "2y1d", 9 * 365 * 86400: "9y", -1.5: "0s", -3: "<invalid>"}  # fmt: skip
    assert {k: human_duration(k) for k in cases} == cases


def test_crd_cells() -> None:
    printer = CrdPrinter([
        {"name": "N", "type": "integer", "jsonPath": ".n"}, {"name": "F", "type": "number", "jsonPath": ".n"},
        {"name": "B", "type": "boolean", "jsonPath": ".b"}, {"name": "S", "type": "string", "jsonPath": ".l"},
        {"name": "D", "type": "date", "jsonPath": ".d"}, {"name": "X", "type": "integer", "jsonPath": ".b"},
        {"name": "Z", "type": "string", "jsonPath": ".l[9]"},
    ])  # fmt: skip
    obj = {"metadata": {"name": "o"}, "n": 1.9, "b": False, "l": ["x"], "d": "2025-01-01T00:00:00Z"}
    now = 1735689600.0 + 300  # 2025-01-01T00:05:00Z
    # A value of another JSON type is a nil cell; a bad index is a nil cell, not an error.
    assert printer.cells(obj, now) == ["o", 1, 1.9, False, '["x"]', "5m", None, None]
    assert printer.cells({**obj, "d": "yesterday"}, now)[5] == "<invalid>"
    assert [c["name"] for c in CrdPrinter([]).columns] == ["Name", "Age"]  # serveDefaultColumnsIfEmpty
