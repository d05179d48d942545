"""Attacks on registry credentials (issue 19, item 12): a registry names where an upload goes (the `Location` of the
upload session), and the runner sent the user's registry credentials there, whatever host it was.

Played with the real registry behind HTTP Basic auth (the `auth_registry` fixture) and two small servers of the test:
`LocationRewriter`, a registry that is honest in every answer but one, and `Collector`, the other host it names,
which records the credentials it is sent. A real registry never names a foreign host for its uploads, so the
dishonest one has to be a fake.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jupyter_modelrunner.distribution import package_gguf, pull, push
from jupyter_modelrunner.distribution.registry import RegistryClient
from jupyter_modelrunner.errors import AuthenticationFailed, ModelRunnerError
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store

from ..conftest import REGISTRY_USER, write_docker_credentials

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` on a free 127.0.0.1 port, for the duration of the block; yields `127.0.0.1:PORT`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Collector:
    """A FAKE upload host (another port of 127.0.0.1, so another origin than the registry's): it records the
    `Authorization` header of every request, takes upload chunks (202, Location on itself), and answers the final PUT
    with a bearer challenge whose token service is itself, as a host fishing for the registry's password would."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []

    @contextmanager
    def running(self) -> Iterator[str]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                collector.requests.append((self.command, self.path, self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)

            def do_PATCH(self) -> None:
                self._record()
                self.send_response(202)
                self.send_header("Location", f"http://{self.headers.get('Host')}{self.path.split('?', 1)[0]}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self._record()
                self._challenge()

            do_PUT = do_HEAD = do_POST = do_GET  # noqa: N815 - http.server's names

            def _challenge(self) -> None:
                self.send_response(401)
                realm = f"http://{self.headers.get('Host')}/token"
                self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="collector",scope="push"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        with _serving(Handler) as host:
            yield host

    @property
    def credentials(self) -> list[str]:
        return [auth for _, _, auth in self.requests if auth]


@contextmanager
def location_rewriter(upstream: str, collector: str) -> Iterator[str]:
    """A FAKE dishonest registry: every request is passed to the real registry `upstream` and its answer passed
    back, except that the answer to the start of an upload (`POST …/blobs/uploads/`) names `collector` as the place
    to send the blob."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection = http.client.HTTPConnection(upstream, timeout=60)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() in _HOP_BY_HOP or key.lower() == "content-length":
                        continue
                    if key.lower() == "location" and self.command == "POST" and "/blobs/uploads/" in self.path:
                        value = f"http://{collector}/v2/stolen/blobs/uploads/session"
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                connection.close()

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _relay  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: object) -> None:
            pass

    with _serving(Handler) as host:
        yield host


def test_registry_credentials_never_reach_an_upload_host_the_registry_names(tmp_path, auth_registry, tiny_gguf):
    """The dishonest registry sends the upload to the collector. Unfixed, the collector got the user's Basic
    credentials with the first chunk (and would have got them again through its token service). Now the push stops
    with a sentence naming both hosts, and the collector has seen requests but no credential."""
    collector = Collector()
    with collector.running() as collector_host, location_rewriter(auth_registry.host, collector_host) as dishonest:
        write_docker_credentials(dishonest, *REGISTRY_USER)
        source = Store(tmp_path / "source")
        ref = parse_reference(f"{dishonest}/ai/leak:v1")
        package_gguf(source, tiny_gguf, ref)
        with pytest.raises(ModelRunnerError) as refused:
            push(source, ref.full)
    assert collector.requests, "the dishonest registry's upload location was never used: the test proves nothing"
    assert collector.credentials == []
    assert isinstance(refused.value, AuthenticationFailed)
    message = str(refused.value)
    assert collector_host in message and dishonest in message


def test_a_bearer_token_stays_with_its_registry(auth_registry):
    """The same rule for a bearer token (Docker Hub's kind): sent to the registry's own scheme, host and port only."""
    collector = Collector()
    with collector.running() as collector_host:
        client = RegistryClient(parse_reference(f"{auth_registry.host}/ai/leak"))
        client.auth.token = "registry-token-for-ai-leak"
        with pytest.raises(AuthenticationFailed):
            client.do_request(f"http://{collector_host}/v2/stolen/blobs/uploads/session", "PUT")
    assert collector.requests and collector.credentials == []


def test_pushing_to_the_honest_registry_with_credentials_still_works(tmp_path, auth_registry, tiny_gguf):
    write_docker_credentials(auth_registry.host, *REGISTRY_USER)
    source = Store(tmp_path / "source")
    ref = parse_reference(f"{auth_registry.host}/ai/honest:v1")
    model = package_gguf(source, tiny_gguf, ref)
    assert push(source, ref.full).digest == model.id
    assert pull(ref.full, Store(tmp_path / "target")).digest == model.id
