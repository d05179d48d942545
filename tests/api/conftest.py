"""Fixtures for the HTTP API: pytest-jupyter's in-process server with the extension, and a real
`jupyter server` subprocess for the tests that drive it with the `openai` and `ollama` SDKs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest-jupyter's fixtures (jp_serverapp, jp_fetch, …) and its async test runner, for this folder only:
# its autouse cleanup fixture would otherwise create a ServerApp around every test of the suite.
from pytest_jupyter.jupyter_core import *  # noqa: F403
from pytest_jupyter.jupyter_server import *  # noqa: F403

from jupyter_modelrunner.distribution import package_gguf, pull
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from ..support.jupyter import ServerProcess


@pytest.fixture
def runner_store(tmp_path, registry, seeded) -> Store:
    """A store holding the tiny GGUF model as `ai/tiny`, bare names resolving to the test registry."""
    store = Store(tmp_path / "runner-store", registry=registry.host)
    pull("ai/tiny", store, registry=registry.host)
    return store


@pytest.fixture
def jp_server_config(runner_store, registry) -> dict:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_modelrunner": True}},
        "ModelRunner": {"store_path": str(runner_store.root), "default_registry": registry.host},
    }


@pytest.fixture
def jp_base_url() -> str:
    return "/lab-base/"  # not `/`: the routes must follow the server's base URL


def server_env(workdir: Path, store: Path, registry_host: str) -> dict[str, str]:
    """The environment of a server subprocess: its own home and Jupyter dirs, the test store and registry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_RUNNER_", "JUPYTER_"))}
    for name in ("home", "config", "data", "runtime"):
        (workdir / name).mkdir(exist_ok=True)
    env.update({"HOME": str(workdir / "home"), "JUPYTER_CONFIG_DIR": str(workdir / "config"),
                "JUPYTER_DATA_DIR": str(workdir / "data"), "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
                "MODEL_RUNNER_STORE": str(store), "MODEL_RUNNER_DEFAULT_REGISTRY": registry_host,
                "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture(scope="module")
def live_store(tmp_path_factory, registry, seeded, tiny_gguf) -> Store:
    """`ai/tiny` pulled from the registry, and `ai/tiny-long` with a 16k context: it can stream for seconds,
    long enough to disconnect or kill the engine in the middle of an answer."""
    store = Store(tmp_path_factory.mktemp("live") / "store", registry=registry.host)
    pull("ai/tiny", store, registry=registry.host)
    package_gguf(store, tiny_gguf, parse_reference(f"{registry.host}/ai/tiny-long"), context_size=16384)
    return store


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory, live_store, registry) -> Iterator[ServerProcess]:
    """A real `jupyter server` with the extension (enabled by the config file the package installs)."""
    workdir = tmp_path_factory.mktemp("jupyter")
    with ServerProcess.jupyter_server(workdir, server_env(workdir, live_store.root, registry.host),
                                      "--ModelRunner.keep_alive=10m") as server:
        yield server


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, live_store, registry) -> Iterator[ServerProcess]:
    """`jupyter modelrunner serve`: the same routes at the root path."""
    workdir = tmp_path_factory.mktemp("standalone")
    with ServerProcess.standalone(workdir, server_env(workdir, live_store.root, registry.host)) as server:
        yield server
