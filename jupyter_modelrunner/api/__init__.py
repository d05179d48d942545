"""The model runner's HTTP API: one module per resource, each ending in its route table.

The Jupyter server extension mounts these routes under `{base_url}modelrunner/`; the standalone
server (`jupyter modelrunner serve`) mounts the same ones at the root, like Docker Model Runner's
port 12434. Only the prefix differs.
"""

from __future__ import annotations

from typing import Any


def routes(prefix: str) -> list[tuple[str, Any]]:
    """Every route, its pattern prefixed with `prefix` (no leading slash: the server adds its base URL)."""
    from . import anthropic, batches, engines, huggingface, metrics, models, ollama, openai, openapi, rerank, responses

    tables = (models.default_handlers, engines.default_handlers, openai.default_handlers,
              rerank.default_handlers, anthropic.default_handlers, responses.default_handlers, ollama.default_handlers,
              metrics.default_handlers, huggingface.default_handlers, batches.default_handlers,
              openapi.default_handlers)
    start = f"/{prefix.strip('/')}/" if prefix.strip("/") else "/"
    return [(start + pattern, handler) for table in tables for pattern, handler in table]
