"""Finding the runner (each of the four ways, and the message when none works) and the typed client API,
against real servers: `jupyter server` with the extension, `jupyter modelrunner serve` (found as its store's
owner), and embedded runners started by the client itself."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_modelrunner import client as client_module
from jupyter_modelrunner import discovery
from jupyter_modelrunner.client import RunnerClient, RunnerLocation, locate
from jupyter_modelrunner.errors import ModelNotFound, ModelRunnerError, RunnerUnreachable
from jupyter_modelrunner.lease import read_owner

from .support.faultproxy import FaultProxy
from .support.registry import find_free_port

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch) -> Path:
    """A private Jupyter runtime directory and no runner in the environment: discovery starts from nothing."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    for name in ("MODEL_RUNNER_HOST", "MODEL_RUNNER_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(client_module, "_active", None)
    return runtime


@pytest.fixture
def embedded(runtime_dir, registry, seeded, tmp_path, monkeypatch) -> Iterator[Path]:
    """Settings for an embedded runner (a store and the test registry); every runner started is stopped after."""
    store = tmp_path / "embedded-store"
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(store))
    monkeypatch.setenv("MODEL_RUNNER_DEFAULT_REGISTRY", registry.host)
    started: list[int] = []
    real_start = discovery._start_embedded

    def tracking(root, registry_host, tried):
        location = real_start(root, registry_host, tried)
        started.append(read_owner(root).pid)
        return location

    monkeypatch.setattr(discovery, "_start_embedded", tracking)
    yield store
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in started:
        _wait_gone(pid)


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return False


def test_model_runner_host_wins_and_is_never_second_guessed(runtime_dir, monkeypatch, standalone):
    monkeypatch.setenv("MODEL_RUNNER_HOST", standalone.url.removeprefix("http://"))
    monkeypatch.setenv("MODEL_RUNNER_TOKEN", standalone.token)
    location = locate()
    assert location.url == standalone.url and location.source == "$MODEL_RUNNER_HOST"
    assert RunnerClient(location=location).status()["engines"]
    port = find_free_port()
    monkeypatch.setenv("MODEL_RUNNER_HOST", f"http://127.0.0.1:{port}/")
    with pytest.raises(RunnerUnreachable, match=str(port)):
        RunnerClient(location=locate()).models()


def test_a_kernel_finds_the_jupyter_server_that_started_it(runtime_dir, monkeypatch, jupyter):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", jupyter.env["JUPYTER_RUNTIME_DIR"])
    monkeypatch.setenv("JPY_PARENT_PID", str(jupyter.process.pid))
    location = locate(start=False)
    assert location.url.endswith(f":{jupyter.port}/modelrunner/") and location.token == jupyter.token
    assert "started this kernel" in location.source
    assert any(tag == "ai/tiny:latest" for m in RunnerClient(location=location).models() for tag in m["tags"])


def test_the_owner_of_the_store_is_found_through_its_lease(runtime_dir, monkeypatch, standalone, live_store):
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(live_store.root))
    location = locate(start=False)
    assert location.url == standalone.url and location.token == standalone.token
    assert "the owner of the store" in location.source and "serve" in location.source
    assert client_module.base_url() == standalone.url + "engines/v1"
    assert client_module.api_key() == standalone.token


def test_nothing_reachable_says_what_was_tried(runtime_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("JPY_PARENT_PID", "999999")
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(tmp_path / "nobody-runs-it"))
    with pytest.raises(RunnerUnreachable) as caught:
        locate(start=False)
    message = str(caught.value)
    assert "$MODEL_RUNNER_HOST (not set)" in message
    assert "jpserver-999999.json" in message
    assert "nobody-runs-it (none is running)" in message
    assert "jupyter modelrunner serve" in message


def test_an_embedded_runner_is_started_once_then_found_as_the_stores_owner(embedded, registry):
    first = locate()
    assert "embedded runner started now" in first.source
    owner = read_owner(embedded)
    assert owner.kind == "embedded" and first.url == owner.url
    assert oct((embedded / "runner" / "owner.token").stat().st_mode & 0o777) == "0o600"
    again = locate()
    assert again.url == first.url and "the owner of the store" in again.source
    client = RunnerClient(location=again)
    events = list(client.pull("ai/tiny"))
    assert events[-1]["type"] == "success"
    assert [m["tags"] for m in client.models()] == [["ai/tiny:latest"]]  # as users name it, not host-qualified
    assert client.status()["default_registry"] == registry.host


