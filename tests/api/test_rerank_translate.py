"""The rerank and score translation: what the runner accepts, what it asks the engine, what it answers."""

from __future__ import annotations

import pytest

from jupyter_modelrunner.api.rerank_translate import (
    add_usage,
    engine_body,
    engine_scores,
    rerank_request,
    rerank_response,
    score_request,
    score_response,
)

DOCS = ["a", "b", "c"]


def test_rerank_request_takes_strings_or_text_objects():
    request = rerank_request({"model": "m", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1})
    assert request.pairs == (("q", "a"), ("q", "b")) and request.top_n == 1 and request.return_documents
    assert rerank_request({"model": "m", "query": {"text": "q"}, "documents": "a", "top_n": 0}).top_n is None


@pytest.mark.parametrize(("body", "says"), [
    ({"query": "q", "documents": DOCS}, "name the model"),
    ({"model": "m", "query": "", "documents": DOCS}, "query must be a non-empty string"),
    ({"model": "m", "query": "q"}, "documents must be a non-empty string"),
    ({"model": "m", "query": "q", "documents": DOCS, "top_n": True}, "top_n"),
    ({"model": "m", "query": "q", "documents": DOCS, "return_documents": "yes"}, "return_documents"),
])
def test_malformed_rerank_requests_say_what_is_wrong(body, says):
    with pytest.raises(ValueError, match=says):
        rerank_request(body)


def test_score_request_reads_vllms_field_names_one_query_or_pair_by_pair():
    assert score_request({"model": "m", "text_1": "q", "text_2": DOCS}).pairs == tuple(("q", d) for d in DOCS)
    assert score_request({"model": "m", "queries": ["q"], "documents": "a"}).pairs == (("q", "a"),)
    pairs = score_request({"model": "m", "data_1": ["x", "y"], "data_2": ["a", "b"]})
    assert pairs.pairs == (("x", "a"), ("y", "b")) and pairs.groups() == [("x", [0]), ("y", [1])]
    with pytest.raises(ValueError, match="one query, or as many queries as documents"):
        score_request({"model": "m", "text_1": ["x", "y"], "text_2": DOCS})
    with pytest.raises(ValueError, match="name the texts to score"):
        score_request({"model": "m", "query": "q", "documents": DOCS})


def test_the_engine_is_asked_for_every_document_and_its_answer_is_put_back_in_order():
    request = rerank_request({"model": "m", "query": "q", "documents": DOCS, "top_n": 1})
    assert engine_body(request, "q", [0, 1, 2]) == {"model": "model", "query": "q", "documents": DOCS, "top_n": 3}
    answer = {"results": [{"index": 2, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1},
                          {"index": 1, "score": -2}]}  # llama-server and vLLM sort; TEI says `score`
    assert engine_scores(answer, 3) == [0.1, -2.0, 0.9]
    with pytest.raises(ValueError, match="scored 2 of 3"):
        engine_scores({"results": answer["results"][:2]}, 3)
    with pytest.raises(ValueError, match="unexpected rerank result"):
        engine_scores({"results": [*answer["results"], {"index": 0, "relevance_score": 1}]}, 3)


def test_rerank_answers_best_first_with_documents_and_top_n_keeps_the_best():
    request = rerank_request({"model": "ai/r", "query": "q", "documents": DOCS})
    answer = rerank_response(request, [0.2, 0.7, 0.2], {"prompt_tokens": 9, "total_tokens": 9})
    assert [(r["index"], r["relevance_score"]) for r in answer["results"]] == [(1, 0.7), (0, 0.2), (2, 0.2)]
    assert answer["results"][0]["document"] == {"text": "b"} and answer["model"] == "ai/r"
    best = rerank_response(rerank_request({"model": "m", "query": "q", "documents": DOCS, "top_n": 2,
                                           "return_documents": False}), [0.2, 0.7, 0.3], {})
    assert best["results"] == [{"index": 1, "relevance_score": 0.7}, {"index": 2, "relevance_score": 0.3}]


def test_score_answers_in_the_requests_order():
    request = score_request({"model": "m", "text_1": "q", "text_2": DOCS})
    data = score_response(request, [0.2, 0.7, 0.1], {})["data"]
    assert data == [{"index": 0, "object": "score", "score": 0.2}, {"index": 1, "object": "score", "score": 0.7},
                    {"index": 2, "object": "score", "score": 0.1}]


def test_usage_of_several_engine_calls_adds_up():
    total = add_usage({}, {"usage": {"prompt_tokens": 4, "total_tokens": 4}})
    assert add_usage(total, {"usage": {"prompt_tokens": 3}}) == {"prompt_tokens": 7, "total_tokens": 7}
