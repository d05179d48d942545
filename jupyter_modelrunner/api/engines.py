"""Engine control: status, ps, df, unload, configure and logs — DMR's `engines/...` routes."""

from __future__ import annotations

import contextlib

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from . import schemas
from .base import ModelRunnerHandler


class EngineStatusHandler(ModelRunnerHandler):
    """`GET engines/status`: which engines can run here, on which device, and why or why not."""

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


default_handlers = [
    (r"engines/status", EngineStatusHandler),
    (r"engines/ps", EnginePsHandler),
    (r"engines/df", EngineDfHandler),
    (r"engines/unload", EngineUnloadHandler),
    (r"engines/_configure", EngineConfigureHandler),
    (r"engines/logs", EngineLogsHandler),
]
