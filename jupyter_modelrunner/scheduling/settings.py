"""Per-model settings: context size, keep_alive, thinking defaults and engine flags, one name from the route
(`engines/_configure`, `configure`) to the file.

They live in the store directory, survive restarts and are shared by every process using the store, so `configure`
in a terminal applies to the model the notebook server loads next. The file keeps its first name,
`runner-config.json`, so stores written by earlier versions open unchanged. (The engines read the settings as a
`RunConfig`, their own name for the same record.)
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..engines.base import MODE_COMPLETION, RunConfig
from ..engines.select import EngineChoice
from ..errors import ModelRunnerError
from ..lease import write_atomically
from ..store import Model
from .errors import InvalidSetting
from .runner import Runner, RunnerState

SETTINGS_FILE = "runner-config.json"
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h|d)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


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


class SettingsFile:
    """The settings file in the store: `{model id: {context_size, keep_alive, think, reasoning_budget,
    runtime_flags}}`, updated under a file lock and replaced atomically."""

    def __init__(self, store_root: Path) -> None:
        self.path = Path(store_root) / SETTINGS_FILE
        self._lock = FileLock(Path(store_root) / "locks" / "runner-config.lock")

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ModelRunnerError(f"The model settings file {self.path} is unreadable ({exc}).") from exc
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

    def save(self, model: Model, choice: EngineChoice, *, memory_budget: int, context_size: int | None = None,
             keep_alive: str | float | None = None, runtime_flags: Sequence[str] | None = None,
             think: bool | None = None, reasoning_budget: int | None = None) -> RunConfig:
        """Check and persist a model's settings (disk only, safe in a worker thread); flags are checked against the
        allowlist of the engine that runs it, and a start with them is planned, so what would fail fails now.

        `think` and `reasoning_budget` are the model's thinking defaults (engine flags like llama-server's
        `--reasoning-budget` mean the same and are read into them; these win). They apply from the next load."""
        if context_size is not None and context_size <= 0:
            raise InvalidSetting("The context size must be a positive number of tokens.")
        if reasoning_budget is not None and (isinstance(reasoning_budget, bool) or not isinstance(reasoning_budget, int)
                                             or reasoning_budget < -1):
            raise InvalidSetting("The reasoning budget is a number of tokens: 0 for no thinking, -1 for no limit.")
        flags = choice.engine.check_flags(runtime_flags) if runtime_flags is not None else None
        if flags is not None or context_size is not None:
            current = self.get(model.id)
            choice.engine.plan(model, RunConfig(context_size or current.context_size,
                                                current.runtime_flags if flags is None else flags),
                               budget=memory_budget)
        seconds = parse_keep_alive(keep_alive) if keep_alive is not None else None
        return self.update(model.id, context_size=context_size, keep_alive=seconds, runtime_flags=flags, think=think,
                           reasoning_budget=reasoning_budget)

    def describe(self, name: str, model_id: str, default_keep_alive: float) -> dict[str, Any]:
        """A model's saved settings as `GET engines/_configure` shows them (disk only)."""
        config = self.get(model_id)
        return {"model": name, "model_id": model_id, "context_size": config.context_size,
                "runtime_flags": list(config.runtime_flags), "keep_alive": config.keep_alive,
                "think": config.think, "reasoning_budget": config.reasoning_budget,
                "default_keep_alive": default_keep_alive}


def apply_to_runners(runners: Iterable[Runner], model_id: str, config: RunConfig,
                     reschedule: Callable[[Runner], None]) -> None:
    """Changed settings reach the model's loaded runners (on the event loop): a keep_alive at once (`reschedule`
    sets the runner's idle timer again); thinking settings, which an engine reads when it starts, by restarting a
    chat runner once its requests are done (its next request waits for that)."""
    for runner in list(runners):
        if runner.key.model_id != model_id:
            continue
        plan = runner.plan
        if runner.key.mode == MODE_COMPLETION and plan is not None and (
                (config.think is not None and config.think != plan.think)
                or (config.reasoning_budget is not None and config.reasoning_budget != plan.reasoning_budget)):
            runner.restart_reason = "restarting with new thinking settings"
        if config.keep_alive is None:
            continue
        runner.keep_alive = config.keep_alive
        runner.pinned = config.keep_alive < 0
        runner.expires_at = None if runner.pinned else runner.last_used + config.keep_alive
        if runner.in_use == 0 and runner.state == RunnerState.READY:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing is scheduled yet anyway
                reschedule(runner)
