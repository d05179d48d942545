"""Per-model runner settings (context size, keep_alive, engine flags), kept in the store directory.

They survive restarts and are shared by every process using the store, so `configure` in a terminal
applies to the model the notebook server loads next.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from filelock import FileLock

from .engines.base import RunConfig
from .errors import ModelRunnerError

CONFIG_FILE = "runner-config.json"
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class InvalidSetting(ModelRunnerError, ValueError):
    http_status = 400


def parse_keep_alive(value: str | float | int) -> float:
    """`5m`, `300`, `1h`, `-1` (never unload), `0` (unload after each request) → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise InvalidSetting(
                f"Invalid keep_alive {value!r}: use seconds or a duration like 30s, 10m, 1h; -1 means never."
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0 and seconds != -1:
        raise InvalidSetting(f"Invalid keep_alive {value!r}: the only negative value is -1 (never unload).")
    return seconds


def format_keep_alive(seconds: float | None) -> str:
    if seconds is None:
        return "default"
    if seconds < 0:
        return "never"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


class RunConfigFile:
    """`runner-config.json` in the store: `{model id: {context_size, keep_alive, runtime_flags}}`."""

    def __init__(self, store_root: Path) -> None:
        self.path = Path(store_root) / CONFIG_FILE
        self._lock = FileLock(Path(store_root) / "locks" / "runner-config.lock")

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ModelRunnerError(f"The runner settings file {self.path} is unreadable ({exc}).") from exc
        return data if isinstance(data, dict) else {}

    def get(self, model_id: str) -> RunConfig:
        entry = self._read().get(model_id) or {}
        return RunConfig(
            context_size=entry.get("context_size"),
            runtime_flags=tuple(entry.get("runtime_flags") or ()),
            keep_alive=entry.get("keep_alive"),
        )

    def update(self, model_id: str, **changes: Any) -> RunConfig:
        with self._lock:
            data = self._read()
            entry = {**data.get(model_id, {}), **{k: v for k, v in changes.items() if v is not None}}
            if "runtime_flags" in entry:
                entry["runtime_flags"] = list(entry["runtime_flags"])
            data[model_id] = entry
            tmp = self.path.with_name(f".{CONFIG_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2))
            tmp.replace(self.path)
        return self.get(model_id)
