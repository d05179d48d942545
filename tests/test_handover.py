"""The server a user starts runs the store's engines, and a client notices a runner of another version.

A CLI command (or a kernel) starts an embedded runner that owns the store for up to an hour; a `serve` or JupyterLab
started next asks it for the store (`engines/_handover`), and it finishes its work, unloads and exits, so the server
the user started is the owner rather than a relay to a background process. A client that finds an owner of another
jupyter-modelrunner version restarts an embedded one and names both versions for one a user started.
Real processes throughout; every wait polls for a state.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from jupyter_modelrunner import discovery
from jupyter_modelrunner._version import __version__
from jupyter_modelrunner.client import RunnerClient
from jupyter_modelrunner.distribution import package_gguf
from jupyter_modelrunner.lease import read_owner
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from .conftest import TEST_API_KEY, server_env
from .support.jupyter import ServerProcess
from .support.runners import stop_store_owner
from .support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)
#: No test here pulls: the runners only need a registry name, never an answer from it.
NO_REGISTRY = "127.0.0.1:9"
OTHER_VERSION = "0.0.0+another"




def running(pid: int) -> bool:
    """Alive and not a zombie (an embedded runner whose CLI parent exited is reparented)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "jupyter_modelrunner", *args], capture_output=True, text=True,
                          env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def store_env(tmp_path):
    """A store of the test's own and a server environment for it; whatever owns the store at the end is stopped."""
    store = tmp_path / "store"
    env = server_env(tmp_path, store, NO_REGISTRY)
    yield store, env
    stop_store_owner(store)


def test_a_serve_started_after_a_cli_command_takes_the_store_from_the_embedded_runner(store_env, tmp_path):
    store, env = store_env
    cli("ls", env=env)  # no runner yet: the command starts an embedded one, which owns the store
    embedded = read_owner(store)
    assert embedded is not None and embedded.kind == "embedded" and embedded.version == __version__
    with ServerProcess.standalone(tmp_path, env) as serve:

        def serve_owns_the_store():
            owner = read_owner(store)
            return owner is not None and owner.pid == serve.process.pid and owner.kind == "serve"

        def embedded_has_exited():
            return not running(embedded.pid)

        wait_for(serve_owns_the_store)
        wait_for(embedded_has_exited)
        with serve.client() as http:
            status = http.get("engines/status").json()
        assert status["owner"] == "this runner"  # answered by serve itself, not relayed
        assert "hands the store over" in serve.log_tail(200)
        assert "handing store" in (store / "runner" / "embedded.log").read_text()
        # The next command finds serve as the store's owner and starts no runner.
        assert cli("ls", env=env).returncode == 0
        assert read_owner(store).pid == serve.process.pid


