"""Vision end to end: the tiny Gemma 3 packaged with its projector, pushed to the registry and pulled, then shown
images through the real `openai` and `ollama` SDKs against a real `jupyter server` running llama-server — and the
400s a client gets when an image cannot be used."""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import package_gguf, pull, push
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from ..conftest import server_env
from ..support.imageserver import ImageServer
from ..support.jupyter import ServerProcess
from ..support.registry import find_free_port
from ..support.vision import data_url, images_encoded, png

pytestmark = pytest.mark.timeout(300)
#: The server's limit on one image, small enough for the tests' big images to cross it.
MAX_IMAGE_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def vision_store(tmp_path_factory, registry, seeded, tiny_vision) -> Store:
    """`ai/tiny-vision` packaged with `--mmproj`, pushed, and pulled into the server's store; `ai/tiny` beside it."""
    with tempfile.TemporaryDirectory(prefix="publish-") as scratch:
        source = Store(Path(scratch) / "store")
        ref = parse_reference(f"{registry.host}/ai/tiny-vision")
        package_gguf(source, tiny_vision.gguf, ref, mmproj=tiny_vision.mmproj)
        push(source, ref.full)
    store = Store(tmp_path_factory.mktemp("vision") / "store", registry=registry.host)
    pulled = pull("ai/tiny-vision", store, registry=registry.host).model
    assert [layer.media_type for layer in pulled.manifest.layers if layer.media_type == mt.MMPROJ] == [mt.MMPROJ]
    pull("ai/tiny", store, registry=registry.host)
    return store


@pytest.fixture(scope="module")
def server(tmp_path_factory, vision_store, registry) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("vision-jupyter")
    with ServerProcess.jupyter_server(workdir, server_env(workdir, vision_store.root, registry.host),
                                      "--Scheduler.keep_alive=10m",
                                      f"--ModelRunner.max_image_bytes={MAX_IMAGE_BYTES}",
                                      "--ModelRunner.image_fetch_timeout=2",
                                      # The image server is on 127.0.0.1, as a LAN server a user trusts would be.
                                      "--ModelRunner.allow_private_image_urls=True") as process:
        with process.client() as http:
            # llama-server says when it encodes an image at verbosity 4: set as a user would, `configure -- -lv 4`.
            answer = http.post("engines/_configure", json={"model": "ai/tiny-vision", "runtime-flags": ["-lv", "4"]})
            assert answer.status_code == 200, answer.text
        yield process


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer(slow_seconds=4.0) as web:
        yield web


@pytest.fixture(scope="module")
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "engines/v1", api_key=server.token, max_retries=0)


def ask(sdk: openai.OpenAI, url: str, model: str = "ai/tiny-vision", **extra) -> str | None:
    response = sdk.chat.completions.create(model=model, temperature=0, max_tokens=8, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is in the image?"},
                                     {"type": "image_url", "image_url": {"url": url}}]}], **extra)
    return response.choices[0].message.content


def encoded_images(server: ServerProcess, at_least: int = 0) -> int:
    """How many images the engine's log says it encoded (through the runner's logs route, as `logs` reads it),
    waiting for at least `at_least` (the log trails the answer by a moment)."""
    def read_log() -> str:
        with server.client() as http:
            return http.get("engines/logs", params={"model": "ai/tiny-vision", "lines": "5000"}).text

    return images_encoded(read_log, at_least=at_least)


def test_the_pulled_model_says_it_takes_images(server):
    with server.client() as http:
        model = http.get("models/ai/tiny-vision").json()
    assert model["multimodal"] is True and model["engine"]["engine"] == "llama.cpp"
    client = ollama.Client(host=server.url.rstrip("/"), headers=server.headers)
    assert "vision" in client.show("ai/tiny-vision").capabilities


def test_openai_data_url_image_is_encoded_and_answered(server, sdk):
    assert ask(sdk, data_url(png(rgb=(200, 10, 10))))
    assert encoded_images(server, at_least=1) >= 1
    with server.client() as http:
        (runner,) = [r for r in http.get("engines/ps").json() if r["model_name"].endswith("ai/tiny-vision:latest")]
    assert runner["backend_name"] == "llama.cpp"


def test_openai_streamed_answer_with_an_image(server, sdk):
    before = encoded_images(server)
    stream = sdk.chat.completions.create(model="ai/tiny-vision", temperature=0, max_tokens=8, stream=True, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Describe it."},
                                     {"type": "image_url", "image_url": {"url": data_url(png(rgb=(1, 2, 250)))}}]}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert encoded_images(server, at_least=before + 1) == before + 1


def test_openai_http_url_is_fetched_by_the_runner_and_encoded(server, sdk, images):
    before = encoded_images(server)
    assert ask(sdk, images.url("/yellow.png"))
    assert images.hits["/yellow.png"] == 1  # fetched once, by the runner: llama-server was given a data URL
    assert encoded_images(server, at_least=before + 1) == before + 1


def test_ollama_images_in_chat_and_generate_are_encoded(server):
    client = ollama.Client(host=server.url.rstrip("/"), headers=server.headers)
    before = encoded_images(server)
    options = {"temperature": 0, "num_predict": 8}
    answer = client.chat(model="ai/tiny-vision", options=options, messages=[
        {"role": "user", "content": "What is in the image?", "images": [png(rgb=(10, 200, 10))]}])
    assert answer.done and answer.message.content
    generated = client.generate(model="ai/tiny-vision", prompt="Describe the picture.", options=options,
                                images=[base64.b64encode(png(rgb=(120, 120, 10))).decode()])
    assert generated.done and generated.response
    assert encoded_images(server, at_least=before + 2) == before + 2


def test_an_image_for_a_model_without_a_projector_is_a_400_that_says_what_to_do(server, sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sdk, data_url(png()), model="ai/tiny")
    message = refused.value.body["message"] if isinstance(refused.value.body, dict) else str(refused.value)
    assert "ai/tiny has no multimodal projector" in message and "package" in message and "--mmproj" in message
    with server.client() as http:  # refused before anything loaded
        assert not [r for r in http.get("engines/ps").json() if r["model_name"].endswith("ai/tiny:latest")]
    client = ollama.Client(host=server.url.rstrip("/"), headers=server.headers)
    with pytest.raises(ollama.ResponseError) as refused_ollama:
        client.chat(model="ai/tiny", messages=[{"role": "user", "content": "?", "images": [png()]}])
    assert refused_ollama.value.status_code == 400 and "no multimodal projector" in refused_ollama.value.error


@pytest.mark.parametrize(("path", "says"), [
    ("/missing.png", "the server answered HTTP 404"),
    ("/big.png", "larger than the limit of 64.00 KiB"),
    ("/endless.png", "larger than the limit of 64.00 KiB"),
    ("/page.html", "is not an image"),
    ("/slow.png", "no complete answer within 2 s"),
])
def test_an_image_url_that_cannot_be_used_is_a_400_naming_it(sdk, images, path, says):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(sdk, images.url(path))
    assert says in str(refused.value) and images.url(path) in str(refused.value)


def test_unreachable_and_oversize_inline_images_are_400s(sdk):
    gone = f"http://127.0.0.1:{find_free_port()}/cat.png"
    with pytest.raises(openai.BadRequestError, match="Could not fetch the image at " + gone):
        ask(sdk, gone)
    huge = "data:image/png;base64," + base64.b64encode(png() + b"\0" * MAX_IMAGE_BYTES).decode()
    with pytest.raises(openai.BadRequestError, match="larger than the limit"):
        ask(sdk, huge)
