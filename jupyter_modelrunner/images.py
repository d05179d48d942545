"""Images in chat requests: OpenAI's `image_url` content parts, made ready for an engine.

Engines get every image inline, as a `data:` URL. An http(s) URL is fetched here, by the runner, and never by the
engine: the download is bounded in size (`max_bytes`, checked while reading, so a huge or endless answer costs at
most that much) and in time (`timeout` for the whole download), it follows the proxy settings of the runner's
environment, and a failure is the client's error (`ImageRejected`, HTTP 400) with a sentence saying what went
wrong, not an engine failure. llama-server could fetch URLs itself, but only when built with an HTTP client, without
a size limit, and its failures would come back as engine errors.

Only public addresses are fetched unless the runner is told otherwise: whoever may chat (an inference key's holder
too) could otherwise make the runner reach what only it can reach — this Jupyter server, the engines, a cloud
metadata endpoint, the LAN — and learn from the refusals what answers there. Each hop of a redirect is checked.

Nothing here knows about models or engines (the service checks that the model can take images first).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import functools
import ipaddress
import re
from typing import Any

from .errors import ModelRunnerError
from .sizes import format_bytes

#: The default of `c.ModelRunner.max_image_bytes`: larger than any photo a vision model needs (they downscale to a
#: few hundred pixels a side), small enough that a request cannot make the runner hold gigabytes.
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: The default of `c.ModelRunner.image_fetch_timeout`, in seconds, for one whole download.
DEFAULT_FETCH_TIMEOUT = 30.0
MAX_REDIRECTS = 5
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)", re.DOTALL)
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


class ImageRejected(ModelRunnerError):
    """An image in a request that cannot be used: not fetchable, too large, not an image, or a model that cannot
    see. The client's error (400), with the sentence it should read."""

    http_status = 400


def image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `image_url` content parts of a chat request's messages, in order (none for a text-only request)."""
    parts: list[dict[str, Any]] = []
    messages = body.get("messages")
    if not isinstance(messages, list):
        return parts
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts += [part for part in content if isinstance(part, dict) and part.get("type") == "image_url"]
    return parts


def sniff_media_type(data: bytes) -> str | None:
    """The image type its first bytes say (PNG, JPEG, GIF, BMP, WebP), or None."""
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


async def inline_images(body: dict[str, Any], *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                        timeout: float = DEFAULT_FETCH_TIMEOUT, allow_private: bool = False,
                        transport: Any = None) -> dict[str, Any]:
    """`body` with every `image_url` as a checked `data:` URL: http(s) URLs fetched (all at once; only from public
    addresses unless `allow_private`), data URLs proven to be base64 image data of at most `max_bytes`. The caller's
    body is not changed. `transport` is for tests (an `httpx.AsyncBaseTransport`)."""
    if not image_parts(body):
        return body
    body = {**body, "messages": copy.deepcopy(body["messages"])}
    parts = image_parts(body)
    urls = [_url_of(part, index) for index, part in enumerate(parts)]
    remote = sorted({url for url in urls if url.startswith(("http://", "https://"))})
    fetched: dict[str, str] = {}
    if remote:
        import httpx  # only when a request names an image by URL

        hooks = {"request": [] if allow_private else [_refuse_private_hosts]}  # run for every hop of a redirect
        async with httpx.AsyncClient(transport=transport, follow_redirects=True, max_redirects=MAX_REDIRECTS,
                                     timeout=timeout, verify=_tls_context(), event_hooks=hooks) as client:
            results = await asyncio.gather(*(_fetch(client, url, max_bytes, timeout) for url in remote))
        fetched = dict(zip(remote, results, strict=True))
    for part, url in zip(parts, urls, strict=True):
        if url in fetched:
            inline = fetched[url]
        elif url.startswith("data:"):
            inline = _checked_data_url(url, max_bytes)
        else:
            scheme = url.split(":", 1)[0] if ":" in url else url[:20]
            raise ImageRejected(f"An image_url must be a data: URL (data:image/png;base64,…) or an http(s) URL, not "
                                f"{scheme!r}.")
        image_url = part.get("image_url")
        part["image_url"] = {**image_url, "url": inline} if isinstance(image_url, dict) else {"url": inline}
    return body


