"""Models: the `Store` as its callers use it — add a model, list, find by any name, tag, untag, remove — and the
`Model` they get back.

`Store` puts the layers together: blobs and locks (`blobs.py`), the tag index (`index.py`), bundles (`bundles.py`)
and disk accounting (`usage.py`); what is left here are the operations on whole models, each one change of the
index under its lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import mediatypes as mt
from ..distribution.artifact import Manifest, ModelConfig, digest_hex, parse_config, parse_manifest
from ..errors import ModelNotFound, StoreError
from ..reference import Reference, parse_reference
from .bundles import Bundles, bundle_plan
from .index import Entry, referenced, take_tag
from .names import SHORT_ID_LENGTH, as_reference, familiar_name, find, find_by_tag, matching_tag, try_parse
from .usage import DiskAccounting


@dataclass(frozen=True)
class Model:
    """A model in the store, as `ls` and `inspect` show it."""

    id: str
    tags: tuple[str, ...]
    files: tuple[str, ...]
    manifest: Manifest
    config: ModelConfig
    bundle: Path
    size: int
    #: Where bare names go for the store that holds it: tags under it are shown without the host (`ai/smollm2`).
    default_registry: str | None = None

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:SHORT_ID_LENGTH]

    @property
    def format(self) -> str | None:
        return self.config.format or self.manifest.format

    @property
    def created(self) -> int:
        """Unix time of the artifact's creation (what DMR's API reports), 0 when unknown."""
        if not self.config.created:
            return 0
        try:
            return int(datetime.fromisoformat(self.config.created.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return 0

    def to_json(self) -> dict[str, Any]:
        """DMR's model object: `{id, tags, created, config}` plus our `size`, `bundle` and `multimodal` (it has a
        projector: it takes images)."""
        config = self.config.summary()
        config["format"] = self.format
        inner = self.config.raw.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("source"), dict):
            config["source"] = inner["source"]  # where it came from (a Hugging Face repo, revision and files)
        return {
            "id": self.id,
            "tags": [familiar_name(tag, self.default_registry) for tag in self.tags],
            "created": self.created,
            "config": config,
            "size": self.size,
            "bundle": str(self.bundle),
            "multimodal": self.projector is not None,
        }

    def gguf_files(self) -> list[Path]:
        """The GGUF weights an engine opens, the first shard first: DMR's names (`model.gguf`, `model-0000N-of-…`),
        or, for weights that came in a ModelPack tar layer, the GGUF files it unpacked (no projector)."""
        named = sorted(self.bundle.glob("model*.gguf"))
        if named or not any(layer.media_type in mt.CNCF_TARS for layer in self.manifest.layers):
            return named
        return sorted(p for p in self.bundle.rglob("*.gguf") if "mmproj" not in p.name.lower() and p.is_file())

    @property
    def projector(self) -> Path | None:
        """The multimodal projector an engine loads to see images (`model.mmproj` in the bundle), when the artifact
        has one (a layer of either of Docker's mmproj media types, or ModelPack's `mmproj-*.gguf`); read from the
        manifest, no disk access."""
        if any(relative == "model.mmproj" for _, relative in bundle_plan(self.manifest)):
            return self.bundle / "model.mmproj"
        return None


@dataclass(frozen=True)
class RemoveResult:
    untagged: tuple[str, ...] = ()
    deleted: str | None = None
    freed_bytes: int = 0


class Store(Bundles, DiskAccounting):
    """A model store rooted at `root` (default: `$MODEL_RUNNER_STORE` or under Jupyter's data dir).

    `registry` is the default registry used to resolve short names (`smollm2`) to tags.
    """

    def add_model(self, reference: Reference, manifest: bytes) -> Model:
        """Record a model whose blobs are all present: write its manifest, build its bundle, tag it."""
        parsed = parse_manifest(manifest)
        missing = [b.digest for b in parsed.blobs if not self.has_blob(b.digest)]
        if missing:
            raise StoreError(f"Cannot add {reference.familiar}: blob {missing[0]} is missing; pull it again.")
        hexid = digest_hex(parsed.digest)
        manifest_path = self.root / "manifests" / "sha256" / hexid
        if not manifest_path.exists():
            tmp = manifest_path.with_name(f".{hexid}.{os.getpid()}.tmp")
            tmp.write_bytes(manifest)
            os.replace(tmp, manifest_path)
        self._build_bundle(parsed)
        tag = reference.full
        files = [b.digest for b in parsed.blobs]
        with self._locked_index() as entries:
            dropped = take_tag(entries, tag, keep=parsed.digest)
            entry = next((e for e in entries if e.get("id") == parsed.digest), None)
            if entry is None:
                entries.append({"id": parsed.digest, "tags": [tag], "files": files})
            elif tag not in entry["tags"]:
                entry["tags"].append(tag)
            self._delete_entries(entries, dropped)
        return self._model(parsed.digest, entries)

    def models(self) -> list[Model]:
        entries = self._read_index()
        return [self._model(e["id"], entries) for e in entries]

    def resolve(self, name: str) -> Model:
        """Find a model by full reference, short name (`smollm2`), digest or 12-character id."""
        entries = self._read_index()
        entry = find(entries, name, self.registry)
        if entry is None:
            raise ModelNotFound(
                f"Model {name!r} is not in the local store. Pull it first: `jupyter modelrunner pull {name}` "
                f"(or `%model pull {name}` in a notebook)."
            )
        return self._model(entry["id"], entries)

    def manifest_bytes(self, name: str) -> tuple[bytes, Reference | None]:
        """The stored manifest of `name` and the reference `name` stands for (None for an id)."""
        model = self.resolve(name)
        ref = as_reference(name, model.tags, self.registry)
        return self.manifest_path(model.id).read_bytes(), ref

    def tag(self, source: str, target: str) -> Model:
        """Give the model `source` the additional tag `target` (moving it off any other model)."""
        model = self.resolve(source)
        ref = parse_reference(target, registry=self.registry)
        with self._locked_index() as entries:
            dropped = take_tag(entries, ref.full, keep=model.id)
            entry = next(e for e in entries if e["id"] == model.id)
            if ref.full not in entry["tags"]:
                entry["tags"].append(ref.full)
            self._delete_entries(entries, dropped)
        return self._model(model.id, entries)

    def untag(self, name: str) -> RemoveResult:
        ref = parse_reference(name, registry=self.registry)
        with self._locked_index() as entries:
            entry = find_by_tag(entries, ref, self.registry)
            if entry is None:
                raise ModelNotFound(f"No model is tagged {ref.relative_to(self.registry)!r}.")
            tag = matching_tag(entry, ref, self.registry)
            entry["tags"].remove(tag)
            deleted, freed = (None, 0)
            if not entry["tags"]:
                deleted, freed = entry["id"], self._delete_entries(entries, [entry])
        return RemoveResult(untagged=(familiar_name(tag, self.registry),), deleted=deleted, freed_bytes=freed)

    def remove(self, name: str, *, force: bool = False) -> RemoveResult:
        """Remove a tag, or the model when it was the last tag (or when named by id with `force`).

        Named by a tag the model shares with others, only that tag goes. Named by id while several tags
        point at it, the model is kept unless `force` is given, because the other names would vanish too.
        """
        entries = self._read_index()
        by_tag = find_by_tag(entries, try_parse(name, self.registry), self.registry)
        if by_tag is not None and len(by_tag["tags"]) > 1:
            return self.untag(name)
        model = self.resolve(name)
        with self._locked_index() as entries:
            entry = next((e for e in entries if e["id"] == model.id), None)
            if entry is None:
                raise ModelNotFound(f"Model {name!r} was removed meanwhile.")
            if by_tag is None and len(entry["tags"]) > 1 and not force:
                names = ", ".join(familiar_name(t, self.registry) for t in entry["tags"])
                raise StoreError(
                    f"Model {model.short_id} is tagged {names}; "
                    f"remove one tag at a time, or use --force to remove the model and all its tags."
                )
            tags = tuple(familiar_name(t, self.registry) for t in entry["tags"])
            freed = self._delete_entries(entries, [entry])
        return RemoveResult(untagged=tags, deleted=model.id, freed_bytes=freed)

    def drop_models(self, doomed: Callable[[Entry], bool]) -> list[Entry]:
        """Remove from the index every model for which `doomed(entry)` is true (asked under the index lock, so it
        sees the index as it is now), with its manifest and bundle; returns the entries removed.

        Unlike `remove`, the blobs stay: this is for models that cannot be used (`fsck --repair`), whose intact
        blobs the next pull of the model reuses instead of downloading again; `gc` deletes them if it never
        comes.
        """
        with self._locked_index() as entries:
            dropped = [entry for entry in entries if doomed(entry)]
            for entry in dropped:
                entries.remove(entry)
                shutil.rmtree(self.bundle_path(entry["id"]).parent, ignore_errors=True)
                self.manifest_path(entry["id"]).unlink(missing_ok=True)
        return dropped

    def _model(self, model_id: str, entries: list[Entry]) -> Model:
        entry = next(e for e in entries if e["id"] == model_id)
        try:
            raw = self.manifest_path(model_id).read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"The manifest of model {model_id[:19]} is missing; pull the model again.") from exc
        manifest = parse_manifest(raw)
        try:
            config = parse_config(self.blob_path(manifest.config.digest).read_bytes())
        except FileNotFoundError:
            config = ModelConfig()
        return Model(
            id=model_id, tags=tuple(entry.get("tags", [])), files=tuple(entry.get("files", [])),
            manifest=manifest, config=config, bundle=self.bundle_path(model_id),
            size=sum(layer.size for layer in manifest.layers), default_registry=self.registry,
        )

    def _delete_entries(self, entries: list[Entry], doomed: list[Entry]) -> int:
        """Drop models from `entries` (caller holds the lock) and delete what nothing else references."""
        if not doomed:
            return 0
        for entry in doomed:
            entries.remove(entry)
        used = referenced(entries)
        freed = 0
        for entry in doomed:
            shutil.rmtree(self.bundle_path(entry["id"]).parent, ignore_errors=True)
            self.manifest_path(entry["id"]).unlink(missing_ok=True)
            for digest in entry.get("files", []):
                if digest in used:
                    continue
                path = self.blob_path(digest)
                with contextlib.suppress(FileNotFoundError):
                    freed += path.stat().st_size
                    path.unlink()
        return freed
