"""A FAKE Hugging Face Hub on 127.0.0.1: it is named a fake on purpose, and exists for what the real-hub stand-in
(olah) cannot do offline.

olah has no model search, serves whole files (no `Range`), has no access rules by token, never rate-limits and never
dies mid-body, and a git tree cannot hold a file named `../x`. This one server speaks just the part of the Hub's API
`huggingface_hub` and the runner use, for real HTTP from the real client:

- `GET /api/models?search=` answers from `models` (entries in the Hub's shape, see `hub_model`): a model matches when
  its id holds every word of the query and every `filter` is one of its tags, most downloaded first;
  `search_status`, `search_body` and `search_link` make it refuse, answer those bytes, or add a `Link` to a next page;
- `GET /api/models/{repo}/revision/{rev}` lists a revision's files (size, LFS sha256, the commit);
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}` serves a file with `X-Repo-Commit`, `ETag` (the sha256) and `Range`,
  so `hf_hub_download` can fill a real HF cache (`fill_hf_cache`) and a pull can run against it.

Repos are added with `add_repo` (any file name, hostile ones included). The faults: `token` — answer 401 without
`Authorization: Bearer <token>`; `rate_limited` — answer 429 that many times first; `cut_after` — end the first body
of each file after that many bytes (the hub "dies" mid-download); `redirects` — send a repo's downloads elsewhere.
Every request is recorded in `requests`, so tests can say where requests went and with which headers.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit


def hub_model(repo: str, *, downloads: int, likes: int, tags: list[str], library: str | None = None,
              used_storage: int | None = None, gguf_parameters: int | None = None,
              safetensors_parameters: int | None = None, pipeline_tag: str = "text-generation") -> dict[str, Any]:
    """One entry of the Hub's `/api/models` answer, in its shape (recorded from `https://huggingface.co/api/models?
    search=…&expand=…`, trimmed to the fields `hub_catalog.SEARCH_FIELDS` asks for: camelCase keys, `_id`,
    `gguf`/`safetensors`)."""
    entry: dict[str, Any] = {"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
                             "likes": likes, "downloads": downloads, "tags": tags, "pipeline_tag": pipeline_tag,
                             "private": False, "gated": False, "lastModified": "2025-01-07T12:00:00.000Z"}
    if library:
        entry["library_name"] = library
    if used_storage is not None:
        entry["usedStorage"] = used_storage
    if gguf_parameters is not None:
        entry["gguf"] = {"total": gguf_parameters, "architecture": "llama", "context_length": 8192}
    if safetensors_parameters is not None:
        entry["safetensors"] = {"parameters": {"BF16": safetensors_parameters}, "total": safetensors_parameters}
    return entry


@dataclass
class FakeRevision:
    """Files of one revision of a repo; `commit` is what `X-Repo-Commit` and the listing's `sha` say."""

    files: dict[str, bytes]
    commit: str


class Request(NamedTuple):
    """One request the fake received: `path` without the query, `query` parsed, header names lower-cased."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class FakeHub:
    """The fake hub (see the module's docstring): a context manager serving at `endpoint` while entered."""

    def __init__(self, models: list[dict[str, Any]] | None = None) -> None:
        self.models: list[dict[str, Any]] = list(models or [])
        self.repos: dict[tuple[str, str], FakeRevision] = {}  # (repo, revision or commit) → its files
        self.search_status: int | None = None
        self.search_body: bytes | None = None
        self.search_link: str | None = None
        self.token: str | None = None
        self.rate_limited = 0
        self.cut_after: int | None = None
        self.redirects: dict[str, str] = {}  # repo → where its downloads are redirected
        self.requests: list[Request] = []
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

    def add_repo(self, repo: str, files: dict[str, bytes], *, revision: str = "main", commit: str | None = None) -> str:
        """Serve `files` as `repo` at `revision` and at its commit; returns the commit (made from the content unless
        given)."""
        content = repo.encode() + revision.encode() + b"".join(sorted(files.values()))
        commit = commit or hashlib.sha1(content).hexdigest()
        self.repos[(repo, revision)] = self.repos[(repo, commit)] = FakeRevision(files, commit)
        return commit

    def searches(self) -> list[dict[str, list[str]]]:
        """The queries of the search requests received."""
        return [request.query for request in self.requests if request.path == "/api/models"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve()

            def do_GET(self) -> None:
                self._serve()

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query, keep_blank_values=True)
                with hub._lock:
                    hub.requests.append(Request(self.command, parts.path, query,
                                                {k.lower(): v for k, v in self.headers.items()}))
                    limited = hub.rate_limited > 0
                    if limited:
                        hub.rate_limited -= 1
                if limited:
                    return self._send(429, "rate limited", {"Retry-After": "0"})
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._send(401, "Invalid credentials", {"X-Error-Code": "RepoNotFound"})
                path = unquote(parts.path)
                if parts.path == "/api/models":
                    return self._search(query)
                if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
                    return self._listing(match.group(1), match.group(2))
                if match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    return self._file(match.group(1), match.group(2), match.group(3))
                return self._send(404, "Not found", {"X-Error-Code": "EntryNotFound"})

            def _start(self, status: int, length: int, headers: dict[str, str] | None,
                       content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(length))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()

            def _send(self, status: int, content: bytes | str, headers: dict[str, str] | None = None) -> None:
                """Send `content` (a `str` is an error message, sent as the Hub sends them: `{"error": …}`)."""
                data = json.dumps({"error": content}).encode() if isinstance(content, str) else content
                self._start(status, len(data), headers)
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _search(self, query: dict[str, list[str]]) -> None:
                if hub.search_status is not None:
                    return self._send(hub.search_status, "refused")
                if hub.search_body is not None:
                    return self._send(200, hub.search_body)
                words = (query.get("search") or [""])[0].lower().split()
                wanted = set(query.get("filter") or [])
                found = [m for m in hub.models if all(w in m["id"].lower() for w in words)
                         and wanted <= set(m.get("tags") or [])]
                found.sort(key=lambda m: -m.get("downloads", 0))
                limit = int((query.get("limit") or ["1000"])[0])
                link = {"Link": f'<{hub.endpoint}{hub.search_link}>; rel="next"'} if hub.search_link else None
                return self._send(200, json.dumps(found[:limit]).encode(), link)

            def _revision(self, repo: str, revision: str) -> FakeRevision | None:
                """The revision asked for, or None once a 404 saying which part is missing is sent."""
                if (served := hub.repos.get((repo, revision))) is None:
                    known = any(name == repo for name, _ in hub.repos)
                    self._send(404, "Revision not found" if known else "Repository not found",
                               {"X-Error-Code": "RevisionNotFound" if known else "RepoNotFound"})
                return served

            def _listing(self, repo: str, revision: str) -> None:
                if (served := self._revision(repo, revision)) is None:
                    return None
                siblings = [{"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest(),
                             "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                     "pointerSize": 130}} for name, data in served.files.items()]
                return self._send(200, json.dumps({"id": repo, "modelId": repo, "sha": served.commit,
                                                   "siblings": siblings, "private": bool(hub.token)}).encode())

            def _file(self, repo: str, revision: str, name: str) -> None:
                if (served := self._revision(repo, revision)) is None:
                    return None
                if (data := served.files.get(name)) is None:
                    return self._send(404, "Entry not found", {"X-Error-Code": "EntryNotFound"})
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                if repo in hub.redirects:
                    return self._send(302, b"", {"Location": hub.redirects[repo], "X-Repo-Commit": served.commit,
                                                 "X-Linked-Etag": etag, "X-Linked-Size": str(len(data))})
                start = 0
                if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                    start = int(match.group(1))
                headers = {"X-Repo-Commit": served.commit, "ETag": etag}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._start(206 if start else 200, len(data) - start, headers, "application/octet-stream")
                if self.command == "HEAD":
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


def fill_hf_cache(hub: FakeHub, cache_dir: Any, repo: str, files: dict[str, bytes], *,
                  revision: str = "main", download: list[str] | None = None) -> str:
    """Serve `files` as `repo` at `revision` and download them (or only `download`) into the HF cache at
    `cache_dir` with `huggingface_hub`'s own `hf_hub_download`: the cache's layout (blobs, snapshots, refs) is the
    client's, not the suite's. Returns the commit hash."""
    from huggingface_hub import hf_hub_download

    commit = hub.add_repo(repo, files, revision=revision)
    for name in download if download is not None else files:
        hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir, endpoint=hub.endpoint, token=False)
    return commit
