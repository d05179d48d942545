"""Every route of the API sits behind Jupyter's authentication, in the extension and in `serve`."""

from __future__ import annotations

import re

import httpx
import pytest
from tornado import web

from jupyter_modelrunner.api import routes
from jupyter_modelrunner.api.base import SCOPE_INFERENCE, SCOPE_MANAGE

pytestmark = pytest.mark.timeout(120)
#: Values for the URL groups that are not a list of literal alternatives.
SAMPLES = {"name": "ai/tiny", "engine": "llama.cpp", "response_id": "resp_0", "model_id": "ai/tiny:latest"}
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
        for path in paths:
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
                     "api/copy", "api/push"):
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
    ("api/copy", SCOPE_MANAGE), ("api/push", SCOPE_MANAGE),
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
