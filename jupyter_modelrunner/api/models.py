"""Models: `models/create` (pull, streamed), list, inspect, delete, tag and push — DMR's routes (FORMAT §4)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from .base import ModelRunnerHandler

NDJSON = "application/x-ndjson"


class ProgressStreamMixin:
    """Relays a pull/push as newline-delimited JSON, one event per line, flushed as it happens.

    The status line waits for the first event, so a request that fails at once (a bad reference, a
    registry that is down) is answered with a real error status and its one `error` event; once the
    transfer has started the status is 200 and a failure is the stream's last event.
    """

    async def relay_progress(self: Any, events: AsyncIterator[dict[str, Any]]) -> None:
        first = True
        try:
            async for event in events:
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
        body = self.json_body()
        reference = body.get("from") or body.get("model") or body.get("name")
        if not isinstance(reference, str) or not reference.strip():
            raise web.HTTPError(400, 'Say which model to pull: {"from": "ai/smollm2"}.')
        self.set_header("Content-Type", NDJSON)
        await self.relay_progress(self.service.pull(reference.strip()))


class ModelPackageHandler(ModelRunnerHandler):
    """`POST models/package {"tag", "gguf": [paths] | "safetensors_dir": path, ...}`: a model from local files.

    The paths are on the server's machine, which is the kernel's for the extension; whoever holds the
    server's token can read those files through Jupyter's contents API already.
    """

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        tag = body.get("tag")
        gguf = body.get("gguf")
        if isinstance(gguf, str):
            gguf = [gguf]
        if not isinstance(tag, str) or not tag or not (gguf or body.get("safetensors_dir")):
            raise web.HTTPError(400, 'Say what to package and its name: {"tag": "ai/mine", "gguf": ["/path/m.gguf"]} '
                                'or {"tag": ..., "safetensors_dir": "/path/folder"}.')
        model = await self.service.package(
            tag, gguf=gguf, safetensors_dir=body.get("safetensors_dir"), license_files=body.get("license"),
            chat_template=body.get("chat_template"), context_size=body.get("context_size"),
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
        target = self.json_body().get("target")
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
        target = self.json_body().get("target")
        self.set_header("Content-Type", NDJSON)
        await self.relay_progress(self.service.push(name, target))


_NAME = r"(?P<name>[^?#]+?)"

default_handlers = [
    (r"models", ModelsHandler),
    (r"models/create", ModelCreateHandler),
    (r"models/package", ModelPackageHandler),
    (rf"models/{_NAME}/tag", ModelTagHandler),
    (rf"models/{_NAME}/push", ModelPushHandler),
    (rf"models/{_NAME}", ModelHandler),
]
