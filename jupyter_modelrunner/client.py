"""The one small API every front end uses to talk to the model runner.

The magics, the widgets, every CLI verb and any notebook code go through this module, so they all see the same
runner (one source of truth, and one owner of a store's engines); `discovery` finds it (its docstring says in
which order). Importing this module is cheap (no HTTP or OpenAI libraries until a request is made): `%load_ext`
and `import jupyter_modelrunner` stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .discovery import (
    ENV_HOST,
    ENV_REGISTRY,
    ENV_TOKEN,
    RunnerLocation,
    _answers,
    _normalize,
    after_handover,
    locate,
)
from .distribution.huggingface import HF_TOKEN_HEADER
from .errors import HandingOver, InvalidReference, ModelNotFound, ModelRunnerError, RunnerUnreachable

__all__ = ["ENV_HOST", "ENV_REGISTRY", "ENV_TOKEN", "ChatStream", "RunnerClient", "RunnerLocation", "api_key",
           "base_url", "connect", "host", "locate", "runner"]


# -- the active runner ----------------------------------------------------------------------------------

_active: RunnerClient | None = None


def runner(*, start: bool = True, store: Path | str | None = None, registry: str | None = None) -> RunnerClient:
    """The client of the runner this process uses: found once (see `locate`), or set by `connect`."""
    global _active
    if _active is None:
        _active = RunnerClient(location=locate(start=start, store=store, registry=registry))
    return _active


def connect(url: str | None = None, token: str | None = None) -> RunnerClient:
    """Use the runner at `url` from now on (checked first); without `url`, find one again from scratch."""
    global _active
    if url is None:
        _active = None
        return runner()
    location = RunnerLocation(_normalize(url), token if token is not None else os.environ.get(ENV_TOKEN, ""),
                              "connect")
    problem = _answers(location.url, location.token)
    if problem is not None:
        raise RunnerUnreachable(f"The model runner at {location.url} cannot be used: {problem}.")
    _active = RunnerClient(location=location)
    return _active


def host() -> str:
    """The runner's URL, ending in `/` (e.g. `http://127.0.0.1:8888/modelrunner/`), found as `runner()` does."""
    return runner().url


def base_url() -> str:
    """The OpenAI-compatible base URL: `OpenAI(base_url=base_url(), api_key=api_key())` just works."""
    return runner().location.base_url


def api_key() -> str:
    """The token the runner accepts; OpenAI clients send it as a bearer key (never empty: the SDK wants one)."""
    return runner().token or "none"


# -- the API ------------------------------------------------------------------------------------------


class ChatStream:
    """The answer to one chat request, as text pieces while they arrive (`for piece in stream`).

    `engine` and `device` say what answered; `text` is the answer received so far and `thinking` what a reasoning
    model thought before it (apart: `reasoning_content` in the stream); `close()` (or leaving a `with` block, or an
    interrupt) ends the request, which stops the generation on the engine. Iterating gives the answer's pieces;
    `parts()` gives thinking and answer pieces as they come, for views that show both.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.engine = raw.headers.get("x-model-runner-engine", "")
        self.device = raw.headers.get("x-model-runner-device", "")
        self._chunks = raw.parse()
        self.pieces: list[str] = []
        self.thinking_pieces: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Any = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def thinking(self) -> str:
        return "".join(self.thinking_pieces)

    def __iter__(self) -> Iterator[str]:
        return (piece for kind, piece in self.parts() if kind == "content")

    def parts(self) -> Iterator[tuple[str, str]]:
        """`("thinking", piece)` and `("content", piece)` in the order the model writes them."""
        try:
            for chunk in self._chunks:
                if chunk.usage is not None:
                    self.usage = chunk.usage
                for choice in chunk.choices:
                    if choice.finish_reason:
                        self.finish_reason = choice.finish_reason
                    if not choice.delta:
                        continue
                    # Not a field of the SDK's types: the runner's (and llama-server's) extension, kept as an extra.
                    thought = getattr(choice.delta, "reasoning_content", None)
                    if isinstance(thought, str) and thought:
                        self.thinking_pieces.append(thought)
                        yield "thinking", thought
                    if choice.delta.content:
                        self.pieces.append(choice.delta.content)
                        yield "content", choice.delta.content
        except Exception as exc:
            raise _openai_error(exc) from exc
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._chunks.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def model_segment(name: str) -> str:
    """A model name as it goes into a route's path (`models/{name}`): names hold `/` and `:`, but a `.` or `..`
    segment (or an empty one) would make the URL another route's, so such a name is refused, never sent."""
    if not name or any(segment in ("", ".", "..") for segment in name.split("/")):
        raise InvalidReference(f"{name!r} is not a model name (e.g. ai/smollm2 or ai/smollm2:latest).")
    return name


