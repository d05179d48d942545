"""Fixtures for the HTTP API: pytest-jupyter's in-process server with the extension (the subprocess
servers, `jupyter` and `standalone`, are in the suite's conftest)."""

from __future__ import annotations

import pytest

# pytest-jupyter's fixtures (jp_serverapp, jp_fetch, …) and its async test runner, for this folder only:
# its autouse cleanup fixture would otherwise create a ServerApp around every test of the suite.
from pytest_jupyter.jupyter_core import *  # noqa: F403
from pytest_jupyter.jupyter_server import *  # noqa: F403

from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.store import Store


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
