"""A batch's input file checked line by line before any request is sent (OpenAI's `validating` state).

Each line is one request: `{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`.
A file with any bad line fails the whole batch, with OpenAI's `errors` list naming each bad line (up to
MAX_LISTED_ERRORS), so nothing of a malformed file runs. Only the three inference endpoints are accepted, spelled
exactly: a line cannot reach any other route of the runner (pulling a model, management) nor another host, because
the url is only ever compared against this list, never followed. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: The batch endpoints (OpenAI's spelling) and the inference endpoint each is (`InferenceRequest.endpoint`).
ENDPOINTS = {"/v1/chat/completions": "chat/completions", "/v1/completions": "completions",
             "/v1/embeddings": "embeddings"}
#: OpenAI's caps: requests in one batch, and the longest custom_id.
MAX_LINES = 50_000
MAX_CUSTOM_ID_CHARS = 512
#: Errors listed in a failed batch's `errors` (the first ones; the count of the rest is said in the last).
MAX_LISTED_ERRORS = 100


@dataclass(frozen=True)
class Row:
    """One request of a batch: its line number in the input file (from 1), custom_id and body."""

    line: int
    custom_id: str
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body["model"])


def _error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def check_line(raw: bytes, line: int, endpoint: str) -> tuple[Row | None, dict[str, Any] | None]:
    """The request on one line (None for a blank line), or the error that names what is wrong with it."""
    if not raw.strip():
        return None, None
    try:
        request = json.loads(raw)
    except (ValueError, RecursionError):
        return None, _error("invalid_json_line", f"Line {line} is not valid JSON.", line)
    if not isinstance(request, dict):
        return None, _error("invalid_json_line", f"Line {line} must be a JSON object with custom_id, method, url "
                                                 "and body.", line)
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, _error("missing_required_parameter", f"Line {line} has no custom_id (a non-empty string).",
                            line, "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return None, _error("invalid_value", f"Line {line}: custom_id is longer than {MAX_CUSTOM_ID_CHARS} "
                                             "characters.", line, "custom_id")
    if request.get("method") != "POST":
        return None, _error("invalid_value", f"Line {line}: method must be \"POST\".", line, "method")
    url = request.get("url")
    if url not in ENDPOINTS:
        shown = json.dumps(url)[:120]
        return None, _error("invalid_url", f"Line {line}: url {shown} is not a batch endpoint; use one of "
                                           f"{', '.join(ENDPOINTS)}.", line, "url")
    if url != endpoint:
        return None, _error("mismatched_endpoint", f"Line {line}: url {url} differs from the batch's endpoint "
                                                   f"{endpoint}; a batch sends every request to one endpoint.",
                            line, "url")
    body = request.get("body")
    if not isinstance(body, dict):
        return None, _error("invalid_value", f"Line {line}: body must be a JSON object (the request).", line, "body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return None, _error("missing_required_parameter", f"Line {line}: the body names no model.", line,
                            "body.model")
    if body.get("stream"):
        return None, _error("invalid_value", f"Line {line}: a batch answers each request whole; remove "
                                             "\"stream\": true.", line, "body.stream")
    return Row(line, custom_id, body), None


def validate(lines: Iterable[bytes], endpoint: str, *, max_lines: int = MAX_LINES,
             body_problem: Callable[[str, dict[str, Any]], str | None] | None = None,
             model_problem: Callable[[str], str | None] | None = None) -> tuple[int, list[dict[str, Any]]]:
    """How many requests the input holds and what is wrong with it (OpenAI's error objects, each naming its line;
    none: the batch may run).

    `body_problem(endpoint, body)` says what is wrong with a request's body (the routes' own schema, given by the
    HTTP layer); `model_problem(name)` what is wrong with a model's name (one not in the store), asked once per
    name."""
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: dict[str, str | None] = {}
    count = 0
    for number, raw in enumerate(lines, start=1):
        row, error = check_line(raw, number, endpoint)
        if row is not None:
            count += 1
            if count > max_lines:
                errors.append(_error("too_many_requests", f"The file holds more than {max_lines} requests, the most "
                                                          "one batch takes; split it into several batches.", number))
                break
            if row.custom_id in seen:
                error = _error("duplicate_custom_id", f"Line {number}: custom_id {row.custom_id!r} is used by an "
                                                      "earlier line; each request needs its own.", number, "custom_id")
            seen.add(row.custom_id)
            problem = body_problem(ENDPOINTS[endpoint], row.body) if body_problem and error is None else None
            if problem is not None:
                error = _error("invalid_value", f"Line {number}: {problem}", number, "body")
            if error is None and model_problem is not None:
                if row.model not in models:
                    models[row.model] = model_problem(row.model)
                if models[row.model] is not None:
                    error = _error("model_not_found", f"Line {number}: {models[row.model]}", number, "body.model")
        if error is not None:
            errors.append(error)
    if not errors and count == 0:
        errors.append(_error("empty_file", "The input file holds no requests (one JSON object a line)."))
    if len(errors) > MAX_LISTED_ERRORS:
        more = len(errors) - MAX_LISTED_ERRORS
        errors = [*errors[:MAX_LISTED_ERRORS], _error("more_errors", f"…and {more} more errors.")]
    return count, errors


def rows(lines: Iterable[bytes], endpoint: str, skip: set[str]) -> Iterable[Row]:
    """The requests of a validated input, those whose custom_id is in `skip` (answered already) left out."""
    for number, raw in enumerate(lines, start=1):
        row, _ = check_line(raw, number, endpoint)
        if row is not None and row.custom_id not in skip:
            yield row
