"""Images in chat requests: OpenAI's `image_url` content parts, made ready for an engine.

Engines get every image inline, as a `data:` URL. An http(s) URL is fetched here, by the runner, and never by the
engine: the download is bounded in size (`max_bytes`, checked while reading, so a huge or endless answer costs at
most that much) and in time (`timeout` for the whole download), it follows the proxy settings of the runner's
environment, and a failure is the client's error (`ImageRejected`, HTTP 400) with a sentence saying what went
wrong, not an engine failure. llama-server could fetch URLs itself, but only when built with an HTTP client, without
a size limit, and its failures would come back as engine errors.

Only public addresses are fetched unless the runner is told otherwise: whoever may chat (an inference key's holder
too) could otherwise make the runner reach what only it can reach — this Jupyter server, the engines, a cloud
metadata endpoint, the LAN — and learn from the refusals what answers there. Each hop of a redirect is checked, and
the check is binding: a name is looked up once per connection, every address of the answer is checked, and the
connection goes to a checked address (`_pinned_transport`), so a name that answers differently a moment later (DNS
rebinding) gains nothing. An IPv6 address that carries an IPv4 one (NAT64, 6to4, IPv4-mapped, Teredo) is judged by
the IPv4 address its packets end up at.

Downloads are bounded in number too: at most `max_images` images a request (`c.ModelRunner.max_images_per_request`),
and at most `max_bytes_in_flight` bytes being downloaded at once across every request of the server
(`c.ModelRunner.max_image_bytes_in_flight`), so many requests with many images cannot make the runner hold gigabytes.

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
import socket
import weakref
from typing import Any

from .errors import ImageRejected
from .sizes import format_bytes

#: The default of `c.ModelRunner.max_image_bytes`: larger than any photo a vision model needs (they downscale to a
#: few hundred pixels a side), small enough that a request cannot make the runner hold gigabytes.
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: The default of `c.ModelRunner.image_fetch_timeout`, in seconds, for one whole download.
DEFAULT_FETCH_TIMEOUT = 30.0
#: The default of `c.ModelRunner.max_images_per_request`: more than a conversation with a vision model needs, few
#: enough that one request cannot make the runner download (and hold) hundreds of images.
DEFAULT_MAX_IMAGES_PER_REQUEST = 16
#: The default of `c.ModelRunner.max_image_bytes_in_flight`, as a multiple of the per-image limit: four downloads of
#: the largest allowed image at once, across all requests of the server.
DEFAULT_IN_FLIGHT_IMAGES = 4
MAX_REDIRECTS = 5
#: NAT64 prefixes (RFC 6052's well-known one, RFC 8215's local-use one) and the deprecated IPv4-compatible range: the
#: IPv4 address is the last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)", re.DOTALL)
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


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
                        transport: Any = None, max_images: int = DEFAULT_MAX_IMAGES_PER_REQUEST,
                        max_bytes_in_flight: int | None = None) -> dict[str, Any]:
    """`body` with every `image_url` as a checked `data:` URL: http(s) URLs fetched (several at once; only from public
    addresses unless `allow_private`), data URLs proven to be base64 image data of at most `max_bytes`. The caller's
    body is not changed. A request with more than `max_images` images is refused before anything is fetched; the
    downloads of every request of this event loop share `max_bytes_in_flight` (default `DEFAULT_IN_FLIGHT_IMAGES`
    times `max_bytes`), and one that finds no room within `timeout` is refused. `transport` is for tests (an
    `httpx.AsyncBaseTransport`; it replaces the pinned connections, so only the request hook checks addresses)."""
    if not image_parts(body):
        return body
    count = len(image_parts(body))
    if count > max_images:
        raise ImageRejected(f"The request has {count} images; the runner takes at most {max_images} images in one "
                            "request (c.ModelRunner.max_images_per_request). Send fewer images, or split the request.")
    body = {**body, "messages": copy.deepcopy(body["messages"])}
    parts = image_parts(body)
    urls = [_url_of(part, index) for index, part in enumerate(parts)]
    remote = sorted({url for url in urls if url.startswith(("http://", "https://"))})
    fetched: dict[str, str] = {}
    if remote:
        budget = _fetch_budget(max_bytes_in_flight or DEFAULT_IN_FLIGHT_IMAGES * max_bytes)
        async with _client(allow_private, timeout, transport) as client:
            tasks = [asyncio.ensure_future(_fetch(client, url, max_bytes, timeout, budget)) for url in remote]
            try:
                results = await asyncio.gather(*tasks)
            finally:  # one refusal ends the others: nothing keeps downloading (or waiting for room) for nobody
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
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


def _client(allow_private: bool, timeout: float, transport: Any) -> Any:
    """The HTTP client for one request's downloads: direct connections through the pinned transport (which checks
    the addresses it connects to), and the environment's proxies, if any, as httpx would mount them. A proxy looks
    the name up itself, so there the check can only be of our own lookup, done by the request hook."""
    import httpx  # only when a request names an image by URL

    hooks: dict[str, list[Any]] = {"request": []}
    mounts: dict[str, Any] | None = None
    if transport is None:
        pinned, proxied = _transport_classes()
        transport = pinned(allow_private)
        mounts = {pattern: None if url is None else proxied(url, allow_private)
                  for pattern, url in _environment_proxies().items()}
    elif not allow_private:
        hooks["request"].append(_refuse_private_hosts)  # run for every hop of a redirect
    return httpx.AsyncClient(transport=transport, mounts=mounts, follow_redirects=True, max_redirects=MAX_REDIRECTS,
                             timeout=timeout, event_hooks=hooks)


def _environment_proxies() -> dict[str, str | None]:
    """The proxy mounts httpx itself makes from the environment (`HTTPS_PROXY`, `NO_PROXY`, …): a client given its
    own transport skips them, and image downloads should follow the runner's proxy settings all the same."""
    from httpx._utils import get_environment_proxies

    return get_environment_proxies()


