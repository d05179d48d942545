"""Issue 19, item 7: `POST models/package` as a file-reading primitive.

Packaging copies files into the store, `api/show` hands back a model's chat template and `push` sends every layer to
any registry: a `serve` token holder (no contents API, no kernels) who may package any path the server can read
reads any file. The attacks below name a secret outside the server's folders (standing for ~/.ssh/id_rsa) as a
chat template, a license, weights, through a symbolic link inside an allowed folder, and through a `serve` that
relays to the store's owner. Each is refused with a 403 naming `c.ModelRunner.package_roots`, and the store gains
nothing; packaging from inside an allowed folder still works.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import httpx
import pytest

from ..conftest import server_env
from ..support.jupyter import ServerProcess

pytestmark = pytest.mark.timeout(300)

SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-material-that-must-not-leak\n"


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    """A file the server can read but no client may: outside every folder the server packages from."""
    path = tmp_path_factory.mktemp("home") / "id_rsa"
    path.write_text(SECRET)
    return path


@pytest.fixture(scope="module")
def allowed(tmp_path_factory, tiny_gguf, tiny_safetensors, secret) -> Path:
    """The folder the servers under attack package from: real weights, a template and a license, and a symbolic
    link that points out of it at the secret."""
    root = tmp_path_factory.mktemp("allowed")
    shutil.copy(tiny_gguf, root / "tiny.gguf")
    shutil.copytree(tiny_safetensors, root / "tiny-st")
    (root / "template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    (root / "LICENSE").write_text("Apache-2.0\n")
    (root / "innocent.jinja").symlink_to(secret)
    (root / "weights.gguf").symlink_to(secret)
    return root


def _serve(tmp_path_factory, registry, name: str, *extra: str):
    workdir = tmp_path_factory.mktemp(name)
    store = workdir / "store"
    return ServerProcess.standalone(workdir, server_env(workdir, store, registry.host), *extra), store


@pytest.fixture(scope="module")
def rooted_serve(tmp_path_factory, registry, allowed):
    """`serve` told to package from `allowed` only."""
    server, store = _serve(tmp_path_factory, registry, "rooted", f"--ModelRunner.package_roots={allowed}")
    with server:
        yield server, store


@pytest.fixture(scope="module")
def default_serve(tmp_path_factory, registry):
    """`serve` as a user starts it: its root dir, the default package root, is an empty folder of its own, so it
    packages nothing."""
    server, store = _serve(tmp_path_factory, registry, "default")
    with server:
        yield server, store


def _package(server: ServerProcess, body: dict) -> httpx.Response:
    with server.client() as http:
        return http.post("models/package", json=body)


def _models(server: ServerProcess) -> list[str]:
    with server.client() as http:
        return [tag for model in http.get("models").json() for tag in model["tags"]]


def _holds_secret(store: Path, secret: Path) -> bool:
    """Whether any blob of the store has the secret's bytes (its digest as a file name, or its content)."""
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    for path in store.rglob("*"):
        if digest in path.name:
            return True
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20 and SECRET.encode() in \
                path.read_bytes():
            return True
    return False


def _assert_refused(response: httpx.Response, store: Path, secret: Path, before: list[str], server,
                    named: str | Path | None = None) -> None:
    """403 naming the setting (and the path that was refused), no secret in the answer, nothing new in the store."""
    assert response.status_code == 403, response.text
    message = response.json()["message"]
    assert "c.ModelRunner.package_roots" in message
    if named is not None:
        assert f" {named} is not inside" in message, message
    if secret != Path(named or secret):
        assert str(secret) not in message  # where a link leads is not told
    assert SECRET.strip() not in response.text
    assert _models(server) == before
    assert not _holds_secret(store, secret)


def test_serve_refuses_a_chat_template_from_outside_its_root_and_show_never_returns_it(default_serve, allowed,
                                                                                        secret):
    server, store = default_serve
    before = _models(server)
    response = _package(server, {"tag": "ai/leak", "gguf": [str(allowed / "tiny.gguf")],
                                 "chat_template": str(secret)})
    with server.client() as http:
        shown = http.post("api/show", json={"model": "ai/leak"})
    assert "secret-key-material" not in shown.text  # today: the template field is the private key
    _assert_refused(response, store, secret, before, server)  # here the weights too are outside serve's empty root
    assert shown.status_code == 404


