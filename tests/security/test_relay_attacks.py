"""Attacks on the relay to the store's owner, and on the places the owner's token could leak to.

A `serve --api-key K` started while JupyterLab's server owns the store relays every model runner request to that
server (api/owner_proxy.py). An attacker holding only K (or only `serve`'s token, which opens models and nothing else)
tries to climb out of the owner's model runner prefix with dot segments and reach the Jupyter server's files and
kernels; then we check what the relay authenticates with, and that the owner's token reaches neither the relaying
process, nor an engine's environment, nor the embedded runner's log.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from jupyter_modelrunner import client as client_module
from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.keys import RELAY_KEY_FILES
from jupyter_modelrunner.lease import LEASE_DIR, TOKEN_FILE, read_owner
from jupyter_modelrunner.store import Store

from ..conftest import SESSION_MARKER, server_env
from ..support.jupyter import ServerProcess
from ..support.runners import stop_store_owner
from ..support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)
#: What `serve --api-key` accepts in these tests (the owner does not know it: only the relaying server does).
RELAY_CALLER_KEY = "mrk-relay-attack-key-" + os.urandom(8).hex()
SECRET = "the user's private notes " + os.urandom(8).hex()
#: `GET /v1/models/{id}` is an inference route whose id may hold slashes: the way out of the prefix, spelled as
#: curl --path-as-is sends it, percent-encoded, half-encoded, in capitals, with encoded slashes and backslashes.
TRAVERSALS = [
    "v1/models/../../../api/contents/notes.txt",
    "v1/models/%2e%2e/%2e%2e/%2e%2e/api/contents/notes.txt",
    "v1/models/%2E%2E/%2E%2E/%2E%2E/api/contents/notes.txt",
    "v1/models/.%2e/%2e./.%2E/api/contents/notes.txt",
    "v1/models/..%2f..%2f..%2fapi/contents/notes.txt",
    "v1/models/%2e%2e%2f%2e%2e%2f%2e%2e%2fapi/contents/notes.txt",
    "v1/models/%252e%252e/%252e%252e/%252e%252e/api/contents/notes.txt",
    "v1/models/..\\..\\..\\api/contents/notes.txt",
    "v1/models/./../../../api/contents/notes.txt",
    "engines/llama.cpp/v1/models/../../../../../api/contents/notes.txt",
    "v1/models/../../models",  # a management route of the owner's, with an inference key
]




def raw_get(server: ServerProcess, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """GET `path` exactly as written (http.client sends it as-is, as `curl --path-as-is` does)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("GET", "/" + server.prefix + path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def relays_to(server: ServerProcess, owner: ServerProcess) -> bool:
    """Whether `server` answers with the owner's answers (its status is the owner's)."""
    try:
        status = httpx.get(server.url + "engines/status", headers=server.headers, trust_env=False, timeout=30)
    except httpx.TransportError:
        return False
    return status.status_code == 200 and status.json().get("pid") == owner.process.pid


@pytest.fixture(scope="module")
def owner(jupyter) -> ServerProcess:
    """JupyterLab's server owning the store, with a file of the user's in its root folder."""
    (jupyter.log_path.parent / "notes.txt").write_text(SECRET)
    return jupyter


@pytest.fixture(scope="module")
def relaying(owner, tmp_path_factory, live_store, registry):
    """`serve --api-key K` on the owner's store: it relays everything to the owner."""
    workdir = tmp_path_factory.mktemp("relaying")
    with ServerProcess.standalone(workdir, server_env(workdir, live_store.root, registry.host),
                                  "--api-key", RELAY_CALLER_KEY) as server:
        wait_for(lambda: relays_to(server, owner))
        yield server


# -- climbing out of the owner's prefix ----------------------------------------------------------------------


def test_the_file_is_there_for_the_owners_token(owner):
    """The target of the attacks exists: the owner's token reads it through Jupyter's contents API."""
    answer = httpx.get(owner.origin + "api/contents/notes.txt", headers=owner.headers, trust_env=False)
    assert answer.status_code == 200 and SECRET in answer.text


@pytest.mark.parametrize("path", TRAVERSALS)
@pytest.mark.parametrize("credential", ["inference key", "serve token"])
def test_dot_segments_are_refused_before_the_relay(relaying, path, credential):
    headers = ({"Authorization": f"Bearer {RELAY_CALLER_KEY}"} if credential == "inference key"
               else relaying.headers)
    status, body = raw_get(relaying, path, headers)
    assert SECRET not in body
    assert status == 400, f"{path} -> {status}: {body[:300]}"
    assert "dot segment" in json.loads(body)["error"]["message"]


def test_dot_segments_are_refused_on_the_owner_too(owner):
    """The owner's own routes refuse them the same way (nothing under the prefix has a `.` or `..` segment)."""
    status, body = raw_get(owner, "v1/models/../../../api/contents/notes.txt", owner.headers)
    assert status == 400 and SECRET not in body


def test_the_relay_still_answers_ordinary_requests(relaying, owner):
    key = {"Authorization": f"Bearer {RELAY_CALLER_KEY}"}
    listed = httpx.get(relaying.url + "v1/models", headers=key, trust_env=False, timeout=60)
    assert listed.status_code == 200 and "ai/tiny:latest" in {m["id"] for m in listed.json()["data"]}
    one = httpx.get(relaying.url + "v1/models/ai%2Ftiny:latest", headers=key, trust_env=False, timeout=60)
    assert one.status_code == 200 and one.json()["id"] == "ai/tiny:latest"
    refused = httpx.get(relaying.url + "models", headers=key, trust_env=False, timeout=60)
    assert refused.status_code == 403  # the relaying server checks the key's scope itself first
    managed = httpx.get(relaying.url + "models", headers=relaying.headers, trust_env=False, timeout=60)
    assert managed.status_code == 200  # serve's token manages models on the owner through the relay


# -- what the relay authenticates with ------------------------------------------------------------------------


def test_the_relay_credentials_open_model_runner_routes_in_their_scope_and_nothing_of_jupyters(owner, live_store):
    """The owner derives a relay key per scope and leaves them, user-only, beside its lease record: the inference
    one is refused management on the owner; neither opens the Jupyter server's files or kernels."""
    folder = live_store.root / LEASE_DIR
    keys = {}
    for scope, name in RELAY_KEY_FILES.items():
        path = folder / name
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        keys[scope] = path.read_text().strip()
        assert keys[scope] and keys[scope] != owner.token and owner.token not in keys[scope]

    def get(url: str, scope: str) -> httpx.Response:
        return httpx.get(url, headers={"Authorization": f"Bearer {keys[scope]}"}, trust_env=False, timeout=60)

    assert get(owner.url + "v1/models", "inference").status_code == 200
    assert get(owner.url + "models", "inference").status_code == 403
    refused = httpx.post(owner.url + "engines/unload", json={"models": ["ai/tiny"]}, trust_env=False,
                         headers={"Authorization": f"Bearer {keys['inference']}"})
    assert refused.status_code == 403
    assert get(owner.url + "models", "manage").status_code == 200
    for scope in keys:
        for path in ("api/contents/notes.txt", "api/kernels", "api/sessions"):
            answer = get(owner.origin + path, scope)
            assert answer.status_code in (401, 403) and SECRET not in answer.text, f"{scope}: {path}"


def test_the_relaying_server_never_reads_the_owners_token(owner, live_store, tmp_path_factory, registry):
    """With the owner's token file made unreadable (a folder in its place), a new `serve` on the store still
    relays, so it never reads that file: the relay key is all it holds."""
    token_file = live_store.root / LEASE_DIR / TOKEN_FILE
    saved = token_file.with_name("owner.token.saved")
    token_file.rename(saved)
    token_file.mkdir()
    try:
        workdir = tmp_path_factory.mktemp("relaying-blind")
        with ServerProcess.standalone(workdir, server_env(workdir, live_store.root, registry.host)) as server:
            wait_for(lambda: relays_to(server, owner))
            listed = httpx.get(server.url + "models", headers=server.headers, trust_env=False, timeout=60)
            assert listed.status_code == 200 and any("ai/tiny:latest" in m["tags"] for m in listed.json())
            assert owner.token not in server.log_tail(10_000)
    finally:
        token_file.rmdir()
        saved.rename(token_file)


# -- the token's other ways out ---------------------------------------------------------------------------------

CREDENTIAL_VARIABLES = ("JUPYTER_TOKEN", "MODEL_RUNNER_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_API_TOKEN")


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


def test_an_engine_never_sees_the_servers_credentials(tmp_path_factory, registry, seeded):
    """A `serve` whose environment holds Jupyter's and the Hub's tokens starts a real engine: none of them is in the
    engine's environment (/proc/<pid>/environ), where any code the model's template or a tool runs could read it."""
    workdir = tmp_path_factory.mktemp("engine-env")
    store = Store(workdir / "store", registry=registry.host)
    pull("ai/tiny", store, registry=registry.host)
    env = server_env(workdir, store.root, registry.host)
    secrets_in_env = {name: f"{name.lower()}-{os.urandom(6).hex()}" for name in CREDENTIAL_VARIABLES}
    env.update(secrets_in_env)
    with ServerProcess.standalone(workdir, env) as server, server.client() as http:
        answer = http.post("v1/chat/completions", json={"model": "ai/tiny", "max_tokens": 2,
                                                        "messages": [{"role": "user", "content": "Hi"}]})
        assert answer.status_code == 200, answer.text
        engines = [pid for pid in _children(server.process.pid)
                   if b"llama" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert engines, "no engine process found under the server"
        for pid in engines:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert SESSION_MARKER.encode() in environ  # the engine's environment, read for real
            leaked = [name for name, value in secrets_in_env.items()
                      if any(value.encode() in entry for entry in environ)]
            assert not leaked, f"engine pid {pid} holds {leaked}"


def test_the_embedded_runners_log_names_its_address_but_not_its_token(tmp_path, registry, monkeypatch):
    """A kernel's or a command's embedded runner logs under the store (`runner/embedded.log`): its address is
    there, its token is not (the token lives in the lease's user-only file)."""
    store = tmp_path / "embedded-store"
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("MODEL_RUNNER_STORE", str(store))
    monkeypatch.setenv("MODEL_RUNNER_DEFAULT_REGISTRY", registry.host)
    for name in ("MODEL_RUNNER_HOST", "MODEL_RUNNER_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(client_module, "_active", None)
    try:
        location = client_module.locate()
        assert "embedded runner started now" in location.source
        owner = read_owner(store)
        log = store / LEASE_DIR / "embedded.log"
        wait_for(lambda: "Model runner API at" in log.read_text(errors="replace"))
        text = log.read_text(errors="replace")
        assert owner.token not in text
        assert owner.url.rstrip("/") in text
    finally:
        stop_store_owner(store)
        shutil.rmtree(store / "models", ignore_errors=True)
