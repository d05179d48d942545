"""The memory budget policy as pure functions: no engine, no process, only the facts the scheduler would gather."""

from __future__ import annotations

import pytest

from jupyter_modelrunner.scheduling.budget import (
    Budget,
    Holding,
    Room,
    Want,
    make_room,
    ram_fits,
    standby_fits,
    when_idle,
)
from jupyter_modelrunner.scheduling.errors import NotEnoughMemory

GiB = 1024**3


def holding(name: str, *, ram: int = 0, vram: int = 0, last_used: float, evictable: bool = True) -> Holding:
    return Holding(key=name, name=name, ram=ram, vram=vram, last_used=last_used, evictable=evictable)


PLENTY = 1000 * GiB  # the machine has more free than any budget here


def test_the_least_recently_used_runner_goes_first_not_the_first_loaded():
    """Three models loaded a, b, c; then a answers again. Room for one more evicts b (used longest ago), where a
    first-in-first-out policy would evict a."""
    runners = [holding("a", ram=4 * GiB, last_used=40.0),  # loaded first (t=10), used again at t=40
               holding("b", ram=4 * GiB, last_used=20.0),
               holding("c", ram=4 * GiB, last_used=30.0)]
    budget = Budget(ram=14 * GiB, vram=0, ram_available=PLENTY)
    assert make_room(Want("d", "llama.cpp", 4 * GiB), runners, budget) == Room(evict=("b",))
    # needing two places: b, then c; a, the most recent, stays
    assert make_room(Want("d", "llama.cpp", 8 * GiB), runners, budget) == Room(evict=("b", "c"))


def test_busy_runners_are_passed_over_and_nothing_is_evicted_when_it_fits():
    runners = [holding("a", ram=4 * GiB, last_used=10.0, evictable=False),  # answering now
               holding("b", ram=4 * GiB, last_used=20.0)]
    budget = Budget(ram=10 * GiB, vram=0, ram_available=PLENTY)
    assert make_room(Want("c", "llama.cpp", 2 * GiB), runners, budget).fits_now
    assert make_room(Want("c", "llama.cpp", 4 * GiB), runners, budget) == Room(evict=("b",))


def test_a_gpu_shortage_evicts_only_runners_on_the_gpu():
    """VRAM and RAM are budgets apart: a model short of GPU memory stops the LRU runner that holds GPU memory, not an
    older CPU runner, nor a sleeping one (its weights are in RAM, the GPU is already free)."""
    runners = [holding("cpu-old", ram=2 * GiB, last_used=1.0),
               holding("sleeping", ram=6 * GiB, vram=0, last_used=2.0),
               holding("gpu-lru", ram=1 * GiB, vram=10 * GiB, last_used=3.0),
               holding("gpu-mru", ram=1 * GiB, vram=10 * GiB, last_used=4.0)]
    budget = Budget(ram=64 * GiB, vram=24 * GiB, ram_available=PLENTY)
    assert make_room(Want("new", "vllm", 1 * GiB, vram=10 * GiB), runners, budget) == Room(evict=("gpu-lru",))


def test_a_ram_shortage_stops_the_standby_before_any_model_then_evicts_by_ram():
    runners = [holding("gpu", ram=1 * GiB, vram=10 * GiB, last_used=1.0),
               holding("cpu", ram=4 * GiB, last_used=2.0)]
    budget = Budget(ram=8 * GiB, vram=24 * GiB, ram_available=PLENTY)
    # 5 GiB of runners + a 2 GiB standby + 2 GiB wanted = 9 > 8: without the standby it fits
    assert make_room(Want("new", "llama.cpp", 2 * GiB), runners, budget, standby_ram=2 * GiB) == \
        Room(stop_standby=True)
    # 5 + 4 = 9 > 8 even without it: the LRU runner goes next, whatever device it is on
    assert make_room(Want("new", "llama.cpp", 4 * GiB), runners, budget, standby_ram=2 * GiB) == \
        Room(stop_standby=True, evict=("gpu",))


