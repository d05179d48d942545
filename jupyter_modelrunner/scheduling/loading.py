"""Loading a runner: one load per runner key however many requests wait for it, the wait until the engine answers,
and the memory of starts that failed, so a model whose engine refuses its settings is not started on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

import httpx

from ..engines.base import MODE_COMPLETION, MODE_RERANK, Engine, Launch, ModelFacts, RunConfig
from ..errors import UnsuitableModel
from ..store import Model
from .errors import EngineFailed
from .runner import Runner, RunnerKey
from .standby import Standby, StandbyKeeper
from .supervision import spawn

log = logging.getLogger(__name__)

#: How often the engine's health endpoint is asked while it starts.
HEALTH_POLL_SECONDS = 0.05
#: Said in a start failure, which later requests get at once.
NOT_RETRIED = "It is not started again with these settings: change them (`configure`) to try again"

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """At most one task per key: later callers wait for the task in flight. The task is shielded, so one caller
    giving up (a closed browser tab) does not cancel the load others wait for."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[T]] = {}

    def __bool__(self) -> bool:
        return bool(self._tasks)

    async def run(self, key: K, start: Callable[[], Coroutine[Any, Any, T]]) -> T:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(start())
            self._tasks[key] = task
            task.add_done_callback(lambda _t, k=key: self._tasks.pop(k, None))
        return await asyncio.shield(task)

    def cancel_all(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()


def plan_inputs(config: RunConfig, request_context: int | None) -> Hashable:
    """What a start plan is made from, besides the engine, the model and the mode: the settings that reach the
    engine (not keep_alive, which it never sees) and a request's own context."""
    return (config.context_size, tuple(config.runtime_flags), config.think, config.reasoning_budget,
            request_context)


class FailedStarts:
    """Engines that exited while starting, per runner key and the plan inputs they were started with. A later
    request with the same inputs gets the same error at once, without a process; new settings or another model
    (another digest, so another key) start it again."""

    def __init__(self) -> None:
        self._failed: dict[RunnerKey, tuple[Hashable, str]] = {}

    def check(self, key: RunnerKey, inputs: Hashable) -> None:
        """Raise the remembered failure of this plan, if any."""
        failed = self._failed.get(key)
        if failed is not None and failed[0] == inputs:
            raise EngineFailed(failed[1])

    def remember(self, key: RunnerKey, inputs: Hashable, error: EngineFailed) -> None:
        self._failed[key] = (inputs, str(error))

    def forget(self, model_id: str) -> None:
        """The model's settings changed (`configure`): its engines may start again."""
        for key in [k for k in self._failed if k.model_id == model_id]:
            del self._failed[key]

    def __len__(self) -> int:
        return len(self._failed)


async def wait_ready(runner: Runner, timeout: float, on_event: Callable[[str, dict[str, Any]], None]) -> None:
    """Poll the engine's health endpoint until it answers 200, reporting progress every second (vLLM takes half a
    minute or more). An engine that exits meanwhile raises `runner.failure` at once, with its reason first."""
    started = time.monotonic()
    deadline = started + timeout
    next_report = started + 1.0
    assert runner.client is not None
    while time.monotonic() < deadline:
        if time.monotonic() >= next_report:
            next_report += 1.0
            on_event("loading", {"model": runner.model.short_id, "engine": runner.key.engine,
                                 "elapsed": round(time.monotonic() - started, 1),
                                 "log": runner.log[-1] if runner.log else ""})
        if runner.exited.is_set():
            raise runner.failure("could not start", note=NOT_RETRIED)
        try:
            response = await runner.client.get(runner.launch.health_path, timeout=2.0)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.exited.wait(), HEALTH_POLL_SECONDS)
    raise EngineFailed(
        f"{runner.key.engine} did not become ready for {runner.name} within {timeout:.0f} s. "
        f"Last lines of its log:\n{runner.log_tail(15)}"
    )


def check_mode(model: Model, name: str, mode: str) -> None:
    """Refuse a use the model was not made for, before an engine starts for it: reranking needs a reranker (a
    classification head), and a reranker cannot chat."""
    reranker = ModelFacts.of(model).reranker
    if mode == MODE_RERANK and not reranker:
        raise UnsuitableModel(
            f"{name} is not a reranker: rerank and score need a model with a classification head (a cross-encoder "
            "such as bge-reranker, a *ForSequenceClassification model; in GGUF, rank pooling or classifier labels). "
            "Use embeddings to compare texts with other models.")
    if mode == MODE_COMPLETION and reranker:
        raise UnsuitableModel(f"{name} is a reranker: it scores documents against a query (POST v1/rerank or "
                              "v1/score) and cannot chat or complete text.")


async def start_process(engine: Engine, launch: Launch, standby: Standby | None,
                        short_id: str) -> asyncio.subprocess.Process:
    """The engine's process: the standby told which model to become, or a new one."""
    if standby is not None:
        log.info("handing %s for %s to the standby (pid %d): %s", engine.name, short_id, standby.process.pid,
                 " ".join(launch.argv))
        return await StandbyKeeper.hand_over(standby, engine.handover(launch, standby.spec))
    log.info("starting %s for %s: %s", engine.name, short_id, " ".join(launch.argv))
    return await spawn(launch.argv, launch.env)
