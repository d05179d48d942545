"""Images in chat requests (images.py): data URLs checked, http(s) URLs fetched by the runner within a size limit
and a timeout, every failure a 400 with a sentence — against a real local web server."""

from __future__ import annotations

import asyncio
import base64
import copy

import pytest

from jupyter_modelrunner.engines.llamacpp import LlamaServer
from jupyter_modelrunner.errors import ImageRejected
from jupyter_modelrunner.images import _refuse_private_hosts, image_parts, inline_images, sniff_media_type

from .support.imageserver import ImageServer
from .support.registry import find_free_port
from .support.vision import data_url, png

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def images():
    with ImageServer(slow_seconds=3.0) as server:
        yield server


def request(*urls: str, text: str = "What is this?") -> dict:
    parts = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]}


def inline(body: dict, **limits) -> dict:
    """As the runner inlines a request's images; the test's image server is on 127.0.0.1, so private addresses are
    allowed unless a test says otherwise."""
    return asyncio.run(inline_images(body, **{"max_bytes": LIMIT, "timeout": 2.0, "allow_private": True, **limits}))


def urls_of(body: dict) -> list[str]:
    return [part["image_url"]["url"] for part in image_parts(body)]


def test_a_request_without_images_is_returned_as_it_is():
    body = {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}
    assert inline(body) is body
    assert image_parts({"model": "m"}) == [] and image_parts({"messages": "x"}) == []


def test_data_urls_pass_through_and_the_callers_body_is_not_changed():
    url = data_url(png())
    body = request(url)
    before = copy.deepcopy(body)
    out = inline(body)
    assert urls_of(out) == [url] and body == before
    encoded = base64.b64encode(png()).decode()
    wrapped = "data:image/png;base64," + "\n".join(encoded[i:i + 40] for i in range(0, len(encoded), 40))
    assert "\n" not in urls_of(inline(request(wrapped)))[0]  # line-wrapped base64 is unwrapped


def test_http_urls_are_fetched_by_the_runner_and_sent_inline(images):
    out = inline(request(images.url("/red.png"), images.url("/blue.bin"), images.url("/redirect.png")))
    red, blue, redirected = urls_of(out)
    assert red == data_url(png(rgb=(255, 0, 0))) == redirected
    assert blue == data_url(png(rgb=(0, 0, 255)))  # application/octet-stream, recognised by its bytes
    assert images.hits["/red.png"] == 2 and images.hits["/redirect.png"] == 1


def test_a_part_keeps_its_other_fields_and_a_bare_string_url_is_accepted(images):
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": images.url("/green.png"), "detail": "low"}},
        {"type": "image_url", "image_url": images.url("/green.png")}]}]}
    first, second = image_parts(inline(body))
    assert first["image_url"] == {"url": data_url(png(rgb=(0, 255, 0))), "detail": "low"}
    assert second["image_url"] == {"url": data_url(png(rgb=(0, 255, 0)))}
    assert images.hits["/green.png"] == 1  # the same URL twice is fetched once


@pytest.mark.parametrize(("path", "message"), [
    ("/missing.png", "Could not fetch the image at http://127.0.0.1:{port}/missing.png: the server answered HTTP 404."),
    ("/page.html", "is not an image (Content-Type: text/html)"),
    ("/big.png", "is larger than the limit of 64.00 KiB per image"),
    ("/endless.png", "is larger than the limit of 64.00 KiB per image"),
])
def test_fetch_failures_are_the_clients_error_with_a_sentence(images, path, message):
    with pytest.raises(ImageRejected) as refused:
        inline(request(images.url(path)))
    assert refused.value.http_status == 400
    assert message.format(port=images.url("").rsplit(":", 1)[1]) in str(refused.value)
    assert "c.ModelRunner.max_image_bytes" in str(refused.value) or "limit" not in message


def test_a_slow_server_is_given_up_after_the_timeout(images):
    with pytest.raises(ImageRejected, match=r"no complete answer within 0\.5 s"):
        inline(request(images.url("/slow.png")), timeout=0.5)


def test_a_server_that_is_not_there(images):
    url = f"http://127.0.0.1:{find_free_port()}/x.png"
    with pytest.raises(ImageRejected, match=f"Could not fetch the image at {url}: "):
        inline(request(url))