def test_memory_other_programs_use_is_not_ours_to_give():
    """The budget says 16 GiB, but the machine has only 3 GiB free beside our 4 GiB runner: a 5 GiB model makes
    room by evicting the runner (4 + 3 = 7 GiB then free)."""
    runners = [holding("a", ram=4 * GiB, last_used=1.0)]
    budget = Budget(ram=16 * GiB, vram=0, ram_available=3 * GiB)
    assert make_room(Want("b", "llama.cpp", 5 * GiB), runners, budget) == Room(evict=("a",))
    with pytest.raises(NotEnoughMemory, match=r"needs about 8\.00 GiB; budget 16\.00 GiB, 3\.00 GiB available\)\. "
                                              r"In use: a \(4\.00 GiB\)"):
        make_room(Want("b", "llama.cpp", 8 * GiB), [holding("a", ram=4 * GiB, last_used=1.0, evictable=False)],
                  budget)


def test_a_model_that_never_fits_is_refused_with_the_numbers_and_what_to_do():
    runners = [holding("a", ram=1 * GiB, last_used=1.0)]
    with pytest.raises(NotEnoughMemory) as ram:
        make_room(Want("ai/big", "llama.cpp", 20 * GiB), runners, Budget(ram=16 * GiB, vram=0, ram_available=PLENTY))
    assert str(ram.value).startswith("ai/big needs about 20.00 GiB with llama.cpp (weights, KV cache and runtime), "
                                     "more than the memory budget of 16.00 GiB.")
    assert "`configure ai/big --context-size N`" in str(ram.value)
    with pytest.raises(NotEnoughMemory) as vram:
        make_room(Want("ai/big", "vllm", 1 * GiB, vram=30 * GiB), runners,
                  Budget(ram=16 * GiB, vram=20 * GiB, ram_available=PLENTY, gpus="NVIDIA L4 (22.50 GiB)"))
    assert str(vram.value).startswith("ai/big needs about 30.00 GiB of GPU memory with vllm")
    assert "more than the GPU budget of 20.00 GiB (NVIDIA L4 (22.50 GiB))" in str(vram.value)


def test_a_gpu_full_of_busy_runners_says_who_holds_it():
    runners = [holding("busy", ram=1 * GiB, vram=15 * GiB, last_used=1.0, evictable=False)]
    with pytest.raises(NotEnoughMemory, match=r"Not enough GPU memory to load new \(needs about 10\.00 GiB; GPU budget "
                                              r"20\.00 GiB, 5\.00 GiB free\)\. In use: busy \(15\.00 GiB\)"):
        make_room(Want("new", "vllm", 0, vram=10 * GiB), runners, Budget(ram=64 * GiB, vram=20 * GiB,
                                                                         ram_available=PLENTY))


def test_an_idle_gpu_runner_sleeps_only_when_its_weights_fit_in_ram():
    runners = [holding("a", ram=2 * GiB, vram=10 * GiB, last_used=1.0)]
    budget = Budget(ram=16 * GiB, vram=24 * GiB, ram_available=12 * GiB)
    assert when_idle(vram=10 * GiB, can_sleep=True, weights=8 * GiB, holdings=runners, budget=budget) == "sleep"
    assert when_idle(vram=10 * GiB, can_sleep=True, weights=15 * GiB, holdings=runners, budget=budget) == "stop"
    assert when_idle(vram=10 * GiB, can_sleep=False, weights=1 * GiB, holdings=runners, budget=budget) == "stop"
    assert when_idle(vram=0, can_sleep=True, weights=1 * GiB, holdings=runners, budget=budget) == "stop"
    assert ram_fits(13 * GiB, runners, Budget(ram=32 * GiB, vram=0, ram_available=12 * GiB)) is False


def test_a_standby_starts_only_with_room_to_spare():
    runners = [holding("a", ram=6 * GiB, last_used=1.0)]
    assert standby_fits(2 * GiB, runners, Budget(ram=10 * GiB, vram=0, ram_available=8 * GiB))
    assert not standby_fits(5 * GiB, runners, Budget(ram=10 * GiB, vram=0, ram_available=PLENTY))  # over budget
    assert not standby_fits(2 * GiB, runners, Budget(ram=10 * GiB, vram=0, ram_available=3 * GiB))  # machine busy