def _openai_error(exc: Exception) -> ModelRunnerError:
    """The SDK's exceptions as our one-line errors, with the runner's own message."""
    import openai

    if isinstance(exc, ModelRunnerError):
        return exc
    if isinstance(exc, openai.APIConnectionError):
        return RunnerUnreachable(f"The model runner stopped answering ({exc.__class__.__name__}).")
    message = getattr(exc, "message", None) or str(exc)
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = str(body.get("message") or (body.get("error") or {}).get("message") or message)
    status = getattr(exc, "status_code", None)
    error: ModelRunnerError = ModelNotFound(message) if status == 404 else ModelRunnerError(message)
    if status:
        error.http_status = status
    return error


class RunnerClient:
    """A synchronous client of one runner's HTTP API (DMR's routes plus OpenAI's, through the `openai` SDK).

    Every failure is a `ModelRunnerError` carrying the server's own message, or `RunnerUnreachable`
    saying where it looked when nothing answers.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, location: RunnerLocation | None = None,
                 timeout: float = 30.0) -> None:
        if location is None:
            location = RunnerLocation(_normalize(url), token or "", "given") if url else locate(start=False)
        self._timeout = timeout
        self._bind(location, location.token if token is None else token)

    def _bind(self, location: RunnerLocation, token: str) -> None:
        import httpx

        self.location = location
        self.url = location.url
        self.token = token
        headers = {"Authorization": f"token {self.token}"} if self.token and self.token != "none" else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=self._timeout, trust_env=False)
        self._openai: dict[str | None, Any] = {}

    def _moved(self, status: int | None, headers: Any) -> bool:
        """Whether the runner refused the request because it is handing its store over (`HandingOver`'s 503): then
        this client follows the store to its new owner (`discovery.after_handover`), and the caller retries once."""
        if status != 503 or headers is None or not headers.get(HandingOver.header):
            return False
        try:
            retry_after = float(headers.get("retry-after") or 1)
        except ValueError:
            retry_after = 1.0
        old = self._http
        location = after_handover(self.location, retry_after)
        self._bind(location, location.token if location.store is not None else self.token)  # a new owner, its token
        old.close()
        return True

    def __repr__(self) -> str:
        return f"RunnerClient({self.url!r}, found via {self.location.source})"

    # -- models ---------------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Stored models: `{id, tags, created, size, config: {format, quantization, …}, engine, engine_error}`."""
        return self.get("models")

    def inspect(self, name: str) -> dict[str, Any]:
        return self.get(f"models/{model_segment(name)}")

    def model_id(self, name: str) -> str:
        """The stored model's digest, through the OpenAI model route: an inference key may ask it (`inspect` is
        management), and it loads no engine."""
        return str(self.get(f"engines/v1/models/{model_segment(name)}")["model_id"])

    def preload(self, model: str, *, endpoint: str = "chat/completions") -> dict[str, Any]:
        """Start the engine that answers `endpoint` for `model` (DMR's `X-Preload-Only`, which an inference key may
        send) and say how it runs: the runner as `ps` shows it, with its slots."""
        return self.post(f"engines/v1/{endpoint}", {"model": model}, headers={"X-Preload-Only": "true"},
                         timeout=None)

    def pull(self, reference: str) -> Iterator[dict[str, Any]]:
        """Pull, yielding progress events (`type` progress/warning/success); a failure raises instead of yielding.

        Stopping the iteration early (an interrupt) cancels the pull; the next pull resumes it.
        """
        # Our own HF_TOKEN (set in this kernel, say) goes with the pull: the runner may run with none.
        token = os.environ.get("HF_TOKEN", "").strip()
        return self._progress("models/create", {"from": reference}, headers={HF_TOKEN_HEADER: token} if token else None)

    def push(self, name: str, target: str | None = None) -> Iterator[dict[str, Any]]:
        return self._progress(f"models/{model_segment(name)}/push", {"target": target} if target else {})

    def remove(self, name: str, *, force: bool = False) -> dict[str, Any]:
        return self._send("DELETE", f"models/{model_segment(name)}", params={"force": "true"} if force else None)

    def tag(self, source: str, target: str) -> dict[str, Any]:
        return self.post(f"models/{model_segment(source)}/tag", {"target": target})

    def package(self, tag: str, *, gguf: Sequence[str | Path] = (), safetensors_dir: str | Path | None = None,
                license_files: Sequence[str | Path] = (), chat_template: str | Path | None = None,
                context_size: int | None = None, mmproj: str | Path | None = None,
                from_model: str | None = None) -> dict[str, Any]:
        """Make a model from files on the runner's machine (paths are made absolute here), or a variant of the
        stored `from_model` (new context size, template or license; its weights are shared, not copied)."""
        def absolute(path: str | Path) -> str:
            return str(Path(path).expanduser().absolute())

        body: dict[str, Any] = {"tag": tag, "gguf": [absolute(p) for p in gguf],
                                "license": [absolute(p) for p in license_files], "context_size": context_size}
        if safetensors_dir:
            body["safetensors_dir"] = absolute(safetensors_dir)
        if chat_template:
            body["chat_template"] = absolute(chat_template)
        if mmproj:
            body["mmproj"] = absolute(mmproj)
        if from_model:
            body["from"] = from_model
        return self.post("models/package", body)

    def hf_cache(self) -> dict[str, Any]:
        """The models in the runner's Hugging Face cache an engine runs: `{cache, models: [{name, repo, revision,
        format, quantization, files, size, engine}]}`."""
        return self.get("huggingface/cache")

    def hf_search(self, query: str, *, limit: int = 20, fmt: str | None = None) -> list[dict[str, Any]]:
        """The Hub's GGUF and safetensors models matching `query`, most downloaded first (`{name, repo, format,
        downloads, likes, size, parameters}`)."""
        params = {"q": query, "limit": str(limit), **({"format": fmt} if fmt else {})}
        return self._send("GET", "huggingface/search", params=params)["models"]

    def export(self, model: str, destination: str | Path) -> int:
        """Write the model's archive (`GET models/{name}/export`, DMR's tar) to `destination`, streamed; its size."""
        import httpx

        written, target = 0, Path(destination).expanduser()
        partial = target.with_name(f".{target.name}.partial")
        path = f"models/{model_segment(model)}/export"
        with self._http.stream("GET", path, timeout=httpx.Timeout(30.0, read=None)) as response:
            if response.status_code >= 400:
                self._raise_for_status(response.status_code, response.read())
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    written += out.write(chunk)
        partial.replace(target)  # a broken transfer leaves no file that looks whole
        return written

    def import_archive(self, source: str | Path, *, tag: str | None = None) -> dict[str, Any]:
        """Store the model in an archive `export` (or DMR) wrote (`POST models/load`, a tar body, streamed)."""
        import httpx

        def chunks() -> Iterator[bytes]:
            with Path(source).expanduser().open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    yield chunk

        response = self._request("POST", "models/load", content=chunks(), params={"tag": tag} if tag else None,
                                 headers={"Content-Type": "application/x-tar"},
                                 timeout=httpx.Timeout(30.0, read=None))
        self._raise_for_status(response.status_code, response.content)
        return response.json()

    # -- engines --------------------------------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        return self.get("engines/ps")

    def unload(self, models: Sequence[str] = (), *, all: bool = False) -> list[str]:
        """Stop engines now; the names of the models unloaded (once each, though chat and embeddings both ran)."""
        names = self.post("engines/unload", {"all": all, "models": list(models)}).get("models") or []
        return list(dict.fromkeys(names))

    def configure(self, model: str, *, context_size: int | None = None, keep_alive: str | None = None,
                  runtime_flags: Sequence[str] | None = None, engine: str | None = None, think: bool | None = None,
                  reasoning_budget: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "context-size": context_size, "keep_alive": keep_alive,
                                "backend": engine, "think": think, "reasoning-budget": reasoning_budget}
        if runtime_flags is not None:
            body["runtime-flags"] = list(runtime_flags)
        return self.post("engines/_configure", body)

    def logs(self, model: str, lines: int = 200) -> str:
        return self._send("GET", "engines/logs", params={"model": model, "lines": str(lines)}, text=True)

    def follow_logs(self, model: str, lines: int = 200) -> Iterator[str]:
        """The last `lines` of the engine's output, then each new line as it is printed, until the caller stops."""
        import httpx

        params = {"model": model, "lines": str(lines), "follow": "true"}
        try:
            with self._http.stream("GET", "engines/logs", params=params, timeout=httpx.Timeout(30.0, read=None)) as r:
                if r.status_code >= 400:
                    self._raise_for_status(r.status_code, r.read())
                yield from r.iter_lines()
        except httpx.TransportError as exc:
            raise RunnerUnreachable(f"The model runner at {self.url} stopped answering ({exc.__class__.__name__}).") \
                from exc

    def load(self, model: str, *, engine: str | None = None, mode: str = "completion") -> dict[str, Any]:
        """Start the model's engine now (preload); the runner as `ps` shows it, plus `load_seconds`."""
        return self.post("models/load", {"model": model, "engine": engine, "mode": mode}, timeout=None)

    def settings(self, model: str) -> dict[str, Any]:
        """The model's saved settings (context size, keep_alive in seconds, engine flags)."""
        return self._send("GET", "engines/_configure", params={"model": model})

    def purge(self) -> dict[str, Any]:
        return self._send("DELETE", "models/purge")

    def gc(self, *, min_age: float = 3600.0) -> dict[str, Any]:
        return self.post("models/gc", {"min_age": min_age})

    def fsck(self, *, repair: bool = False) -> Iterator[dict[str, Any]]:
        """Check the store (and with `repair`, fix it), yielding progress events while blobs are hashed; the last,
        `success`, carries the report (`report`). Streamed, so a store that takes minutes to hash never times out."""
        return self._progress("models/fsck", {"repair": repair, "stream": True})

    def status(self) -> dict[str, Any]:
        return self.get("engines/status")

    def df(self) -> dict[str, Any]:
        return self.get("engines/df")

    # -- OpenAI ---------------------------------------------------------------------------------------

    def openai(self, engine: str | None = None) -> Any:
        """An `openai.OpenAI` client for this runner (`engine` pins the route, e.g. `vllm`)."""
        if engine not in self._openai:
            import openai

            base = self.url + (f"engines/{engine}/v1" if engine else "engines/v1")
            self._openai[engine] = openai.OpenAI(base_url=base, api_key=self.token or "none", max_retries=0,
                                                 timeout=600.0)
        return self._openai[engine]

    def async_openai(self, engine: str | None = None) -> Any:
        """A new `openai.AsyncOpenAI` client for this runner, for the event loop it is first used in (its connections
        belong to that loop, so it is not kept here); the caller closes it. `bench` uses one per run."""
        import openai

        base = self.url + (f"engines/{engine}/v1" if engine else "engines/v1")
        return openai.AsyncOpenAI(base_url=base, api_key=self.token or "none", max_retries=0, timeout=600.0)

    def chat(self, model: str, messages: Sequence[dict[str, Any]], *, engine: str | None = None,
             temperature: float | None = None, max_tokens: int | None = None, **options: Any) -> ChatStream:
        """Start a streamed chat completion; iterate the result for text as it arrives."""
        extra = {k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens)) if v is not None}
        for attempt in range(2):
            try:
                raw = self.openai(engine).chat.completions.with_raw_response.create(
                    model=model, messages=list(messages), stream=True, **extra, **options)
            except Exception as exc:
                response = getattr(exc, "response", None)
                if attempt == 0 and self._moved(getattr(exc, "status_code", None), getattr(response, "headers", None)):
                    continue
                raise _openai_error(exc) from exc
            return ChatStream(raw)
        raise AssertionError("unreachable")

    # -- plumbing -------------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        return self._send("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None, **options: Any) -> Any:
        return self._send("POST", path, json_body=body, **options)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            return self._http.request(method, path, **kwargs)
        except httpx.InvalidURL as exc:  # a name with control characters, say: never sent
            raise InvalidReference(f"{path.split('/', 1)[-1]!r} cannot be asked for ({exc})") from None
        except httpx.TransportError as exc:
            raise RunnerUnreachable(
                f"No model runner answers at {self.url} ({exc.__class__.__name__}; found via "
                f"{self.location.source}). Start JupyterLab (the extension serves it) or `jupyter modelrunner "
                f"serve`, or point {ENV_HOST} at a running one."
            ) from exc

    def _send(self, method: str, path: str, *, json_body: dict[str, Any] | None = None,
              params: dict[str, str] | None = None, text: bool = False, **options: Any) -> Any:
        response = self._request(method, path, json=json_body, params=params, **options)
        if self._moved(response.status_code, response.headers):
            response = self._request(method, path, json=json_body, params=params, **options)
        self._raise_for_status(response.status_code, response.content)
        if text:
            return response.text
        return response.json() if response.content else None

    def _raise_for_status(self, status: int, content: bytes) -> None:
        if status < 400:
            return
        message = content.decode(errors="replace").strip()
        ours = False  # an error the runner explains itself (a registry refusing credentials is a 401 too)
        with contextlib.suppress(ValueError, AttributeError):
            doc = json.loads(message.splitlines()[0] if message else "{}")
            ours = isinstance(doc.get("error"), dict) or "type" in doc
            message = doc.get("message") or (doc.get("error") or {}).get("message") or message
        if status in (401, 403) and (not ours or message in ("Forbidden", "Unauthorized")):
            raise ModelRunnerError(f"The model runner at {self.url} refused the token; set {ENV_TOKEN} to the "
                                   "server's token (or use `%model connect URL --token T`).")
        error: ModelRunnerError = ModelNotFound(message) if status == 404 else ModelRunnerError(message)
        error.http_status = status
        raise error

    def _progress(self, path: str, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        import httpx

        try:
            for attempt in range(2):
                with self._http.stream("POST", path, json=body, headers=headers,
                                       timeout=httpx.Timeout(30.0, read=None)) as response:
                    if response.status_code >= 400:
                        content = response.read()
                        if attempt == 0 and self._moved(response.status_code, response.headers):
                            continue
                        self._raise_for_status(response.status_code, content)
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event.get("type") == "error":
                            error = ModelRunnerError(str(event.get("message") or "the transfer failed"))
                            error.http_status = int(event.get("status") or 500)
                            raise error
                        yield event
                    return
        except httpx.TransportError as exc:
            raise RunnerUnreachable(f"The model runner at {self.url} stopped answering during the transfer "
                                    f"({exc.__class__.__name__}); run it again to resume.") from exc
