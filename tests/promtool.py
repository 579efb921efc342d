"""The real ``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it).

Missing: the test skips on a workstation and fails in CI (``CI`` set), so it cannot silently not run there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def promtool_path() -> Path:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found: apt-get install prometheus (Debian's package ships promtool)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return Path(found)


def promtool(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool_path()), *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)


def check_metrics(exposition: str) -> str:
    """promtool's lint findings for a /metrics body ("" when clean)."""
    proc = promtool("check", "metrics", stdin=exposition)
    return "" if proc.returncode == 0 and not (proc.stdout + proc.stderr).strip() else proc.stdout + proc.stderr
