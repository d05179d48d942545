"""The scheduler's exceptions, each carrying the sentence a user should read (see `jupyter_modelrunner.errors`)."""

from __future__ import annotations

from ..errors import ModelRunnerError


class NotEnoughMemory(ModelRunnerError):
    """A model that does not fit the RAM or GPU budget, now or ever; the message has the numbers."""

    http_status = 507


class EngineFailed(ModelRunnerError):
    """The engine process could not start, or stopped while serving; carries its reason and last log lines."""

    http_status = 502


class InvalidSetting(ModelRunnerError, ValueError):
    """A per-model setting (keep_alive, reasoning budget…) that cannot be understood."""

    http_status = 400
