"""The server extension's lifetime: configuration, what kernels inherit, and engines stopped with the server."""

from __future__ import annotations

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
def jp_server_config(tmp_path):
    return {"ServerApp": {"jpserver_extensions": {"jupyter_modelrunner": True}},
            "ModelRunner": {"store_path": str(tmp_path / "store"), "keep_alive": "2m", "max_image_bytes": 12345,
                            "image_fetch_timeout": 4.5}}


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
