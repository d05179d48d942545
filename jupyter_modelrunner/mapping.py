"""Work on data: `map` a model over a column (or any inputs), `embed` them; many requests at once, cached, resumable.

    df["label"] = jupyter_modelrunner.map("ai/smollm2", df["review"], prompt="Sentiment of: {}", schema=Label)

What a hand-written loop of `openai` calls lacks, each in one place here:

- **As many requests at once as the engine has slots**, asked of the runner (`RunnerClient.preload` loads the model
  and says how many), and never more. Each is marked as work on data (`X-Model-Runner-Priority: background`), so the
  runner lets it take only the slots interactive requests leave free: a chat typed meanwhile still gets one.
- **Cached** (answer_cache.py): each answer under (model digest, endpoint, parameters, input). A re-run is answered
  from the cache without any engine request, a run an interrupt cut off resumes where it stopped, and neither needs
  the runner that gave the answers. `cache=False` bypasses it. `map` decodes greedily (temperature 0) unless told
  otherwise, which is what a labelling job wants and makes the cache exact. With a temperature above 0 and no seed,
  each row gets a seed derived from its input, so its answer is one sample that a re-run finds again; `seed=N`
  draws other samples (every row with its own input and that seed).
- **A failed row does not fail the run**: it becomes a `RowError` (falsy; `RowError(400: …)` in a DataFrame) and
  the other rows are answered; `errors="raise"` raises at the first one instead. Failures are not cached: a re-run
  asks again. A failure that concerns every row (the runner gone, the model unknown, the token refused) raises.
- **An interrupt stops at once**: the requests in flight are cancelled (closing their connections stops the
  engine's generation and frees the slots), the finished rows stay cached, and `KeyboardInterrupt` is raised again.
- **Progress**: a widget in a notebook (widgets/map_progress.py), a self-rewriting line on stderr elsewhere
  (terminal.py); `progress=False` shows nothing.

The requests run in a worker thread with its own event loop: a kernel's loop is already running in the calling
thread, which stays free to draw the progress and to receive the interrupt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answer_cache import AnswerCache, answer_key, is_deterministic, row_seed
from .errors import ModelNotFound, ModelRunnerError, RunnerUnreachable

__all__ = ["PRIORITY_HEADER", "MapRowFailed", "RowError", "embed", "map"]

#: The header that marks a request as work on data (the runner's api/base.py reads it; the client has its own copy,
#: as it imports nothing of the server).
PRIORITY_HEADER = "X-Model-Runner-Priority"
BACKGROUND = "background"
#: Inputs per `/v1/embeddings` request: fewer requests, while one slot's batch stays small.
EMBED_BATCH = 16
#: Never more requests at once than this, whatever an engine says (vLLM's 256 sequences would be 256 connections).
MAX_CONCURRENCY = 64
#: Statuses that concern every row, not one: the run stops and raises (the finished rows are cached).
_WHOLE_RUN_STATUSES = frozenset({401, 403, 404, 503})
#: At most this many progress redraws a second.
_REDRAWS_PER_SECOND = 8
_REQUEST_TIMEOUT = 600.0


class RowError:
    """What `map` gives for a row whose request failed: the message and the HTTP status (None when the answer came
    but did not parse as the schema). Falsy, so `[a for a in answers if a]` keeps the answers; shown as
    `RowError(400: the request exceeds the available context size…)` in a list or a DataFrame."""

    __slots__ = ("message", "status")

    def __init__(self, message: str, status: int | None = None) -> None:
        self.message = message
        self.status = status

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"RowError({self.status}: {self.message})" if self.status else f"RowError({self.message})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowError) and (self.message, self.status) == (other.message, other.status)

    def __hash__(self) -> int:
        return hash((self.message, self.status))


class MapRowFailed(ModelRunnerError):
    """`errors="raise"`: the first row that failed, named by its index (the Series' label, or its position)."""

    def __init__(self, row: Any, error: RowError) -> None:
        super().__init__(f"Row {row!r} failed: {error.message}")
        self.row = row
        self.error = error
        self.http_status = error.status or 500


# -- inputs ---------------------------------------------------------------------------------------------------


def _pandas() -> Any:
    """pandas if the caller uses it (it is imported already), else None: `map` never imports it itself."""
    return sys.modules.get("pandas")


def _rows(inputs: Any, prompt: str | None, system: str | None) -> tuple[list[list[dict[str, Any]]], Any]:
    """Each input as the chat messages it becomes, and the index to return answers under (a Series' or a
    DataFrame's; None for anything else)."""
    pandas = _pandas()
    index = None
    if pandas is not None and isinstance(inputs, pandas.DataFrame):
        if prompt is None:
            raise ModelRunnerError("A DataFrame needs prompt= naming its columns, e.g. prompt=\"Title: {title}\\n"
                                   "{body}\".")
        index = inputs.index
        items: Iterable[Any] = inputs.to_dict("records")
    elif pandas is not None and isinstance(inputs, pandas.Series):
        index = inputs.index
        items = inputs.tolist()
    elif isinstance(inputs, (str, bytes, Mapping)):
        raise ModelRunnerError("map takes a list (or a Series, a DataFrame, any iterable) of inputs, not one "
                               f"{type(inputs).__name__}: wrap it in a list.")
    else:
        items = inputs
    rows = [_messages(item, prompt, system, position) for position, item in enumerate(items)]
    return rows, index


def _messages(item: Any, prompt: str | None, system: str | None, position: int) -> list[dict[str, Any]]:
    if isinstance(item, Sequence) and not isinstance(item, str) and item and all(
            isinstance(m, Mapping) and "role" in m for m in item):
        if prompt is not None:
            raise ModelRunnerError(f"Input {position} is a list of messages; prompt= applies to text inputs only.")
        messages = [dict(m) for m in item]
    else:
        try:
            if prompt is None:
                text = item if isinstance(item, str) else str(item)
            elif isinstance(item, Mapping):  # a DataFrame's row, or a record: `{column}` names a field
                text = prompt.format_map(item)
            else:
                text = prompt.format(item)
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelRunnerError(f"prompt= cannot be filled in for input {position} ({exc.__class__.__name__}: "
                                   f"{exc}). Use {{}} for the input, or {{column}} for a DataFrame's column.") \
                from None
        messages = [{"role": "user", "content": text}]
    if system is not None:
        messages = [{"role": "system", "content": system}, *[m for m in messages if m.get("role") != "system"]]
    return messages


def _texts(inputs: Any) -> tuple[list[str], Any]:
    """`embed`'s inputs as strings, and a Series' index (unused: the answer is an array)."""
    pandas = _pandas()
    if pandas is not None and isinstance(inputs, pandas.Series):
        return [str(x) for x in inputs.tolist()], inputs.index
    if isinstance(inputs, (str, bytes, Mapping)):
        raise ModelRunnerError("embed takes a list (or a Series, any iterable) of texts, not one "
                               f"{type(inputs).__name__}: wrap it in a list.")
    return [x if isinstance(x, str) else str(x) for x in inputs], None


class _Schema:
    """`schema=`: a Pydantic model class (answers become instances) or a JSON Schema dict (answers become the
    decoded JSON), sent as OpenAI's `response_format` (llama-server makes a grammar of it)."""

    def __init__(self, schema: Any) -> None:
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            self.model_class: Any = schema
            self.schema = schema.model_json_schema()
            self.name = schema.__name__
        elif isinstance(schema, Mapping):
            self.model_class = None
            self.schema = dict(schema)
            self.name = str(schema.get("title") or "answer")
        else:
            raise ModelRunnerError(f"schema= takes a Pydantic model class or a JSON Schema dict, not "
                                   f"{type(schema).__name__}.")

    @property
    def response_format(self) -> dict[str, Any]:
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in self.name)[:64] or "answer"
        return {"type": "json_schema", "json_schema": {"name": name, "schema": self.schema}}

    def parse(self, answer: Mapping[str, Any]) -> Any:
        text = answer.get("content") or ""
        try:
            if self.model_class is not None:
                return self.model_class.model_validate_json(text)
            return json.loads(text)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError too
            cut = " (cut at max_tokens: allow more)" if answer.get("finish_reason") == "length" else ""
            return RowError(f"the answer does not match {self.name}{cut}: {str(exc).splitlines()[0]}; it was: "
                            f"{text[:200]!r}")


