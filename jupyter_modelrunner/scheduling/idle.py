"""Idle runners: each request's lease on a runner, the keep_alive after it, and what an idle runner does when that
runs out — stop, or on a GPU sleep (weights offloaded to RAM, the process kept) and wake for the next request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..engines import hardware as hw
from .budget import Budget, Holding, Want, when_idle
from .errors import EngineFailed
from .runner import Runner, RunnerState

log = logging.getLogger(__name__)


class Host(Protocol):
    """What idle runners need of the scheduler that owns them."""

    hardware: hw.Hardware
    admission: asyncio.Lock
    on_event: Callable[[str, dict[str, Any]], None]

    def holdings(self, *, keep: Runner | None = None) -> list[Holding]: ...
    def budget_now(self) -> Budget: ...
    async def make_room(self, want: Want, *, keep: Runner | None = None) -> None: ...
    async def stop(self, runner: Runner, why: str) -> None: ...
    def background(self, coro: Any) -> None: ...


class KeepAlive:
    """Leases, keep_alive timers, sleep and wake for the runners of one scheduler."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def lease(self, runner: Runner) -> None:
        """A request starts using `runner`: it is no longer idle, and no timer may stop it."""
        runner.in_use += 1
        runner.idle.clear()
        if runner.idle_timer:
            runner.idle_timer.cancel()
            runner.idle_timer = None

    def release(self, runner: Runner, keep_alive: float | None) -> None:
        """A request is done with `runner`. Its `keep_alive` (seconds; negative: for good; None: the runner's) can
        only make the runner stay longer, never shorten what another request asked for."""
        runner.in_use -= 1
        runner.last_used = time.time()
        wanted = runner.keep_alive if keep_alive is None else keep_alive
        if wanted < 0:
            runner.pinned = True
        else:
            runner.expires_at = max(runner.expires_at or 0.0, runner.last_used + wanted)
        if runner.in_use == 0:
            runner.idle.set()
            if runner.state == RunnerState.READY:
                self.schedule(runner)

    def schedule(self, runner: Runner) -> None:
        """Set the runner's idle timer for its `expires_at` (none while pinned)."""
        if runner.idle_timer:
            runner.idle_timer.cancel()
            runner.idle_timer = None
        if runner.pinned or runner.expires_at is None:
            return
        delay = runner.expires_at - time.time()
        if delay <= 0:
            self.host.background(self._expire(runner))
            return
        loop = asyncio.get_running_loop()
        runner.idle_timer = loop.call_later(delay, lambda: self.host.background(self._expire(runner)))

    async def _expire(self, runner: Runner) -> None:
        if runner.in_use or runner.state != RunnerState.READY or runner.pinned:
            return
        action = when_idle(vram=runner.vram, can_sleep=runner.choice.engine.can_sleep(self.host.hardware),
                                  weights=runner.model.size, holdings=self.host.holdings(),
                                  budget=self.host.budget_now())
        if action == "sleep":
            await self._sleep(runner)  # a GPU engine sleeps instead (its weights go to RAM): waking is fast
            return
        idle = max(0.0, time.time() - runner.last_used)
        await self.host.stop(runner, f"idle for {idle:.0f} s (keep_alive)")

    async def _sleep(self, runner: Runner) -> None:
        """Give an idle runner's GPU memory back but keep its process (its weights go to RAM): faster to wake."""
        async with runner.sleep_lock:
            if runner.state != RunnerState.READY or runner.in_use:
                return
            # Sleeping from here on: a request that comes now waits for this lock in wake, then wakes it.
            runner.state = RunnerState.SLEEPING
            try:
                await runner.choice.engine.sleep(runner.client)
            except Exception as exc:  # an engine that cannot sleep after all: stop it as keep_alive says
                log.warning("%s for %s could not sleep (%s); stopping it", runner.key.engine, runner.name, exc)
                await self.host.stop(runner, "idle (keep_alive), could not sleep")
                return
            self.host.on_event("sleeping", {"model": runner.model.short_id, "engine": runner.key.engine,
                                             "why": "idle (keep_alive)"})

    async def wake(self, runner: Runner) -> None:
        """Bring a sleeping runner back, once its GPU memory fits again; concurrent callers wait for one wake."""
        async with runner.sleep_lock:
            if runner.state not in (RunnerState.SLEEPING, RunnerState.WAKING):
                return
            async with self.host.admission:
                await self.host.make_room(Want(runner.name, runner.key.engine, 0, runner.vram), keep=runner)
                runner.state = RunnerState.WAKING
            self.host.on_event("waking", {"model": runner.model.short_id, "engine": runner.key.engine})
            started = time.monotonic()
            try:
                await runner.choice.engine.wake(runner.client)
            except Exception as exc:
                await self.host.stop(runner, f"could not wake ({exc})")
                raise EngineFailed(f"{runner.key.engine} could not wake {runner.name} ({exc}); it was stopped, "
                                   "the next request starts it again.") from exc
            runner.phases["woke_seconds"] = round(time.monotonic() - started, 3)
            runner.state = RunnerState.READY
            self.host.on_event("ready", runner.status())
