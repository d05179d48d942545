"""Attacks on the runner's image downloads (issue 19, items 4, 6 and 11), played against a real image server on
127.0.0.1 (tests/support/imageserver.py) through the real `inline_images` every chat route calls.

- DNS rebinding: a name that answers a public address when the runner checks it and 127.0.0.1 when it connects.
- Many images, or many requests with images, at once: the runner holds every download in memory.
- IPv6 addresses that carry an IPv4 address (NAT64, 6to4, IPv4-mapped, Teredo): the IPv6 form looks global while the
  packets end up at the embedded IPv4 address, which may be loopback or the cloud's metadata endpoint.

A name whose answer changes between two lookups, or that answers a NAT64 address, cannot be had without a DNS server
the test controls: `FakeResolver` stands in for DNS, and only for its own made-up names.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess

import pytest

from jupyter_modelrunner import images as images_module
from jupyter_modelrunner.errors import ImageRejected
from jupyter_modelrunner.images import _fetch_budget, _is_public_address, image_parts, inline_images

from ..support.imageserver import ImageServer
from ..support.vision import data_url, png

LIMIT = 64 * 1024
#: A public address (Python calls it global): the 6to4 relay anycast address, retired by RFC 7526. The tests never let
#: a connection to it leave the machine (`Unreachable`).
PUBLIC = "192.88.99.1"


@pytest.fixture
def images():
    with ImageServer() as server:
        yield server


class FakeResolver:
    """A FAKE DNS resolver (the fault it plays cannot be provoked without a DNS server): installed in place of
    `socket.getaddrinfo`, it answers lookups of `name` with `answers[i]` for the i-th lookup (the last answer again
    after that; an answer may list several addresses, comma-separated) and passes every other name to the real
    resolver. `lookups` counts the lookups of `name`."""

    def __init__(self, name: str, *answers: str) -> None:
        self.name, self.answers, self.lookups = name, answers, 0
        self._real = socket.getaddrinfo

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        wanted = host.decode() if isinstance(host, bytes) else host
        if wanted != self.name:
            return self._real(host, port, family, type, proto, flags)
        answer = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        port = int(port or 0)
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))
                if ipaddress.ip_address(address).version == 6 else
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))
                for address in answer.split(",")]


class Unreachable:
    """A FAKE network edge for the public address the fake resolver hands out, so that no test sends a packet
    off the machine: in place of httpcore's `AnyIOBackend.connect_tcp` (the call every httpx connection makes), it
    records each host a connection is opened to, refuses those in `hosts` as a network where nothing answers would,
    and opens every other connection for real. `attempts` lists the hosts in order."""

    def __init__(self, *hosts: str) -> None:
        import httpcore

        self.hosts, self.attempts = hosts, []
        self._real = httpcore.AnyIOBackend.connect_tcp
        self._error = httpcore.ConnectError
        fake = self

        async def connect_tcp(backend, host, port, *args, **kwargs):
            fake.attempts.append(host)
            if host in fake.hosts:
                raise fake._error(f"[Errno 111] Connection refused (the test's fake network, for {host})")
            return await fake._real(backend, host, port, *args, **kwargs)

        self.connect_tcp = connect_tcp


def request(*urls: str) -> dict:
    parts = [{"type": "text", "text": "What is this?"}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"model": "m", "messages": [{"role": "user", "content": parts}]}


def port_of(images: ImageServer) -> str:
    return images.url("").rsplit(":", 1)[1]


def inline(body: dict, **options) -> dict:
    return asyncio.run(inline_images(body, **{"max_bytes": LIMIT, "timeout": 10.0, **options}))


# -- item 4: DNS rebinding -------------------------------------------------------------------------------------------

def test_a_name_rebound_to_loopback_after_the_check_is_never_fetched(images, monkeypatch):
    """The attacker's name answers a public address to the first lookup (the check) and 127.0.0.1 to every later one
    (the connection). The runner must connect only to an address it checked: one lookup, its answer checked and the
    connection opened to that address (where nothing answers), and the image server on loopback never sees a request.
    Unfixed, the check passed the public answer, the connection looked the name up again and fetched from loopback."""
    import httpcore

    resolver = FakeResolver("rebind.test", PUBLIC, "127.0.0.1")
    network = Unreachable(PUBLIC)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", network.connect_tcp)
    with pytest.raises(ImageRejected) as refused:
        inline(request(f"http://rebind.test:{port_of(images)}/red.png"))
    assert str(refused.value).startswith("Could not fetch the image at http://rebind.test:")
    assert network.attempts == [PUBLIC] and resolver.lookups == 1
    assert images.hits == {}


def test_a_name_with_one_private_address_among_public_ones_is_refused_before_connecting(images, monkeypatch):
    """Every address of the answer is checked where the connection is made, not only the one it would try first."""
    monkeypatch.setattr(socket, "getaddrinfo", FakeResolver("mixed.test", f"{PUBLIC},127.0.0.1"))
    with pytest.raises(ImageRejected) as refused:
        inline(request(f"http://mixed.test:{port_of(images)}/red.png"))
    assert "non-public address (127.0.0.1)" in str(refused.value)
    assert "allow_private_image_urls" in str(refused.value)
    assert images.hits == {}


def test_each_connection_goes_to_the_address_it_looked_up_and_keeps_the_host_name(images, monkeypatch):
    """The pinning itself, where private addresses are allowed (so the test's loopback server may answer): a lookup
    for each connection (the image server speaks HTTP/1.0, so the redirect's second hop is a new connection), the
    connection made to its answer, and the server still sees the URL's host name on every hop."""
    resolver = FakeResolver("pinned.test", "127.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    host = f"pinned.test:{port_of(images)}"
    out = inline(request(f"http://{host}/redirect.png"), allow_private=True)
    assert [part["image_url"]["url"] for part in image_parts(out)] == [data_url(png(rgb=(255, 0, 0)))]
    assert images.hosts == [host, host] and resolver.lookups == 2


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA of the test's own and a certificate it signed for `images.test` (openssl, as a site operator would)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "site.key", "-out", "site.csr", "-subj",
            "/CN=images.test")
    (folder / "ext.cnf").write_text("subjectAltName=DNS:images.test\n")
    openssl("x509", "-req", "-in", "site.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            "site.pem", "-days", "2", "-extfile", "ext.cnf")
    return folder


def test_https_is_verified_against_the_urls_host_name_while_connecting_to_the_checked_address(tls_files,
                                                                                              monkeypatch):
    """Pinning keeps TLS whole: the connection goes to the looked-up address, the server is asked for the URL's
    host name (SNI) and its certificate is checked against that name; a name the certificate does not carry is
    refused though it resolves to the same address."""
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(tls_files / "site.pem", tls_files / "site.key")
    names: list[str | None] = []
    server_side.sni_callback = lambda _socket, name, _context: names.append(name)
    client_side = ssl.create_default_context(cafile=str(tls_files / "ca.pem"))
    monkeypatch.setattr(images_module, "_tls_context", lambda: client_side)
    monkeypatch.setattr(socket, "getaddrinfo", FakeResolver("images.test", "127.0.0.1"))
    tls_images = ImageServer()
    tls_images._server.socket = server_side.wrap_socket(tls_images._server.socket, server_side=True)
    with tls_images:
        port = port_of(tls_images)
        out = inline(request(f"https://images.test:{port}/red.png"), allow_private=True)
        assert [part["image_url"]["url"] for part in image_parts(out)] == [data_url(png(rgb=(255, 0, 0)))]
        assert names == ["images.test"] and tls_images.hosts == [f"images.test:{port}"]
        monkeypatch.setattr(socket, "getaddrinfo", FakeResolver("other.test", "127.0.0.1"))
        with pytest.raises(ImageRejected, match="certificate"):
            inline(request(f"https://other.test:{port}/red.png"), allow_private=True)
        assert tls_images.hits["/red.png"] == 1


# -- item 11: addresses that embed an IPv4 address -------------------------------------------------------------------

@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:4700::1111", True),
    ("64:ff9b::7f00:1", False),  # NAT64 (RFC 6052) of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254, the cloud metadata endpoint
    ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
    ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ("64:ff9b:1::808:808", False),  # local-use NAT64 (RFC 8215): translated inside someone's network
    ("2002:7f00:1::1", False), ("2002:a9fe:a9fe::1", False), ("2002:c0a8:1::1", False),  # 6to4 of private ones
    ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
    ("::ffff:127.0.0.1", False), ("::ffff:8.8.8.8", True),  # IPv4-mapped
    ("::127.0.0.1", False), ("::169.254.169.254", False),  # IPv4-compatible (deprecated, still routed by some stacks)
    ("2001:0:808:808:0:0:80ff:fffe", False),  # Teredo: server 8.8.8.8, client 127.0.0.1
    ("ff02::1", False), ("fe80::1", False), ("::1", False), ("::", False),
])
def test_ipv6_addresses_are_judged_by_the_ipv4_address_they_carry(address, public):
    assert _is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("answer", ["64:ff9b::7f00:1", "2002:7f00:1::1"])
def test_a_name_answering_a_nat64_or_6to4_form_of_loopback_is_refused(images, monkeypatch, answer):
    """Through the fetch: a name that resolves to the NAT64 (or 6to4) form of 127.0.0.1 is refused before any
    connection, naming the IPv4 address it carries."""
    monkeypatch.setattr(socket, "getaddrinfo", FakeResolver("nat64.test", answer))
    with pytest.raises(ImageRejected) as refused:
        inline(request(f"http://nat64.test:{port_of(images)}/red.png"))
    assert f"non-public address ({answer}" in str(refused.value) and "127.0.0.1" in str(refused.value)
    assert images.hits == {}


# -- item 6: how many images, how many bytes at once ------------------------------------------------------------------

def test_a_request_with_more_images_than_the_cap_is_refused_before_any_fetch(images):
    urls = [images.url(f"/red.png?copy={n}") for n in range(17)]
    with pytest.raises(ImageRejected) as refused:
        inline(request(*urls), allow_private=True)
    assert refused.value.http_status == 400
    message = str(refused.value)
    assert "17 images" in message and "at most 16" in message and "c.ModelRunner.max_images_per_request" in message
    assert images.hits == {}
    with pytest.raises(ImageRejected, match="at most 2 "):
        inline(request(data_url(png()), data_url(png()), images.url("/red.png")), max_images=2, allow_private=True)
    assert images.hits == {}
    assert len(image_parts(inline(request(images.url("/red.png"), data_url(png())), max_images=2,
                                  allow_private=True))) == 2


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_downloads_in_flight_across_requests_share_one_byte_budget(images):
    """Two requests at once, with room in flight for one image of the limit: the second request's download starts
    only once the first has finished; without the budget both would download (and be held) together."""

    async def attack() -> None:
        options = {"max_bytes": LIMIT, "timeout": 60.0, "allow_private": True, "max_bytes_in_flight": LIMIT}
        first = asyncio.create_task(inline_images(request(images.url("/held.png")), **options))
        try:
            await _until(lambda: images.hits["/held.png"] == 1)
            second = asyncio.create_task(inline_images(request(images.url("/red.png")), **options))
            await _until(lambda: _fetch_budget(LIMIT).waiting == 1 or images.hits["/red.png"] == 1)
        finally:
            images.release.set()
        await asyncio.gather(first, second)

    asyncio.run(attack())
    assert images.log == ["/held.png", "released", "/red.png"]


def test_a_download_that_cannot_get_room_in_time_is_a_400_naming_the_limit(images):
    async def attack() -> None:
        options = {"max_bytes": LIMIT, "allow_private": True, "max_bytes_in_flight": LIMIT}
        first = asyncio.create_task(inline_images(request(images.url("/held.png")), timeout=60.0, **options))
        try:
            await _until(lambda: images.hits["/held.png"] == 1)
            with pytest.raises(ImageRejected) as refused:
                await inline_images(request(images.url("/red.png")), timeout=0.2, **options)
            assert refused.value.http_status == 400
            assert "c.ModelRunner.max_image_bytes_in_flight" in str(refused.value)
            assert "64.00 KiB" in str(refused.value)
        finally:
            images.release.set()
        await first

    asyncio.run(attack())
    assert images.hits["/red.png"] == 0