@pytest.mark.parametrize(("url", "message"), [
    ("file:///etc/passwd", "must be a data: URL .* or an http\\(s\\) URL, not 'file'"),
    ("data:image/png,rawbytes", "must be base64-encoded"),
    ("data:text/plain;base64,aGVsbG8=", "must hold an image .* not text/plain"),
    ("data:image/png;base64,%%%notbase64", "does not hold valid base64"),
    ("data:image/png;base64," + base64.b64encode(b"\0" * (LIMIT + 10)).decode(), "larger than the limit"),
    ("", "has no URL"),
])
def test_unusable_image_urls_are_refused(url, message):
    with pytest.raises(ImageRejected, match=message):
        inline(request(url))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.1.2.3", "192.168.0.10", "172.16.0.1",
                                  "169.254.169.254", "100.64.0.1", "0.0.0.0", "[::ffff:127.0.0.1]", "[fd00::1]",
                                  "224.0.0.1"])
def test_image_urls_on_non_public_addresses_are_refused_by_default(images, host):
    """Whoever may chat could otherwise make the runner reach what only it can: this server, the engines, a cloud
    metadata endpoint, the LAN. Refused before any connection (the image server on 127.0.0.1 is never asked)."""
    port = images.url("").rsplit(":", 1)[1]
    before = dict(images.hits)
    with pytest.raises(ImageRejected) as refused:
        inline(request(f"http://{host}:{port}/red.png"), allow_private=False)
    assert "non-public address" in str(refused.value) and "allow_private_image_urls" in str(refused.value)
    assert "data: URL" in str(refused.value)  # and what to do instead
    assert images.hits == before


def test_a_redirect_to_a_non_public_address_is_refused_at_that_hop(images):
    """Each hop is checked: here the first is allowed only because private addresses are (the test has no public
    server); the refusal of the hop itself is what the hook does for every request of a redirect chain."""
    import httpx

    hops = []

    async def recorder(request):
        hops.append(str(request.url))

    async def follow() -> None:
        async with httpx.AsyncClient(follow_redirects=True, event_hooks={"request": [recorder]}) as client:
            await client.get(images.url("/redirect.png"))

    asyncio.run(follow())
    assert len(hops) == 2  # the hook runs for the redirect's second request too
    with pytest.raises(ImageRejected):
        asyncio.run(_refuse_private_hosts(httpx.Request("GET", hops[1])))


def test_a_public_address_passes_and_a_name_that_does_not_resolve_is_refused():
    import httpx

    asyncio.run(_refuse_private_hosts(httpx.Request("GET", "http://93.184.216.34/cat.png")))  # checked, not fetched
    asyncio.run(_refuse_private_hosts(httpx.Request("GET", "https://[2606:4700::1111]/cat.png")))
    with pytest.raises(ImageRejected, match="does not resolve"):
        asyncio.run(_refuse_private_hosts(httpx.Request("GET", "http://no-such-host.invalid/cat.png")))


def test_sniffing_knows_the_formats_vision_models_take():
    assert sniff_media_type(png()) == "image/png"
    assert sniff_media_type(b"\xff\xd8\xff\xe0....") == "image/jpeg"
    assert sniff_media_type(b"GIF89a...") == "image/gif"
    assert sniff_media_type(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_media_type(b"<html>") is None


def test_the_service_refuses_images_before_loading_when_the_engine_cannot_see(tmp_path, tiny_vision, tiny_gguf):
    """What every route calls first: a model without a projector, or llama.cpp's Python fallback, is a 400 naming the
    fix; nothing is loaded for it."""
    if LlamaServer().server is None:
        pytest.skip("llama-server is not installed (jupyter modelrunner install-runner llama.cpp)")
    import importlib.util

    from jupyter_modelrunner.distribution import package_gguf
    from jupyter_modelrunner.inference import InferenceRequest
    from jupyter_modelrunner.reference import parse_reference
    from jupyter_modelrunner.service import ModelRunnerService
    from jupyter_modelrunner.store import Store

    store = Store(tmp_path / "store", registry="127.0.0.1:1")
    package_gguf(store, tiny_vision.gguf, parse_reference("127.0.0.1:1/ai/seeing"), mmproj=tiny_vision.mmproj)
    package_gguf(store, tiny_gguf, parse_reference("127.0.0.1:1/ai/blind"))
    body = request(data_url(png()))

    async def prepare(engine: LlamaServer, name: str) -> dict:
        service = ModelRunnerService.create(store, registry="127.0.0.1:1", engines=[engine])
        try:
            return await service.admitted_body(InferenceRequest(name, "chat/completions", body))
        finally:
            assert not service.scheduler.runners
            await service.shutdown()

    assert asyncio.run(prepare(LlamaServer(), "ai/seeing")) == body
    with pytest.raises(ImageRejected, match="ai/blind has no multimodal projector"):
        asyncio.run(prepare(LlamaServer(), "ai/blind"))
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: no fallback to refuse on")
    with pytest.raises(ImageRejected, match=r"llama-cpp-python.*install-runner llama\.cpp"):
        asyncio.run(prepare(LlamaServer(server="none"), "ai/seeing"))
