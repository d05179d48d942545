"""Engine control: status, ps, df, unload, configure and logs — DMR's `engines/...` routes — and the handover of
an embedded runner's store to a server that starts on it."""

from __future__ import annotations

import contextlib
import logging

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from . import schemas
from .base import ModelRunnerHandler

log = logging.getLogger(__name__)
#: Where the extension keeps what this runner is (`jupyter server`, `serve`, `embedded`) in the tornado settings.
KIND_SETTING = "modelrunner_kind"


class EngineStatusHandler(ModelRunnerHandler):
    """`GET engines/status`: which engines can run here, on which device, and why or why not."""

    answers_while_handing_over = True  # a read: clients and servers probe it to find who runs the store

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send_json(await self.service.status())


class EnginePsHandler(ModelRunnerHandler):
    """`GET engines/ps`: the running engines, DMR's fields plus device, state and memory."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send_json(self.service.ps())


class EngineDfHandler(ModelRunnerHandler):
    """`GET engines/df`: disk used by the store."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send_json(await self.service.df())


class EngineUnloadHandler(ModelRunnerHandler):
    """`POST engines/unload {"all": bool, "backend": name, "models": [...]}`: stop engines now."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(schemas.UNLOAD)
        models = body.get("models") or ([body["model"]] if body.get("model") else [])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise web.HTTPError(400, '"models" must be a list of model names.')
        everything = bool(body.get("all"))
        if not everything and not models:
            raise web.HTTPError(400, 'Say what to unload: {"models": ["ai/smollm2"]} or {"all": true}.')
        unloaded = await self.service.unload(models, all=everything, engine=body.get("backend"), caller=self.caller)
        self.send_json({"unloaded_runners": len(unloaded), "models": unloaded})


class EngineConfigureHandler(ModelRunnerHandler):
    """`GET engines/_configure?model=NAME` shows a model's settings; `POST engines/_configure {"model",
    "context-size", "runtime-flags", "keep_alive", "think", "reasoning-budget"}` changes them (keep_alive in seconds,
    -1 never, or a duration; think true/false; reasoning-budget in tokens, -1 no limit)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        model = self.get_argument("model", "")
        if not model:
            raise web.HTTPError(400, "Say whose settings: ?model=ai/smollm2")
        self.send_json(await self.service.settings(model))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(schemas.CONFIGURE)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise web.HTTPError(400, 'Name the model: {"model": "ai/smollm2", "context-size": 4096}.')
        context = body.get("context-size", body.get("context_size"))
        flags = body.get("runtime-flags", body.get("runtime_flags"))
        if context is not None and (not isinstance(context, int) or isinstance(context, bool)):
            raise web.HTTPError(400, '"context-size" must be a whole number of tokens.')
        if flags is not None and (not isinstance(flags, list) or not all(isinstance(f, str) for f in flags)):
            raise web.HTTPError(400, '"runtime-flags" must be a list of strings, e.g. ["--n_threads", "4"].')
        keep_alive = body.get("keep_alive", body.get("keep-alive"))
        think = body.get("think")
        budget = body.get("reasoning-budget", body.get("reasoning_budget"))
        if think is not None and not isinstance(think, bool):
            raise web.HTTPError(400, '"think" must be true or false.')
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool)):
            raise web.HTTPError(400, '"reasoning-budget" must be a whole number of tokens (-1: no limit).')
        self.send_json(await self.service.configure(model, context_size=context, runtime_flags=flags,
                                                    keep_alive=keep_alive, engine=body.get("backend"), think=think,
                                                    reasoning_budget=budget))


class EngineLogsHandler(ModelRunnerHandler):
    """`GET engines/logs?model=NAME[&lines=N][&follow=true]`: the engine's recent output for a model, as text;
    with `follow`, then every new line as the engine prints it, until the client leaves (`logs -f`)."""

    _gone = False

    @web.authenticated
    @authorized
    async def get(self) -> None:
        model = self.get_argument("model", "")
        if not model:
            raise web.HTTPError(400, "Say whose logs: ?model=ai/smollm2")
        try:
            lines = max(1, min(10000, int(self.get_argument("lines", "200"))))
        except ValueError as exc:
            raise web.HTTPError(400, "?lines must be a number.") from exc
        text = await self.service.logs(model, lines)
        if self.get_argument("follow", "false").lower() not in ("1", "true", "yes"):
            self.finish(text, set_content_type="text/plain; charset=utf-8")
            return
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")
        if text:
            self.write(text + "\n")
        try:
            await self.flush()
            async with contextlib.aclosing(self.service.follow_logs(model)) as lines:
                async for line in lines:
                    if self._gone:
                        break
                    if line is not None:
                        self.write(line + "\n")
                        await self.flush()
        except StreamClosedError:
            return
        with contextlib.suppress(StreamClosedError):
            self.finish()

    def on_connection_close(self) -> None:
        self._gone = True


class EngineHandoverHandler(ModelRunnerHandler):
    """`POST engines/_handover`: a server that started on this runner's store asks for it.

    Only an embedded runner (the one a CLI command or a kernel started for itself) gives its store away: it finishes
    the work in progress (new work meanwhile is a 503, `HandingOver`, which clients retry at the new owner), stops
    its engines, releases the lease and exits, and the asking server, which polls the lease, becomes the owner, so
    the server the user started runs the engines instead of relaying to a background process. Any other runner was
    started by a user and answers 409, so calling this on a JupyterLab server or a `serve` (a fuzzer, a mistaken
    user) stops nothing. Never relayed: the answer is this runner's own.
    """

    relayed = False
    answers_while_handing_over = True  # asked again (the server polls, a client retries): the same 202

    @web.authenticated
    @authorized
    async def post(self) -> None:
        kind = self.settings.get(KIND_SETTING, "")
        if kind != "embedded":
            raise web.HTTPError(409, f"This runner is a {kind or 'runner'} that a user started, so it hands its store "
                                     "over to nobody; only an embedded runner (started by a CLI command or a kernel) "
                                     "does. Stop this server to free its store.")
        if not self.service.owns_store:
            raise web.HTTPError(409, "This embedded runner does not own its store, so it has nothing to hand over.")
        if not self.service.handing_over:
            self.service.handing_over = True
            log.warning("Model runner: a server started on store %s asked for it; this embedded runner stops once "
                        "its work in progress is done (%d now) and hands the store over",
                        self.service.store.root, max(0, len(self.service.active) - 1))
        self.send_json({"handing_over": True, "in_progress": max(0, len(self.service.active) - 1)}, status=202)


default_handlers = [
    (r"engines/status", EngineStatusHandler),
    (r"engines/ps", EnginePsHandler),
    (r"engines/df", EngineDfHandler),
    (r"engines/unload", EngineUnloadHandler),
    (r"engines/_configure", EngineConfigureHandler),
    (r"engines/logs", EngineLogsHandler),
    (r"engines/_handover", EngineHandoverHandler),
]
