"""A server that does not own its store answers every model runner request by asking the owner.

One owner per store (lease.py): a second Jupyter server, a `serve` or an embedded runner started while another
process runs the store's engines keeps its routes — JupyterLab's sidebar and the kernels it started talk to it — but
relays each request, streams included, to the owner. Nothing is loaded twice.

The relay must not become a way into the rest of the owner (a Jupyter server's files and kernels). Three walls:
the path carries no dot segment (the handlers refuse one before anything is relayed, see `has_dot_segment`); the
target is checked to stay under the owner's model runner prefix on the owner's host; and the request carries a relay
key (keys.py), which the owner accepts on model runner routes only and in the caller's scope — never the owner's
token, which this process does not even read.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Protocol
from urllib.parse import unquote

import httpx
from tornado import web
from tornado.iostream import StreamClosedError

from ..keys import SCOPE_INFERENCE, SCOPE_MANAGE, read_relay_key
from ..lease import Owner


class RelayingHandler(Protocol):
    """What the proxy needs of the route answering (a `RelayingHandler`; named by shape, so this module and
    base.py, which calls it, do not import each other)."""

    request: Any
    settings: dict[str, Any]

    @property
    def service(self) -> Any: ...

    @property
    def key_scope(self) -> str | None: ...

    @property
    def caller(self) -> Any: ...

    def set_status(self, status_code: int, reason: str | None = None) -> None: ...

    def set_header(self, name: str, value: Any) -> None: ...

    def write(self, chunk: Any) -> None: ...

    def flush(self) -> Any: ...

    def finish(self, chunk: Any = None) -> Any: ...

#: Where the mount prefix of the routes (`{base_url}modelrunner/`) is kept in the tornado settings.
PREFIX_SETTING = "modelrunner_prefix"
#: `x-hf-token`: a client's own Hugging Face token goes with its pull to the runner that downloads (api/models.py).
#: A relayed request keeps its priority (work on data stays behind chats in the owner's engines too).
_REQUEST_HEADERS = ("content-type", "accept", "x-hf-token", "x-model-runner-priority")
#: Which inference key the relayed request's client used (`key:NAME`), so that the owner keeps each key's batches
#: apart (api/batches.py); believed only from a request that carries a relay key, which only this user's processes
#: can read.
CALLER_HEADER = "X-Model-Runner-Caller"
_RESPONSE_HEADERS = ("content-type", "cache-control", "x-accel-buffering", "retry-after")


#: The answer (400) to a path with a dot segment.
DOT_SEGMENT_MESSAGE = ("The path has a `.` or `..` dot segment (perhaps percent-encoded): no model runner route has "
                       "one, nor does any model name. Send the route's path as documented, e.g. "
                       "`v1/models/ai%2Fsmollm2:latest`.")
#: Rounds of percent-decoding looked through for a dot segment (`%252e` is `%2e` once decoded, `.` twice).
_DECODE_ROUNDS = 4


def has_dot_segment(path: str) -> bool:
    """Whether `path` has a `.` or `..` segment, as sent or once percent-decoded (any case, any number of times up
    to _DECODE_ROUNDS), with `/` or `\\` as separators. No model runner route has one, and a client or proxy that
    normalises them away would land outside the route the request was checked for; a path still encoded after
    those rounds counts as one."""
    for _ in range(_DECODE_ROUNDS):
        if any(segment in (".", "..") for segment in re.split(r"[/\\]", path)):
            return True
        decoded = unquote(path)
        if decoded == path:
            return False
        path = decoded
    return True


def relay_target(owner_url: str, relative: str, query: str) -> httpx.URL:
    """The owner's URL for `relative` (a path under our prefix), refused (400) unless it stays on the owner's host
    under its model runner prefix once resolved (httpx resolves dot segments, whatever has_dot_segment missed)."""
    base = httpx.URL(owner_url)
    target = httpx.URL(owner_url + relative + (f"?{query}" if query else ""))
    if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port) or \
            not target.path.startswith(base.path):
        raise web.HTTPError(400, "This path leads outside the model runner's routes; send the route's own path.")
    return target


def _client(handler: RelayingHandler) -> httpx.AsyncClient:
    """One connection pool per service (kept on it), opened on first use."""
    service = handler.service
    client = getattr(service, "_forward_client", None)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None), trust_env=False)
        service._forward_client = client  # type: ignore[attr-defined]
    return client


async def proxy_to_owner(handler: RelayingHandler, owner: Owner) -> None:
    """Answer `handler`'s request with the owner's answer, relayed chunk by chunk as it comes, authenticated with
    the owner's relay key of the caller's scope (an inference key's holder is relayed with inference scope)."""
    if not owner.url:
        raise web.HTTPError(503, f"The store is owned by {owner.kind} pid {owner.pid}, which cannot be reached over "
                                 "HTTP (it listens on a Unix socket). Use that server, or stop it.")
    prefix = handler.settings.get(PREFIX_SETTING, "/")
    if has_dot_segment(handler.request.path) or not handler.request.path.startswith(prefix):
        raise web.HTTPError(400, DOT_SEGMENT_MESSAGE)  # the handler refused it already: a second wall
    target = relay_target(owner.url, handler.request.path[len(prefix):], handler.request.query)
    headers = {k: v for k, v in handler.request.headers.items() if k.lower() in _REQUEST_HEADERS}
    key = read_relay_key(handler.service.lease.folder, handler.key_scope or SCOPE_MANAGE)
    if key is None:
        raise web.HTTPError(503, f"The model runner that owns this store, {owner.describe()}, left no relay key "
                                 "(it may run an older jupyter-modelrunner): use that server directly, or restart it.")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if handler.key_scope == SCOPE_INFERENCE:
        headers[CALLER_HEADER] = handler.caller.name
    request = _client(handler).build_request(handler.request.method, target, headers=headers,
                                             content=bytes(handler.request.body) or None)
    try:
        response = await _client(handler).send(request, stream=True)
    except httpx.TransportError as exc:
        raise web.HTTPError(503, f"The model runner that owns this store, {owner.describe()}, did not answer "
                                 f"({exc.__class__.__name__}); it may be stopping. Try again in a moment.") from exc
    try:
        handler.set_status(response.status_code)
        for name, value in response.headers.items():
            if name.lower() in _RESPONSE_HEADERS or name.lower().startswith("x-model-runner-"):
                handler.set_header(name, value)
        async for chunk in response.aiter_raw():
            handler.write(chunk)
            await handler.flush()
    except StreamClosedError:
        return  # our client left: leaving closes the owner's response, which stops its work
    except httpx.TransportError:
        # The owner went away mid-answer; a stream that has started can only end.
        with contextlib.suppress(StreamClosedError):
            handler.finish()
        return
    finally:
        await response.aclose()
    with contextlib.suppress(StreamClosedError):
        handler.finish()
