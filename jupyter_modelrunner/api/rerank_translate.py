"""Rerank and score requests and answers, between the runner's API and its engines' (llama-server's and vLLM's
`/v1/rerank`). Pure dict reshaping (standard library, no I/O), so the handlers only move bytes.

The runner's two routes, for reranker models (cross-encoders with a classification head):

- `POST v1/rerank {"model", "query", "documents": [str | {"text"}], "top_n"?, "return_documents"?}` answers as Jina's
  and Cohere's rerank APIs (and llama-server and vLLM, which follow them): `{"results": [{"index",
  "relevance_score", "document": {"text"}}]}`, best first, the best `top_n` only when it is given; `index` is the
  document's position in the request. `document` is there unless `return_documents` is false (Jina's default).
- `POST v1/score {"model", "text_1" | "queries", "text_2" | "documents"}` answers as vLLM's score API: `{"data":
  [{"index", "object": "score", "score"}]}`, one per document, in the request's order. One query is scored against
  every document; lists of equal length are scored pair by pair.

Both ask the engine for every document's score (its own sorting and `top_n` are not relied on), so the two engines
answer alike. The scores are the engine's: llama.cpp gives the classification head's raw output, vLLM applies the
model's activation (a sigmoid for one-label cross-encoders); either ranks the same way.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

RERANK = "rerank"
SCORE = "score"
#: Where both engines answer reranking.
ENGINE_PATH = "/v1/rerank"


@dataclass(frozen=True)
class ScoringRequest:
    """What to score: `pairs[i]` is (query, document) for the document at `i` in the request."""

    model: str
    pairs: tuple[tuple[str, str], ...]
    top_n: int | None = None
    return_documents: bool = True

    def groups(self) -> list[tuple[str, list[int]]]:
        """The distinct queries, each with the positions of its documents (one engine call each)."""
        grouped: dict[str, list[int]] = {}
        for index, (query, _document) in enumerate(self.pairs):
            grouped.setdefault(query, []).append(index)
        return list(grouped.items())


def rerank_request(body: dict[str, Any]) -> ScoringRequest:
    """A rerank body, checked; ValueError with the sentence to answer with."""
    model = _model(body)
    query = _text(body.get("query"), "query")
    documents = _texts(body.get("documents"), "documents")
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise ValueError("top_n must be a positive whole number (0 or absent: every document)")
    return_documents = body.get("return_documents", True)
    if not isinstance(return_documents, bool):
        raise ValueError("return_documents must be true or false")
    return ScoringRequest(model, tuple((query, document) for document in documents), top_n or None, return_documents)


def score_request(body: dict[str, Any]) -> ScoringRequest:
    """A score body (vLLM's field names: `text_1`/`text_2`, `queries`/`documents` or `items`, `data_1`/`data_2`)."""
    model = _model(body)
    for first, second in (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2")):
        if first in body and second in body:
            queries, documents = _texts(body[first], first), _texts(body[second], second)
            break
    else:
        raise ValueError('name the texts to score: {"text_1": query, "text_2": [documents]} (or "queries" and '
                         '"documents")')
    if len(queries) == 1:
        queries = queries * len(documents)
    elif len(queries) != len(documents):
        raise ValueError(f"one query, or as many queries as documents: {len(queries)} queries for "
                         f"{len(documents)} documents")
    return ScoringRequest(model, tuple(zip(queries, documents, strict=True)))


def engine_body(request: ScoringRequest, query: str, indexes: list[int]) -> dict[str, Any]:
    """The engine's rerank request for one query: every document of it, all of them scored."""
    return {"model": "model", "query": query, "documents": [request.pairs[i][1] for i in indexes],
            "top_n": len(indexes)}


def engine_scores(response: dict[str, Any], count: int) -> list[float]:
    """The engine's rerank answer as one score per document it was sent, in that order."""
    scores: list[float | None] = [None] * count
    for result in response.get("results") or []:
        index = result.get("index")
        score = result.get("relevance_score", result.get("score"))
        if not isinstance(index, int) or not 0 <= index < count or scores[index] is not None \
                or not isinstance(score, int | float):
            raise ValueError(f"the engine answered with an unexpected rerank result: {result!r}")
        scores[index] = float(score)
    if any(score is None for score in scores):
        raise ValueError(f"the engine scored {sum(s is not None for s in scores)} of {count} documents")
    return [float(score) for score in scores if score is not None]


def rerank_response(request: ScoringRequest, scores: list[float], usage: dict[str, Any]) -> dict[str, Any]:
    """Jina's/Cohere's answer: best first (ties in the request's order), the best `top_n` when it is given."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if request.top_n:
        order = order[: request.top_n]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if request.return_documents:
            result["document"] = {"text": request.pairs[index][1]}
        results.append(result)
    return {"id": f"rerank-{uuid.uuid4().hex}", "object": "list", "model": request.model, "results": results,
            "usage": usage}


def score_response(request: ScoringRequest, scores: list[float], usage: dict[str, Any]) -> dict[str, Any]:
    """vLLM's score answer: one score per pair, in the request's order."""
    return {"id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": request.model,
            "data": [{"index": i, "object": "score", "score": score} for i, score in enumerate(scores)],
            "usage": usage}


def add_usage(total: dict[str, int], response: dict[str, Any]) -> dict[str, int]:
    """Token counts of several engine calls added up (`prompt_tokens`, `total_tokens`)."""
    usage = response.get("usage") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    return {"prompt_tokens": total.get("prompt_tokens", 0) + prompt,
            "total_tokens": total.get("total_tokens", 0) + int(usage.get("total_tokens") or prompt)}


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError('name the model: {"model": "ai/bge-reranker", ...}')
    return model


def _text(value: Any, name: str) -> str:
    if isinstance(value, dict) and isinstance(value.get("text"), str):  # Cohere's and Jina's {"text": ...}
        value = value["text"]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _texts(value: Any, name: str) -> list[str]:
    """A string (or `{"text"}`) or a non-empty list of them."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{name} must not be empty")
    return [_text(item, f"each of {name}") for item in items]
