"""Every route of the API sits behind Jupyter's authentication, in the extension and in `serve`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from tornado import web

from jupyter_modelrunner.api import routes
from jupyter_modelrunner.api.base import SCOPE_INFERENCE, SCOPE_MANAGE
from jupyter_modelrunner.keys import KeyRing, digest

from ..conftest import TEST_API_KEY

pytestmark = pytest.mark.timeout(120)
#: Values for the URL groups that are not a list of literal alternatives.
SAMPLES = {"name": "ai/tiny", "engine": "llama.cpp", "response_id": "resp_0", "model_id": "ai/tiny:latest",
           "file_id": "file-0123456789abcdef01234567", "batch_id": "batch_0123456789abcdef01234567"}
VERBS = ("get", "post", "put", "patch", "delete")


def every_route() -> list[tuple[str, str]]:
    """(method, path) for each verb each handler implements, with sample values in the URL's groups."""
    cases = []
    for pattern, handler in routes(""):
        paths = [pattern.lstrip("/")]
        while any("(?P<" in p for p in paths):
            expanded = []
            for path in paths:
                group = re.search(r"\(\?P<(\w+)>([^)]*)\)", path)
                if group is None:
                    expanded.append(path)
                    continue
                literal = re.fullmatch(r"[\w/]+(\|[\w/]+)*", group.group(2))
                values = group.group(2).split("|") if literal else [SAMPLES[group.group(1)]]
                expanded += [path[: group.start()] + value + path[group.end() :] for value in values]
            paths = expanded
        for path in (p.replace("\\.", ".") for p in paths):  # `openapi\.json` is requested as `openapi.json`
            for verb in VERBS:
                if getattr(handler, verb) is not getattr(web.RequestHandler, verb):
                    cases.append((verb.upper(), path))
    return cases


ROUTES = every_route()


def test_the_route_table_is_complete():
    paths = {path for _, path in ROUTES}
    for expected in ("models", "models/create", "engines/v1/chat/completions", "v1/models", "engines/status",
                     "engines/unload", "api/chat", "api/tags", "metrics", "v1/messages", "v1/messages/count_tokens",
                     "anthropic/v1/messages", "engines/llama.cpp/v1/messages", "v1/responses", "responses",
                     "engines/v1/responses/resp_0", "v1/responses/resp_0/input_items", "v1/responses/input_tokens",
                     "v1/models/ai/tiny:latest", "engines/llama.cpp/v1/models/ai/tiny:latest", "api/embeddings",
                     "api/copy", "api/push", "v1/rerank", "v1/score", "engines/v1/rerank",
                     "engines/llama.cpp/v1/score"):
        assert expected in paths
    assert len(ROUTES) >= 30


def handler_of(path: str) -> type:
    """The handler tornado picks for `path`: the first pattern of the table that matches."""
    return next(handler for pattern, handler in routes("") if re.fullmatch(pattern.lstrip("/"), path))


@pytest.mark.parametrize(("path", "scope"), [
    ("v1/messages", SCOPE_INFERENCE), ("anthropic/v1/messages/count_tokens", SCOPE_INFERENCE),
    ("v1/responses", SCOPE_INFERENCE), ("v1/responses/resp_0", SCOPE_INFERENCE),
    ("v1/responses/resp_0/input_items", SCOPE_INFERENCE), ("v1/responses/input_tokens", SCOPE_INFERENCE),
    ("v1/models/ai/tiny:latest", SCOPE_INFERENCE), ("api/embeddings", SCOPE_INFERENCE),
    ("v1/rerank", SCOPE_INFERENCE), ("engines/llama.cpp/v1/score", SCOPE_INFERENCE),
    ("api/copy", SCOPE_MANAGE), ("api/push", SCOPE_MANAGE),
    ("huggingface/search", SCOPE_INFERENCE), ("huggingface/cache", SCOPE_MANAGE),
    ("v1/files", SCOPE_INFERENCE), ("engines/v1/files/file-0123456789abcdef01234567/content", SCOPE_INFERENCE),
    ("v1/batches", SCOPE_INFERENCE), ("engines/v1/batches/batch_0123456789abcdef01234567/cancel", SCOPE_INFERENCE),
])
def test_routes_that_answer_with_a_model_have_the_inference_scope_and_management_does_not(path, scope):
    assert handler_of(path).api_scope == scope


