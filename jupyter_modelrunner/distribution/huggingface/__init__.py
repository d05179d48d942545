"""Models from the Hugging Face Hub and its cache, through `huggingface_hub`: `hub` (the client, its settings and
errors), `selection` (which files a tag means, and `hf_model_name`, the one place a Hub model's local name is made),
`pulling` (cache first, link into the store, package as a Docker-format artifact).

`huggingface_hub` is imported only when a pull runs, so naming and selection stay cheap to import.
"""

from __future__ import annotations

from .selection import DEFAULT_QUANTIZATION, RepoFile, choose, hf_model_name, is_quantization, quantization_of

#: The header a client sends its own Hugging Face token in with `POST models/create` (never logged or stored).
HF_TOKEN_HEADER = "X-HF-Token"

__all__ = ["DEFAULT_QUANTIZATION", "HF_TOKEN_HEADER", "RepoFile", "choose", "hf_model_name", "is_quantization",
           "quantization_of"]
