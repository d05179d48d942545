"""A server that does not own its store answers every model runner request by asking the owner.

One owner per store (lease.py): a second Jupyter server, a `serve` or an embedded runner started while another
process runs the store's engines keeps its routes — JupyterLab's sidebar and the kernels it started talk to it — but
relays each request, streams included, to the owner with the owner's token. Nothing is loaded twice.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import httpx
from tornado import web
from tornado.iostream import StreamClosedError

from ..lease import Owner

if TYPE_CHECKING:
    from .base import ModelRunnerHandler

#: Where the mount prefix of the routes (`{base_url}modelrunner/`) is kept in the tornado settings.
PREFIX_SETTING = "modelrunner_prefix"
_REQUEST_HEADERS = ("content-type", "accept")
_RESPONSE_HEADERS = ("content-type", "cache-control", "x-accel-buffering")


def _client(handler: ModelRunnerHandler) -> httpx.AsyncClient:
    """One connection pool per service (kept on it), opened on first use."""
    service = handler.service
    client = getattr(service, "_forward_client", None)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None), trust_env=False)
        service._forward_client = client  # type: ignore[attr-defined]
    return client


async def forward(handler: ModelRunnerHandler, owner: Owner) -> None:
    """Answer `handler`'s request with the owner's answer, relayed chunk by chunk as it comes."""
    if not owner.url:
        raise web.HTTPError(503, f"The store is owned by {owner.kind} pid {owner.pid}, which cannot be reached over "
                                 "HTTP (it listens on a Unix socket). Use that server, or stop it.")
    prefix = handler.settings.get(PREFIX_SETTING, "/")
    relative = handler.request.path[len(prefix):] if handler.request.path.startswith(prefix) else ""
    target = owner.url + relative + (f"?{handler.request.query}" if handler.request.query else "")
    headers = {k: v for k, v in handler.request.headers.items() if k.lower() in _REQUEST_HEADERS}
    if owner.token:
        headers["Authorization"] = f"token {owner.token}"
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