@pytest.fixture(scope="module", params=["jupyter", "standalone"])
def server(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no-token", "wrong-token"])
def test_every_route_refuses_a_request_without_the_token(server, token):
    headers = {"Authorization": f"token {token}"} if token else {}
    refused = []
    with httpx.Client(base_url=server.url, headers=headers, trust_env=False, timeout=30) as http:
        for method, path in ROUTES:
            response = http.request(method, path, json={} if method != "GET" else None)
            if response.status_code not in (401, 403):
                refused.append(f"{method} {path} -> {response.status_code}")
    assert not refused, "answered without authentication: " + ", ".join(refused)


def test_the_token_is_accepted_as_a_bearer_key_too(server):
    for scheme in ("token", "Bearer"):
        response = httpx.get(server.url + "models", headers={"Authorization": f"{scheme} {server.token}"},
                             trust_env=False)
        assert response.status_code == 200


# -- scoped inference keys ------------------------------------------------------------------------------------


def _handlers() -> dict[str, type]:
    """Sample path → its handler class, for the scope each route declares."""
    by_path = {}
    for pattern, handler in routes(""):
        for _, path in [(m, p) for m, p in every_route() if re.fullmatch(pattern.lstrip("/"), p)]:
            by_path.setdefault(path, handler)
    return by_path


INFERENCE_BODIES = {
    "engines/v1/chat/completions": {"model": "ai/tiny", "max_tokens": 2,
                                    "messages": [{"role": "user", "content": "Hi"}]},
    "api/chat": {"model": "ai/tiny", "stream": False, "options": {"num_predict": 2},
                 "messages": [{"role": "user", "content": "Hi"}]},
}
JUPYTER_ROUTES = [("GET", "api/kernels"), ("POST", "api/kernels"), ("GET", "api/contents"), ("GET", "api/sessions"),
                  ("GET", "api/kernelspecs"), ("GET", "api/terminals"), ("GET", "api/config/notebook")]


def test_an_inference_key_asks_models_and_nothing_else(server):
    handlers = _handlers()
    key = {"Authorization": f"Bearer {TEST_API_KEY}"}
    wrong = []
    with httpx.Client(base_url=server.url, headers=key, trust_env=False, timeout=120) as http:
        for method, path in ROUTES:
            inference = getattr(handlers[path], "api_scope", None) == SCOPE_INFERENCE
            if method == "DELETE" and not inference:
                continue  # a refused DELETE proves nothing more than a refused POST, and an accepted one would harm
            response = http.request(method, path, json=INFERENCE_BODIES.get(path, {}) if method != "GET" else None)
            if inference and response.status_code in (401, 403):
                wrong.append(f"{method} {path} refused the key ({response.status_code})")
            if not inference and response.status_code != 403:
                wrong.append(f"{method} {path} let the key manage ({response.status_code})")
        assert not wrong, "; ".join(wrong)
        # what a client with only the key does, answered for real
        assert http.get("v1/models").status_code == 200 and http.get("api/tags").status_code == 200
        answer = http.post("engines/v1/chat/completions", json=INFERENCE_BODIES["engines/v1/chat/completions"])
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] is not None
        refused = http.post("models/create", json={"from": "ai/tiny"})
        assert refused.status_code == 403 and "needs the Jupyter token" in refused.json()["message"]
    # Jupyter's own routes do not know the key at all
    with httpx.Client(base_url=server.origin, headers=key, trust_env=False, timeout=30) as http:
        for method, path in JUPYTER_ROUTES:
            status = http.request(method, path, json={} if method == "POST" else None).status_code
            assert status in (401, 403, 404), f"{method} {path} -> {status}"


def test_a_key_sent_as_a_jupyter_token_asks_models_and_nothing_else(server):
    """Our own client sends `Authorization: token …`; a kernel given an inference key instead of the token may ask
    models with it, and the key's scope holds the same (a wrong one stays Jupyter's 403 for a wrong token)."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"token {TEST_API_KEY}"}, trust_env=False,
                      timeout=120) as http:
        assert http.get("v1/models").status_code == 200
        assert http.get("engines/v1/models/ai/tiny").json()["model_id"].startswith("sha256:")
        for method, path in (("GET", "engines/status"), ("POST", "models/create"), ("GET", "models")):
            refused = http.request(method, path, json={"from": "ai/tiny"} if method == "POST" else None)
            assert refused.status_code == 403 and "needs the Jupyter token" in refused.json()["message"], path
    wrong = httpx.get(server.url + "v1/models", headers={"Authorization": "token mrk-not-a-key"}, trust_env=False)
    assert wrong.status_code == 403


def test_a_wrong_key_is_401_as_openai_says_it(server):
    response = httpx.get(server.url + "v1/models", headers={"Authorization": "Bearer mrk-not-a-key"},
                         trust_env=False)
    assert response.status_code == 401 and "Invalid or revoked API key" in response.json()["error"]["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_keys_made_with_the_cli_work_at_once_and_revoking_needs_no_restart(server):
    ring = KeyRing(Path(server.env["JUPYTER_CONFIG_DIR"]) / "modelrunner" / "keys.json")
    key = ring.create(f"app-{os.getpid()}-{server.port}")
    stored = ring.path.read_text()
    assert key not in stored and digest(key) in stored and oct(ring.path.stat().st_mode & 0o777) == "0o600"
    url, headers = server.url + "v1/models", {"Authorization": f"Bearer {key}"}
    assert httpx.get(url, headers=headers, trust_env=False).status_code == 200
    ring.revoke(f"app-{os.getpid()}-{server.port}")
    assert httpx.get(url, headers=headers, trust_env=False).status_code == 401
