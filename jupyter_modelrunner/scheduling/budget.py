"""The memory budget as pure policy: what fits, what to evict or put to sleep first, and when a model never fits.

RAM and GPU memory are budgets of their own. A model that needs more than a budget holds is refused at once with the
numbers; otherwise idle runners give way, least recently used first, the standby interpreter before any model (it is
cheaper to start again). Nothing here starts, stops or measures anything: the scheduler gathers the facts (`Holding`,
`Budget`), asks, and carries out the answer, so the policy is tested without a process.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from ..distribution.progress import format_bytes
from .errors import NotEnoughMemory


@dataclass(frozen=True)
class Holding:
    """What one runner holds now, as the budget sees it."""

    key: Hashable
    name: str
    ram: int
    vram: int
    last_used: float
    #: Idle (no request in flight) and ready or asleep: it may be stopped to make room.
    evictable: bool


@dataclass(frozen=True)
class Budget:
    """The budgets, and what the machine has free now (memory others use is not ours to give)."""

    ram: int
    vram: int
    #: RAM free on the machine now (MemAvailable).
    ram_available: int
    #: The GPUs, for messages (`NVIDIA L4 (22.5 GiB)`), or "no GPU".
    gpus: str = "no GPU"


@dataclass(frozen=True)
class Want:
    """A load (or a wake) asking for room: who it is for, and how much of each memory."""

    label: str
    engine: str
    ram: int
    vram: int = 0


@dataclass(frozen=True)
class Room:
    """What to do so a `Want` fits: stop the standby first (if set), then evict `evict` in this order."""

    stop_standby: bool = False
    evict: tuple[Hashable, ...] = ()

    @property
    def fits_now(self) -> bool:
        return not self.stop_standby and not self.evict


def never_fits(want: Want, budget: Budget) -> NotEnoughMemory | None:
    """The refusal for a model larger than a budget even with nothing else loaded, or None."""
    label = want.label
    if want.ram > budget.ram:
        return NotEnoughMemory(
            f"{label} needs about {format_bytes(want.ram)} with {want.engine} (weights, KV cache and runtime), more "
            f"than the memory budget of {format_bytes(budget.ram)}. Use a smaller context size "
            f"(`configure {label} --context-size N`), a smaller quantization, or raise the budget.")
    if want.vram > budget.vram:
        return NotEnoughMemory(
            f"{label} needs about {format_bytes(want.vram)} of GPU memory with {want.engine} (weights, KV caches and "
            f"the engine's runtime), more than the GPU budget of {format_bytes(budget.vram)} ({budget.gpus}). Use a "
            f"smaller context size (`configure {label} --context-size N`) or a smaller quantization.")
    return None


def make_room(want: Want, holdings: Sequence[Holding], budget: Budget, *, standby_ram: int = 0) -> Room:
    """Which runners to stop, in order, so `want` fits both budgets; raises `NotEnoughMemory` with the numbers when
    it never fits or when what stands in its way is busy.

    A RAM shortage stops the standby first, then idle runners, least recently used first; a GPU shortage stops only
    idle runners that hold GPU memory (a sleeping one holds none). RAM counts against the budget and against what
    the machine has: memory our runners hold comes back when they stop, memory others use does not.
    """
    if (refusal := never_fits(want, budget)) is not None:
        raise refusal
    live = list(holdings)
    used = sum(h.ram for h in live) + standby_ram
    free_now = budget.ram_available + used
    ram_limit = min(budget.ram, free_now)
    stop_standby = False
    evict: list[Hashable] = []
    while True:
        used_ram = sum(h.ram for h in live) + (0 if stop_standby else standby_ram)
        used_vram = sum(h.vram for h in live)
        ram_short = used_ram + want.ram > ram_limit
        vram_short = used_vram + want.vram > budget.vram
        if not ram_short and not vram_short:
            return Room(stop_standby, tuple(evict))
        if ram_short and standby_ram and not stop_standby:
            stop_standby = True
            continue
        candidates = [h for h in live if h.evictable and (ram_short or h.vram)]
        if not candidates:
            raise _busy(want, live, budget, used_ram=used_ram, used_vram=used_vram, free_now=free_now,
                        vram_short=vram_short)
        victim = min(candidates, key=lambda h: h.last_used)
        live.remove(victim)
        evict.append(victim.key)


def _busy(want: Want, live: Sequence[Holding], budget: Budget, *, used_ram: int, used_vram: int, free_now: int,
          vram_short: bool) -> NotEnoughMemory:
    if vram_short:
        busy = ", ".join(f"{h.name} ({format_bytes(h.vram)})" for h in live if h.vram)
        return NotEnoughMemory(
            f"Not enough GPU memory to load {want.label} (needs about {format_bytes(want.vram)}; GPU budget "
            f"{format_bytes(budget.vram)}, {format_bytes(budget.vram - used_vram)} free). In use: {busy}. Try again "
            "when they finish, or unload them.")
    busy = ", ".join(f"{h.name} ({format_bytes(h.ram)})" for h in live) or "other programs"
    return NotEnoughMemory(
        f"Not enough memory to load {want.label} (needs about {format_bytes(want.ram)}; budget "
        f"{format_bytes(budget.ram)}, {format_bytes(max(0, free_now - used_ram))} available). In use: {busy}. Try "
        "again when they finish, or unload them.")


def ram_fits(extra: int, holdings: Sequence[Holding], budget: Budget) -> bool:
    """Whether `extra` more bytes of RAM fit the budget and the machine now (a sleeping engine's weights, a
    standby interpreter)."""
    return sum(h.ram for h in holdings) + extra <= budget.ram and extra < budget.ram_available


def when_idle(*, vram: int, can_sleep: bool, weights: int, holdings: Sequence[Holding], budget: Budget) -> str:
    """What an idle runner whose keep_alive ran out does: `sleep` (a GPU engine that can, when its weights fit in
    RAM: waking is fast) or `stop`."""
    return "sleep" if vram and can_sleep and ram_fits(weights, holdings, budget) else "stop"


def standby_fits(memory: int, holdings: Sequence[Holding], budget: Budget) -> bool:
    """Whether a standby interpreter of `memory` bytes may start: it fits the budget with what runs now, and the
    machine has twice that free (it must never push a model out)."""
    return sum(h.ram for h in holdings) + memory <= budget.ram and budget.ram_available >= 2 * memory
