"""Models: `models/create` (pull, streamed), list, inspect, delete, tag, push, export and load (import) — DMR's
routes (FORMAT §4) — and ours: package, purge, gc, fsck."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..distribution.huggingface import HF_TOKEN_HEADER
from ..errors import InvalidReference
from ..package_roots import confine_files
from ..reference import parse_reference
from ..sizes import format_bytes
from ..store.exchange import export_archive, import_archive, too_large
from . import schemas
from .base import DRAIN_BYTES, ModelRunnerHandler
from .uploads import PipedBodyMixin

NDJSON = "application/x-ndjson"
TAR = "application/x-tar"
#: Bodies of `models/load` that are a model archive to import (anything else is the JSON preload).
ARCHIVE_TYPES = (TAR, "application/tar")
#: Key of the largest model archive `models/load` imports (bytes) in the settings (`c.ModelRunner.max_import_bytes`).
MAX_IMPORT_SETTING = "modelrunner_max_import_bytes"
DEFAULT_MAX_IMPORT_BYTES = 256 * 1024**3


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
        if not isinstance(tag, str) or not tag or not (gguf or body.get("safetensors_dir") or body.get("from")):
            raise web.HTTPError(400, 'Say what to package and its name: {"tag": "ai/mine", "gguf": ["/path/m.gguf"]}, '
                                '{"tag": ..., "safetensors_dir": "/path/folder"} or {"tag": ..., "from": "ai/model"}.')
        model = await self.service.package(
            tag, gguf=gguf, safetensors_dir=body.get("safetensors_dir"), license_files=body.get("license"),
            chat_template=body.get("chat_template"), context_size=body.get("context_size"), mmproj=body.get("mmproj"),
            from_model=body.get("from"),
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


class ModelExportHandler(ModelRunnerHandler):
    """`GET models/{name}/export`: the model as a tar archive (DMR's, plus an OCI layout naming it: store/exchange.py),
    streamed from its blobs. Read from the store's files, which any server sharing the store may do: not relayed to
    the owner, whose relay would hold the archive in memory."""

    relayed = False

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        model, chunks = await asyncio.to_thread(export_archive, self.service.store, name)
        filename = re.sub(r"[^A-Za-z0-9._-]+", "_", model.to_json()["tags"][0] if model.tags else model.short_id)
        self.set_header("Content-Type", TAR)
        self.set_header("Content-Disposition", f'attachment; filename="{filename}.tar"')
        end = object()
        try:
            while (chunk := await asyncio.to_thread(next, chunks, end)) is not end:
                self.write(chunk)  # type: ignore[arg-type]
                await self.flush()
        except StreamClosedError:
            return  # the client went away; the blobs were only read
        finally:
            chunks.close()
        self.finish()


class ModelLoadHandler(PipedBodyMixin, ModelRunnerHandler):
    """`POST models/load`, two requests told apart by their `Content-Type`:

    - `application/x-tar`: DMR's import (`docker model load`, and how its `package` hands a model over): the body is
      an archive as `export` writes it (or DMR does), streamed into the store as it arrives, every blob verified,
      named `?tag=NAME` or by the names the archive holds. Bounded by `c.ModelRunner.max_import_bytes`, not
      `max_body_bytes`; management only (an inference key is refused before a byte is read).
    - JSON `{"model", "engine"?, "mode"?}` (mode: completion, embedding or rerank): our preload, kept for the clients
      that use it. DMR preloads with `X-Preload-Only: true` on `chat/completions`, which this runner answers too.
      Answers with the runner as `engines/ps` shows it, and how long the load took.
    """

    piped_what = "archive"
    _received = 0

    @property
    def archive(self) -> bool:
        kind = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        return kind in ARCHIVE_TYPES

    @property
    def relayed(self) -> bool:  # type: ignore[override]
        """A preload runs on the store's owner; an import writes the shared store from here, streamed."""
        return not self.archive

    @property
    def import_cap(self) -> int:
        return int(self.settings.get(MAX_IMPORT_SETTING) or DEFAULT_MAX_IMPORT_BYTES)

    def _limit_body(self) -> None:
        if not self.archive:
            super()._limit_body()
            return
        length = self.request.headers.get("Content-Length", "")
        announced = int(length) if length.isdigit() else None
        refusal = None
        if announced is not None and announced > self.import_cap:
            refusal = too_large(self.import_cap)
        elif announced is not None and announced > self.service.store.free_bytes():
            refusal = web.HTTPError(507, f"The archive is {format_bytes(announced)}, more than the "
                                         f"{format_bytes(self.service.store.free_bytes())} free under the model store.")
        if refusal is None:
            # A chunked body is counted as it comes (data_received); tornado cuts one that runs far past the cap.
            self.request.connection.set_max_body_size(self.import_cap + DRAIN_BYTES)  # type: ignore[union-attr]
            return
        if announced is None or announced > DRAIN_BYTES:  # answered at once, the connection closed unread
            self.send_error(413 if not isinstance(refusal, web.HTTPError) else 507,
                            exc_info=(type(refusal), refusal, None))
            raise web.Finish()
        self.request.connection.set_max_body_size(announced)  # type: ignore[union-attr]
        raise refusal if isinstance(refusal, web.HTTPError) else web.HTTPError(413, str(refusal))

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if not self.archive or self._dropping_body or self._finished or self.current_user is None:
            return
        tag = self.get_argument("tag", "") or None
        try:
            if tag:
                parse_reference(tag, registry=self.service.store.registry)
        except InvalidReference as exc:  # refused before the body is read, like the base's refusals
            self._dropping_body = True
            refusal = exc

            async def refuse(*_args: Any, **_kwargs: Any) -> None:
                raise refusal

            self.post = refuse  # type: ignore[method-assign]
            return
        store, cap = self.service.store, self.import_cap
        self.start_reader(lambda pipe: import_archive(store, pipe, tag=tag, limit=cap))

    def admit_chunk(self, chunk: bytes) -> bool:
        self._received += len(chunk)
        if self._received > self.import_cap:
            self._dropping_body = True  # the rest is read and dropped; the import deletes what it wrote
            assert self._pipe is not None
            self._pipe.abort(too_large(self.import_cap))
            return False
        return True

    @web.authenticated
    @authorized
    async def post(self) -> None:
        if self._reader is None:
            body = self.json_body(schemas.LOAD)
            self.send_json(await self.service.load(body["model"], engine=body.get("engine") or None,
                                                   mode=body.get("mode", "completion")))
            return
        model = await self.finish_reading()
        self.send_json(self.service.added(model), status=201)


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
    (rf"models/{_NAME}/export", ModelExportHandler),
    (rf"models/{_NAME}", ModelHandler),
]
