"""What Hugging Face offers that an engine here can run: the models already in the HF cache (`ls --hf-cache`) and
the Hub's own search (`search QUERY`, Docker Model Runner's verb).

Both go through `huggingface_hub` (its cache scanner; its HTTP session, headers and `ModelInfo` for `/api/models`),
so the cache is read the way the Hub's client writes it and the Hub is asked the way its client asks. The settings
users already have for that client are honoured, read when asked rather than when `huggingface_hub` was imported (a
notebook may set them later): `HF_HOME`/`HF_HUB_CACHE` (where the cache is), `HF_ENDPOINT` (a mirror), `HF_TOKEN`
or the token file `hf auth login` writes (private models in search), `HF_HUB_OFFLINE` (no request leaves).

"An engine here can run" means: a GGUF file (with its shards, and a vision projector beside it) for llama.cpp; a
folder with `config.json` and its `*.safetensors` weights (every shard an index names) for vLLM. Each is offered
under the name `pull` gives it (`hf_model_name`), so what the listing shows can be pulled as it is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .distribution.huggingface.selection import SHARD_SUFFIX, hf_model_name, hf_repo_name, quantization_of
from .distribution.huggingface.settings import hub_cache_dir, hub_endpoint, hub_offline, hub_token
from .errors import AuthenticationFailed, InvalidReference, RegistryError, RegistryUnavailable
from .mediatypes import FORMAT_GGUF, FORMAT_SAFETENSORS

log = logging.getLogger(__name__)

#: Engines that run each format (what `engines/select.py` picks on any machine).
ENGINE_OF = {FORMAT_GGUF: "llama.cpp", FORMAT_SAFETENSORS: "vllm"}
#: The longest search query passed on: the Hub's names are at most 96 characters (org/repo); anything much longer is
#: a mistake or an attack, refused before a request is made.
MAX_QUERY_CHARS = 256
MAX_SEARCH_LIMIT = 100
DEFAULT_SEARCH_LIMIT = 20
#: Seconds a search waits for the Hub (connecting and each read).
SEARCH_TIMEOUT = 15.0
#: What `search` asks the Hub for about each model (`expand`): only these fields come back.
SEARCH_FIELDS = ("downloads", "likes", "tags", "library_name", "pipeline_tag", "usedStorage", "gguf", "safetensors",
                 "lastModified", "gated", "private")
#: Libraries whose safetensors checkpoints vLLM serves (its model loader is transformers').
VLLM_LIBRARIES = frozenset({"transformers", "sentence-transformers"})


# -- the cache -----------------------------------------------------------------------------------------------


@dataclass
class CachedModel:
    """One runnable model in the HF cache: a GGUF quantization (its shards and projector) or a safetensors
    snapshot."""

    name: str
    repo: str
    revision: str
    commit: str
    format: str
    quantization: str | None
    files: list[str]
    size: int
    modified: float
    mmproj: str | None = None
    refs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "repo": self.repo, "revision": self.revision, "commit": self.commit,
                "format": self.format, "quantization": self.quantization, "files": self.files, "size": self.size,
                "engine": ENGINE_OF[self.format], "mmproj": self.mmproj, "modified": self.modified}


def cached_models(cache_dir: Path | str | None = None) -> list[CachedModel]:
    """The runnable models in the HF cache (`hub_cache_dir()` unless given), by name; an absent cache holds none.

    Each name appears once: when several revisions of a repo hold it, the one `main` points at wins, else the newest.
    Revisions with a GGUF shard missing, or safetensors weights an index names but the cache lacks, cannot run and
    are left out (a download that stopped half-way).
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir if cache_dir is not None else hub_cache_dir())
    except CacheNotFound:
        return []
    for warning in info.warnings:
        log.debug("HF cache: skipped %s", warning)
    found: dict[str, CachedModel] = {}
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            for model in _runnable(repo.repo_id, revision):
                known = found.get(model.name)
                if known is None or _preferred(model, known):
                    found[model.name] = model
    return sorted(found.values(), key=lambda m: m.name)


def _preferred(model: CachedModel, other: CachedModel) -> bool:
    return ("main" in model.refs, model.modified) > ("main" in other.refs, other.modified)


