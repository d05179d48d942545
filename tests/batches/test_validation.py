"""An input file is checked line by line before anything runs: each bad line is named, and a line can only ever
reach the batch's own inference endpoint."""

from __future__ import annotations

import json

import pytest

from jupyter_modelrunner.batches.validation import rows, validate

CHAT = "/v1/chat/completions"


def line(custom_id="r1", url=CHAT, body=None, **extra) -> bytes:
    body = {"model": "ai/tiny", "messages": [{"role": "user", "content": "Hi"}]} if body is None else body
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra}).encode()


def test_a_good_file_counts_its_requests_and_skips_blank_lines():
    count, errors = validate([line("a"), b"\n", line("b"), b"   \n"], CHAT)
    assert (count, errors) == (2, [])


@pytest.mark.parametrize(("raw", "code", "words"), [
    (b"{not json", "invalid_json_line", "not valid JSON"),
    (b"[1, 2]", "invalid_json_line", "JSON object"),
    (line(custom_id=""), "missing_required_parameter", "custom_id"),
    (line(method="GET"), "invalid_value", "POST"),
    (line(url="/v1/models/pull"), "invalid_url", "not a batch endpoint"),
    (line(url="/models/create"), "invalid_url", "not a batch endpoint"),
    (line(url="http://169.254.169.254/latest/meta-data"), "invalid_url", "not a batch endpoint"),
    (line(url="/v1/chat/completions/../../models/create"), "invalid_url", "not a batch endpoint"),
    (line(url="/v1/embeddings"), "mismatched_endpoint", "differs from the batch's endpoint"),
    (line(body="hello"), "invalid_value", "body must be a JSON object"),
    (line(body={"messages": []}), "missing_required_parameter", "no model"),
    (line(body={"model": "ai/tiny", "messages": [], "stream": True}), "invalid_value", "stream"),
])
def test_a_bad_line_fails_validation_naming_its_line(raw, code, words):
    _, errors = validate([line("ok"), raw], CHAT)
    assert len(errors) == 1
    assert errors[0]["code"] == code and errors[0]["line"] == 2
    assert words in errors[0]["message"] and "Line 2" in errors[0]["message"]


def test_duplicate_custom_ids_are_refused():
    _, errors = validate([line("a"), line("b"), line("a")], CHAT)
    assert [(e["code"], e["line"]) for e in errors] == [("duplicate_custom_id", 3)]


def test_more_lines_than_the_cap_and_an_empty_file_are_refused():
    _, errors = validate([line(str(i)) for i in range(5)], CHAT, max_lines=4)
    assert errors[-1]["code"] == "too_many_requests" and errors[-1]["line"] == 5
    assert validate([b"\n"], CHAT)[1][0]["code"] == "empty_file"


def test_bodies_and_models_are_checked_by_the_callers_rules():
    def body_problem(endpoint, body):
        return None if body.get("messages") else "messages is required"

    def model_problem(name):
        return None if name == "ai/tiny" else f"Model {name!r} is not in the store."

    lines = [line("a"), line("b", body={"model": "ai/tiny"}), line("c", body={"model": "ai/none", "messages": [1]})]
    _, errors = validate(lines, CHAT, body_problem=body_problem, model_problem=model_problem)
    assert [(e["code"], e["line"]) for e in errors] == [("invalid_value", 2), ("model_not_found", 3)]
    assert "ai/none" in errors[1]["message"]


def test_many_errors_are_listed_up_to_a_hundred():
    _, errors = validate([b"{"] * 150, CHAT)
    assert len(errors) == 101 and errors[-1]["message"] == "…and 50 more errors."


def test_rows_leave_out_the_answered_ones():
    found = list(rows([line("a"), b"\n", line("b"), line("c")], CHAT, skip={"b"}))
    assert [(r.line, r.custom_id) for r in found] == [(1, "a"), (4, "c")]