# -- requests -------------------------------------------------------------------------------------------------


@dataclass
class _Request:
    """One request to the engine, and the rows (positions) its answer belongs to: identical inputs are asked once."""

    body: dict[str, Any]
    keys: list[str]
    positions: list[list[int]]


@dataclass
class _Outcome:
    request: _Request
    values: list[Any] | None = None
    error: RowError | None = None
    tokens: int = 0


@dataclass
class _Finished:
    """The worker's last word: None, or what stopped the whole run."""

    error: BaseException | None = None


class _RowFailed(Exception):
    """One request's failure that is the row's own (not the whole run's)."""

    def __init__(self, error: RowError) -> None:
        super().__init__(error.message)
        self.error = error


#: How one request is sent and its answer read: (the run, its HTTP client, the request) → (values, tokens).
Ask = Callable[["_Run", Any, _Request], Coroutine[Any, Any, tuple[list[Any], int]]]


@dataclass
class _Run:
    """The requests of one `map` or `embed`, sent from a worker thread with its own event loop, at most
    `concurrency` at once; each outcome is put on `outcomes` (answers cached first), then a `_Finished`.
    `tokens` counts the tokens generated so far, as they stream (the progress view's rate)."""

    url: str
    token: str
    path: str
    requests: list[_Request]
    concurrency: int
    ask: Ask
    cache: tuple[Path | None, str, str, str] | None  # (store root, model, model id, endpoint), or no caching
    outcomes: queue.Queue[_Outcome | _Finished] = field(default_factory=queue.Queue)
    tokens: int = 0

    def start(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="modelrunner-map", daemon=True)
        self._thread.start()

    def cancel(self, timeout: float = 30.0) -> None:
        """Cancel every request in flight (their connections close, which stops the engine's generation) and wait
        for the worker to finish."""
        self._ready.wait(timeout)
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)

    def _run(self) -> None:
        finished = _Finished()
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            finished.error = exc
        finally:
            self._ready.set()
            self.outcomes.put(finished)

    async def _main(self) -> None:
        import httpx

        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._ready.set()
        headers = {PRIORITY_HEADER: BACKGROUND}
        if self.token and self.token != "none":
            headers["Authorization"] = f"token {self.token}"
        cache = AnswerCache(self.cache[0]) if self.cache is not None else None
        pending = iter(self.requests)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        try:
            async with httpx.AsyncClient(base_url=self.url, headers=headers, limits=limits, trust_env=False,
                                         timeout=httpx.Timeout(_REQUEST_TIMEOUT, connect=30.0)) as http, \
                    asyncio.TaskGroup() as group:
                for _ in range(self.concurrency):
                    group.create_task(self._worker(http, pending, cache))
        except* httpx.TransportError as errors:
            raise RunnerUnreachable(f"The model runner at {self.url} stopped answering "
                                    f"({errors.exceptions[0].__class__.__name__}); the answers so far are cached: "
                                    "run it again to resume.") from None
        except* ModelRunnerError as errors:
            raise errors.exceptions[0] from None
        finally:
            if cache is not None:
                cache.close()

    async def _worker(self, http: Any, pending: Iterator[_Request], cache: AnswerCache | None) -> None:
        for request in pending:  # one iterator shared by the workers: each takes the next request
            try:
                values, tokens = await self.ask(self, http, request)
            except _RowFailed as failed:
                self.outcomes.put(_Outcome(request, error=failed.error))
                continue
            if cache is not None and self.cache is not None:
                _, model, model_id, endpoint = self.cache
                cache.put_many(model, model_id, endpoint, zip(request.keys, values, strict=True))
            self.outcomes.put(_Outcome(request, values=values, tokens=tokens))


