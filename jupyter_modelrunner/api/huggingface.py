"""Hugging Face: `GET huggingface/cache` (the runnable models already in the HF cache, `ls --hf-cache`) and
`GET huggingface/search?q=…&limit=…&format=…` (the Hub's models an engine here runs, `search`).

Both answer for the runner's machine (a server that does not own the store relays them to the owner, whose cache a
pull would link from and whose HF_TOKEN and HF_ENDPOINT a pull would use). The cache listing reads the owner's disk,
so it is a management route; the search only reads the Hub's public metadata, so an inference key may ask it too.
The query is handed to the Hub only as the value of its `search` parameter (hub_catalog.search).
"""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..distribution.huggingface.settings import hub_cache_dir
from ..hub_catalog import DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT, cached_models, search
from .base import SCOPE_INFERENCE, ModelRunnerHandler


class HuggingFaceCacheHandler(ModelRunnerHandler):
    """`GET huggingface/cache`: `{"cache": dir, "models": [{name, repo, revision, commit, format, quantization,
    files, size, engine, mmproj, modified}]}`."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        models = await asyncio.to_thread(cached_models)
        self.send_json({"cache": str(hub_cache_dir()), "models": [model.to_json() for model in models]})


class HuggingFaceSearchHandler(ModelRunnerHandler):
    """`GET huggingface/search?q=QUERY[&limit=N][&format=gguf|safetensors]`: `{"models": [{name, repo, format,
    downloads, likes, size, parameters, pipeline_tag, engine, gated, private}]}`, most downloaded first."""

    api_scope = SCOPE_INFERENCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        limit_text = self.get_argument("limit", str(DEFAULT_SEARCH_LIMIT))
        if not limit_text.isdigit() or len(limit_text) > 3:
            raise web.HTTPError(400, f'"limit" is a number of models from 1 to {MAX_SEARCH_LIMIT}: ?q=qwen&limit=10.')
        fmt = self.get_argument("format", "") or None
        found = await asyncio.to_thread(search, self.get_argument("q", ""), limit=int(limit_text), fmt=fmt)
        self.send_json({"models": found})


default_handlers = [
    (r"huggingface/cache", HuggingFaceCacheHandler),
    (r"huggingface/search", HuggingFaceSearchHandler),
]