def test_serve_refuses_files_outside_its_root(rooted_serve, allowed, secret):
    server, store = rooted_serve
    before = _models(server)
    gguf = str(allowed / "tiny.gguf")
    attacks = {
        "chat_template": {"tag": "ai/leak-template", "gguf": [gguf], "chat_template": str(secret)},
        "license": {"tag": "ai/leak-license", "gguf": [gguf], "license": [str(secret)]},
        "mmproj": {"tag": "ai/leak-mmproj", "gguf": [gguf], "mmproj": str(secret)},
        "gguf": {"tag": "ai/leak-gguf", "gguf": [str(secret)]},
        "safetensors_dir": {"tag": "ai/leak-dir", "safetensors_dir": str(secret.parent)},
        "dot segments": {"tag": "ai/leak-dots", "gguf": [gguf],
                         "chat_template": f"{allowed}/../{secret.parent.name}/{secret.name}"},
    }
    for what, body in attacks.items():
        response = _package(server, body)
        assert response.status_code == 403, (what, response.text)
        named = body.get(what) or body.get("chat_template")
        _assert_refused(response, store, secret, before, server, named[0] if isinstance(named, list) else named)


def test_serve_resolves_symbolic_links_before_checking(rooted_serve, allowed, secret):
    """A link inside the root that points at the secret is outside the root."""
    server, store = rooted_serve
    before = _models(server)
    for body in ({"tag": "ai/leak-link", "gguf": [str(allowed / "tiny.gguf")],
                  "chat_template": str(allowed / "innocent.jinja")},
                 {"tag": "ai/leak-link-license", "gguf": [str(allowed / "tiny.gguf")],
                  "license": [str(allowed / "innocent.jinja")]},
                 {"tag": "ai/leak-link-gguf", "gguf": [str(allowed / "weights.gguf")]}):
        link = allowed / ("weights.gguf" if "leak-link-gguf" in body["tag"] else "innocent.jinja")
        _assert_refused(_package(server, body), store, secret, before, server, named=link)


def test_serve_packages_from_inside_its_root(rooted_serve, allowed):
    server, _ = rooted_serve
    response = _package(server, {"tag": "ai/mine", "gguf": [str(allowed / "tiny.gguf")],
                                 "chat_template": str(allowed / "template.jinja"),
                                 "license": [str(allowed / "LICENSE")]})
    assert response.status_code == 201, response.text
    with server.client() as http:
        shown = http.post("api/show", json={"model": "ai/mine"}).json()
    assert shown["template"] == (allowed / "template.jinja").read_text()
    response = _package(server, {"tag": "ai/mine-st", "safetensors_dir": str(allowed / "tiny-st")})
    assert response.status_code == 201, response.text
    assert {"ai/mine:latest", "ai/mine-st:latest"} <= set(_models(server))


def test_serve_with_no_package_roots_packages_nothing(tmp_path_factory, registry, allowed, secret):
    server, store = _serve(tmp_path_factory, registry, "off", "--ModelRunner.package_roots=[]")
    with server:
        before = _models(server)
        response = _package(server, {"tag": "ai/mine", "gguf": [str(allowed / "tiny.gguf")]})
        assert response.status_code == 403, response.text
        assert "off" in response.json()["message"] and "c.ModelRunner.package_roots" in response.json()["message"]
        _assert_refused(_package(server, {"tag": "ai/leak", "gguf": [str(allowed / "tiny.gguf")],
                                          "chat_template": str(secret)}), store, secret, before, server)


def test_serve_checks_before_relaying_to_the_store_owner(tmp_path_factory, registry, allowed, secret):
    """A `serve` on a store JupyterLab owns relays each request there with the owner's token; the owner (a Jupyter
    server, whose token may read files anyway) packages from anywhere, so `serve` must check the paths itself."""
    workdir = tmp_path_factory.mktemp("owner")
    store = workdir / "store"
    owner = ServerProcess.jupyter_server(workdir, server_env(workdir, store, registry.host))
    serve = ServerProcess.standalone(workdir, server_env(workdir, store, registry.host),
                                     f"--ModelRunner.package_roots={allowed}")
    with owner, serve:
        with serve.client() as http:
            assert http.get("engines/status").json()["pid"] == owner.process.pid  # serve relays
        before = _models(serve)
        _assert_refused(_package(serve, {"tag": "ai/leak", "gguf": [str(allowed / "tiny.gguf")],
                                         "chat_template": str(secret)}), store, secret, before, serve, named=secret)
        _assert_refused(_package(serve, {"tag": "ai/leak", "gguf": [str(allowed / "tiny.gguf")],
                                         "chat_template": str(allowed / "innocent.jinja")}),
                        store, secret, before, serve, named=allowed / "innocent.jinja")
        relayed = _package(serve, {"tag": "ai/mine", "gguf": [str(allowed / "tiny.gguf")],
                                   "chat_template": str(allowed / "template.jinja")})
        assert relayed.status_code == 201, relayed.text
        with owner.client() as http:
            assert "ai/mine:latest" in [t for m in http.get("models").json() for t in m["tags"]]
        # The owner itself, a Jupyter server, keeps packaging from anywhere its user names.
        with owner.client() as http:
            assert http.post("models/package", json={"tag": "ai/outside", "gguf": [str(allowed / "tiny.gguf")],
                                                     "chat_template": str(secret)}).status_code == 201