@functools.cache
def _transport_classes() -> tuple[Any, Any]:
    """The pinned transport and the checked proxy transport, defined on first use so that importing this module (the
    magics do, for `data_url`) does not import httpx.

    Pinning is done at httpcore's network backend, the one place that turns a host name into a socket: its
    `connect_tcp` looks the name up once, refuses the connection if any address of the answer is not public, and
    connects to those same addresses. Everything above it still sees the URL's host name: the Host header, the TLS
    SNI and the certificate check (httpcore passes the origin's host to `start_tls`), and the connection pool's key,
    so a kept-alive connection is reused only for the host it was opened for. The alternative, rewriting the URL to
    the IP and passing `sni_hostname`, would pool connections by IP and let one host name's TLS connection serve
    another's requests. httpx's transport has no parameter for a network backend, so the transport replaces its
    pool with one that has ours (httpx has kept that `_pool` attribute since 0.18; a change fails loudly here)."""
    import httpcore
    import httpx

    class PinnedBackend(httpcore.AsyncNetworkBackend):
        def __init__(self, allow_private: bool) -> None:
            self._inner = httpcore.AnyIOBackend()
            self._allow_private = allow_private

        async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                              local_address: str | None = None, socket_options: Any = None) -> Any:
            addresses = await _lookup(host, port)
            if not self._allow_private:
                for address in addresses:
                    if not _is_public_address(address):
                        raise _Refused(address)
            failure: Exception | None = None
            for address in addresses:  # in the resolver's order, as a plain connection would try them
                try:
                    return await self._inner.connect_tcp(str(address), port, timeout=timeout,
                                                         local_address=local_address, socket_options=socket_options)
                except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                    failure = exc
            assert failure is not None  # a lookup answers at least one address or raises
            raise failure

        async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                      socket_options: Any = None) -> Any:
            raise httpcore.ConnectError("Image downloads do not use Unix sockets.")

        async def sleep(self, seconds: float) -> None:
            await self._inner.sleep(seconds)

    class PinnedTransport(httpx.AsyncHTTPTransport):
        def __init__(self, allow_private: bool) -> None:
            super().__init__(verify=_tls_context(), trust_env=False)
            if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
                raise RuntimeError("httpx's AsyncHTTPTransport no longer keeps its pool in `_pool`: image downloads "
                                   "cannot pin their connections (see jupyter_modelrunner/images.py).")
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
            self._pool = httpcore.AsyncConnectionPool(
                ssl_context=_tls_context(), max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
                network_backend=PinnedBackend(allow_private))

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                return await super().handle_async_request(request)
            except _Refused as refused:  # raised where the URL is unknown; said here with the URL of the hop
                raise ImageRejected(_non_public(str(request.url), refused.address)) from None
            except _Unresolved as unresolved:
                raise ImageRejected(f"Could not fetch the image at {_shown(str(request.url))}: the name "
                                    f"{request.url.host} does not resolve ({unresolved.reason}).") from None

    class CheckedProxyTransport(httpx.AsyncHTTPTransport):
        def __init__(self, proxy: str, allow_private: bool) -> None:
            super().__init__(verify=_tls_context(), proxy=proxy)
            self._allow_private = allow_private

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if not self._allow_private:
                await _refuse_private_hosts(request)
            return await super().handle_async_request(request)

    return PinnedTransport, CheckedProxyTransport


