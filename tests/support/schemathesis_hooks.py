"""schemathesis checks of our own, loaded by `SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks`: every
refusal carries the error shape of its API, so a client library can show its message."""

from __future__ import annotations

import json

import schemathesis


@schemathesis.check
def error_shape_of_its_api(ctx, response, case) -> None:
    """A 4xx/5xx answer is JSON in the shape its family's clients read: Ollama `{"error": "..."}`, Anthropic
    `{"type": "error", "error": {...}}`, everything else OpenAI's `{"error": {"message", "type"}}` (+ `message`)."""
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"{response.status_code} without a JSON body: {response.content[:200]!r}") from exc
    path = case.operation.path
    if "ndjson" in response.headers.get("Content-Type", [""])[0] or (
            isinstance(body, dict) and body.get("type") == "error" and "mode" in body):
        # a pull/push/fsck that failed at once: DMR's progress stream with its one `error` event (FORMAT §4)
        assert body.get("type") == "error" and isinstance(body.get("message"), str), body
    elif path.startswith("/api/"):
        assert isinstance(body.get("error"), str) and body["error"], f"not Ollama's error shape: {body}"
    elif "/v1/messages" in path:
        assert body.get("type") == "error" and isinstance(body.get("error", {}).get("message"), str), body
    else:
        error = body.get("error")
        assert isinstance(error, dict) and isinstance(error.get("message"), str) and error.get("type"), (
            f"not OpenAI's error shape: {body}")
        assert isinstance(body.get("message"), str), f"no top-level message for Jupyter clients: {body}"


@schemathesis.check
def no_internal_error(ctx, response, case) -> None:
    """No 500: a failure we did not foresee. 502/503/507 are answers (an engine or a registry is down, the disk
    is full) and must say so; they are checked for their message above, not refused here."""
    assert response.status_code != 500, f"500 Internal Server Error: {response.content[:300]!r}"
