"""The scheduler's server-wide configuration (`c.Scheduler.…`), on the object that reads it.

A Jupyter server, `serve` and the embedded runner pass their config (`--Scheduler.keep_alive=10m`, a
`jupyter_server_config.py`); code and tests pass the same names as keyword arguments. Per-model settings, which
override some of these for one model, are `settings.py`'s.
"""

from __future__ import annotations

import os
from typing import Any

from traitlets import Bool, Integer, TraitError, TraitType, default, observe, validate
from traitlets.config import LoggingConfigurable

from ..engines import hardware as hw
from ..errors import ModelRunnerError
from .settings import parse_keep_alive

DEFAULT_KEEP_ALIVE = 300.0
#: Share of the machine's RAM, and of the GPUs' memory, the engines may use together when no budget is set.
RAM_SHARE, VRAM_SHARE = 0.8, 0.9
#: Requests that may wait for one model beyond its engine's slots when nothing is configured.
DEFAULT_MAX_WAITING = 64


class Duration(TraitType[float, float | int | str]):
    """A keep_alive: seconds or a duration as users write it (`30s`, `10m`, `1h`, `-1`, `never`), kept in seconds
    (-1: for good), so a config file, a command line and code may each say it their way."""

    default_value = DEFAULT_KEEP_ALIVE
    info_text = "seconds or a duration (30s, 10m, 1h; -1: never unload)"

    def validate(self, obj: Any, value: Any) -> float:
        try:
            return parse_keep_alive(value)
        except ModelRunnerError as exc:
            raise TraitError(f"{type(obj).__name__}.{self.name}: {exc}") from exc


def standby_from_env() -> bool:
    """The standby setting of a server when its config says nothing: on unless $MODEL_RUNNER_VLLM_STANDBY is off."""
    return os.environ.get("MODEL_RUNNER_VLLM_STANDBY", "1").strip().lower() not in ("0", "false", "no", "off")


class SchedulerConfig(LoggingConfigurable):
    """The scheduler's traits and how their defaults follow the machine; `Scheduler` reads them.

    A subclass sets `hardware` before calling this `__init__` (the budgets' defaults are shares of it), and may
    react to `vllm_standby` changing (`_standby_changed`)."""

    hardware: hw.Hardware

    keep_alive = Duration(
        config=True,
        help="""How long an idle model stays loaded, unless configured per model: seconds or a duration (30s, 10m,
        1h); -1 keeps models loaded until the server stops, 0 unloads after each request.""",
    )
    memory_budget = Integer(
        0, config=True,
        help="""Bytes of memory the engines may use together (weights and KV caches). Idle models are unloaded
        to make room, least recently used first; a model that cannot fit is refused. 0: 80% of the machine's RAM.""",
    )
    gpu_memory_budget = Integer(
        0, config=True,
        help="""Bytes of GPU memory the engines may use together, a budget apart from RAM: each plan counts its
        weights, KV caches and the engine's device runtime; idle models are evicted for a new one, least recently
        used first. 0: 90% of the NVIDIA GPUs' memory.""",
    )
    max_waiting_requests = Integer(
        DEFAULT_MAX_WAITING, config=True,
        help="""Requests that may wait for one model beyond those its engine works on at once (its slots); the
        next gets 503 with Retry-After instead of waiting minutes. 0: no bound.""",
    )
    vllm_standby = Bool(
        False, config=True,
        help="""Keep a vLLM interpreter with its imports done (7-8 s of a CPU start) waiting for the next safetensors
        model, and a new one after each load, when vLLM is installed and the memory budget has room (~1 GiB). On by
        default in a Jupyter server and `serve` ($MODEL_RUNNER_VLLM_STANDBY=0 turns it off there); off in a
        Scheduler made in code unless asked for.""",
    )

    @default("memory_budget")
    def _memory_budget_default(self) -> int:
        return int(self.hardware.memory_total * RAM_SHARE)

    @default("gpu_memory_budget")
    def _gpu_memory_budget_default(self) -> int:
        return int(sum(gpu.memory_total for gpu in self.hardware.gpus) * VRAM_SHARE)

    @validate("memory_budget", "gpu_memory_budget")
    def _check_budget(self, proposal: dict[str, Any]) -> int:
        """0 means the machine's share, so the trait always holds the bytes in force."""
        name, value = proposal["trait"].name, proposal["value"]
        if value < 0:
            raise TraitError(f"Scheduler.{name} must be 0 (the default share) or a number of bytes, not {value}.")
        return value or getattr(self, f"_{name}_default")()

    @validate("max_waiting_requests")
    def _check_max_waiting(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 0:
            raise TraitError(f"Scheduler.max_waiting_requests must be 0 (no bound) or more, not {proposal['value']}.")
        return proposal["value"]

    @observe("vllm_standby")
    def _vllm_standby_changed(self, change: dict[str, Any]) -> None:
        self._standby_changed(change["new"])

    def _standby_changed(self, enabled: bool) -> None:
        """Hook for the subclass that keeps the standby."""

    @property
    def vram_budget(self) -> int:
        """GPU memory the engines may use together (the budget's name for `gpu_memory_budget`)."""
        return self.gpu_memory_budget