@functools.cache
def _tls_context() -> Any:
    """One TLS context (with the CA bundle) for every download: building it is most of a new client's cost, ~35 ms
    here, which an image fetched from a nearby server would otherwise pay on each request."""
    import httpx

    return httpx.create_ssl_context()


async def _refuse_private_hosts(request: Any) -> None:
    """Refuse a request whose host is, or resolves to, an address that is not public (loopback, private, link-local,
    shared, reserved, multicast). A name that resolves to several addresses is refused if any is not public."""
    host = request.url.host
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, request.url.port or 443)
        except OSError as exc:
            raise ImageRejected(f"Could not fetch the image at {_shown(str(request.url))}: the name {host} does not "
                                f"resolve ({exc.strerror or exc}).") from None
        addresses = {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in found}
    for address in addresses:
        mapped = getattr(address, "ipv4_mapped", None)
        if not (mapped or address).is_global or address.is_multicast:
            raise ImageRejected(
                f"The image at {_shown(str(request.url))} is on a non-public address ({address}): the runner fetches "
                "images only from public addresses. Send it inline as a data: URL (%%chat --image FILE does), or "
                "allow such addresses with c.ModelRunner.allow_private_image_urls = True.")


def _shown(url: str) -> str:
    """A URL as an error message shows it: whole unless it is very long."""
    return url if len(url) <= 200 else url[:197] + "..."


def _url_of(part: dict[str, Any], index: int) -> str:
    """The URL of a part: OpenAI's `{"image_url": {"url": …}}`, or the bare string some clients send."""
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url.strip():
        raise ImageRejected(f"Image {index + 1} of the request has no URL: send {{\"type\": \"image_url\", "
                            "\"image_url\": {\"url\": \"data:image/png;base64,…\"}}.")
    return url.strip()


def _checked_data_url(url: str, max_bytes: int) -> str:
    match = _DATA_URL.fullmatch(url)
    if match is None or ";base64" not in match["params"]:
        raise ImageRejected("An image data: URL must be base64-encoded: data:image/png;base64,….")
    media_type = match["type"].strip().lower()
    if not media_type.startswith("image/"):
        raise ImageRejected(f"An image data: URL must hold an image (data:image/…), not {media_type or 'no type'}.")
    encoded = "".join(match["data"].split())  # some clients wrap base64 in lines
    if len(encoded) * 3 // 4 > max_bytes + 2:
        raise ImageRejected(_too_large("An image in the request", max_bytes))
    try:
        base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("An image data: URL does not hold valid base64 data.") from None
    return f"data:{media_type};base64,{encoded}" if encoded != match["data"] else url


async def _fetch(client: Any, url: str, max_bytes: int, timeout: float) -> str:
    import httpx

    shown = _shown(url)
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("GET", url, headers={"Accept": "image/*"}) as response:
                if response.status_code != 200:
                    raise ImageRejected(f"Could not fetch the image at {shown}: the server answered HTTP "
                                        f"{response.status_code}.")
                length = response.headers.get("content-length")
                if length and length.isdigit() and int(length) > max_bytes:
                    raise ImageRejected(_too_large(f"The image at {shown} ({format_bytes(int(length))})", max_bytes))
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise ImageRejected(_too_large(f"The image at {shown}", max_bytes))
                declared = response.headers.get("content-type", "").split(";")[0].strip().lower()
    except TimeoutError:
        raise ImageRejected(f"Could not fetch the image at {shown}: no complete answer within {timeout:g} s.") from None
    except httpx.TooManyRedirects:
        raise ImageRejected(f"Could not fetch the image at {shown}: more than {MAX_REDIRECTS} redirects.") from None
    except httpx.HTTPError as exc:
        reason = str(exc) or exc.__class__.__name__
        raise ImageRejected(f"Could not fetch the image at {shown}: {reason}.") from None
    media_type = declared if declared.startswith("image/") else sniff_media_type(bytes(data[:16]))
    if media_type is None:
        raise ImageRejected(f"The content at {shown} is not an image (Content-Type: {declared or 'none'}).")
    return data_url(bytes(data), media_type)


def _too_large(what: str, max_bytes: int) -> str:
    return (f"{what} is larger than the limit of {format_bytes(max_bytes)} per image (the runner's "
            "c.ModelRunner.max_image_bytes); send a smaller image.")
