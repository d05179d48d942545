"""Rerank and score on a real `jupyter server`, with a tiny reranker the suite builds (a random-weight
`BertForSequenceClassification`, and its GGUF made by llama.cpp's own converter): llama-server runs the GGUF with
`--rerank`, vLLM the safetensors folder with its pooling runner. Requests are what Jina/Cohere-style clients send."""

from __future__ import annotations

import pytest

from jupyter_modelrunner.distribution import package_gguf, package_safetensors
from jupyter_modelrunner.engines.vllm import default_vllm_python
from jupyter_modelrunner.reference import parse_reference

from ..conftest import TEST_CACHE
from ..support.models import tiny_reranker

pytestmark = pytest.mark.timeout(600)
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Cats and dogs are animals.", "Berlin is the capital of Germany.",
             "The weather today is sunny and warm."]


@pytest.fixture(scope="module")
def rerankers(live_store, registry) -> dict[str, str]:
    """The tiny reranker in the server's store: its GGUF as `ai/tiny-reranker`, its safetensors folder as
    `ai/tiny-reranker-st`."""
    built = tiny_reranker(TEST_CACHE)
    package_gguf(live_store, built / "tiny-reranker.gguf", parse_reference(f"{registry.host}/ai/tiny-reranker"))
    package_safetensors(live_store, built / "hf", parse_reference(f"{registry.host}/ai/tiny-reranker-st"))
    return {"llama.cpp": "ai/tiny-reranker", "vllm": "ai/tiny-reranker-st"}


@pytest.fixture(scope="module", params=["llama.cpp", "vllm"])
def reranker(request, rerankers) -> str:
    if request.param == "vllm" and default_vllm_python() is None:
        pytest.skip("no vLLM environment (jupyter modelrunner install-runner vllm)")
    return rerankers[request.param]


def test_rerank_scores_every_document_once_best_first(jupyter, reranker):
    with jupyter.client() as http:
        answer = http.post("v1/rerank", json={"model": reranker, "query": QUERY, "documents": DOCUMENTS})
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))  # one score per document
        scores = [r["relevance_score"] for r in results]
        assert scores == sorted(scores, reverse=True)  # best first, as Jina's and Cohere's APIs answer
        assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in results)
        assert answer.json()["model"] == reranker and answer.json()["usage"]["prompt_tokens"] > 0
        engine = "vllm" if reranker.endswith("-st") else "llama.cpp"
        assert answer.headers["X-Model-Runner-Engine"] == engine

        best_two = http.post("v1/rerank", json={"model": reranker, "query": QUERY, "documents": DOCUMENTS,
                                                "top_n": 2, "return_documents": False}).json()["results"]
        assert best_two == [{k: v for k, v in r.items() if k != "document"} for r in results[:2]]


def test_score_gives_one_score_per_document_in_the_requests_order(jupyter, reranker):
    with jupyter.client() as http:
        ranked = http.post("engines/v1/rerank", json={"model": reranker, "query": QUERY, "documents": DOCUMENTS})
        by_index = {r["index"]: r["relevance_score"] for r in ranked.json()["results"]}
        scored = http.post("v1/score", json={"model": reranker, "text_1": QUERY, "text_2": DOCUMENTS})
        assert scored.status_code == 200, scored.text
        data = scored.json()["data"]
        assert [d["index"] for d in data] == list(range(len(DOCUMENTS)))
        assert [d["score"] for d in data] == pytest.approx([by_index[i] for i in range(len(DOCUMENTS))], rel=1e-4)
        # Pair by pair: each document with its own query; the same pair scores the same.
        pairs = http.post("v1/score", json={"model": reranker, "queries": [QUERY, "Is it sunny?"],
                                            "documents": DOCUMENTS[:2]}).json()["data"]
        assert len(pairs) == 2 and pairs[0]["score"] == pytest.approx(by_index[0], rel=1e-4)
        loaded = [r for r in http.get("engines/ps").json() if r["model_name"].endswith(reranker + ":latest")]
        assert [r["mode"] for r in loaded] == ["rerank"]


def test_a_model_that_is_not_a_reranker_is_a_clear_400(jupyter):
    with jupyter.client() as http:
        for route in ("v1/rerank", "v1/score"):
            body = {"model": "ai/tiny", "query": QUERY, "documents": DOCUMENTS, "text_1": QUERY, "text_2": DOCUMENTS}
            answer = http.post(route, json=body)
            assert answer.status_code == 400
            assert "ai/tiny is not a reranker" in answer.json()["error"]["message"]
        assert not [r for r in http.get("engines/ps").json() if r["mode"] == "rerank"
                    and r["model_name"].endswith("ai/tiny:latest")]  # refused before anything loaded


def test_a_reranker_cannot_chat(jupyter, rerankers):
    with jupyter.client() as http:
        answer = http.post("v1/chat/completions", json={"model": "ai/tiny-reranker",
                                                        "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code == 400 and "is a reranker" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("body", "says"), [
    ({"query": QUERY, "documents": DOCUMENTS}, "name the model"),
    ({"model": "ai/tiny-reranker", "documents": DOCUMENTS}, "query must be a non-empty string"),
    ({"model": "ai/tiny-reranker", "query": QUERY, "documents": []}, "documents must not be empty"),
    ({"model": "ai/tiny-reranker", "query": QUERY, "documents": [1]}, "each of documents"),
    ({"model": "ai/tiny-reranker", "query": QUERY, "documents": DOCUMENTS, "top_n": -1}, "top_n"),
])
def test_malformed_rerank_requests_are_400s_that_say_what_is_wrong(jupyter, body, says):
    with jupyter.client() as http:
        answer = http.post("v1/rerank", json=body)
    assert answer.status_code == 400 and says in answer.json()["error"]["message"]
