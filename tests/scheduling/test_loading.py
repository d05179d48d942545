"""Remembered start failures (pure bookkeeping: no engine)."""

from __future__ import annotations

import pytest

from jupyter_modelrunner.engines.base import RunConfig
from jupyter_modelrunner.scheduling import EngineFailed, RunnerKey
from jupyter_modelrunner.scheduling.loading import FailedStarts, plan_inputs

KEY = RunnerKey("llama.cpp", "sha256:aaa", "completion")


def test_a_failed_plan_fails_again_at_once_and_only_that_plan():
    failures = FailedStarts()
    refused = plan_inputs(RunConfig(runtime_flags=("--cache-type-k", "bogus")), None)
    failures.remember(KEY, refused, EngineFailed("error: bogus\nllama.cpp could not start"))
    with pytest.raises(EngineFailed, match=r"^error: bogus\nllama\.cpp could not start$"):
        failures.check(KEY, refused)
    # the same settings with only another keep_alive (the engine never sees it) are the same plan
    with pytest.raises(EngineFailed):
        failures.check(KEY, plan_inputs(RunConfig(runtime_flags=("--cache-type-k", "bogus"), keep_alive=5), None))
    failures.check(KEY, plan_inputs(RunConfig(), None))  # other flags: try
    failures.check(KEY, plan_inputs(RunConfig(runtime_flags=("--cache-type-k", "bogus")), 4096))  # other context
    failures.check(RunnerKey("llama.cpp", "sha256:bbb", "completion"), refused)  # another model
    failures.check(RunnerKey("llama.cpp", "sha256:aaa", "embedding"), refused)  # another mode
    failures.forget("sha256:aaa")  # configure
    failures.check(KEY, refused)
    assert len(failures) == 0
