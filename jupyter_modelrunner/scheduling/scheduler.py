"""The scheduler: the one object the service asks for runners. It composes the parts of this package.

One process per (engine, model digest, mode): two tags of one model share it. The first request for a model loads it
while concurrent requests wait for that one load (loading.py); idle runners unload, or sleep on a GPU, after their
keep_alive (idle.py); a new model that would not fit the memory budget first evicts idle runners, least recently used
first, and is refused with the numbers when it cannot fit at all (budget.py). A crashed engine is noticed the moment
it exits: in-flight requests fail with its last log lines, the next request starts it again; an engine that refuses
to start is not started again for the same settings (loading.FailedStarts). Engines run in their own process group
and die with their owner (supervision.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from ..distribution.progress import format_bytes
from ..engines import hardware as hw
from ..engines.base import CONTEXT_CONFIGURED, MODE_COMPLETION, MODES, Engine, RunConfig
from ..engines.select import EngineChoice, default_engines, select_engine
from ..errors import ModelRunnerError, Overloaded
from ..store import Model, Store
from .budget import Budget, Holding, Want, standby_fits
from .budget import make_room as plan_room
from .config import SchedulerConfig
from .errors import EngineFailed
from .idle import KeepAlive
from .loading import FailedStarts, SingleFlight, check_mode, plan_inputs, start_process, wait_ready
from .logs import EngineLogs
from .priority import SlotShare
from .runner import Runner, RunnerKey, RunnerState, client_for
from .settings import SettingsFile, apply_to_runners
from .standby import Standby, StandbyKeeper
from .supervision import runtime_folder, signal_group, terminate, watch

log = logging.getLogger(__name__)

class Scheduler(SchedulerConfig):
    """Owns the engine processes for one store. Create one per server (or CLI run), in its event loop.

    Its configuration (`keep_alive`, the memory budgets, `max_waiting_requests`, `vllm_standby`: config.py) comes
    from `config`/`parent` (`c.Scheduler.…`) or from keyword arguments, which win; `vram_budget` and `standby` are
    the older keyword spellings of `gpu_memory_budget` and `vllm_standby`, and None means the default."""

    def __init__(
        self,
        store: Store,
        *,
        engines: Sequence[Engine] | None = None,
        hardware: hw.Hardware | None = None,
        vram_budget: int | None = None,
        runtime_dir: Path | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        standby: bool | None = None,
        **traits: Any,
    ) -> None:
        self.store = store
        self.hardware = hardware or hw.probe()  # before the traits: the budgets' defaults are shares of it
        traits.setdefault("gpu_memory_budget", vram_budget)
        traits.setdefault("vllm_standby", standby)
        super().__init__(**{name: value for name, value in traits.items() if value is not None})
        self.engines = list(engines or default_engines())
        self.settings = SettingsFile(store.root)
        self.runners: dict[RunnerKey, Runner] = {}
        self._loads: SingleFlight[RunnerKey, Runner] = SingleFlight()
        self.failed_starts = FailedStarts()
        #: Requests per (model, mode) between `use` and its end (`max_waiting_requests` may wait beyond what runs).
        self._inside: dict[tuple[str, str], int] = {}
        #: One load or wake at a time decides what to evict, so two cannot both count the same free memory.
        self.admission = asyncio.Lock()
        self.on_event = on_event or (lambda kind, data: None)
        self._runtime_parent = runtime_dir
        self._runtime: Path | None = None
        self._tasks: set[asyncio.Task] = set()
        self.logs_of = EngineLogs(store.root / "logs")
        #: Keep an engine interpreter with its imports done for the next load (vLLM: see standby.py).
        self.standby = StandbyKeeper(self.engines, self.hardware, self._cache_dir,
                                     lambda size: standby_fits(size, self.holdings(), self.budget_now()),
                                     enabled=self.vllm_standby)
        self.idle = KeepAlive(self)
        self.stats = {"loads": 0, "load_failures": 0, "evictions": 0, "crashes": 0}

    def _standby_changed(self, enabled: bool) -> None:
        keeper = getattr(self, "standby", None)  # not made yet while the config is read
        if keeper is not None:
            keeper.enabled = enabled

    # -- choosing ------------------------------------------------------------------------------------

    def choose(self, name: str, engine: str | None = None) -> tuple[Model, EngineChoice]:
        """The model `name` resolves to and the engine that would run it, with the reason."""
        model = self.store.resolve(name)
        return model, select_engine(model, self.hardware, self.engines, forced=engine)

    # -- using ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, name: str, *, mode: str = MODE_COMPLETION, engine: str | None = None,
                  context_size: int | None = None, keep_alive: float | None = None,
                  background: bool = False) -> AsyncIterator[Runner]:
        """Hold a ready runner for `name` for the duration of one request, loading it if needed.

        `context_size` is a request's own wish (Ollama's `options.num_ctx`): it starts the engine with that
        context unless the model has a configured one, and restarts a loaded engine with another context once
        its requests in flight are done, as Ollama does. `keep_alive` (seconds; negative: for good) is how long this
        request wants the model kept after it: it can only make the runner stay longer, never shorten what another
        client's request asked for. A `background` request (work on data: `map`, a batch) then waits for a slot
        interactive requests leave free (priority.py).
        """
        if mode not in MODES:
            raise ModelRunnerError(f"Unknown mode {mode!r}; expected one of {', '.join(MODES)}.")
        # Resolving reads the index, manifest and config, and an engine's availability check looks at
        # installed packages: off the event loop, which may be the notebook server's.
        model = await asyncio.to_thread(self.store.resolve, name)
        queue_key = (model.id, mode)
        self._check_queue(model, mode)
        self._inside[queue_key] = self._inside.get(queue_key, 0) + 1
        try:
            async with self._use(model, name, mode, engine, context_size, keep_alive) as runner, \
                    runner.share.hold(background=background):
                yield runner
        finally:
            self._inside[queue_key] -= 1
            if not self._inside[queue_key]:
                del self._inside[queue_key]

    def _check_queue(self, model: Model, mode: str) -> None:
        """Refuse (503, Retry-After) a request when more than `max_waiting_requests` already wait for this model:
        answers that would come minutes late are worse than a prompt "try again", and a flood must not grow without
        end."""
        if not self.max_waiting_requests:
            return
        inside = self._inside.get((model.id, mode), 0)
        runner = self._runner_of(model.id, mode, None, (RunnerState.READY,))
        capacity = runner.choice.engine.capacity(runner.plan) if runner and runner.plan else 0
        waiting = inside - capacity
        if waiting >= self.max_waiting_requests:
            retry = 1 + waiting // max(1, capacity) if runner else 5
            raise Overloaded(f"{_label(model)} has {waiting} requests waiting already (at most "
                             f"{self.max_waiting_requests}: c.Scheduler.max_waiting_requests). Try again in {retry} s.",
                             retry_after=retry)

    @contextlib.asynccontextmanager
    async def _use(self, model: Model, name: str, mode: str, engine: str | None, context_size: int | None,
                   keep_alive: float | None) -> AsyncIterator[Runner]:
        asleep = self._runner_of(model.id, mode, engine, (RunnerState.SLEEPING, RunnerState.WAKING))
        if asleep is not None:
            await self.idle.wake(asleep)  # requests that arrive while it wakes wait for it here, they do not fail
        runner = self._runner_of(model.id, mode, engine, (RunnerState.READY,))
        while runner is not None and (_wants_other_context(runner, context_size) or runner.restart_reason):
            await runner.idle.wait()
            await self.stop(runner, runner.restart_reason or f"restarting with a context of {context_size} tokens")
            runner = self._runner_of(model.id, mode, engine, (RunnerState.READY,))
        if runner is None:  # the engine and model checks (~3 ms) only when something has to start
            await asyncio.to_thread(check_mode, model, name, mode)
            choice = await asyncio.to_thread(select_engine, model, self.hardware, self.engines, forced=engine)
            runner = await self._ensure(model, choice, mode, context_size)
        self.idle.lease(runner)
        try:
            yield runner
        finally:
            self.idle.release(runner, keep_alive)
            self.standby.touch()

    def _runner_of(self, model_id: str, mode: str, engine: str | None,
                   states: tuple[RunnerState, ...]) -> Runner | None:
        for runner in self.runners.values():
            if (runner.key.model_id == model_id and runner.key.mode == mode and runner.state in states
                    and engine in (None, runner.key.engine)):
                return runner
        return None

    async def load(self, name: str, *, mode: str = MODE_COMPLETION, engine: str | None = None,
                   context_size: int | None = None, keep_alive: float | None = None) -> Runner:
        """Load without a request (preload, `run -d`): the runner then idles out after its keep_alive."""
        async with self.use(name, mode=mode, engine=engine, context_size=context_size,
                            keep_alive=keep_alive) as runner:
            return runner

    # -- loading --------------------------------------------------------------------------------------

    async def _ensure(self, model: Model, choice: EngineChoice, mode: str, context_size: int | None = None) -> Runner:
        key = RunnerKey(choice.engine.name, model.id, mode)
        runner = self.runners.get(key)
        if runner is not None and runner.state == RunnerState.READY:
            return runner
        return await self._loads.run(key, lambda: self._load(key, model, choice, context_size))

    async def _load(self, key: RunnerKey, model: Model, choice: EngineChoice, context_size: int | None) -> Runner:
        engine = choice.engine
        config = await asyncio.to_thread(self.settings.get, model.id)
        inputs = plan_inputs(config, context_size)
        self.failed_starts.check(key, inputs)  # an engine that refused these settings is not started again
        plan = engine.plan(model, config, budget=self.memory_budget, request_context=context_size, mode=key.mode,
                           hardware=self.hardware, vram_budget=self.vram_budget)
        async with self.admission:
            await self.make_room(Want(_label(model), engine.name, plan.memory, plan.vram))
            workdir = Path(tempfile.mkdtemp(prefix=f"{engine.name.replace('.', '')}-", dir=self.runtime_dir))
            launch = engine.launch(model, workdir=workdir, config=config, hardware=self.hardware, mode=key.mode,
                                   cache_dir=self._cache_dir(engine), plan=plan)
            self.on_event("loading", {"model": model.short_id, "engine": engine.name, "reason": choice.reason})
            standby = await self.standby.take(engine)
            started = time.monotonic()
            process = await start_process(engine, launch, standby, model.short_id)
            keep_alive = config.keep_alive if config.keep_alive is not None else self.keep_alive
            runner = Runner(key, model, choice, launch, workdir, process, plan.memory, keep_alive, plan=plan,
                            context_size=plan.context_size, vram=plan.vram, started_monotonic=started,
                            share=SlotShare(engine.capacity(plan)))
            runner.phases = {"started_from": "standby" if standby else "new process",
                             "imports_done_ahead_seconds": standby.import_seconds if standby else None}
            if standby is not None:
                runner.log.extend(standby.output)
            runner.idle.set()
            runner.client = client_for(launch)
            self.runners[key] = runner
        loop = asyncio.get_running_loop()
        assert process.stdout is not None
        runner.tasks = [loop.create_task(self.logs_of.pump(process.stdout, runner.log, engine=engine.name,
                                                           model_id=model.id, short_id=model.short_id,
                                                           argv=launch.argv)),
                        loop.create_task(watch(runner, self._exited))]
        try:
            await wait_ready(runner, engine.load_timeout, self.on_event)
        except BaseException as exc:
            # The engine exited on its own while starting: it refuses this plan (a flag, the model), not a timeout.
            refused = isinstance(exc, EngineFailed) and runner.exited.is_set()
            self.stats["load_failures"] += 1
            await self.stop(runner, "failed to start")
            if refused:
                self.failed_starts.remember(key, inputs, exc)
            raise
        runner.context_size = await engine.reported_context(runner.client) or plan.context_size
        runner.phases["ready_seconds"] = round(time.monotonic() - runner.started_monotonic, 3)
        runner.state = RunnerState.READY
        self.stats["loads"] += 1
        self.on_event("ready", runner.status())
        if self.standby.offers(engine):
            self.background(self.standby.replace_when_quiet(self._busy))  # the next load gets one too
        return runner

    def _busy(self) -> bool:
        return bool(self._loads) or any(r.in_use for r in self.runners.values())

    def _cache_dir(self, engine: Engine) -> Path:
        return self.store.root / "cache" / engine.name.replace(".", "")

    async def prepare_standby(self) -> Standby | None:
        """Start the standby for the next load now, if an engine keeps one and memory allows (serverext calls it)."""
        return await self.standby.prepare()

    @property
    def _standby(self) -> Standby | None:
        # The vLLM standby tests look at the standby through this name.
        return self.standby.current

    # -- memory ---------------------------------------------------------------------------------------

    def holdings(self, *, keep: Runner | None = None) -> list[Holding]:
        """What every live runner holds now, as the budget policy sees it (`keep`: the one being made room for)."""
        return [Holding(r.key, r.name, r.memory_held, r.vram_held, r.last_used,
                               r.in_use == 0 and r.state in (RunnerState.READY, RunnerState.SLEEPING))
                for r in self.runners.values() if r.state != RunnerState.STOPPED and r is not keep]

    def budget_now(self) -> Budget:
        """The budgets, with what the machine has free now."""
        gpus = ", ".join(f"{g.name} ({format_bytes(g.memory_total)})" for g in self.hardware.gpus)
        return Budget(self.memory_budget, self.vram_budget, hw.memory_available(), gpus or "no GPU")

    async def make_room(self, want: Want, *, keep: Runner | None = None) -> None:
        """Carry out the budget's answer until `want` fits (call under the admission lock): stop the standby, evict
        idle runners in the order it gives; `NotEnoughMemory` when it cannot fit. The facts are read again after each
        round, as stopped engines give their real memory back."""
        while True:
            room = plan_room(want, self.holdings(keep=keep), self.budget_now(), standby_ram=self.standby.memory)
            if room.fits_now:
                return
            if room.stop_standby:  # cheaper to start again than a model
                await self.standby.stop()
            for key in room.evict:
                victim = self.runners.get(key)
                if victim is None:
                    continue
                self.stats["evictions"] += 1
                log.info("evicting %s to make room for %s", victim.name, want.label)
                await self.stop(victim, f"evicted to make room for {want.label}")

    # -- stopping -------------------------------------------------------------------------------------

    def background(self, coro: Any) -> None:
        """Run `coro` detached, keeping a reference so it is not garbage-collected mid-flight."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def unload(self, names: Sequence[str] = (), *, all: bool = False, engine: str | None = None) -> list[str]:
        """Stop the runners of `names` (any tag, digest or id), or every runner; returns what stopped."""
        if all:
            targets = list(self.runners.values())
        else:
            ids = {self.store.resolve(name).id for name in names}
            targets = [r for r in self.runners.values() if r.key.model_id in ids]
        if engine:
            targets = [r for r in targets if r.key.engine == engine]
        await asyncio.gather(*(self.stop(r, "unloaded") for r in targets))
        return [r.name for r in targets]

    async def shutdown(self) -> None:
        self.standby.enabled = False
        await self.standby.stop()
        self._loads.cancel_all()
        await asyncio.gather(*(self.stop(r, "shutting down") for r in list(self.runners.values())),
                             return_exceptions=True)
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None

    async def stop(self, runner: Runner, why: str) -> None:
        """Stop a runner's engine (terminate, wait, kill) and wait until its watcher has cleaned up after it."""
        if runner.state in (RunnerState.STOPPING, RunnerState.STOPPED):
            await runner.exited.wait()
            return
        runner.state = RunnerState.STOPPING
        if runner.idle_timer:
            runner.idle_timer.cancel()
        log.info("stopping %s for %s: %s", runner.key.engine, runner.name, why)
        await terminate(runner.process.pid, runner.exited.wait)
        self.on_event("unloaded", {"model": runner.model.short_id, "engine": runner.key.engine, "why": why})

    def _exited(self, runner: Runner, crashed: bool) -> None:
        """The watcher saw the engine exit: forget the runner; an exit nobody asked for is a crash."""
        if self.runners.get(runner.key) is runner:
            del self.runners[runner.key]
        if crashed:
            self.stats["crashes"] += 1
            self.on_event("crashed", {"model": runner.model.short_id, "engine": runner.key.engine,
                                      "exit_code": runner.exit_code})

    def kill_all_now(self) -> None:
        """Synchronous last resort (atexit, signal handlers): SIGKILL every engine process group."""
        for runner in list(self.runners.values()):
            signal_group(runner.process.pid, signal.SIGKILL)

    # -- status, logs and settings --------------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        """The runners, oldest first, and the standby interpreter when there is one (mode `standby`)."""
        entries = [r.status() for r in sorted(self.runners.values(), key=lambda r: r.started)]
        if self.standby.current is not None:
            entries.append(self.standby.current.status())
        return entries

    def logs(self, name: str, lines: int = 200) -> str:
        """The runner's recent output, or the last run's log file when it is not loaded (on the event loop)."""
        model = self.store.resolve(name)
        live = self.live_runner(model.id)
        return live.log_tail(lines) if live else self.logged(model, lines)

    def live_runner(self, model_id: str) -> Runner | None:
        return next((r for r in list(self.runners.values()) if r.key.model_id == model_id), None)

    def logged(self, model: Model, lines: int = 200) -> str:
        """The last `lines` of the model's newest engine log file (disk only, safe in a worker thread)."""
        return self.logs_of.newest(model.short_id, lines)

    async def follow_logs(self, model_id: str, heartbeat: float = 1.0) -> AsyncIterator[str | None]:
        """Every line the model's engines print from now on (see EngineLogs.follow)."""
        async for line in self.logs_of.follow(model_id, heartbeat):
            yield line

    def configure(self, name: str, *, engine: str | None = None, **settings: Any) -> RunConfig:
        """Persist settings for a model and apply them to its loaded runners (call on the event loop, or with no
        loop at all; from a worker thread use `save_settings` there and `apply_settings` on the loop)."""
        model_id, config = self.save_settings(name, engine=engine, **settings)
        self.apply_settings(model_id, config)
        return config

    def save_settings(self, name: str, *, engine: str | None = None, **settings: Any) -> tuple[str, RunConfig]:
        """Check and persist a model's settings (disk only, safe in a worker thread: see SettingsFile.save)."""
        model, choice = self.choose(name, engine)
        return model.id, self.settings.save(model, choice, memory_budget=self.memory_budget, **settings)

    def apply_settings(self, model_id: str, config: RunConfig) -> None:
        """New settings reach the model's runners (see settings.apply_to_runners), and an engine that refused
        to start may be started again (on the event loop)."""
        self.failed_starts.forget(model_id)
        apply_to_runners(self.runners.values(), model_id, config, self.idle.schedule)

    def settings_of(self, name: str) -> dict[str, Any]:
        """A model's saved settings as `GET engines/_configure` shows them (disk only)."""
        model = self.store.resolve(name)
        return self.settings.describe(name, model.id, self.keep_alive)

    def status(self) -> dict[str, Any]:
        """Engines on this machine: installed or not, the device, and why; and the configuration in force."""
        engines = []
        for engine in self.engines:
            availability = engine.availability(self.hardware)
            engines.append({"engine": engine.name, "available": availability.ok, "device": availability.device,
                            "version": availability.version, "reason": availability.reason,
                            "formats": sorted(engine.formats), "location": availability.location,
                            "implementation": availability.implementation})
        return {"hardware": self.hardware.describe(), "memory_budget": self.memory_budget,
                "vram_budget": self.vram_budget, "max_waiting_requests": self.max_waiting_requests,
                "vllm_standby": self.vllm_standby, "engines": engines}

    @property
    def runtime_dir(self) -> Path:
        """A short user-only folder for engine sockets (see supervision.runtime_folder), made on first use."""
        if self._runtime is None:
            self._runtime = runtime_folder(self._runtime_parent)
        return self._runtime


def _label(model: Model) -> str:
    return model.to_json()["tags"][0] if model.tags else model.short_id


def _wants_other_context(runner: Runner, context_size: int | None) -> bool:
    plan = runner.plan
    return bool(context_size and plan and plan.context_source != CONTEXT_CONFIGURED
                and plan.context_size != context_size)
