"""Engine selection: format, hardware and what is installed, always with a reason the user can read."""

from __future__ import annotations

import pytest

from jupyter_modelrunner.distribution import package_gguf, package_safetensors
from jupyter_modelrunner.engines.base import RunConfig
from jupyter_modelrunner.engines.hardware import Gpu, Hardware, probe
from jupyter_modelrunner.engines.llamacpp import DEFAULT_SLOTS, LlamaServer
from jupyter_modelrunner.engines.select import select_engine
from jupyter_modelrunner.engines.vllm import Vllm
from jupyter_modelrunner.errors import EngineFlagRefused, EngineUnavailable
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.scheduling import InvalidSetting, parse_keep_alive
from jupyter_modelrunner.store import Store

CPU_ONLY = Hardware(cpu_count=2, memory_total=24 * 1024**3, memory_available=20 * 1024**3)
SIMULATED_CUDA = Hardware(cpu_count=8, memory_total=64 * 1024**3, memory_available=60 * 1024**3,
                          gpus=(Gpu("Simulated A100", 80 * 1024**3, 79 * 1024**3),))


@pytest.fixture
def models(tmp_path, tiny_gguf, tiny_safetensors):
    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    gguf = package_gguf(store, tiny_gguf, parse_reference("127.0.0.1:1/ai/tiny"))
    st = package_safetensors(store, tiny_safetensors, parse_reference("127.0.0.1:1/ai/tiny-vllm"))
    return gguf, st


def test_gguf_goes_to_llama_cpp_with_the_reason(models):
    choice = select_engine(models[0], CPU_ONLY)
    assert choice.engine.name == "llama.cpp" and choice.device == "cpu"
    assert "gguf" in choice.reason and "CPU" in choice.reason


def test_gguf_on_a_cuda_machine_offloads_every_layer(models):
    choice = select_engine(models[0], SIMULATED_CUDA, [LlamaServer(server="/x/llama-server")])
    assert choice.device == "cuda" and "all layers on the GPU" in choice.reason


def test_safetensors_without_vllm_names_the_fix(models):
    engines = [LlamaServer(), Vllm(python="/nonexistent/python")]
    with pytest.raises(EngineUnavailable) as info:
        select_engine(models[1], CPU_ONLY, engines)
    message = str(info.value)
    assert "vLLM is not installed" in message
    assert "NVIDIA GPU" in message and "ai/qwen3" in message


def test_forced_engine_is_honoured_or_refused(models):
    assert select_engine(models[0], CPU_ONLY, forced="llamacpp").reason.startswith("llama.cpp was requested")
    with pytest.raises(EngineUnavailable, match="cannot run gguf"):
        select_engine(models[0], CPU_ONLY, forced="vllm")
    with pytest.raises(EngineUnavailable, match="Unknown engine"):
        select_engine(models[0], CPU_ONLY, forced="tensorrt")


def test_runtime_flags_pass_an_allowlist():
    engine = LlamaServer(server="/x/llama-server")
    assert engine.check_flags(["--threads", "2", "--temp=0.5"]) == ("--threads", "2", "--temp", "0.5")
    with pytest.raises(EngineFlagRefused, match=r"Allowed: .*--threads"):
        engine.check_flags(["--host", "0.0.0.0"])
    with pytest.raises(EngineFlagRefused, match="needs a value"):
        engine.check_flags(["--threads"])
    with pytest.raises(EngineFlagRefused, match="Invalid value"):
        engine.check_flags(["--threads", "--model"])
    assert Vllm(python="/x").check_flags(["--enforce-eager", "--max-num-seqs", "4"]) == (
        "--enforce-eager", "--max-num-seqs", "4")
    with pytest.raises(EngineFlagRefused, match="trust-remote-code"):
        Vllm(python="/x").check_flags(["--trust-remote-code"])


def test_keep_alive_durations():
    assert parse_keep_alive("5m") == 300 and parse_keep_alive("-1") == -1 and parse_keep_alive("0") == 0
    assert parse_keep_alive("1h") == 3600 and parse_keep_alive(30) == 30 and parse_keep_alive("250ms") == 0.25
    with pytest.raises(InvalidSetting):
        parse_keep_alive("soon")
    assert parse_keep_alive("-5") == -1 and parse_keep_alive("never") == -1  # any negative: never unload
    assert parse_keep_alive("1h30m") == 5400 and parse_keep_alive("300ms") == 0.3  # Go durations, as Ollama sends


def test_hardware_probe_is_cheap_and_cached():
    first = probe()
    assert first is probe()
    assert first.memory_total > 0 and first.cpu_count >= 1


def test_memory_estimate_counts_weights_and_the_kv_cache_of_every_slot(models):
    engine = LlamaServer(server="/x/llama-server")
    small = engine.estimate_memory(models[0], RunConfig(context_size=256))
    large = engine.estimate_memory(models[0], RunConfig(context_size=512))
    per_slot = 2 * 2 * (512 - 256) * 2 * 16 * 2  # K and V, 2 layers, 2 KV heads of 16, f16
    assert large - small == DEFAULT_SLOTS * per_slot
    assert small > models[0].size
