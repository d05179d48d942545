"""Rerank and score: `engines[/{engine}]/v1/rerank`, `.../v1/score`, and `v1/...` as their alias.

For reranker models only (a cross-encoder with a classification head, as the model's own config says): the scheduler
runs them in a mode of their own (llama-server with `--rerank`, vLLM's pooling runner), and refuses any other model
with a 400 that says why. The reshaping lives in `rerank_translate` (pure, tested on its own); see there for what the
two routes answer.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..engines.base import MODE_RERANK
from . import rerank_translate as translate
from .base import SCOPE_INFERENCE, ModelRunnerHandler
from .openai import ENGINE_SEGMENT as _ENGINE


class RerankHandler(ModelRunnerHandler):
    """`POST .../v1/rerank` (documents best first) and `POST .../v1/score` (scores in the request's order)."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def post(self, kind: str, engine: str | None = None) -> None:
        body = self.json_body()  # described by schemas.RERANK and SCORE; checked by the translator, which says more
        try:
            request = translate.rerank_request(body) if kind == translate.RERANK else translate.score_request(body)
        except ValueError as exc:
            raise web.HTTPError(400, str(exc)) from exc
        scores: list[float] = [0.0] * len(request.pairs)
        usage: dict[str, int] = {}
        try:
            async with self.service.scheduler.use(request.model, mode=MODE_RERANK, engine=engine) as runner:
                self.service.metrics.requests.labels(kind, runner.name).inc()
                self.name_the_engine(runner)
                for query, indexes in request.groups():
                    response = await runner.request("POST", translate.ENGINE_PATH,
                                                    json=translate.engine_body(request, query, indexes))
                    if response.status_code != 200:
                        raise web.HTTPError(response.status_code, _engine_message(response.content))
                    try:
                        answer = response.json()
                        found = translate.engine_scores(answer, len(indexes))
                    except ValueError as exc:  # not what a rerank route answers
                        raise web.HTTPError(502, f"The engine's rerank answer made no sense: {exc}") from exc
                    for index, score in zip(indexes, found, strict=True):
                        scores[index] = score
                    usage = translate.add_usage(usage, answer)
        except Exception:
            self.service.metrics.errors.labels(kind).inc()
            raise
        respond = translate.rerank_response if kind == translate.RERANK else translate.score_response
        self.send_json(respond(request, scores, usage))


def _engine_message(content: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        data = json.loads(content)
        error: Any = data.get("error", data)
        return str(error.get("message", error) if isinstance(error, dict) else error)
    return content.decode("utf-8", "replace")[:500]


_KIND = r"(?P<kind>rerank|score)"

default_handlers = [
    (rf"engines/v1/{_KIND}", RerankHandler),
    (rf"engines/{_ENGINE}/v1/{_KIND}", RerankHandler),
    (rf"v1/{_KIND}", RerankHandler),
]