def _refused(status: int, content: bytes) -> Exception:
    """An error answer: the row's own (`_RowFailed`), or the whole run's (`_WHOLE_RUN_STATUSES`)."""
    message = _error_message(content)
    if status in _WHOLE_RUN_STATUSES:
        error: ModelRunnerError = ModelNotFound(message) if status == 404 else ModelRunnerError(message)
        error.http_status = status
        return error
    return _RowFailed(RowError(message, status))


def _error_message(content: bytes) -> str:
    """The runner's (or the engine's) one-line message out of an error body."""
    text = content.decode(errors="replace").strip()
    with contextlib.suppress(ValueError, AttributeError):
        doc = json.loads(text)
        error = doc.get("error")
        text = str(doc.get("message") or (error.get("message") if isinstance(error, dict) else error) or text)
    return text or "the request failed"


async def _ask_chat(run: _Run, http: Any, request: _Request) -> tuple[list[Any], int]:
    """One chat completion, streamed: leaving mid-answer (an interrupt) closes the connection, and the runner then
    stops the engine's generation at its next token (a non-streamed request would leave the engine at it)."""
    body = {**request.body, "stream": True, "stream_options": {"include_usage": True}}
    pieces: list[str] = []
    finish_reason, tokens = None, 0
    async with http.stream("POST", run.path, json=body) as response:
        if response.status_code >= 400:
            raise _refused(response.status_code, await response.aread())
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if isinstance(event.get("error"), dict):  # the engine failed after the answer began
                raise _RowFailed(RowError(str(event["error"].get("message") or event["error"]),
                                          int(event["error"].get("code") or 500)))
            for choice in event.get("choices") or ():
                if piece := (choice.get("delta") or {}).get("content"):
                    pieces.append(piece)
                    run.tokens += 1
                finish_reason = choice.get("finish_reason") or finish_reason
            if event.get("usage"):
                tokens = int(event["usage"].get("completion_tokens") or 0)
    return [{"content": "".join(pieces), "finish_reason": finish_reason, "completion_tokens": tokens}], tokens