def _runnable(repo_id: str, revision: Any) -> Iterable[CachedModel]:
    """The models one cached revision holds (a `CachedRevisionInfo`)."""
    snapshot = Path(revision.snapshot_path)
    files = {file.file_path.relative_to(snapshot).as_posix(): file for file in revision.files}
    refs = sorted(revision.refs, key=lambda ref: (ref != "main", ref))
    commit = revision.commit_hash
    shown = refs[0] if refs else commit

    def model(fmt: str, tag: str | None, names: list[str], quantization: str | None = None,
              mmproj: str | None = None) -> CachedModel:
        blobs = {files[n].blob_path: files[n].size_on_disk for n in [*names, *([mmproj] if mmproj else [])]}
        return CachedModel(hf_model_name(repo_id, tag), repo_id, shown, commit, fmt, quantization, names,
                           sum(blobs.values()), max(files[n].blob_last_modified for n in names), mmproj, refs)

    ggufs = [name for name in files if name.lower().endswith(".gguf")]
    projectors = sorted(n for n in ggufs if Path(n).name.lower().startswith("mmproj"))
    groups: dict[str, list[str]] = {}
    for name in ggufs:
        if name not in projectors:
            quant = quantization_of(name) or SHARD_SUFFIX.sub("", Path(name).name[: -len(".gguf")])
            groups.setdefault(quant, []).append(name)
    for quant, names in sorted(groups.items()):
        names.sort()
        if not _shards_complete(names):
            continue
        quantization = quantization_of(names[0])
        # A file whose name says no quantization is named by its stem, unless it is the repo's only one: then the
        # repo's name alone pulls it (with no tag, pull takes the one there is).
        tag = quant if quantization or len(groups) > 1 else None
        yield model(FORMAT_GGUF, tag, names, quantization, projectors[0] if projectors else None)

    weights = sorted(n for n in files if n.endswith(".safetensors") and "/" not in n)
    if "config.json" in files and weights and _weights_complete(files, weights):
        revision_tag = None if "main" in refs else shown
        yield model(FORMAT_SAFETENSORS, revision_tag, sorted(files), _dtype(files))


def _shards_complete(names: list[str]) -> bool:
    """Whether a sharded GGUF has every shard its names count (an unsharded file is complete)."""
    counts = [match.groups() for match in (SHARD_SUFFIX.search(Path(n).name[: -len(".gguf")]) for n in names) if match]
    if not counts:
        return len(names) == 1
    return len(counts) == len(names) == int(counts[0][1])


def _weights_complete(files: dict[str, Any], weights: list[str]) -> bool:
    """Whether every shard a `model.safetensors.index.json` names is in the cache."""
    index = files.get("model.safetensors.index.json")
    if index is None:
        return True
    try:
        shards = set(json.loads(Path(index.file_path).read_text()).get("weight_map", {}).values())
    except (OSError, ValueError, AttributeError):
        return False
    return shards <= set(weights)


def _dtype(files: dict[str, Any]) -> str | None:
    """The checkpoint's dtype as its config says (`bfloat16` → `BF16`), for the quantization column."""
    try:
        config = json.loads(Path(files["config.json"].file_path).read_text())
    except (OSError, ValueError):
        return None
    dtype = config.get("torch_dtype") or config.get("dtype") if isinstance(config, dict) else None
    names = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
    return names.get(dtype, dtype.upper()) if isinstance(dtype, str) else None


# -- search --------------------------------------------------------------------------------------------------


def check_query(query: str, limit: int) -> str:
    """The query as it will be sent (trimmed), or InvalidReference saying what is wrong with it."""
    query = query.strip()
    if not query:
        raise InvalidReference("Say what to search for: `search qwen`.")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidReference(f"The search query is {len(query)} characters; the Hub's model names are far "
                               f"shorter, so at most {MAX_QUERY_CHARS} are accepted.")
    if any(ord(c) < 32 or ord(c) == 127 for c in query):
        raise InvalidReference("The search query has control characters (a line break?); send words only.")
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise InvalidReference(f"The search limit is a number of models from 1 to {MAX_SEARCH_LIMIT}.")
    return query


def _headers() -> dict[str, str]:
    """The search's headers: the token when there is one, and who asks. Not `build_hf_headers`: its telemetry fetches
    `/api/agent-harnesses` once a day from the endpoint set when huggingface_hub was imported (huggingface.co itself
    when HF_ENDPOINT was set later), a request nobody asked for."""
    from ._version import __version__

    token = hub_token()
    return {"user-agent": f"jupyter-modelrunner/{__version__}",
            **({"authorization": f"Bearer {token}"} if token else {})}


