"""The local model store: content-addressed blobs, manifests, an index of tags, and runnable bundles.

Layout (Docker Model Runner's, see FORMAT.md §3)::

    blobs/sha256/<hex>                 immutable, read-only; `<hex>.incomplete` while downloading
    manifests/sha256/<hex>             the exact manifest bytes (their sha256 is the model id)
    bundles/sha256/<hex>/model/...     what an engine opens: hard links to the blobs, no copies
    models.json                        {"models": [{"id", "tags", "files"}]}

The Jupyter server, kernels and the CLI may use one store at the same time: every index change happens
under a file lock and is written atomically, downloads take a per-blob lock (so a `<hex>.incomplete` whose
lock nobody holds belongs to no download in progress), every pull and package holds the store's `adding`
lock shared while it counts on blobs being present, and bundles are built in a private folder and renamed
into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from . import mediatypes as mt
from .distribution.artifact import (
    Layer,
    Manifest,
    ModelConfig,
    digest_hex,
    parse_config,
    parse_manifest,
    safe_relative_path,
    sha256_digest,
)
from .errors import (
    InsufficientStorage,
    InvalidReference,
    ModelNotFound,
    StoreError,
    TarLayerTooLarge,
    UnsafePath,
    UnsupportedArtifact,
)
from .paths import default_store_path
from .reference import Reference, parse_reference

log = logging.getLogger(__name__)

INDEX_FILE = "models.json"
#: Under `locks/`: shared by pulls and packages in progress, exclusive for `fsck --repair` (see `Store.adding`).
ADDING_LOCK = "adding.lock"
COPY_CHUNK_BYTES = 4 * 1024 * 1024
SHORT_ID_LENGTH = 12
#: How many times its own size a tar layer may unpack to (`Store.max_tar_expansion`). A plain tar never unpacks to
#: more than its size (only a sparse entry does), and compressed text — the configs and tokenizers these layers
#: carry — to a few times its size; 32 leaves a wide margin for honest layers while a bomb (64 KiB of gzip that is
#: 64 MiB of zeros, or a sparse header claiming terabytes) is refused before it fills the disk.
TAR_EXPANSION_LIMIT = 32
#: However small the layer, it may unpack to this much: tiny layers of well-compressed text are never refused.
TAR_UNPACK_FLOOR_BYTES = 16 * 1024 * 1024


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
        return sorted(self.bundle.glob("model*.gguf"))

    @property
    def projector(self) -> Path | None:
        """The multimodal projector an engine loads to see images (`model.mmproj` in the bundle), when the artifact
        has one (a layer of either of Docker's mmproj media types); read from the manifest, no disk access."""
        if any(layer.media_type in (mt.MMPROJ, mt.MMPROJ_SPEC) for layer in self.manifest.layers):
            return self.bundle / "model.mmproj"
        return None


@dataclass(frozen=True)
class RemoveResult:
    untagged: tuple[str, ...] = ()
    deleted: str | None = None
    freed_bytes: int = 0


@dataclass(frozen=True)
class DiskUsage:
    """Bytes under `blobs/`, split so the parts add up to `total`."""

    models: int = 0
    orphans: int = 0
    incomplete: int = 0
    manifests: int = 0
    total: int = 0
    model_count: int = 0
    detail: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, int]:
        return {"models": self.models, "orphans": self.orphans, "incomplete": self.incomplete,
                "manifests": self.manifests, "total": self.total, "model_count": self.model_count}