async def _ask_embeddings(run: _Run, http: Any, request: _Request) -> tuple[list[Any], int]:
    """One `/v1/embeddings` request for several inputs; the vectors as float32 (base64), in the inputs' order."""
    import numpy as np

    response = await http.post(run.path, json=request.body)
    if response.status_code >= 400:
        raise _refused(response.status_code, response.content)
    doc = response.json()
    data = sorted(doc.get("data") or [], key=lambda item: item.get("index", 0))
    if len(data) != len(request.keys):
        raise ModelRunnerError(f"The engine answered {len(data)} embeddings for {len(request.keys)} inputs.")
    values = [{"f32": base64.b64encode(np.asarray(item["embedding"], dtype=np.float32).tobytes()).decode()}
              for item in data]
    tokens = int((doc.get("usage") or {}).get("prompt_tokens") or 0)
    run.tokens += tokens
    return values, tokens


# -- the shared run -------------------------------------------------------------------------------------------


class _NoProgress:
    def update(self, done: int, failed: int, total: int, **rates: Any) -> None: ...
    def done(self, message: str = "") -> None: ...
    def fail(self, message: str) -> None: ...


def _progress_view(show: bool, title: str, total: int) -> Any:
    """A widget in a notebook, a line on stderr elsewhere, nothing with `progress=False` (presentation.rich_output
    tells which, as for the magics)."""
    if not show:
        return _NoProgress()
    from .presentation import rich_output

    shell = None
    if "IPython" in sys.modules:
        from IPython import get_ipython

        shell = get_ipython()
    if rich_output(shell):
        from IPython.display import display

        from .widgets import MapProgress

        view = MapProgress(title, total)
        display(view)
        return view
    from .terminal import MapProgressLine

    return MapProgressLine(title, total)


def _store_root(client: Any) -> Path | None:
    """The store whose cache this client's answers go to: the one its runner was found through, else the default."""
    return getattr(getattr(client, "location", None), "store", None)


def _concurrency(status: Mapping[str, Any], pending: int) -> int:
    """Requests to keep in flight: the engine's slots (the runner lets background work use all but one; the one
    waiting in the runner takes a slot the moment another frees it), never more than there is to ask."""
    slots = status.get("slots") or ((status.get("background_slots") or 0) + 1)
    return max(1, min(int(slots), MAX_CONCURRENCY, pending))


