"""Models: `models/create` (pull, streamed), list, inspect, delete, tag and push — DMR's routes (FORMAT §4) — and
ours: package, load, purge, gc, fsck."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..distribution.huggingface import HF_TOKEN_HEADER
from ..package_roots import confine_files
from . import schemas
from .base import ModelRunnerHandler

NDJSON = "application/x-ndjson"


class ProgressStreamMixin:
    """Relays a pull/push as newline-delimited JSON, one event per line, flushed as it happens.

    The status line waits for the first event, so a request that fails at once (a bad reference, a
    registry that is down) is answered with a real error status and its one `error` event; once the
    transfer has started the status is 200 and a failure is the stream's last event.

    A client that goes away cancels the transfer at once (`transfer_cancel`, set by tornado's
    `on_connection_close`), not at the next progress line, which a slow download writes only every 4 MiB.
    """

    _transfer_cancel: threading.Event | None = None

    @property
    def transfer_cancel(self) -> threading.Event:
        """Give it to the service's `pull`/`push`: set when the client closes the connection."""
        if self._transfer_cancel is None:
            self._transfer_cancel = threading.Event()
        return self._transfer_cancel

    def on_connection_close(self: Any) -> None:
        self.transfer_cancel.set()
        super().on_connection_close()  # type: ignore[misc]

    async def relay_progress(self: Any, events: AsyncIterator[dict[str, Any]]) -> None:
        first = True
        try:
            async for event in events:
                if self.transfer_cancel.is_set():
                    break  # the client is gone; the transfer ends with what it had
                if first and event.get("type") == "error":
                    self.set_status(int(event.get("status") or 500))
                first = False
                self.write(json.dumps(event) + "\n")
                await self.flush()
        except StreamClosedError:
            pass  # the client went away; closing `events` (below) cancels the transfer, keeping partial files
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if not self._finished:
            self.finish(set_content_type=NDJSON)

    def set_default_headers(self: Any) -> None:
        super().set_default_headers()  # type: ignore[misc]
        self.set_header("X-Accel-Buffering", "no")


class ModelsHandler(ModelRunnerHandler):
    """`GET models`: everything in the store."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send_json(await self.service.models())


class ModelCreateHandler(ProgressStreamMixin, ModelRunnerHandler):
    """`POST models/create {"from": ref}`: pull, streaming progress."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(schemas.PULL)
        reference = body.get("from") or body.get("model") or body.get("name")
        if not isinstance(reference, str) or not reference.strip():
            raise web.HTTPError(400, 'Say which model to pull: {"from": "ai/smollm2"}.')
        self.set_header("Content-Type", NDJSON)
        # The client's own Hugging Face token (its HF_TOKEN) for this pull only: passed on, never logged or stored.
        hf_token = self.request.headers.get(HF_TOKEN_HEADER) or None
        await self.relay_progress(self.service.pull(reference.strip(), cancel=self.transfer_cancel,
                                                    hf_token=hf_token))


class ModelPackageHandler(ModelRunnerHandler):
    """`POST models/package {"tag", "gguf": [paths] | "safetensors_dir": path, "mmproj"?, "chat_template"?, ...}`:
    a model from local files.

    The paths are on the server's machine, which is the kernel's for the extension; whoever holds the
    server's token can read those files through Jupyter's contents API already. `serve` has no contents API:
    there the service takes files only from `c.ModelRunner.package_roots` (package_roots.py), and a `serve` that
    relays to the store's owner checks them itself first, since the owner may package from anywhere.
    """

    async def _admit(self) -> None:
        await super()._admit()
        relay = self.__dict__.get("post")  # set by the base when the store's owner answers instead of this server
        roots = self.service.package_roots
        if relay is None or roots is None:
            return

        async def confined_relay(*args: Any, **kwargs: Any) -> None:
            body = self.json_body(schemas.PACKAGE)
            gguf = body.get("gguf")
            confined = confine_files(roots, gguf=[gguf] if isinstance(gguf, str) else gguf,
                                     safetensors_dir=body.get("safetensors_dir"), license_files=body.get("license"),
                                     chat_template=body.get("chat_template"), mmproj=body.get("mmproj"))
            # The owner reads the paths checked here, links resolved: none can lead elsewhere on its side.
            body.update({key: value for key, value in (
                ("gguf", confined["gguf"]), ("safetensors_dir", confined["safetensors_dir"]),
                ("license", confined["license_files"]), ("chat_template", confined["chat_template"]),
                ("mmproj", confined["mmproj"])) if key in body})
            self.request.body = bytearray(json.dumps(body).encode())  # type: ignore[assignment]
            await relay(*args, **kwargs)

        self.post = confined_relay  # type: ignore[method-assign]

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(schemas.PACKAGE)
        tag = body.get("tag")
        gguf = body.get("gguf")
        if isinstance(gguf, str):
            gguf = [gguf]
        if not isinstance(tag, str) or not tag or not (gguf or body.get("safetensors_dir")):
            raise web.HTTPError(400, 'Say what to package and its name: {"tag": "ai/mine", "gguf": ["/path/m.gguf"]} '
                                'or {"tag": ..., "safetensors_dir": "/path/folder"}.')
        model = await self.service.package(
            tag, gguf=gguf, safetensors_dir=body.get("safetensors_dir"), license_files=body.get("license"),
            chat_template=body.get("chat_template"), context_size=body.get("context_size"), mmproj=body.get("mmproj"),
        )
        self.send_json(model, status=201)


