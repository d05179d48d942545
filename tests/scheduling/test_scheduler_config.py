"""The scheduler's configuration (`c.Scheduler.…`): read from a config file or a command line the way a Jupyter
server passes it, from keyword arguments the way code and tests pass it, and checked when set. No engine starts."""

from __future__ import annotations

import pytest
from traitlets import TraitError
from traitlets.config import Config
from traitlets.config.loader import KVArgParseConfigLoader

from jupyter_modelrunner.engines import hardware as hw
from jupyter_modelrunner.scheduling import DEFAULT_KEEP_ALIVE, Scheduler
from jupyter_modelrunner.scheduling.config import standby_from_env
from jupyter_modelrunner.store import Store

GIB = 1024**3


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def machine(ram: int = 10 * GIB, gpus: tuple[int, ...] = ()) -> hw.Hardware:
    """Hardware as the probe describes it, with round numbers so the default budgets can be checked exactly."""
    return hw.Hardware(cpu_count=2, memory_total=ram, memory_available=ram,
                       gpus=tuple(hw.Gpu("GPU", size, size) for size in gpus))


def test_a_command_line_configures_the_scheduler(store):
    config = KVArgParseConfigLoader(["--Scheduler.keep_alive=10m", "--Scheduler.memory_budget=3000000000",
                                     "--Scheduler.gpu_memory_budget=2000000000", "--Scheduler.max_waiting_requests=3",
                                     "--Scheduler.vllm_standby=True"]).load_config()
    scheduler = Scheduler(store, config=config, hardware=machine())
    assert (scheduler.keep_alive, scheduler.memory_budget, scheduler.vram_budget) == (600.0, 3_000_000_000,
                                                                                      2_000_000_000)
    assert scheduler.max_waiting_requests == 3
    assert scheduler.vllm_standby and scheduler.standby.enabled
    status = scheduler.status()
    assert (status["memory_budget"], status["vram_budget"], status["max_waiting_requests"]) == (3_000_000_000,
                                                                                                2_000_000_000, 3)


def test_keyword_arguments_keep_working_and_win_over_the_config(store):
    config = Config()
    config.Scheduler.keep_alive = "1h"
    config.Scheduler.memory_budget = 5 * GIB
    scheduler = Scheduler(store, config=config, hardware=machine(), keep_alive=60, vram_budget=GIB, standby=True)
    assert (scheduler.keep_alive, scheduler.memory_budget, scheduler.gpu_memory_budget) == (60.0, 5 * GIB, GIB)
    assert scheduler.standby.enabled
    assert Scheduler(store, hardware=machine(), keep_alive=-1, memory_budget=None).keep_alive == -1


def test_defaults_follow_the_machine(store):
    scheduler = Scheduler(store, hardware=machine(ram=10 * GIB, gpus=(8 * GIB, 2 * GIB)))
    assert scheduler.keep_alive == DEFAULT_KEEP_ALIVE
    assert (scheduler.memory_budget, scheduler.vram_budget) == (8 * GIB, 9 * GIB)  # 80 % of RAM, 90 % of the GPUs
    assert scheduler.max_waiting_requests == 64
    assert not scheduler.vllm_standby and not scheduler.standby.enabled  # in code it is asked for (a server: on)
    scheduler.memory_budget = 0  # 0 from a config file means the default share, as before
    assert scheduler.memory_budget == 8 * GIB


def test_the_standby_follows_its_setting_after_construction(store):
    """The server applies its default and the deprecated `c.ModelRunner.vllm_standby` once the scheduler exists."""
    scheduler = Scheduler(store, hardware=machine())
    scheduler.vllm_standby = True
    assert scheduler.standby.enabled
    scheduler.vllm_standby = False
    assert not scheduler.standby.enabled


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("keep_alive", "soon", "Scheduler.keep_alive: Invalid keep_alive 'soon'"),
    ("memory_budget", -1, "Scheduler.memory_budget must be 0"),
    ("gpu_memory_budget", -5, "Scheduler.gpu_memory_budget must be 0"),
    ("max_waiting_requests", -1, "Scheduler.max_waiting_requests must be 0"),
])
def test_bad_settings_are_refused_with_their_name(store, setting, value, message):
    config = Config()
    config.Scheduler[setting] = value
    with pytest.raises(TraitError, match=message):
        Scheduler(store, config=config, hardware=machine())


def test_the_help_names_what_each_setting_does():
    assert "80% of the machine's RAM" in Scheduler.class_get_trait_help(Scheduler.memory_budget)
    assert "MODEL_RUNNER_VLLM_STANDBY" in Scheduler.class_get_trait_help(Scheduler.vllm_standby)
    assert "--Scheduler.keep_alive" in Scheduler.class_get_help()


@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("0", False), ("off", False), ("No", False)])
def test_a_server_keeps_a_standby_unless_the_environment_says_no(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("MODEL_RUNNER_VLLM_STANDBY", raising=False)
    else:
        monkeypatch.setenv("MODEL_RUNNER_VLLM_STANDBY", value)
    assert standby_from_env() is on
