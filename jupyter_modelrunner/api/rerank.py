"""Rerank and score: `engines[/{engine}]/v1/rerank`, `.../v1/score`, and `v1/...` as their alias.

For reranker models only (a cross-encoder with a classification head, as the model's own config says): the
inference path runs them in a rerank mode of their own (each engine knows how), and refuses any other model with a
400 that says why. The reshaping lives in `rerank_translate` (pure, tested on its own); see there for what the
two routes answer.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..inference import InferenceRequest
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
        inference_request = InferenceRequest(request.model, "rerank", route=kind, engine=engine, caller=self.caller)
        async with self.service.infer(inference_request) as inference:
            self.name_the_engine(inference)
            for query, indexes in request.groups():
                reply = await inference.send(translate.ENGINE_PATH, translate.engine_body(request, query, indexes))
                try:
                    answer = reply.json()
                    found = translate.engine_scores(answer, len(indexes))
                except ValueError as exc:  # not what a rerank route answers
                    raise web.HTTPError(502, f"The engine's rerank answer made no sense: {exc}") from exc
                for index, score in zip(indexes, found, strict=True):
                    scores[index] = score
                usage = translate.add_usage(usage, answer)
        respond = translate.rerank_response if kind == translate.RERANK else translate.score_response
        self.send_json(respond(request, scores, usage))


_KIND = r"(?P<kind>rerank|score)"

default_handlers = [
    (rf"engines/v1/{_KIND}", RerankHandler),
    (rf"engines/{_ENGINE}/v1/{_KIND}", RerankHandler),
    (rf"v1/{_KIND}", RerankHandler),
]
