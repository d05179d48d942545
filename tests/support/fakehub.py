"""A FAKE Hugging Face hub, for the faults olah cannot produce: it is named a fake on purpose.

olah's local mirrors serve whole files (no `Range`), have no access rules by token, never rate-limit and never die
mid-body, and a git tree cannot hold a file named `../x`. This small server speaks just the part of the Hub's API
`huggingface_hub` uses for a pull (`GET /api/models/{repo}/revision/{rev}`, `HEAD`/`GET
/{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag` = the LFS sha256, `Range`), and can:
`token` — answer 401 without `Authorization: Bearer <token>`; `rate_limited` — answer 429 that many times first;
`cut_after` — end the first body of a file after that many bytes (the hub "dies" mid-download); `redirects` —
send a repo's downloads elsewhere; and list any file name it is given (hostile names included).
Everything is real HTTP on 127.0.0.1 for the real client.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMMIT = "c0ffee" + "0" * 34


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.token: str | None = None
        self.rate_limited = 0
        self.cut_after: int | None = None
        self.redirects: dict[str, str] = {}  # repo → where its downloads are redirected
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bytes_served = 0
        self._cut_done: set[str] = set()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                with hub._lock:
                    hub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                    limited = hub.rate_limited > 0
                    if limited:
                        hub.rate_limited -= 1
                if limited:
                    return self._plain(429, "rate limited", {"Retry-After": "0"})
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._plain(401, "Invalid credentials", {"X-Error-Code": "RepoNotFound"})
                if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/?]+)(?:\?.*)?", self.path):
                    return self._info(match.group(1))
                if match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0]):
                    return self._file(match.group(1), match.group(3), body)
                return self._plain(404, "not found", {"X-Error-Code": "EntryNotFound"})

            def _plain(self, status: int, text: str, headers: dict[str, str]) -> None:
                data = text.encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _info(self, repo: str) -> None:
                files = hub.repos.get(repo)
                if files is None:
                    return self._plain(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
                siblings = [{"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest(),
                             "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                     "pointerSize": 130}} for name, data in files.items()]
                self._plain(200, json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings,
                                             "private": bool(hub.token)}), {"Content-Type": "application/json"})

            def _file(self, repo: str, name: str, body: bool) -> None:
                data = hub.repos.get(repo, {}).get(name)
                if data is None:
                    return self._plain(404, "Entry not found", {"X-Error-Code": "EntryNotFound"})
                if repo in hub.redirects:
                    self.send_response(302)
                    self.send_header("Location", hub.redirects[repo])
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                start = 0
                if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                    start = int(match.group(1))
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return None
                chunk = data[start:]
                key = f"{repo}/{name}"
                if hub.cut_after is not None and key not in hub._cut_done:
                    hub._cut_done.add(key)
                    chunk = chunk[: hub.cut_after]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    hub.bytes_served += len(chunk)
                    self.close_connection = True
                    self.connection.shutdown(2)  # the hub "dies" in the middle of the body
                    return None
                self.wfile.write(chunk)
                hub.bytes_served += len(chunk)
                return None

        return Handler