def _execute(*, client: Any, model: str, path: str, endpoint: str, model_id: str,
             requests: list[_Request], ask: Ask,
             results: list[Any], cached: int, total: int, cache: bool, view: Any, errors: str,
             row_label: Callable[[int], Any], unit: str) -> None:
    """Send `requests` (the rows the cache did not answer), fill `results` as answers come, draw `view`."""
    started = time.monotonic()
    done, failed = cached, 0
    run: _Run | None = None

    def rates() -> dict[str, Any]:  # the tokens as they stream, for a rate that moves within long rows too
        return {"cached": cached, "tokens": run.tokens if run else 0, "seconds": time.monotonic() - started,
                "unit": unit}

    view.update(done, failed, total, **rates())
    if not requests:
        view.done(f"All {total} answered from the cache." if total else "No inputs.")
        return
    status = client.preload(model, endpoint=endpoint)  # an inference key may preload, as it may ask
    run = _Run(client.url, client.token, path, requests, _concurrency(status, len(requests)), ask,
               (_store_root(client), model, model_id, endpoint) if cache else None)
    run.start()
    redraw = 0.0
    try:
        while True:
            try:
                outcome = run.outcomes.get(timeout=1 / _REDRAWS_PER_SECOND)
            except queue.Empty:
                view.update(done, failed, total, **rates())
                continue
            if isinstance(outcome, _Finished):
                if outcome.error is not None:
                    raise outcome.error
                break
            rows = [p for group in outcome.request.positions for p in group]
            if outcome.error is not None:
                for position in rows:
                    results[position] = outcome.error
                failed += len(rows)
                if errors == "raise":
                    run.cancel()
                    view.fail(f"Row {row_label(rows[0])!r} failed: {outcome.error.message}")
                    raise MapRowFailed(row_label(rows[0]), outcome.error)
            else:
                assert outcome.values is not None
                for group, value in zip(outcome.request.positions, outcome.values, strict=True):
                    for position in group:
                        results[position] = value
                done += len(rows)
            now = time.monotonic()
            if now >= redraw:
                redraw = now + 1 / _REDRAWS_PER_SECOND
                view.update(done, failed, total, **rates())
    except KeyboardInterrupt:
        run.cancel()
        view.update(done, failed, total, **rates())
        view.fail(f"Interrupted: {done} of {total} rows done" + (" and cached; run it again to resume." if cache
                                                                   else "."))
        raise
    except ModelRunnerError as exc:
        run.cancel()
        if not isinstance(exc, MapRowFailed):
            view.fail(str(exc))
        raise
    view.update(done, failed, total, **rates())
    seconds = time.monotonic() - started
    view.done(f"{done} of {total} done" + (f", {failed} failed" if failed else "") +
              (f" ({cached} from the cache)" if cached else "") + f" in {seconds:.1f} s")


def _model_id(client: Any, model: str) -> str:
    """The stored model's digest: what answers are cached under (asking it loads no engine)."""
    model_id = client.model_id(model)
    if not model_id:
        raise ModelNotFound(f"The runner does not say which model {model} is (no id).")
    return model_id


# -- map and embed --------------------------------------------------------------------------------------------


