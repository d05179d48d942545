"""The server extension's lifetime: configuration, what kernels inherit, and engines stopped with the server."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

# pytest-jupyter's in-process server fixtures, for this module only.
from pytest_jupyter.jupyter_core import *  # noqa: F403
from pytest_jupyter.jupyter_server import *  # noqa: F403
from traitlets import TraitError

import jupyter_modelrunner
from jupyter_modelrunner.serverext import ModelRunner

from .conftest import server_env
from .support.jupyter import ServerProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def more_config() -> dict:
    """Sections a test adds to the server's configuration (parametrized, replacing these)."""
    return {"Scheduler": {"keep_alive": "2m"}}


@pytest.fixture
def jp_server_config(tmp_path, more_config):
    config = {"ServerApp": {"jpserver_extensions": {"jupyter_modelrunner": True}},
              "ModelRunner": {"store_path": str(tmp_path / "store"), "max_image_bytes": 12345,
                              "image_fetch_timeout": 4.5}}
    return {section: {**config.get(section, {}), **more_config.get(section, {})}
            for section in {*config, *more_config}}


@pytest.fixture
def jp_base_url() -> str:
    return "/hub/user/ada/"


def test_kernels_inherit_where_the_runner_is_and_its_token(monkeypatch, jp_serverapp, jp_http_port):
    for name in ("MODEL_RUNNER_HOST", "MODEL_RUNNER_TOKEN"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    extension = jp_serverapp.extension_manager.extension_apps["jupyter_modelrunner"].pop()
    extension._export_location()
    expected = f"http://{jp_serverapp.ip}:{jp_http_port}/hub/user/ada/modelrunner/"  # ip: localhost
    assert os.environ["MODEL_RUNNER_HOST"] == expected
    assert jupyter_modelrunner.base_url() == expected + "engines/v1"
    assert jupyter_modelrunner.api_key() == jp_serverapp.identity_provider.token
    assert extension.service.scheduler.keep_alive == 120
    assert (extension.service.max_image_bytes, extension.service.image_fetch_timeout) == (12345, 4.5)


def test_configuration_is_checked():
    with pytest.raises(TraitError, match="keep_alive"):
        ModelRunner(keep_alive="soon")
    assert "memory" in ModelRunner.class_get_trait_help(ModelRunner.memory_budget).lower()
    with pytest.raises(TraitError, match="max_image_bytes must be positive"):
        ModelRunner(max_image_bytes=0)
    with pytest.raises(TraitError, match="image_fetch_timeout must be positive"):
        ModelRunner(image_fetch_timeout=-1.0)
    assert "downloaded by the runner" in ModelRunner.class_get_trait_help(ModelRunner.max_image_bytes)


def test_stopping_the_server_stops_its_engines(tmp_path, live_store, registry):
    server = ServerProcess.jupyter_server(tmp_path, server_env(tmp_path, live_store.root, registry.host))
    with server:
        with server.client() as http:
            http.post("v1/chat/completions", json={"model": "ai/tiny", "max_tokens": 2,
                                                   "messages": [{"role": "user", "content": "hi"}]})
            (runner,) = http.get("engines/ps").json()
        assert server.stop() == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(runner["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(runner["pid"], signal.SIGKILL)
        pytest.fail(f"engine {runner['pid']} outlived the server:\n{server.log_tail()}")
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "engines/ps", timeout=2)


SERVE_HIDES = [("GET", "api/kernels"), ("POST", "api/kernels"), ("GET", "api/contents"), ("PUT", "api/contents/x.py"),
               ("GET", "api/sessions"), ("POST", "api/sessions"), ("GET", "api/terminals"), ("POST", "api/terminals"),
               ("GET", "api/kernelspecs"), ("GET", "api/nbconvert"), ("GET", "files/x.txt"), ("GET", "lab"),
               ("GET", "tree"), ("POST", "api/shutdown")]


def test_serve_is_only_a_model_runner(standalone):
    """Its token opens the model runner and nothing else: no kernel, file or terminal can be reached with it."""
    with httpx.Client(base_url=standalone.origin, headers=standalone.headers, trust_env=False, timeout=30) as http:
        answered = {f"{m} {p}": http.request(m, p, json={} if m != "GET" else None).status_code
                    for m, p in SERVE_HIDES}
        assert answered == {route: 404 for route in answered}
        assert http.get("api/status").status_code == 200
        for path in ("models", "engines/status", "engines/ps", "v1/models", "api/tags", "openapi.json"):
            assert http.get(path).status_code == 200, path


GIB = 1024**3
DEPRECATED = "is deprecated: use"


def engine_status(io_loop, jp_fetch) -> dict:
    """`GET modelrunner/engines/status`, as a user reads the configuration in force (this module's tests are
    synchronous: the request runs on the server's own loop)."""
    response = io_loop.run_sync(lambda: jp_fetch("modelrunner", "engines", "status"))
    return json.loads(response.body)


def startup_log(capfd) -> str:
    """What the server logged while it started (the fixtures start it before the test runs). Jupyter's application
    loggers write to stderr and do not propagate to pytest's caplog, so this reads the stderr the process wrote
    (capfd comes first among a test's fixtures, so it is there before the server starts)."""
    return capfd.readouterr().err


def extension_of(serverapp) -> ModelRunner:
    return next(iter(serverapp.extension_manager.extension_apps["jupyter_modelrunner"]))


@pytest.mark.parametrize("more_config", [{"Scheduler": {"keep_alive": "10m", "memory_budget": 3 * GIB,
                                                        "max_waiting_requests": 3}}])
def test_the_scheduler_reads_its_own_configuration(capfd, io_loop, jp_fetch):
    logged = startup_log(capfd)
    status = engine_status(io_loop, jp_fetch)
    assert (status["keep_alive"], status["memory_budget"], status["max_waiting_requests"]) == (600, 3 * GIB, 3)
    assert DEPRECATED not in logged


@pytest.mark.parametrize("more_config", [{"ModelRunner": {"keep_alive": "7m", "memory_budget": 2 * GIB,
                                                          "max_waiting_requests": 5, "load_timeout": 33.0}}])
def test_the_old_flat_names_still_work_and_warn(capfd, io_loop, jp_serverapp, jp_fetch):
    logged = startup_log(capfd)
    status = engine_status(io_loop, jp_fetch)
    assert (status["keep_alive"], status["memory_budget"], status["max_waiting_requests"]) == (420, 2 * GIB, 5)
    for old in ("keep_alive", "memory_budget", "max_waiting_requests"):
        assert f"c.ModelRunner.{old} is deprecated: use c.Scheduler.{old}" in logged
    assert ("c.ModelRunner.load_timeout is deprecated: use c.LlamaServer.load_timeout, c.Vllm.load_timeout"
            in logged)
    engines = extension_of(jp_serverapp).service.scheduler.engines
    assert {engine.name: engine.load_timeout for engine in engines} == {"llama.cpp": 33.0, "vllm": 33.0}


@pytest.mark.parametrize("more_config", [{"ModelRunner": {"keep_alive": "1m", "load_timeout": 33.0},
                                          "Scheduler": {"keep_alive": "10m"}, "Vllm": {"load_timeout": 44.0}}])
def test_the_new_spelling_wins_over_the_old_one(capfd, io_loop, jp_serverapp, jp_fetch):
    logged = startup_log(capfd)
    assert engine_status(io_loop, jp_fetch)["keep_alive"] == 600
    assert ("c.ModelRunner.keep_alive is deprecated: use c.Scheduler.keep_alive (set too, so c.ModelRunner.keep_alive "
            "is ignored)") in logged
    engines = extension_of(jp_serverapp).service.scheduler.engines
    assert {engine.name: engine.load_timeout for engine in engines} == {"llama.cpp": 33.0, "vllm": 44.0}


def test_serve_takes_the_new_spellings_on_its_command_line(tmp_path, registry):
    """On a store of its own: on a store another runner owns, `serve` relays `engines/status` to that owner."""
    env = server_env(tmp_path, tmp_path / "store", registry.host)
    with ServerProcess.standalone(tmp_path, env, "--Scheduler.keep_alive=10m",
                                  "--ModelRunner.max_waiting_requests=2") as server, server.client() as http:
        status = http.get("engines/status").json()
        assert (status["keep_alive"], status["max_waiting_requests"]) == (600, 2), server.log_tail(200)
        assert ("c.ModelRunner.max_waiting_requests is deprecated: use c.Scheduler.max_waiting_requests"
                in server.log_tail(200))
