"""A local web server with images (and things that are not), for the tests of image URLs in chat requests.

It records every request it gets, so a test can tell that the runner, not the engine, fetched an image, and once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .vision import png

#: A body far larger than any limit the tests set, streamed without a Content-Length until the client stops reading.
ENDLESS_LIMIT = 256 * 1024 * 1024


class ImageServer:
    """`url(path)`: `/red.png`, `/green.png`, `/blue.bin` (a PNG sent as application/octet-stream), `/page.html`,
    `/big.png` (Content-Length over any test limit), `/endless.png` (no length, never ends), `/slow.png` (answers
    after `slow_seconds`), `/redirect.png` (302 to `/red.png`), `/held.png` (answers once `release` is set, so a test
can hold a download open as long as it needs); anything else is a 404. `hosts` lists the Host header of each
request and `log` the order of events (each path as it arrives, and "released" when `/held.png` lets go)."""

    def __init__(self, *, slow_seconds: float = 5.0) -> None:
        self.hits: Counter[str] = Counter()
        self.slow_seconds = slow_seconds
        self.hosts: list[str] = []
        self.log: list[str] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits[self.path] += 1
                owner.hosts.append(self.headers.get("Host", ""))
                owner.log.append(self.path)
                owner._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        colours = {"/red.png": (255, 0, 0), "/green.png": (0, 255, 0), "/yellow.png": (255, 255, 0)}
        if path in colours:
            return _send(handler, 200, "image/png", png(rgb=colours[path]))
        if path == "/blue.bin":
            return _send(handler, 200, "application/octet-stream", png(rgb=(0, 0, 255)))
        if path == "/page.html":
            return _send(handler, 200, "text/html", b"<html><body>not an image</body></html>")
        if path == "/redirect.png":
            handler.send_response(302)
            handler.send_header("Location", "/red.png")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        if path == "/big.png":
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.send_header("Content-Length", str(ENDLESS_LIMIT))
            handler.end_headers()
            return _stream(handler)
        if path == "/endless.png":
            handler.send_response(200)
            handler.send_header("Content-Type", "image/png")
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.close_connection = True
            return _stream(handler)
        if path == "/held.png":
            self.release.wait()
            self.log.append("released")
            return _send(handler, 200, "image/png", png(rgb=(7, 7, 7)))
        if path == "/slow.png":
            time.sleep(self.slow_seconds)
            return _send(handler, 200, "image/png", png(rgb=(9, 9, 9)))
        return _send(handler, 404, "text/plain", b"no such image")


def _send(handler: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _stream(handler: BaseHTTPRequestHandler) -> None:
    """PNG-looking bytes until the client hangs up (or ENDLESS_LIMIT)."""
    chunk = png() + b"\0" * (64 * 1024)
    sent = 0
    try:
        while sent < ENDLESS_LIMIT:
            handler.wfile.write(chunk)
            sent += len(chunk)
    except OSError:
        return