def map(model: str, inputs: Any, *, prompt: str | None = None, schema: Any = None, system: str | None = None,
        errors: str = "value", cache: bool = True, progress: bool = True, **params: Any) -> Any:
    """Ask `model` about each input, many at once; the answers, aligned with the inputs.

    `inputs`: a list or any iterable of strings (or of message lists, `[{"role": "user", "content": …}]`), a pandas
    Series, or a DataFrame (its rows). `prompt`: a format string each input fills in (`{}` is the input; with a
    DataFrame, `{column}` names a column). `system`: a system message for every row. `schema`: a Pydantic model
    class or a JSON Schema dict; answers become instances (or dicts). `params`: OpenAI chat parameters
    (`max_tokens`, `temperature` — 0 unless given —, `seed`, `stop`, …).

    Returns a list; for a Series or a DataFrame, a Series with the input's index (so `df["label"] = map(…)` aligns
    whatever the index). Each item is the answer's text (or parsed object), or a `RowError` for a row that failed
    (`errors="raise"`: raise `MapRowFailed` instead). The module's docstring says how the cache decides.
    """
    if errors not in ("value", "raise"):
        raise ModelRunnerError(f"errors= is 'value' (a failed row becomes a RowError) or 'raise', not {errors!r}.")
    for name in ("model", "messages", "stream", "n"):
        if name in params:
            raise ModelRunnerError(f"map sets {name!r} itself; it cannot be passed as a parameter.")
    from .client import runner

    rows, index = _rows(inputs, prompt, system)
    structured = _Schema(schema) if schema is not None else None
    base: dict[str, Any] = {"temperature": 0, **params}
    if structured is not None:
        base["response_format"] = structured.response_format
    client = runner()
    model_id = _model_id(client, model)
    endpoint = "chat/completions"
    bodies: list[dict[str, Any]] = []
    keys: list[str] = []
    for messages in rows:
        body = {"model": model, "messages": messages, **base}
        if not is_deterministic(body):
            body["seed"] = row_seed(body)
        bodies.append(body)
        keys.append(answer_key(model_id, endpoint, body))
    results: list[Any] = [None] * len(rows)
    found = _lookup(client, keys, cache)
    requests: dict[str, _Request] = {}
    cached = 0
    for position, key in enumerate(keys):
        if key in found:
            results[position] = found[key]
            cached += 1
        elif key in requests:
            requests[key].positions[0].append(position)
        else:
            requests[key] = _Request(bodies[position], [key], [[position]])
    labels = list(index) if index is not None else None
    view = _progress_view(progress, f"Mapping {model} over {len(rows)} rows", len(rows))
    _execute(client=client, model=model, path="engines/v1/chat/completions", endpoint=endpoint,
             model_id=model_id, requests=list(requests.values()), ask=_ask_chat, results=results,
             cached=cached, total=len(rows), cache=cache, view=view, errors=errors,
             row_label=lambda p: labels[p] if labels is not None else p, unit="tokens/s")
    answers = [r if isinstance(r, RowError) else (structured.parse(r) if structured else r.get("content", ""))
               for r in results]
    if index is not None:
        return _pandas().Series(answers, index=index, dtype=object)
    return answers


def embed(model: str, inputs: Any, *, cache: bool = True, progress: bool = True) -> Any:
    """The embedding of each input text, as a NumPy array of shape (n, dim), float32, rows aligned with the inputs.

    Several inputs go in one `/v1/embeddings` request, and as many requests at once as the engine has slots; each
    vector is cached as `map`'s answers are (embeddings are deterministic). A failed request raises (the vectors
    already received stay cached).
    """
    import numpy as np

    from .client import runner

    texts, _ = _texts(inputs)
    client = runner()
    model_id = _model_id(client, model)
    endpoint = "embeddings"
    keys = [answer_key(model_id, endpoint, {"input": text}) for text in texts]
    results: list[Any] = [None] * len(texts)
    found = _lookup(client, keys, cache)
    missing: dict[str, list[int]] = {}
    cached = 0
    for position, key in enumerate(keys):
        if key in found:
            results[position] = found[key]
            cached += 1
        else:
            missing.setdefault(key, []).append(position)
    batches = list(missing.items())
    requests = [_Request({"model": model, "input": [texts[group[0]] for _, group in batches[i : i + EMBED_BATCH]]},
                         [key for key, _ in batches[i : i + EMBED_BATCH]],
                         [group for _, group in batches[i : i + EMBED_BATCH]])
                for i in range(0, len(batches), EMBED_BATCH)]
    view = _progress_view(progress, f"Embedding {len(texts)} texts with {model}", len(texts))
    _execute(client=client, model=model, path="engines/v1/embeddings", endpoint=endpoint,
             model_id=model_id, requests=requests, ask=_ask_embeddings, results=results, cached=cached,
             total=len(texts), cache=cache, view=view, errors="raise", row_label=lambda p: p, unit="tokens/s in")
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.frombuffer(base64.b64decode(r["f32"]), dtype=np.float32) for r in results])


def _lookup(client: Any, keys: Sequence[str], use: bool) -> dict[str, Any]:
    if not use or not keys:
        return {}
    with AnswerCache(_store_root(client)) as answers:
        return answers.get_many(keys)
