"""A FAKE Hugging Face Hub on 127.0.0.1, for the two things the real-hub stand-in (olah) cannot do offline: answer
the model search (`GET /api/models?search=`), and serve files to `huggingface_hub`'s own downloader so the suite can
fill a real HF cache without the network.

It is named a fake because it is one: the search answers with the shape the Hub answers with (recorded from
`https://huggingface.co/api/models?search=…&expand=…`, trimmed to the fields `hub_catalog.SEARCH_FIELDS` asks for) but
from a list the test gives it (a model matches when its id holds every word of the query); files are served at
`/{repo}/resolve/{revision}/{path}` with the headers `hf_hub_download` reads (`X-Repo-Commit`, `ETag`,
`Content-Length`). Every request's path and query are recorded, so attack tests can say where requests went.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


def hub_model(repo: str, *, downloads: int, likes: int, tags: list[str], library: str | None = None,
              used_storage: int | None = None, gguf_parameters: int | None = None,
              safetensors_parameters: int | None = None, pipeline_tag: str = "text-generation") -> dict[str, Any]:
    """One entry of the Hub's `/api/models` answer, in its shape (camelCase keys, `_id`, `gguf`/`safetensors`)."""
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
class FakeRepo:
    """Files of one revision: `commit` is what `X-Repo-Commit` says; `revision` the branch or tag asked for."""

    files: dict[str, bytes]
    commit: str
    revision: str = "main"


@dataclass
class FakeHubSearch:
    """The fake hub: `models` answer the search; `repos[(repo, revision)]` serve files; `search_status` (when set)
    answers the search with that status instead, `search_body` with those bytes, and `search_link` adds a `Link`
    header pointing at a next page there. `requests` records `(method, path, query)` of each request."""

    models: list[dict[str, Any]] = field(default_factory=list)
    repos: dict[tuple[str, str], FakeRepo] = field(default_factory=dict)
    search_status: int | None = None
    search_body: bytes | None = None
    search_link: str | None = None
    requests: list[tuple[str, str, dict[str, list[str]]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_repo(self, repo: str, files: dict[str, bytes], *, revision: str = "main", commit: str | None = None) -> str:
        """Serve `files` as `repo` at `revision`; the commit hash (made from the content unless given)."""
        content = repo.encode() + revision.encode() + b"".join(sorted(files.values()))
        commit = commit or hashlib.sha1(content).hexdigest()
        self.repos[(repo, revision)] = FakeRepo(files, commit, revision)
        self.repos[(repo, commit)] = FakeRepo(files, commit, commit)
        return commit

    def searches(self) -> list[dict[str, list[str]]]:
        """The queries of the search requests received."""
        return [query for _, path, query in self.requests if path == "/api/models"]

    def __enter__(self) -> FakeHubSearch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        self.requests.append((handler.command, parts.path, query))
        if parts.path == "/api/models":
            self._search(handler, query, body=body)
        elif "/resolve/" in parts.path:
            self._file(handler, unquote(parts.path), body=body)
        else:
            self._send(handler, 404, b'{"error": "Not found"}', body=body)

    def _search(self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]], *, body: bool) -> None:
        if self.search_status is not None:
            self._send(handler, self.search_status, json.dumps({"error": "refused"}).encode(), body=body)
            return
        if self.search_body is not None:
            self._send(handler, 200, self.search_body, body=body)
            return
        words = (query.get("search") or [""])[0].lower().split()
        wanted = set(query.get("filter") or [])
        found = [m for m in self.models if all(w in m["id"].lower() for w in words)
                 and wanted <= set(m.get("tags") or [])]
        found.sort(key=lambda m: -m.get("downloads", 0))
        limit = int((query.get("limit") or ["1000"])[0])
        link = {"Link": f'<{self.url}{self.search_link}>; rel="next"'} if self.search_link else None
        self._send(handler, 200, json.dumps(found[:limit]).encode(), body=body, headers=link)

    def _file(self, handler: BaseHTTPRequestHandler, path: str, *, body: bool) -> None:
        repo, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, name = rest.partition("/")
        served = self.repos.get((repo, revision))
        content = served.files.get(name) if served else None
        if served is None or content is None:
            self._send(handler, 404, b'{"error": "Entry not found"}', body=body,
                       headers={"X-Error-Code": "EntryNotFound" if served else "RepoNotFound"})
            return
        etag = hashlib.sha256(content).hexdigest()
        self._send(handler, 200, content, body=body, content_type="application/octet-stream",
                   headers={"X-Repo-Commit": served.commit, "ETag": f'"{etag}"'})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, content: bytes, *, body: bool,
              content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(content)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        if body:
            handler.wfile.write(content)


def fill_hf_cache(hub: FakeHubSearch, cache_dir: Any, repo: str, files: dict[str, bytes], *,
                  revision: str = "main", download: list[str] | None = None) -> str:
    """Serve `files` as `repo` at `revision` and download them (or only `download`) into the HF cache at
    `cache_dir` with `huggingface_hub`'s own `hf_hub_download`: the cache's layout (blobs, snapshots, refs) is the
    client's, not the suite's. Returns the commit hash."""
    from huggingface_hub import hf_hub_download

    commit = hub.add_repo(repo, files, revision=revision)
    for name in download if download is not None else files:
        hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir, endpoint=hub.url, token=False)
    return commit