def model_format(info: Any) -> str | None:
    """`gguf`, `safetensors` (a checkpoint vLLM serves) or None, from a `ModelInfo`'s tags and library."""
    tags = set(info.tags or [])
    if info.gguf or "gguf" in tags or info.library_name == "gguf":
        return FORMAT_GGUF
    library = info.library_name or ("transformers" if "transformers" in tags else None)
    if (info.safetensors or "safetensors" in tags) and library in VLLM_LIBRARIES:
        return FORMAT_SAFETENSORS
    return None


def search(query: str, *, limit: int = DEFAULT_SEARCH_LIMIT, fmt: str | None = None) -> list[dict[str, Any]]:
    """The Hub's models matching `query` that an engine here runs, most downloaded first: name (as `pull` takes it),
    repo, format, downloads, likes, size on the Hub (bytes), parameters, pipeline tag.

    `fmt` (`gguf` or `safetensors`) asks the Hub for that format only; otherwise twice `limit` are asked for and
    those no engine here runs (ONNX, diffusers, …) are dropped. The query reaches the Hub only as the `search`
    parameter of `GET {HF_ENDPOINT}/api/models`, encoded by the client.
    """
    query = check_query(query, limit)
    if fmt not in (None, FORMAT_GGUF, FORMAT_SAFETENSORS):
        raise InvalidReference(f"Search for `{FORMAT_GGUF}` or `{FORMAT_SAFETENSORS}` models (not {fmt!r}).")
    if hub_offline():
        raise RegistryUnavailable("HF_HUB_OFFLINE is set, so the Hugging Face Hub is not asked; unset it to search "
                                  "(the models already in the HF cache: `ls --hf-cache`).")
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.hf_api import ModelInfo
    from huggingface_hub.utils import get_session, hf_raise_for_status

    endpoint = hub_endpoint()
    params = [("search", query), ("sort", "downloads"), *(("expand", name) for name in SEARCH_FIELDS),
              ("limit", str(limit if fmt else min(2 * limit, MAX_SEARCH_LIMIT))), *((("filter", fmt),) if fmt else ())]
    try:
        # One request through the Hub client's session (its proxies, headers, offline switch), as
        # `HfApi.list_models` makes it, but without its retries (~25 s against a hub that is down, too long for a
        # search box) and without following the answer's `Link` to further pages, wherever it points.
        response = get_session().get(f"{endpoint}/api/models", params=params,
                                     headers=_headers(), timeout=SEARCH_TIMEOUT)
        hf_raise_for_status(response)
        items = response.json()
        if not isinstance(items, list):
            raise ValueError("not a list")
        infos = [ModelInfo(**{"siblings": None, **item}) for item in items
                 if isinstance(item, dict) and isinstance(item.get("id"), str)]
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise AuthenticationFailed(f"The Hugging Face Hub at {endpoint} refused the search ({status}); check "
                                       "HF_TOKEN (or `hf auth login`).") from None
        if status == 429:
            raise RegistryUnavailable(f"The Hugging Face Hub at {endpoint} is rate limiting (429); try again in a "
                                      "minute, or set HF_TOKEN (signed-in users get more requests).") from None
        raise RegistryError(f"The Hugging Face Hub at {endpoint} answered the search with {status}.") from None
    except (OfflineModeIsEnabled, httpx2.HTTPError, OSError) as exc:
        raise RegistryUnavailable(f"The Hugging Face Hub at {endpoint} cannot be reached "
                                  f"({exc.__class__.__name__}); check the network, or HF_ENDPOINT.") from None
    except (ValueError, TypeError, KeyError) as exc:  # an answer that is not the Hub's JSON
        raise RegistryError(f"The Hugging Face Hub at {endpoint} answered the search with something that is not "
                            f"a model list ({exc.__class__.__name__}).") from None
    found = []
    for info in infos:
        kind = model_format(info)
        if kind is None or (fmt and kind != fmt):
            continue
        details = info.gguf if kind == FORMAT_GGUF else info.safetensors
        parameters = details.get("total") if isinstance(details, dict) else getattr(details, "total", None)
        found.append({"name": hf_repo_name(info.id), "repo": info.id, "format": kind,
                      "downloads": info.downloads or 0, "likes": info.likes or 0, "size": info.used_storage,
                      "parameters": parameters, "pipeline_tag": info.pipeline_tag, "engine": ENGINE_OF[kind],
                      "gated": bool(info.gated), "private": bool(info.private)})
    return found[:limit]
