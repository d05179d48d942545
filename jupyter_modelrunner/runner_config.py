"""Per-model runner settings (context size, keep_alive, thinking, engine flags), kept in the store directory.

They survive restarts and are shared by every process using the store, so `configure` in a terminal
applies to the model the notebook server loads next.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from filelock import FileLock

from .engines.base import RunConfig
from .errors import ModelRunnerError
from .lease import write_atomically

CONFIG_FILE = "runner-config.json"
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h|d)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class InvalidSetting(ModelRunnerError, ValueError):
    http_status = 400


def parse_keep_alive(value: str | float | int) -> float:
    """How long an idle model stays loaded, in seconds, from anything a user or a client sends: seconds (`300`),
    a duration (`30s`, `10m`, `1h`, Go's `1h30m` and `300ms` as Ollama clients send them), `-1` or any negative
    value or `never` for "never unload" (returned as -1), `0` for "unload after each request".

    The one parser of keep_alive: `configure`, the server's setting and Ollama's per-request field all use it.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidSetting(f"Invalid keep_alive {value!r}: use seconds or a duration like 30s, 10m, 1h; -1 means "
                             "never.")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        negative = text.startswith("-")
        body = text.lstrip("+-")
        if text == "never":
            return -1.0
        if re.fullmatch(_NUMBER, body):
            seconds = float(body)
        elif body and re.fullmatch(rf"(?:{_PART.pattern})+", body):
            seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(body))
        else:
            raise InvalidSetting(f"Invalid keep_alive {value!r}: use seconds or a duration like 30s, 10m, 1h; -1 "
                                 "means never.")
        seconds = -seconds if negative else seconds
    return -1.0 if seconds < 0 else seconds


def format_keep_alive(seconds: float | None) -> str:
    if seconds is None:
        return "default"
    if seconds < 0:
        return "never"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


class RunConfigFile:
    """`runner-config.json` in the store: `{model id: {context_size, keep_alive, think, reasoning_budget,
    runtime_flags}}`."""

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
            think=entry.get("think"),
            reasoning_budget=entry.get("reasoning_budget"),
        )

    def update(self, model_id: str, **changes: Any) -> RunConfig:
        with self._lock:
            data = self._read()
            entry = {**data.get(model_id, {}), **{k: v for k, v in changes.items() if v is not None}}
            if "runtime_flags" in entry:
                entry["runtime_flags"] = list(entry["runtime_flags"])
            data[model_id] = entry
            # A random temporary name, created exclusively: a link planted beside the file is never written through.
            write_atomically(self.path, json.dumps(data, indent=2), mode=0o644)
        return self.get(model_id)
