"""OMS_LOG_FORMAT / --log-format: the formatter's fields (tests/e2e/test_json_logs.py runs the real process)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from branch_operator.cli.main import build_parser
from branch_operator.ops.logformat import JsonLogFormatter, setup_logging


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("test.logformat")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_common_fields_first_then_extras(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.warning("lock %s expired", "held-1", extra={"namespace": "team-a", "branch": "b1", "event_id": "e1"})
    [record] = lines(stream)
    assert list(record)[:4] == ["timestamp", "level", "logger", "message"]
    assert record["timestamp"].endswith("Z") and record["level"] == "WARNING"
    assert record["logger"] == "test.logformat" and record["message"] == "lock held-1 expired"
    assert (record["namespace"], record["branch"], record["event_id"]) == ("team-a", "b1", "e1")


def test_kopf_object_reference_becomes_namespace_and_branch(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    ref = {"apiVersion": "oms.dev/v1alpha1", "kind": "Branch", "name": "b1", "uid": "u", "namespace": "team-a"}
    logger.info("Handler 'x' succeeded.", extra={"k8s_ref": ref, "k8s_skip": False, "settings": object()})
    logger.info("policy", extra={"k8s_ref": {**ref, "kind": "AutoMergePolicy", "name": "p"}})
    branch, policy = lines(stream)
    assert (branch["namespace"], branch["branch"]) == ("team-a", "b1")
    assert not {"k8s_ref", "k8s_skip", "settings"} & branch.keys()
    assert policy["object"] == "AutoMergePolicy/p" and "branch" not in policy


def test_a_traceback_stays_in_its_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    [record] = lines(stream)
    assert "RuntimeError: boom" in record["exc_info"]


def test_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMS_LOG_FORMAT", raising=False)
    assert build_parser().parse_args(["crds"]).log_format == "text"
    monkeypatch.setenv("OMS_LOG_FORMAT", "json")
    assert build_parser().parse_args(["crds"]).log_format == "json"
    assert build_parser().parse_args(["--log-format", "text", "crds"]).log_format == "text"
    with pytest.raises(ValueError, match="text, json"):
        setup_logging("INFO", "yaml")  # type: ignore[arg-type]