class ModelHandler(ModelRunnerHandler):
    """`GET models/{name}` (inspect) and `DELETE models/{name}[?force=true]`."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.send_json(await self.service.model(name))

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        force = self.get_argument("force", "false").lower() in ("1", "true", "yes")
        self.send_json(await self.service.remove(name, force=force))


class ModelTagHandler(ModelRunnerHandler):
    """`POST models/{name}/tag?repo=R&tag=T` (DMR) or with `{"target": "R:T"}`: add a name."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        target = self.json_body(schemas.TARGET).get("target")
        if not target:
            repo, tag = self.get_argument("repo", ""), self.get_argument("tag", "latest")
            target = f"{repo}:{tag}" if repo else ""
        if not target:
            raise web.HTTPError(400, "Give the new name: ?repo=ai/mymodel&tag=v1 or {\"target\": \"ai/mymodel:v1\"}.")
        self.send_json(await self.service.tag(name, target), status=201)


class ModelPushHandler(ProgressStreamMixin, ModelRunnerHandler):
    """`POST models/{name}/push [{"target": ref}]`: upload to the registry, streaming progress."""

    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        target = self.json_body(schemas.TARGET).get("target")
        self.set_header("Content-Type", NDJSON)
        await self.relay_progress(self.service.push(name, target, cancel=self.transfer_cancel))


class ModelLoadHandler(ModelRunnerHandler):
    """`POST models/load {"model", "engine"?, "mode"?}` (mode: completion, embedding or rerank): start the model's
    engine now (Docker's preload), so the first question does not wait; answers with the runner as `engines/ps` shows
    it, and how long the load took."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(schemas.LOAD)
        self.send_json(await self.service.load(body["model"], engine=body.get("engine") or None,
                                               mode=body.get("mode", "completion")))


class ModelPurgeHandler(ModelRunnerHandler):
    """`DELETE models/purge`: every model goes, engines first (Docker's `model purge`)."""

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        self.send_json(await self.service.purge())


class ModelGcHandler(ModelRunnerHandler):
    """`POST models/gc {"min_age": seconds}`: delete blobs no model uses and abandoned partial downloads."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        min_age = self.json_body(schemas.GC).get("min_age", 3600)
        if isinstance(min_age, bool) or not isinstance(min_age, int | float) or min_age < 0:
            raise web.HTTPError(400, '"min_age" is a number of seconds (files younger than that are kept).')
        self.send_json(await self.service.gc(float(min_age)))


class ModelFsckHandler(ProgressStreamMixin, ModelRunnerHandler):
    """`POST models/fsck {"repair": false, "stream": false}`: check every indexed model's manifest, blobs (hashed)
    and bundle, and partial downloads nobody owns; with `repair`, drop what cannot be used and relink bundles.

    Answers with the report as JSON, or with `stream`, pull-shaped NDJSON progress while blobs are hashed ending
    with a `success` event that carries it (`report`): a large store takes minutes, and the CLI shows a bar.
    """

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(schemas.FSCK)
        repair, stream = body.get("repair", False), body.get("stream", False)
        if not isinstance(repair, bool) or not isinstance(stream, bool):
            raise web.HTTPError(400, '"repair" and "stream" are true or false: {"repair": true}.')
        if stream:
            self.set_header("Content-Type", NDJSON)
            await self.relay_progress(self.service.fsck_events(repair=repair, cancel=self.transfer_cancel))
        else:
            self.send_json(await self.service.fsck(repair=repair, cancel=self.transfer_cancel))


_NAME = r"(?P<name>[^?#]+?)"

default_handlers = [
    (r"models", ModelsHandler),
    (r"models/create", ModelCreateHandler),
    (r"models/package", ModelPackageHandler),
    (r"models/load", ModelLoadHandler),  # before models/{name}: these names are not models
    (r"models/purge", ModelPurgeHandler),
    (r"models/gc", ModelGcHandler),
    (r"models/fsck", ModelFsckHandler),
    (rf"models/{_NAME}/tag", ModelTagHandler),
    (rf"models/{_NAME}/push", ModelPushHandler),
    (rf"models/{_NAME}", ModelHandler),
]
