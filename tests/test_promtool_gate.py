"""The promtool tests cannot silently not run in CI: without promtool they fail there, and skip elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from .promtool import promtool_path


def test_missing_promtool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no promtool on it
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="promtool not found"):
        promtool_path()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="promtool not found"):
        promtool_path()
