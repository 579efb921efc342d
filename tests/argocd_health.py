"""Runs the Argo CD health checks of manifests/gitops/argocd/health with a real Lua 5.1 interpreter
(lupa), as Argo CD's gopher-lua does: the object is the global ``obj``, the script returns a table with
``status`` and ``message``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lupa import lua51

HEALTH_DIR = Path(__file__).resolve().parents[1] / "manifests" / "gitops" / "argocd" / "health"


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, Mapping):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(kind: str, obj: Mapping[str, Any]) -> tuple[str, str]:
    """(status, message) that Argo CD shows for ``obj`` of ``oms.dev/<kind>``."""
    script = (HEALTH_DIR / f"oms.dev_{kind}.lua").read_text()
    lua = lua51.LuaRuntime()
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(script)
    return str(result["status"]), str(result["message"])
