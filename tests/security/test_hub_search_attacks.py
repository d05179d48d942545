"""Attacks through `GET huggingface/search` and `GET huggingface/cache`, against a real Jupyter server whose
HF_ENDPOINT is the suite's named fake hub (tests/support/fakehub.py), which records every request it gets.

The search query comes from anyone with a credential (an inference key too) and goes on to another server: it must
reach the Hub only as the value of the `search` parameter of `/api/models` (never as a path, another parameter, or a
header), absurd sizes are refused before any request, and the Hub's answer cannot send the runner elsewhere (a
`Link` to a next page) or make it fail with a 500.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ..conftest import TEST_API_KEY, server_env
from ..support.fakehub import FakeHub, hub_model
from ..support.jupyter import ServerProcess

pytestmark = pytest.mark.timeout(300)
KEY = {"Authorization": f"Bearer {TEST_API_KEY}"}


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    tiny = hub_model("org/tiny-GGUF", downloads=1, likes=0, library="gguf", tags=["gguf"])
    with FakeHub(models=[tiny]) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("hub-attacks")
    env = server_env(workdir, workdir / "store", "127.0.0.1:9")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        env.pop(name, None)
    env.update({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(workdir / "hf")})
    with ServerProcess.jupyter_server(workdir, env) as process:
        yield process


@pytest.fixture
def http(server, hub) -> Iterator[httpx.Client]:
    hub.requests.clear()
    hub.search_status = hub.search_body = hub.search_link = None
    with server.client() as client:
        yield client


@pytest.mark.parametrize("query", [
    "../../api/whoami-v2", "tiny?search=other&filter=x", "tiny#fragment", "tiny&limit=100000",
    "%2e%2e%2fapi%2fwhoami-v2", "/org/tiny/resolve/main/secret", "ti ny", "ünïcödé 🦙",
])
def test_the_query_reaches_the_hub_only_as_the_search_parameter(http, hub, query):
    answer = http.get("huggingface/search", params={"q": query})
    assert answer.status_code == 200, answer.text
    assert len(hub.requests) == 1, hub.requests
    [request] = hub.requests
    assert (request.method, request.path) == ("GET", "/api/models")
    assert request.query["search"] == [query.strip()]
    assert request.query["limit"] == ["40"] and "filter" not in request.query  # the runner's own, not the query's


@pytest.mark.parametrize("query", ["tiny\r\nX-Injected: 1", "tiny\nGET /api/whoami-v2", "tiny\tgguf",
                                   "a" * 10_000])
def test_a_query_no_one_means_is_a_400_and_no_request(http, hub, query):
    answer = http.get("huggingface/search", params={"q": query})
    assert answer.status_code == 400
    assert answer.json()["message"]
    assert hub.requests == []


def test_a_nul_never_reaches_the_hub(http, hub):
    """Jupyter's server (tornado) turns NUL and most control characters of an argument into spaces before the route
    reads it; what reaches the Hub then is the words."""
    assert http.get("huggingface/search", params={"q": "tiny\x00\x01gguf"}).status_code == 200
    [searched] = [asked["search"] for asked in hub.searches()]
    assert searched == ["tiny  gguf"]


@pytest.mark.parametrize("limit", ["0", "-1", "101", "1e9", "99999999999999999999", "10; DROP", ""])
def test_an_absurd_limit_is_a_400_and_no_request(http, hub, limit):
    answer = http.get("huggingface/search", params={"q": "tiny", "limit": limit})
    assert answer.status_code == 400
    assert hub.requests == []


def test_the_hubs_link_to_a_next_page_is_not_followed(http, hub):
    hub.search_link = "/api/whoami-v2"
    assert http.get("huggingface/search", params={"q": "tiny"}).status_code == 200
    assert [request.path for request in hub.requests] == ["/api/models"]


@pytest.mark.parametrize("body", [b"not json", b'{"error": "an object"}', b'[{"no": "id"}, 42, null]',
                                  b'[{"id": "org/x", "tags": "gguf", "downloads": "many"}]'])
def test_a_hub_answer_that_is_not_a_model_list_is_no_500(http, hub, body):
    hub.search_body = body
    answer = http.get("huggingface/search", params={"q": "tiny"})
    assert answer.status_code in (200, 502), answer.text
    if answer.status_code == 200:
        assert all(isinstance(m["name"], str) for m in answer.json()["models"])


def test_an_inference_key_may_search_but_not_read_the_cache(server, hub):
    with httpx.Client(base_url=server.url, headers=KEY, trust_env=False, timeout=60) as http:
        assert http.get("huggingface/search", params={"q": "tiny"}).status_code == 200
        assert http.get("huggingface/cache").status_code == 403


def test_no_credential_asks_the_hub_nothing(server, hub):
    hub.requests.clear()
    with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as http:
        assert http.get("huggingface/search", params={"q": "tiny"}).status_code == 403
        assert http.get("huggingface/cache").status_code == 403
    assert hub.requests == []
