"""Where the Hugging Face Hub and its cache are, read from the environment each time they are needed.

`huggingface_hub` reads these once, at import; the runner may live in a process whose environment changes (a
kernel, the tests), so the pull (`hub.py`) and the cache listing and search (`hub_catalog.py`) read them here, by
huggingface_hub's own rules, at the moment they act. Importing this module imports no `huggingface_hub`.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = frozenset({"1", "ON", "YES", "TRUE"})


def hub_endpoint() -> str:
    """`$HF_ENDPOINT` (a mirror), else the Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_home() -> Path:
    """`$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`."""
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface"


def hub_cache_dir() -> Path:
    """The HF cache: `$HF_HUB_CACHE` (or the older `$HUGGINGFACE_HUB_CACHE`), else `<HF_HOME>/hub`."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(os.path.expandvars(explicit)).expanduser() if explicit else hf_home() / "hub"


def hub_offline() -> bool:
    """`HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`): no request leaves; the cache answers or nothing does."""
    return any(os.environ.get(name, "").strip().upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_token(explicit: str | None = None) -> str | None:
    """The token to send: the one a client passed with its request, else `$HF_TOKEN` (or the older
    `$HUGGING_FACE_HUB_TOKEN`), else the file `hf auth login` writes (`$HF_TOKEN_PATH`, else `<HF_HOME>/token`).
    Never logged."""
    if explicit:
        return explicit.strip() or None
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    path = Path(os.environ.get("HF_TOKEN_PATH") or hf_home() / "token").expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
