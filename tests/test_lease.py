"""One owner per store: the lease itself, and what it means for users — whatever starts first (JupyterLab's
server, a terminal's command, a kernel) runs the store's engines, and everything else talks to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from jupyter_modelrunner import client as client_module
from jupyter_modelrunner.lease import StoreLease, lease_is_held, read_owner

from .conftest import server_env
from .support.jupyter import ServerProcess
from .support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)




def engine_processes(store: Path) -> list[int]:
    """llama-server processes serving a model from `store` (their --model path is in its bundles)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"llama-server") and str(store).encode() in b" ".join(cmdline):
            found.append(int(proc.name))
    return found


# -- the lease -------------------------------------------------------------------------------------------


def test_one_process_holds_the_lease_and_publishes_where_it_listens(tmp_path):
    first, second = StoreLease(tmp_path), StoreLease(tmp_path)
    assert first.acquire() and not second.acquire()
    assert read_owner(tmp_path) is None  # held, but it has not said where it listens yet
    first.publish("http://127.0.0.1:9999/", "s3cret", kind="serve")
    owner = read_owner(tmp_path)
    assert (owner.url, owner.token, owner.pid, owner.kind) == ("http://127.0.0.1:9999/", "s3cret", os.getpid(), "serve")
    token_file = tmp_path / "runner" / "owner.token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert "s3cret" not in (tmp_path / "runner" / "owner.json").read_text()  # the token lives apart, user-only
    first.release()
    assert read_owner(tmp_path) is None and second.acquire()


def test_a_killed_owners_lease_is_free_at_once_and_its_record_ignored(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from jupyter_modelrunner.lease import StoreLease
        lease = StoreLease({str(tmp_path)!r})
        assert lease.acquire()
        lease.publish("http://127.0.0.1:1/", "t", kind="serve")
        print("held", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert read_owner(tmp_path).pid == holder.pid and not StoreLease(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert not lease_is_held(tmp_path)
    assert read_owner(tmp_path) is None  # the record is still on disk, but nobody holds the lock
    taker = StoreLease(tmp_path)
    assert taker.acquire() and not (tmp_path / "runner" / "owner.json").exists()  # the stale record is gone
    taker.release()


# -- servers on one store ---------------------------------------------------------------------------------


@pytest.fixture
def two_servers(tmp_path_factory, live_store, registry):
    """Two `jupyter server` processes with the extension on one store; the first starts first."""
    servers = []
    for name in ("first", "second"):
        workdir = tmp_path_factory.mktemp(name)
        server = ServerProcess.jupyter_server(workdir, server_env(workdir, live_store.root, registry.host),
                                              "--Scheduler.keep_alive=10m")
        servers.append(server.start())
    yield servers
    for server in servers:
        server.stop()


def test_a_second_server_on_the_store_defers_to_the_first_and_takes_over_when_it_dies(two_servers, live_store):
    first, second = two_servers
    with second.client() as http:  # the second relays everything to the owner: the answer is the first's
        status = http.get("engines/status").json()
        assert status["pid"] == first.process.pid and status["owner"] == "this runner"
        answer = http.post("engines/v1/chat/completions", json={
            "model": "ai/tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] is not None
    with first.client() as http:  # the model was loaded by the first server, the store's owner
        (runner,) = http.get("engines/ps").json()
        assert runner["model_name"] == "ai/tiny:latest"
    assert len(engine_processes(live_store.root)) == 1

    os.kill(first.process.pid, signal.SIGKILL)  # its engines die with it (parent-death signal)
    first.process.wait()

    def second_owns() -> bool:
        with second.client() as http:
            return http.get("engines/status").json().get("pid") == second.process.pid

    wait_for(second_owns, 30)
    with second.client() as http:
        answer = http.post("engines/v1/chat/completions", json={
            "model": "ai/tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        assert [r["model_name"] for r in http.get("engines/ps").json()] == ["ai/tiny:latest"]
    assert read_owner(live_store.root).pid == second.process.pid


# -- every front end through the one owner ----------------------------------------------------------------


def test_lab_a_terminal_and_a_foreign_kernel_share_one_engine(jupyter, live_store, registry, monkeypatch, tmp_path):
    """JupyterLab's server owns the store; `jupyter modelrunner run` in a terminal and `%%chat` in a kernel that
    server did not start both find it through the store, so the model runs once and all three see it."""
    env = {**os.environ, "MODEL_RUNNER_STORE": str(live_store.root), "MODEL_RUNNER_DEFAULT_REGISTRY": registry.host}
    for name in ("MODEL_RUNNER_HOST", "MODEL_RUNNER_TOKEN", "JPY_PARENT_PID"):
        env.pop(name, None)
        monkeypatch.delenv(name, raising=False)
    done = subprocess.run([sys.executable, "-m", "jupyter_modelrunner", "run", "--max-tokens", "4", "ai/tiny", "Hi"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr

    monkeypatch.setenv("MODEL_RUNNER_STORE", str(live_store.root))
    monkeypatch.setenv("MODEL_RUNNER_DEFAULT_REGISTRY", registry.host)
    monkeypatch.setenv("MODEL_RUNNER_MAGICS_OUTPUT", "text")
    monkeypatch.setattr(client_module, "_active", None)
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "jupyter_modelrunner")
        with capture_output() as out:
            result = shell.run_cell("%%chat ai/tiny --max-tokens 4\nHello")
        assert result.success, out.stdout
        with capture_output() as out:
            shell.run_line_magic("model", "ps")
        from_kernel = out.stdout
    finally:
        InteractiveShell.clear_instance()
    assert "the owner of the store" in client_module.runner().location.source

    ps_cli = subprocess.run([sys.executable, "-m", "jupyter_modelrunner", "ps", "--json"], capture_output=True,
                            text=True, env=env, timeout=60)
    with jupyter.client() as http:
        from_lab = http.get("engines/ps").json()
    assert [r["model_name"] for r in from_lab] == ["ai/tiny:latest"]
    assert [r["model_name"] for r in json.loads(ps_cli.stdout)] == ["ai/tiny:latest"]
    assert "ai/tiny:latest" in from_kernel
    assert len(engine_processes(live_store.root)) == 1


def test_cli_verbs_act_on_the_runner_model_runner_host_names(standalone, tmp_path, registry, seeded):
    """With MODEL_RUNNER_HOST set, `ls`, `pull`, `run` and `status` act on that runner's store, not the local one."""
    local = tmp_path / "local-store"
    env = {**os.environ, "MODEL_RUNNER_HOST": standalone.url, "MODEL_RUNNER_TOKEN": standalone.token,
           "MODEL_RUNNER_STORE": str(local), "MODEL_RUNNER_DEFAULT_REGISTRY": registry.host}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "jupyter_modelrunner", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    with httpx.Client(base_url=standalone.url, headers=standalone.headers, trust_env=False) as http:
        remote_store = http.get("engines/status").json()["store"]
    assert "ai/tiny:latest" in cli("ls")
    cli("pull", "ai/tiny-st")
    assert "ai/tiny-st:latest" in cli("ls")
    assert remote_store in cli("status") and str(local) not in cli("status")
    assert not (local / "models.json").exists()  # nothing was written to the local store
    assert cli("run", "--max-tokens", "3", "ai/tiny", "Hi")
