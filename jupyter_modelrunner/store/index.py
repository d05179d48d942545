"""The tag index: `models.json`, the list of models the store holds and the tags and blobs of each.

The Jupyter server, kernels and the CLI may change it at the same time: every change happens under a file lock
and is written atomically (a new file renamed over the old), so a reader sees the index before or after, never
half of it. The format, `{"models": [{"id", "tags", "files"}]}`, is the one stores have had since the start.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..errors import StoreError
from .blobs import Blobs

INDEX_FILE = "models.json"

#: One model of the index: `{"id", "tags", "files"}`.
Entry = dict[str, Any]


class TagIndex(Blobs):
    """The store's blobs plus the index of models and tags; `registry` is where bare names (`smollm2`) go."""

    def __init__(self, root: Path | str | None = None, *, registry: str | None = None) -> None:
        super().__init__(root)
        self.registry = registry

    def index_entries(self) -> list[Entry]:
        """A snapshot of the index: `[{"id", "tags", "files"}]` (what `fsck` checks against the disk)."""
        return self._read_index()

    def index_lock(self) -> FileLock:
        """The store-wide lock every change of the index is made under (held to keep the index as it is)."""
        return FileLock(self._index_lock_path)

    @contextlib.contextmanager
    def _locked_index(self) -> Iterator[list[Entry]]:
        """Yield the index for modification under the store-wide lock; written back atomically."""
        with self.index_lock():
            entries = self._read_index()
            yield entries
            self._write_index(entries)

    def _read_index(self) -> list[Entry]:
        path = self.root / INDEX_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise StoreError(f"The store index {path} is unreadable ({exc}); move it aside to rebuild.") from exc
        models = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(models, list):
            raise StoreError(f"The store index {path} is not a model index; move it aside to rebuild.")
        return models

    def _write_index(self, entries: list[Entry]) -> None:
        path = self.root / INDEX_FILE
        tmp = path.with_name(f".{INDEX_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"models": entries}, indent=2))
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def _indexed(self, model_id: str) -> bool:
        return any(e.get("id") == model_id for e in self._read_index())


def take_tag(entries: list[Entry], tag: str, keep: str) -> list[Entry]:
    """Remove `tag` from every model but `keep`; return the models left with no tag at all."""
    dropped = []
    for entry in entries:
        if entry["id"] != keep and tag in entry.get("tags", []):
            entry["tags"].remove(tag)
            if not entry["tags"]:
                dropped.append(entry)
    return dropped


def referenced(entries: Iterable[Entry]) -> set[str]:
    """Every blob digest some model of `entries` uses."""
    return {digest for e in entries for digest in e.get("files", [])}
