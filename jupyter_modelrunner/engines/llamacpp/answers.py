"""What llama-server's answers say in its own words, in the runner's engine-neutral ones (see `engines.base.Engine`).

Pure, so `LlamaServer.adapt_response` stays a byte check in front of it.
"""

from __future__ import annotations

from typing import Any


def with_neutral_fields(answer: dict[str, Any]) -> bool:
    """Add `matched_stop` and `generation_stats` to one llama-server answer or chunk from its own fields."""
    changed = False
    verbose = answer.get("__verbose")
    if isinstance(verbose, dict) and verbose.get("stop_type") == "word" and verbose.get("stopping_word"):
        for choice in answer.get("choices") or []:
            if isinstance(choice, dict):
                choice["matched_stop"] = str(verbose["stopping_word"])
                changed = True
    timings = answer.get("timings")
    if isinstance(timings, dict) and all(isinstance(timings.get(key), int | float)
                                         for key in ("prompt_ms", "predicted_ms")):
        answer["generation_stats"] = {
            "prompt_tokens": int(timings.get("prompt_n") or 0), "prompt_seconds": timings["prompt_ms"] / 1000,
            "completion_tokens": int(timings.get("predicted_n") or 0),
            "generation_seconds": timings["predicted_ms"] / 1000}
        changed = True
    return changed
