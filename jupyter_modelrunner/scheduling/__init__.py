"""Scheduling: engine processes started on demand, shared, kept warm, put to sleep, evicted and cleaned up.

One module per concern: `runner` (a runner and its transport), `loading` (single-flight loads, readiness, failed
starts), `budget` (RAM and GPU memory as pure policy), `idle` (keep_alive, sleep and wake), `standby` (the vLLM
interpreter kept ready), `supervision` (starting and stopping processes), `logs` (engine output), `settings`
(per-model settings), `config` (the server-wide settings, `c.Scheduler.…`) and `scheduler` (the `Scheduler` that
composes them).
"""

from .config import DEFAULT_KEEP_ALIVE
from .errors import EngineFailed, InvalidSetting, NotEnoughMemory
from .runner import EngineStream, Runner, RunnerKey, RunnerState
from .scheduler import Scheduler
from .settings import SettingsFile, parse_keep_alive
from .standby import Standby

__all__ = ["DEFAULT_KEEP_ALIVE", "EngineFailed", "EngineStream", "InvalidSetting", "NotEnoughMemory", "Runner",
           "RunnerKey", "RunnerState", "Scheduler", "SettingsFile", "Standby", "parse_keep_alive"]