class Store:
    """A model store rooted at `root` (default: `$MODEL_RUNNER_STORE` or under Jupyter's data dir).

    `registry` is the default registry used to resolve short names (`smollm2`) to tags.
    """

    #: A tar layer may unpack to this many times its size (at least TAR_UNPACK_FLOOR_BYTES); set it on a store
    #: (or the class) for artifacts of unusually compressible side files.
    max_tar_expansion: float = TAR_EXPANSION_LIMIT

    def __init__(self, root: Path | str | None = None, *, registry: str | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_store_path()
        self.registry = registry
        # Not group- or world-writable whatever the umask: the lease refuses a store others could write (lease.py).
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        for sub in ("blobs/sha256", "manifests/sha256", "bundles/sha256", "locks", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._index_lock_path = self.root / "locks" / "index.lock"
        self._adding_lock_path = self.root / "locks" / ADDING_LOCK

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- blobs ----------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def incomplete_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / f"{digest_hex(digest)}.incomplete"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_lock(self, digest: str) -> FileLock:
        """Held while a process downloads or writes one blob; others wait, then find it present."""
        return FileLock(self.root / "locks" / f"{digest_hex(digest)}.lock")

    @contextlib.contextmanager
    def adding(self) -> Iterator[None]:
        """Held, shared, by every pull and package from its first look at which blobs are present until its model
        is in the index; any number of them at once, in any process.

        A writer decides early that a blob is there and needs no download, and relies on that when it adds its
        model. `fsck --repair` deletes blobs and drops models only while it holds this lock exclusively
        (`adding_excluded`), so it never pulls a blob from under a writer that counted on it.
        """
        with _flock(self._adding_lock_path, shared=True):
            yield

    @contextlib.contextmanager
    def adding_excluded(self, wait: float) -> Iterator[bool]:
        """Exclusive `adding`: yields True once no pull or package is in progress (waiting up to `wait` seconds
        for those running to end), or False, holding nothing, when they do not end in time. Writers that start
        meanwhile wait for the block to end, so keep it short."""
        with _flock(self._adding_lock_path, shared=False, wait=wait) as held:
            yield held

    def commit_blob(self, digest: str, incomplete: Path) -> Path:
        """Move a verified download into place, read-only so engines cannot change what we hashed."""
        target = self.blob_path(digest)
        incomplete.chmod(0o444)
        os.replace(incomplete, target)
        return target

    def add_blob_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not self.has_blob(digest):
            with self._temp_file() as (tmp, handle):
                handle.write(data)
                handle.close()
                self.commit_blob(digest, tmp)
        return digest

    def add_blob_from_file(self, source: Path) -> tuple[str, int]:
        """Copy `source` into the store, hashing as it is copied; returns `(digest, size)`."""
        hasher, size = hashlib.sha256(), 0
        with self._temp_file() as (tmp, handle), Path(source).open("rb") as src:
            try:
                while chunk := src.read(COPY_CHUNK_BYTES):
                    handle.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
                handle.close()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientStorage(f"The disk under the model store is full while adding {source}.") from exc
                raise
            digest = "sha256:" + hasher.hexdigest()
            with self.blob_lock(digest):
                if not self.has_blob(digest):
                    self.commit_blob(digest, tmp)
        return digest, size

    @contextlib.contextmanager
    def _temp_file(self) -> Iterator[tuple[Path, Any]]:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="blob-")
        path = Path(name)
        handle = os.fdopen(fd, "wb")
        try:
            yield path, handle
        finally:
            handle.close()
            path.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    # -- index ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked_index(self) -> Iterator[list[dict[str, Any]]]:
        """Yield the index for modification under the store-wide lock; written back atomically."""
        with FileLock(self._index_lock_path):
            entries = self._read_index()
            yield entries
            self._write_index(entries)

    def index_entries(self) -> list[dict[str, Any]]:
        """A snapshot of the index: `[{"id", "tags", "files"}]` (what `fsck` checks against the disk)."""
        return self._read_index()

    def _read_index(self) -> list[dict[str, Any]]:
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

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        path = self.root / INDEX_FILE
        tmp = path.with_name(f".{INDEX_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"models": entries}, indent=2))
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    # -- models ---------------------------------------------------------------------------------------

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
            dropped = self._take_tag(entries, tag, keep=parsed.digest)
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
        entry = self._find(entries, name)
        if entry is None:
            raise ModelNotFound(
                f"Model {name!r} is not in the local store. Pull it first: `jupyter modelrunner pull {name}` "
                f"(or `%model pull {name}` in a notebook)."
            )
        return self._model(entry["id"], entries)

    def manifest_bytes(self, name: str) -> tuple[bytes, Reference | None]:
        """The stored manifest of `name` and the reference `name` stands for (None for an id)."""
        model = self.resolve(name)
        ref = self._as_reference(name, model)
        return self.manifest_path(model.id).read_bytes(), ref

    def tag(self, source: str, target: str) -> Model:
        """Give the model `source` the additional tag `target` (moving it off any other model)."""
        model = self.resolve(source)
        ref = parse_reference(target, registry=self.registry)
        with self._locked_index() as entries:
            dropped = self._take_tag(entries, ref.full, keep=model.id)
            entry = next(e for e in entries if e["id"] == model.id)
            if ref.full not in entry["tags"]:
                entry["tags"].append(ref.full)
            self._delete_entries(entries, dropped)
        return self._model(model.id, entries)

    def untag(self, name: str) -> RemoveResult:
        ref = parse_reference(name, registry=self.registry)
        with self._locked_index() as entries:
            entry = self._find_by_tag(entries, ref)
            if entry is None:
                raise ModelNotFound(f"No model is tagged {ref.relative_to(self.registry)!r}.")
            tag = self._matching_tag(entry, ref)
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
        by_tag = self._find_by_tag(entries, self._try_parse(name))
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

    def discard_unreferenced(self, digests: list[str]) -> None:
        """Delete blobs of a failed pull that no model uses, so a refused artifact leaves nothing behind."""
        with FileLock(self._index_lock_path):
            referenced = self._referenced(self._read_index())
            for digest in digests:
                if digest not in referenced:
                    self.blob_path(digest).unlink(missing_ok=True)

    def drop_models(self, doomed: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
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

    # -- disk -----------------------------------------------------------------------------------------

    def df(self) -> DiskUsage:
        entries = self._read_index()
        referenced = self._referenced(entries)
        models = orphans = incomplete = 0
        for path in (self.root / "blobs" / "sha256").iterdir():
            size = path.stat().st_size
            if path.name.endswith(".incomplete"):
                incomplete += size
            elif f"sha256:{path.name}" in referenced:
                models += size
            else:
                orphans += size
        manifests = sum(p.stat().st_size for p in (self.root / "manifests" / "sha256").iterdir())
        return DiskUsage(models, orphans, incomplete, manifests, models + orphans + incomplete + manifests,
                         len(entries))

    def gc(self, *, min_age_seconds: float = 3600.0) -> DiskUsage:
        """Delete blobs no model references and abandoned `.incomplete` files; returns what was freed.

        Files younger than `min_age_seconds` are kept: a pull in another process commits its blobs before
        it adds the model to the index, and its partial downloads must survive until it resumes.
        """
        now = time.time()
        orphans = incomplete = 0
        with FileLock(self._index_lock_path):
            entries = self._read_index()
            referenced = self._referenced(entries)
            for path in list((self.root / "blobs" / "sha256").iterdir()):
                stat = path.stat()
                if now - stat.st_mtime < min_age_seconds:
                    continue
                name = path.name.removesuffix(".incomplete")
                if path.name.endswith(".incomplete"):
                    lock = FileLock(self.root / "locks" / f"{name}.lock")
                    try:
                        with lock.acquire(timeout=0):
                            path.unlink(missing_ok=True)
                            incomplete += stat.st_size
                    except Timeout:
                        continue  # a download is in progress
                elif f"sha256:{name}" not in referenced:
                    path.unlink(missing_ok=True)
                    orphans += stat.st_size
            live = {digest_hex(e["id"]) for e in entries}
            for path in list((self.root / "bundles" / "sha256").iterdir()):
                if path.name.split(".", 1)[0] not in live and now - path.stat().st_mtime >= min_age_seconds:
                    shutil.rmtree(path, ignore_errors=True)
            for path in list((self.root / "manifests" / "sha256").iterdir()):
                if path.name not in live and now - path.stat().st_mtime >= min_age_seconds:
                    path.unlink(missing_ok=True)
        return DiskUsage(orphans=orphans, incomplete=incomplete, total=orphans + incomplete)

    # -- internals ------------------------------------------------------------------------------------

    def manifest_path(self, model_id: str) -> Path:
        return self.root / "manifests" / "sha256" / digest_hex(model_id)

    def bundle_path(self, model_id: str) -> Path:
        return self.root / "bundles" / "sha256" / digest_hex(model_id) / "model"

    def _model(self, model_id: str, entries: list[dict[str, Any]]) -> Model:
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

    def _try_parse(self, name: str) -> Reference | None:
        try:
            return parse_reference(name, registry=self.registry)
        except InvalidReference:
            return None

    def _find(self, entries: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
        name = name.strip()
        ref = self._try_parse(name)
        entry = self._find_by_tag(entries, ref)
        if entry is not None:
            return entry
        if ref is not None and ref.digest:
            entry = next((e for e in entries if e["id"] == ref.digest), None)
            if entry is not None:
                return entry
        prefix = name.removeprefix("sha256:").lower()
        if len(prefix) >= SHORT_ID_LENGTH and all(c in "0123456789abcdef" for c in prefix):
            hits = [e for e in entries if e["id"].removeprefix("sha256:").startswith(prefix)]
            if len(hits) == 1:
                return hits[0]
        return None

    def _find_by_tag(self, entries: list[dict[str, Any]], ref: Reference | None) -> dict[str, Any] | None:
        if ref is None:
            return None
        for entry in entries:
            if ref.full in entry.get("tags", []):
                return entry
        # A short name typed while the default registry was elsewhere: match repository:tag if unique.
        hits = [e for e in entries if any(self._same_name(t, ref) for t in e.get("tags", []))]
        return hits[0] if len(hits) == 1 else None

    def _matching_tag(self, entry: dict[str, Any], ref: Reference) -> str:
        if ref.full in entry["tags"]:
            return ref.full
        return next(t for t in entry["tags"] if self._same_name(t, ref))

    def _same_name(self, tag: str, ref: Reference) -> bool:
        other = self._try_parse(tag)
        if other is None:
            return False
        return (other.repository, other.tag, other.digest) == (ref.repository, ref.tag, ref.digest)

    def _as_reference(self, name: str, model: Model) -> Reference | None:
        ref = self._try_parse(name)
        if ref is not None:
            for tag in model.tags:
                if tag == ref.full or self._same_name(tag, ref):
                    return parse_reference(tag)
        return parse_reference(model.tags[0]) if model.tags else None

    @staticmethod
    def _take_tag(entries: list[dict[str, Any]], tag: str, keep: str) -> list[dict[str, Any]]:
        """Remove `tag` from every model but `keep`; return the models left with no tag at all."""
        dropped = []
        for entry in entries:
            if entry["id"] != keep and tag in entry.get("tags", []):
                entry["tags"].remove(tag)
                if not entry["tags"]:
                    dropped.append(entry)
        return dropped

    @staticmethod
    def _referenced(entries: Iterable[dict[str, Any]]) -> set[str]:
        return {digest for e in entries for digest in e.get("files", [])}

    def _delete_entries(self, entries: list[dict[str, Any]], doomed: list[dict[str, Any]]) -> int:
        """Drop models from `entries` (caller holds the lock) and delete what nothing else references."""
        if not doomed:
            return 0
        for entry in doomed:
            entries.remove(entry)
        referenced = self._referenced(entries)
        freed = 0
        for entry in doomed:
            shutil.rmtree(self.bundle_path(entry["id"]).parent, ignore_errors=True)
            self.manifest_path(entry["id"]).unlink(missing_ok=True)
            for digest in entry.get("files", []):
                if digest in referenced:
                    continue
                path = self.blob_path(digest)
                with contextlib.suppress(FileNotFoundError):
                    freed += path.stat().st_size
                    path.unlink()
        return freed

    # -- bundles --------------------------------------------------------------------------------------

    def relink_bundle_file(self, model_id: str, digest: str, relative: str) -> bool:
        """Make `relative` in the model's bundle a hard link to the blob `digest` again (`fsck --repair`), replacing
        whatever is there in one rename, so an engine starting meanwhile sees the old file or the new, never none.
        False when the model is no longer in the index (then nothing is touched)."""
        with FileLock(self._index_lock_path):  # no `rm` of the model meanwhile
            if not any(e.get("id") == model_id for e in self._read_index()):
                return False
            dest = _inside(self.bundle_path(model_id), relative)
            tmp = dest.with_name(f".{dest.name}.relink-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            try:
                self._link(self.blob_path(digest), tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        return True

    def rebuild_bundle(self, model_id: str) -> bool:
        """Build the model's bundle anew from its blobs and put it in place of the old one (`fsck --repair`).
        False when the model is no longer in the index (then nothing is built)."""
        with FileLock(self._index_lock_path):
            if not any(e.get("id") == model_id for e in self._read_index()):
                return False
            self._build_bundle(parse_manifest(self.manifest_path(model_id).read_bytes()), replace=True)
        return True

    def _build_bundle(self, manifest: Manifest, *, replace: bool = False) -> Path:
        """Lay out the runnable folder an engine opens, from hard links to the verified blobs.

        An existing folder is kept (another process built it), unless `replace`: then the new one takes its
        place and the old one is deleted with the staging folder.
        """
        final = self.bundle_path(manifest.digest)
        if final.is_dir() and not replace:
            return final
        staging = Path(tempfile.mkdtemp(dir=final.parent.parent, prefix=f"{digest_hex(manifest.digest)}.tmp-"))
        try:
            model_dir = staging / "model"
            model_dir.mkdir()
            for layer, relative in bundle_plan(manifest):
                if layer.media_type in mt.TAR_LAYERS:
                    into = _inside(model_dir, relative) if relative else model_dir
                    _extract_tar(self.blob_path(layer.digest), into, model_dir, expansion=self.max_tar_expansion)
                else:
                    self._link(self.blob_path(layer.digest), _inside(model_dir, relative))
            final.parent.mkdir(parents=True, exist_ok=True)
            if replace and final.is_dir():
                os.rename(final, staging / "old")  # deleted with the staging folder below
            try:
                os.rename(model_dir, final)
            except OSError as exc:
                if not final.is_dir():  # anything but "another process built it first"
                    raise StoreError(f"Cannot create the model folder {final}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    @staticmethod
    def _link(blob: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            raise UnsupportedArtifact(f"The artifact names the file {dest.name!r} twice.")
        try:
            os.link(blob, dest)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(blob, dest)  # hard links impossible here (another filesystem): copy


def bundle_plan(manifest: Manifest) -> list[tuple[Layer, str]]:
    """Which file each layer becomes inside `model/` (DMR's names: `model.gguf`, `template.jinja`, …)."""
    ggufs = [layer for layer in manifest.layers if layer.media_type == mt.GGUF]
    weights = [layer for layer in manifest.layers if layer.media_type == mt.SAFETENSORS]
    plan: list[tuple[Layer, str]] = []
    for layer in manifest.layers:
        kind = layer.media_type
        if kind == mt.GGUF:
            n = len(ggufs)
            plan.append((layer, "model.gguf" if n == 1 else f"model-{ggufs.index(layer) + 1:05d}-of-{n:05d}.gguf"))
        elif kind in (mt.MMPROJ, mt.MMPROJ_SPEC):
            plan.append((layer, "model.mmproj"))
        elif kind == mt.CHAT_TEMPLATE:
            plan.append((layer, "template.jinja"))
        elif kind == mt.SAFETENSORS:
            n = len(weights)
            default = "model.safetensors" if n == 1 else f"model-{weights.index(layer) + 1:05d}-of-{n:05d}.safetensors"
            plan.append((layer, layer.filepath or layer.title or default))
        elif kind == mt.MODEL_FILE:
            name = layer.filepath or layer.title
            if not name:
                raise UnsupportedArtifact(f"Layer {layer.digest[:19]} is a model file without a file path annotation.")
            plan.append((layer, name))
        elif kind in mt.TAR_LAYERS:
            plan.append((layer, layer.filepath or ""))
    return plan


def _inside(root: Path, relative: str) -> Path:
    """`root/relative`, proven not to escape `root` even through existing symlinks."""
    relative = safe_relative_path(relative)
    dest = root / relative
    resolved_root = root.resolve()
    if not dest.parent.resolve().is_relative_to(resolved_root) and dest.parent != root:
        raise UnsafePath(f"Refusing file path {relative!r}: it resolves outside the model folder.")
    return dest


def tar_unpack_cap(layer_bytes: int, expansion: float = TAR_EXPANSION_LIMIT) -> int:
    """The most a tar layer of `layer_bytes` may unpack to (see TAR_EXPANSION_LIMIT for why)."""
    return max(TAR_UNPACK_FLOOR_BYTES, int(layer_bytes * expansion))


def _extract_tar(blob: Path, into: Path, model_dir: Path, *, expansion: float = TAR_EXPANSION_LIMIT) -> None:
    """Unpack a config/dir tar layer, allowing only regular files and folders with safe relative names.

    Every file is created, never opened: the bundle holds hard links to shared blobs, so writing to a path that is
    already there (another layer's file, an earlier entry of the same name) would rewrite a blob other models use.
    The layer may unpack to `tar_unpack_cap` bytes in all, checked against each entry's declared size (a sparse
    entry's is its unpacked size) before a byte of it is written, and counted again while it is.
    """
    base = model_dir.resolve()
    layer_bytes = blob.stat().st_size
    cap = tar_unpack_cap(layer_bytes, expansion)
    unpacked = 0
    try:
        into.mkdir(parents=True, exist_ok=True)
        if not into.resolve().is_relative_to(base):
            raise UnsafePath(f"Refusing to unpack a tar layer outside the model folder ({into}).")
        with tarfile.open(blob, "r:*") as tar:
            for member in tar:
                name = safe_relative_path(member.name, what="tar entry")
                dest = into / name
                if not dest.parent.resolve().is_relative_to(base) and dest.parent != into:
                    raise UnsafePath(f"Refusing tar entry {member.name!r}: it resolves outside the model folder.")
                if member.isdir():
                    _make_folder(dest, member.name)
                    continue
                if not member.isreg():
                    kind = "link" if member.issym() or member.islnk() else "device or special file"
                    raise UnsafePath(f"Refusing tar entry {member.name!r}: a {kind} is not allowed in a model.")
                if unpacked + member.size > cap:
                    raise _too_large(member.name, unpacked + member.size, layer_bytes, cap, expansion)
                _make_folder(dest.parent, member.name)
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source, _create(dest, member.name) as out:
                    while chunk := source.read(COPY_CHUNK_BYTES):
                        unpacked += len(chunk)
                        if unpacked > cap:
                            raise _too_large(member.name, unpacked, layer_bytes, cap, expansion)
                        out.write(chunk)
    except tarfile.TarError as exc:
        raise UnsupportedArtifact(f"A tar layer of the model is not a valid tar archive ({exc}).") from exc


def _make_folder(path: Path, entry: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UnsafePath(f"Refusing tar entry {entry!r}: it needs a folder where the model already has a file "
                         f"({exc.filename or path}).") from exc


def _create(dest: Path, entry: str) -> Any:
    """A new file at `dest` (0644), opened for writing; never an existing path, never through a link."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError as exc:
        raise UnsafePath(f"Refusing tar entry {entry!r}: {dest.name!r} is already in the model (a file of another "
                         "layer, or an earlier entry); a tar layer may add files, never rewrite one.") from exc
    except NotADirectoryError as exc:
        raise UnsafePath(f"Refusing tar entry {entry!r}: it needs a folder where the model already has a file.") \
            from exc
    os.fchmod(fd, 0o644)  # whatever the umask: engines may run as another user
    return os.fdopen(fd, "wb")


def _too_large(entry: str, total: int, layer_bytes: int, cap: int, expansion: float) -> TarLayerTooLarge:
    return TarLayerTooLarge(
        f"Refusing tar entry {entry!r}: it takes the tar layer to {_mib(total)} unpacked, but a layer of "
        f"{_mib(layer_bytes)} may unpack to at most {_mib(cap)} ({expansion:g} times its size, at least "
        f"{_mib(TAR_UNPACK_FLOOR_BYTES)}). A model's tar layers hold configs and tokenizers; if this artifact is "
        "genuine, raise `Store.max_tar_expansion`.")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):,.1f} MiB"


@contextlib.contextmanager
def _flock(path: Path, *, shared: bool, wait: float | None = None) -> Iterator[bool]:
    """`flock` on `path`, shared or exclusive, on a descriptor of its own: yields whether it is held.

    `flock` (not `fcntl`'s record locks) because its locks belong to the open file, so two threads of one process
    exclude each other just as two processes do; the kernel drops them when the process dies. `wait` None
    blocks; otherwise it is how many seconds to keep trying.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if wait is None:
            fcntl.flock(fd, mode)
            held = True
        else:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    held = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        held = False
                        break
                    time.sleep(0.05)
        yield held
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def familiar_name(tag: str, default: str | None = None) -> str:
    try:
        return parse_reference(tag).relative_to(default)
    except InvalidReference:
        return tag