def test_work_arriving_during_the_handover_gets_a_503_or_the_new_owner_never_the_old_runner(
        store_env, tmp_path, tiny_gguf, monkeypatch, caplog):
    """While the embedded runner finishes what is in flight (here a `logs --follow` stream it must not cut), every new
    request to it, inference or management, is a 503 that says why, with Retry-After, and loads nothing; a client
    that meets that 503 finds the new owner and retries there once. Nothing is lost and nothing is answered by the
    old runner once it is handing over."""
    store, env = store_env
    package_gguf(Store(store, registry=NO_REGISTRY), tiny_gguf, parse_reference(f"{NO_REGISTRY}/ai/tiny"))
    for name in ("MODEL_RUNNER_HOST", "MODEL_RUNNER_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith(("MODEL_RUNNER_", "JUPYTER_")) or name == "HOME":
            monkeypatch.setenv(name, value)
    cli("ls", env=env)
    embedded = read_owner(store)
    assert embedded is not None and embedded.kind == "embedded"
    old = discovery.locate(start=False, store=store)
    assert old.url == discovery._normalize(embedded.url)
    old_http = httpx.Client(base_url=old.url, headers={"Authorization": f"token {old.token}"}, trust_env=False,
                            timeout=60)
    with old_http, old_http.stream("GET", "engines/logs", params={"model": "ai/tiny", "follow": "true"}) as follow, \
            caplog.at_level(logging.INFO, logger=discovery.__name__):
        assert follow.status_code == 200  # admitted before the handover: it keeps the embedded runner busy
        with ServerProcess.standalone(tmp_path, env) as serve:

            def embedded_refuses_new_work():
                answer = old_http.get("models")
                return answer if answer.status_code == 503 else None

            refused = wait_for(embedded_refuses_new_work)
            assert "handing the store over" in refused.json()["message"] and "retry" in refused.json()["message"]
            assert int(refused.headers["Retry-After"]) >= 1
            chat = old_http.post("engines/v1/chat/completions", json={
                "model": "ai/tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
            unload = old_http.post("engines/unload", json={"all": True})
            assert (chat.status_code, unload.status_code) == (503, 503)
            assert "handing the store over" in chat.json()["error"]["message"]
            assert running(embedded.pid) and read_owner(store).pid == embedded.pid  # still finishing its stream

            # A client of the old runner meets the 503, waits for the new owner, and retries there once.
            client = RunnerClient(location=old)
            answered: dict[str, object] = {}
            worker = threading.Thread(target=lambda: answered.update(models=client.models()))
            worker.start()

            def client_met_the_handover():
                return any("handing its store over" in r.getMessage() for r in caplog.records)

            wait_for(client_met_the_handover)
            assert worker.is_alive() and running(embedded.pid)
            follow.close()  # the work in flight ends: the embedded runner finishes and goes
            worker.join(timeout=120)
            assert not worker.is_alive()
            assert [m["tags"] for m in answered["models"]] == [["ai/tiny:latest"]]
            assert client.url == serve.url
            assert read_owner(store).pid == serve.process.pid
            wait_for(lambda: not running(embedded.pid))  # its lease is released as it stops, before it exits
            assert client.status()["owner"] == "this runner"
            assert client.ps() == []  # the chat sent during the handover loaded nothing anywhere


def test_the_handover_route_on_a_runner_a_user_started_is_a_409_and_stops_nothing(store_env, tmp_path):
    store, env = store_env
    with ServerProcess.standalone(tmp_path, env) as serve:
        owner = read_owner(store)
        assert owner is not None and owner.pid == serve.process.pid
        with serve.client() as http:
            refused = http.post("engines/_handover")
            assert refused.status_code == 409
            assert "hands its store over to nobody" in refused.json()["message"]
            by_key = http.post("engines/_handover", headers={"Authorization": f"Bearer {TEST_API_KEY}"})
            assert by_key.status_code == 403
            assert http.get("engines/status").json()["owner"] == "this runner"
        assert serve.process.poll() is None
        assert read_owner(store).pid == serve.process.pid


@pytest.fixture
def client_env(store_env, monkeypatch):
    """This process as a client of the test's store, whose jupyter-modelrunner claims another version."""
    store, env = store_env
    for name in ("MODEL_RUNNER_HOST", "MODEL_RUNNER_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith(("MODEL_RUNNER_", "JUPYTER_")) or name == "HOME":
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(discovery, "__version__", OTHER_VERSION)
    return store, env


def test_an_embedded_runner_of_another_version_is_replaced(client_env, caplog):
    store, env = client_env
    cli("ls", env=env)
    old = read_owner(store)
    assert old is not None and old.kind == "embedded"
    with caplog.at_level(logging.WARNING, logger=discovery.__name__):
        # A verb that must start nothing uses it as it is, saying so.
        kept = discovery.locate(start=False, store=store)
        assert read_owner(store).pid == old.pid and running(old.pid)
        assert __version__ in kept.source and OTHER_VERSION in kept.source
        location = discovery.locate(store=store)
    new = read_owner(store)
    assert new is not None and new.pid != old.pid and new.kind == "embedded"
    assert not running(old.pid)
    assert "embedded runner started now" in location.source
    assert httpx.get(location.url + "engines/status", headers={"Authorization": f"token {location.token}"},
                     trust_env=False).status_code == 200
    assert any(OTHER_VERSION in r.getMessage() and __version__ in r.getMessage() and "asked to finish" in
               r.getMessage() for r in caplog.records)


def test_a_server_a_user_started_of_another_version_is_used_and_both_versions_named(client_env, tmp_path, caplog):
    store, env = client_env
    with ServerProcess.standalone(tmp_path, env) as serve:
        with caplog.at_level(logging.WARNING, logger=discovery.__name__):
            location = discovery.locate(store=store)
        assert location.url == serve.url
        assert f"jupyter-modelrunner {__version__}; this client is {OTHER_VERSION}" in location.source
        warning = " ".join(r.getMessage() for r in caplog.records)
        assert __version__ in warning and OTHER_VERSION in warning and "used as it is" in warning
        assert serve.process.poll() is None and read_owner(store).pid == serve.process.pid
        assert os.environ["MODEL_RUNNER_STORE"] == str(store)