class _Refused(Exception):
    """A non-public address found while connecting (the network backend does not know the URL)."""

    def __init__(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        super().__init__(str(address))
        self.address = address


class _Unresolved(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _lookup(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses of `host` (itself when it is an address), in the resolver's order, without repeats."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _Unresolved(exc.strerror or str(exc)) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in found]
    return list(dict.fromkeys(addresses))


class ImageFetchBudget:
    """The bytes image downloads may hold at once, shared by every request of a server (one event loop). A download
    reserves the per-image limit before it starts (its size is not known until it ends) and gives it back when it
    ends, so at most `total` bytes of images are being received at any moment. Reservations never wait on each
    other's completed downloads, so requests cannot deadlock; one that finds no room within its timeout is refused."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.in_flight = 0
        #: Downloads waiting for room (tests watch this to know a download is held back).
        self.waiting = 0
        self._freed = asyncio.Event()

    async def reserve(self, size: int, timeout: float) -> int:
        """Wait for room for `size` bytes (at most `total`), reserve it and return what was reserved."""
        size = min(size, self.total)
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                while self.in_flight + size > self.total:
                    await self._freed.wait()
        except TimeoutError:
            raise ImageRejected(
                f"The runner is already downloading {format_bytes(self.in_flight)} of images for other requests, its "
                f"limit (c.ModelRunner.max_image_bytes_in_flight, {format_bytes(self.total)}), and no room came free "
                f"within {timeout:g} s. Try again shortly, or send the image inline as a data: URL.") from None
        finally:
            self.waiting -= 1
        self.in_flight += size
        return size

    def release(self, size: int) -> None:
        """Give back a reservation; synchronous, so a cancelled download always gives back what it held."""
        self.in_flight -= size
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()


_budgets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, ImageFetchBudget]] = \
    weakref.WeakKeyDictionary()


def _fetch_budget(total: int) -> ImageFetchBudget:
    """The running event loop's budget of `total` bytes: one per server (asyncio objects belong to one loop)."""
    budgets = _budgets.setdefault(asyncio.get_running_loop(), {})
    if total not in budgets:
        budgets[total] = ImageFetchBudget(total)
    return budgets[total]


@functools.cache
def _tls_context() -> Any:
    """One TLS context (with the CA bundle) for every download: building it is most of a new client's cost, ~35 ms
    here, which an image fetched from a nearby server would otherwise pay on each request."""
    import httpx

    return httpx.create_ssl_context()


async def _refuse_private_hosts(request: Any) -> None:
    """Refuse a request whose host is, or resolves to, an address that is not public (loopback, private, link-local,
    shared, reserved, multicast, or an IPv6 form of one). A name that resolves to several addresses is refused if any
    is not public. This is our own lookup: it binds only where the connection is made to what it checked (the pinned
    transport does its own check there); it remains the check for requests that go through a proxy."""
    host = request.url.host
    try:
        addresses = await _lookup(host, request.url.port or 443)
    except _Unresolved as unresolved:
        raise ImageRejected(f"Could not fetch the image at {_shown(str(request.url))}: the name {host} does not "
                            f"resolve ({unresolved.reason}).") from None
    for address in addresses:
        if not _is_public_address(address):
            raise ImageRejected(_non_public(str(request.url), address))


def _is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether the runner may connect to `address`: globally reachable and not multicast, and for an IPv6 address
    that carries an IPv4 one, that IPv4 address too (Python calls 64:ff9b::7f00:1 global, yet a NAT64 gateway sends
    its packets to 127.0.0.1 — of the gateway's network). RFC 8215's local-use NAT64 prefix is never public."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # the kernel connects to the IPv4 address itself
            return _is_public_address(address.ipv4_mapped)
        if address in _NAT64_LOCAL:
            return False
    if not address.is_global or address.is_multicast:
        return False
    return all(_is_public_address(carried) for carried in _carried_ipv4(address))


def _carried_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: NAT64 and IPv4-compatible (the last 32 bits), IPv4-mapped, 6to4,
    Teredo (server and client)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64 or address in _NAT64_LOCAL or address in _IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


def _non_public(url: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    carried = _carried_ipv4(address)
    shown = f"{address}, which carries {', '.join(map(str, carried))}" if carried else str(address)
    return (f"The image at {_shown(url)} is on a non-public address ({shown}): the runner fetches images only from "
            "public addresses. Send it inline as a data: URL (%%chat --image FILE does), or allow such addresses "
            "with c.ModelRunner.allow_private_image_urls = True.")


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


async def _fetch(client: Any, url: str, max_bytes: int, timeout: float, budget: ImageFetchBudget) -> str:
    import httpx

    shown = _shown(url)
    reserved = await budget.reserve(max_bytes, timeout)
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
    finally:
        budget.release(reserved)
    media_type = declared if declared.startswith("image/") else sniff_media_type(bytes(data[:16]))
    if media_type is None:
        raise ImageRejected(f"The content at {shown} is not an image (Content-Type: {declared or 'none'}).")
    return data_url(bytes(data), media_type)


def _too_large(what: str, max_bytes: int) -> str:
    return (f"{what} is larger than the limit of {format_bytes(max_bytes)} per image (the runner's "
            "c.ModelRunner.max_image_bytes); send a smaller image.")