def test_another_store_gets_its_own_runner_and_a_killed_one_is_replaced(embedded, monkeypatch, tmp_path):
    first = locate()
    first_pid = read_owner(embedded).pid
    other = tmp_path / "another-store"
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(other))
    second = locate()
    second_pid = read_owner(other).pid
    assert second_pid != first_pid and second.url != first.url
    assert read_owner(embedded).pid == first_pid  # still the owner of its own store: one owner per store
    os.kill(second_pid, signal.SIGKILL)
    assert _wait_gone(second_pid)
    third = locate()
    assert read_owner(other).pid not in (first_pid, second_pid)
    assert "embedded runner started now" in third.source


def test_a_pull_longer_than_the_idle_timeout_completes(tmp_path, registry, seeded):
    """An embedded runner stops after its idle timeout, but never in the middle of work: a slow pull outlasts the
    timeout and completes; once nothing is left to do, the runner stops by itself."""
    store = tmp_path / "idle-store"
    env = {**os.environ, "MODEL_RUNNER_STORE": str(store), "MODEL_RUNNER_DEFAULT_REGISTRY": registry.host}
    with FaultProxy(registry.host) as proxy:
        proxy.rate = 150 * 1024  # ~560 KB of weights: about 4 s, twice the idle timeout
        runner = subprocess.Popen([sys.executable, "-m", "jupyter_modelrunner", "--store", str(store), "serve",
                                   "--port", "0", "--embedded", "--idle-timeout", "2", "--allow-root"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while read_owner(store) is None:
                assert runner.poll() is None and time.monotonic() < deadline, "the runner did not start"
                time.sleep(0.05)
            owner = read_owner(store)
            client = RunnerClient(location=RunnerLocation(owner.url, owner.token))
            started = time.monotonic()
            events = list(client.pull(f"{proxy.host}/ai/tiny"))
            assert events[-1]["type"] == "success" and time.monotonic() - started > 2
            assert runner.poll() is None  # still up right after the pull
            assert runner.wait(timeout=30) == 0  # then idle: it stops itself
        finally:
            if runner.poll() is None:
                runner.terminate()
                runner.wait()


def test_connect_switches_runner_and_refuses_a_dead_one(runtime_dir, standalone):
    client = client_module.connect(standalone.url, standalone.token)
    assert client_module.runner() is client and client.location.source == "connect"
    with pytest.raises(RunnerUnreachable, match="cannot be used"):
        client_module.connect(f"http://127.0.0.1:{find_free_port()}/", "x")
    assert client_module.runner() is client
    with pytest.raises(RunnerUnreachable, match="token was refused"):
        client_module.connect(standalone.url, "wrong-token")


def test_client_errors_carry_the_runners_message(standalone):
    client = RunnerClient(location=RunnerLocation(standalone.url, standalone.token))
    with pytest.raises(ModelNotFound, match="pull ai/absent"):
        client.inspect("ai/absent")
    with pytest.raises(ModelRunnerError, match="refused the token"):
        RunnerClient(location=RunnerLocation(standalone.url, "wrong")).models()
    with pytest.raises(ModelRunnerError) as caught:
        list(client.pull("127.0.0.1:9/ai/nothing"))
    assert caught.value.http_status == 503


def test_chat_streams_text_and_names_the_engine(standalone):
    client = RunnerClient(location=RunnerLocation(standalone.url, standalone.token))
    messages = [{"role": "user", "content": "Hello"}]
    with client.chat("ai/tiny", messages, max_tokens=12, temperature=0) as stream:
        pieces = list(stream)
    assert len(pieces) > 1 and stream.text == "".join(pieces)
    assert stream.engine == "llama.cpp" and stream.device
    whole = client.openai().chat.completions.create(model="ai/tiny", messages=messages, max_tokens=12,
                                                     temperature=0)
    assert whole.choices[0].message.content == stream.text
    with pytest.raises(ModelNotFound, match="ai/absent"):
        client.chat("ai/absent", messages)
