"""Export and import: a model as one tar archive, the way Docker Model Runner moves it.

DMR writes `blobs/sha256/<hex>` for the config and every layer, then the manifest as `manifest.json`
(`GET models/{name}/export`), and `POST models/load` with that tar as its body stores the model (DMR's
`pkg/distribution/tarball`). Ours is the same archive plus an OCI image layout beside it (`oci-layout`, `index.json`
naming the model, the manifest as a blob too), so DMR loads ours, we load DMR's, and OCI tools (`skopeo copy
oci-archive:…`) read it. The archive holds the model's tags in `index.json`; DMR's hold none, so their import needs a
name.

Both ways stream: export yields the archive in chunks straight from the blobs; import reads the tar as it arrives,
hashing each blob into the store's `tmp/` and keeping it only when its bytes hash to its name. An archive is input
from anyone: links, devices, absolute and `..` paths are refused, a size cap bounds what is read, and a failed import
deletes every blob it added.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .. import mediatypes as mt
from ..distribution.artifact import MAX_MANIFEST_BYTES, digest_hex, parse_config, parse_manifest, safe_relative_path
from ..errors import (
    ArchiveDigestMismatch,
    ArchiveTooLarge,
    InsufficientStorage,
    ModelRunnerError,
    UnsafePath,
    UnsupportedArtifact,
)
from ..reference import Reference, parse_reference
from ..sizes import format_bytes
from .blobs import COPY_CHUNK_BYTES
from .models import Model, Store

ARCHIVE_MANIFEST = "manifest.json"
ARCHIVE_INDEX = "index.json"
OCI_LAYOUT = "oci-layout"
#: containerd's annotation for an image's full name; OCI's `ref.name` holds only the tag.
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
MAX_INDEX_BYTES = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE


# -- export ----------------------------------------------------------------------------------------------------


def export_archive(store: Store, name: str) -> tuple[Model, Iterator[bytes]]:
    """The model `name` and its archive as chunks (at most COPY_CHUNK_BYTES each), read from the blobs as the
    consumer asks: a model of any size costs one chunk of memory. Raises ModelNotFound at once, before any chunk."""
    model = store.resolve(name)
    raw = store.manifest_path(model.id).read_bytes()
    return model, _archive_chunks(store, model, raw)


def _archive_chunks(store: Store, model: Model, raw: bytes) -> Iterator[bytes]:
    yield _header("blobs/", 0, directory=True)
    yield _header("blobs/sha256/", 0, directory=True)
    seen: set[str] = set()
    for blob in model.manifest.blobs:  # DMR writes layers then config; any order loads
        if blob.digest in seen:
            continue
        seen.add(blob.digest)
        path = store.blob_path(blob.digest)
        size = path.stat().st_size
        yield _header(f"blobs/sha256/{digest_hex(blob.digest)}", size)
        with path.open("rb") as handle:
            while chunk := handle.read(COPY_CHUNK_BYTES):
                yield chunk
        yield _padding(size)
    yield from _member(f"blobs/sha256/{digest_hex(model.id)}", raw)
    yield from _member(OCI_LAYOUT, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    yield from _member(ARCHIVE_INDEX, _layout_index(model, raw))
    yield from _member(ARCHIVE_MANIFEST, raw)
    yield b"\0" * (2 * _BLOCK)  # end of archive


def _layout_index(model: Model, raw: bytes) -> bytes:
    descriptors = []
    for tag in model.tags:
        descriptor: dict[str, Any] = {"mediaType": model.manifest.media_type, "digest": model.id, "size": len(raw),
                                      "annotations": {ANNOTATION_IMAGE_NAME: tag,
                                                      ANNOTATION_REF_NAME: tag.rpartition(":")[2]}}
        if model.manifest.artifact_type:
            descriptor["artifactType"] = model.manifest.artifact_type
        descriptors.append(descriptor)
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}, indent=2).encode()


def _member(name: str, data: bytes) -> Iterator[bytes]:
    yield _header(name, len(data))
    yield data
    yield _padding(len(data))


def _header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o755 if directory else 0o644, 0
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


# -- import ----------------------------------------------------------------------------------------------------


class _Bounded(io.RawIOBase):
    """`source` read through, refusing (ArchiveTooLarge) once more than `limit` bytes have come."""

    def __init__(self, source: IO[bytes], limit: int | None) -> None:
        self._source, self._limit, self.read_bytes = source, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        n = len(data)
        self.read_bytes += n
        if self._limit is not None and self.read_bytes > self._limit:
            raise too_large(self._limit)
        buffer[:n] = data
        return n


def too_large(limit: int) -> ArchiveTooLarge:
    return ArchiveTooLarge(f"The model archive is larger than the {format_bytes(limit)} this runner imports "
                           "(c.ModelRunner.max_import_bytes); nothing of it was kept.")


def import_archive(store: Store, source: IO[bytes], *, tag: str | None = None, limit: int | None = None) -> Model:
    """Store the model in the tar archive read from `source` (see the module docstring) and name it `tag`, or by the
    names its `index.json` holds; returns it. Every blob is hashed and kept only under its own digest; on any refusal
    the blobs this import added are deleted and the store is as it was."""
    added: list[str] = []
    found: dict[str, bytes] = {}
    with store.adding():  # blobs it finds present stay until the model is indexed (see Store.adding)
        try:
            stream = io.BufferedReader(_Bounded(source, limit), COPY_CHUNK_BYTES)
            try:
                with tarfile.open(fileobj=stream, mode="r|*") as tar:
                    for member in tar:
                        _take(store, tar, member, limit, found, added)
            except tarfile.TarError as exc:
                raise UnsupportedArtifact(f"The upload is not a valid tar archive of a model ({exc}).") from exc
            raw = _manifest_of(store, found)
            manifest = parse_manifest(raw)
            for blob in manifest.blobs:
                if not store.has_blob(blob.digest):
                    raise UnsupportedArtifact(f"The archive lacks blob {blob.digest[:19]} of its model; export it "
                                              "again.")
                if store.blob_path(blob.digest).stat().st_size != blob.size:
                    raise UnsupportedArtifact(f"Blob {blob.digest[:19]} of the archive is not the size its manifest "
                                              f"says ({blob.size:,} bytes): the archive is corrupt.")
            parse_config(store.blob_path(manifest.config.digest).read_bytes())
            names = _names(store, tag, found.get(ARCHIVE_INDEX), manifest.digest)
            model = store.add_model(names[0], raw)
            for other in names[1:]:
                model = store.tag(model.id, other.full)
        except BaseException:
            store.discard_unreferenced(added)
            raise
    store.discard_unreferenced([d for d in added if d == manifest.digest])  # the layout's copy; the store has its own
    return model


def _take(store: Store, tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int | None,
          found: dict[str, bytes], added: list[str]) -> None:
    """One member of the archive: a blob into the store, a small file kept in `found`, anything else skipped."""
    if member.isdir() and member.name in (".", "./"):  # `tar -C folder -cf x.tar .` starts so
        return
    name = safe_relative_path(member.name, what="archive entry")
    if member.isdir():
        return
    if not member.isreg():
        kind = "link" if member.issym() or member.islnk() else "device or special file"
        raise UnsafePath(f"Refusing archive entry {member.name!r}: a {kind} has no place in a model archive.")
    if limit is not None and member.size > limit:
        raise too_large(limit)
    parts = name.split("/")
    if len(parts) == 3 and parts[:2] == ["blobs", "sha256"]:
        digest = f"sha256:{parts[2]}"
        digest_hex(digest)  # a name that is no sha256 digest is refused, not used as a path
        if _write_blob(store, tar, member, digest):
            added.append(digest)
    elif name in (ARCHIVE_MANIFEST, ARCHIVE_INDEX):
        cap = MAX_MANIFEST_BYTES if name == ARCHIVE_MANIFEST else MAX_INDEX_BYTES
        if member.size > cap:
            raise UnsupportedArtifact(f"The archive's {name} is {member.size:,} bytes, more than any model's "
                                      f"({cap:,}).")
        handle = tar.extractfile(member)
        found[name] = handle.read() if handle else b""
    # Other files (DMR may add some one day) are read past, never written.


def _write_blob(store: Store, tar: tarfile.TarFile, member: tarfile.TarInfo, digest: str) -> bool:
    """Hash the member into `tmp/` and commit it under `digest` if it is new; True if this import added it."""
    handle = tar.extractfile(member)
    assert handle is not None
    hasher = hashlib.sha256()
    fd, name = tempfile.mkstemp(dir=store.root / "tmp", prefix="import-")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                while chunk := handle.read(COPY_CHUNK_BYTES):
                    hasher.update(chunk)
                    out.write(chunk)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientStorage("The disk under the model store filled up during the import; nothing "
                                              "of it was kept. Free space (`gc`, `rm`) and import again.") from exc
                raise
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise ArchiveDigestMismatch(f"Blob {digest[:19]}… of the archive hashes to {actual[:19]}…: the archive "
                                        "is corrupt or was changed after export; nothing of it was kept.")
        with store.blob_lock(digest):
            if store.has_blob(digest):
                return False
            store.commit_blob(digest, tmp)
            return True
    finally:
        tmp.unlink(missing_ok=True)


def _manifest_of(store: Store, found: dict[str, bytes]) -> bytes:
    """DMR's `manifest.json`, or the manifest blob the OCI layout's index names (an archive of OCI tools)."""
    if ARCHIVE_MANIFEST in found:
        return found[ARCHIVE_MANIFEST]
    for descriptor in _index_descriptors(found.get(ARCHIVE_INDEX)):
        digest = descriptor.get("digest")
        if isinstance(digest, str) and store.has_blob(digest):
            path = store.blob_path(digest)
            if path.stat().st_size <= MAX_MANIFEST_BYTES:
                return path.read_bytes()
    raise UnsupportedArtifact("The archive holds no model manifest (`manifest.json`, or an OCI layout's "
                              "`index.json`): is it a model exported by `export` or DMR?")


def _index_descriptors(raw: bytes | None) -> list[dict[str, Any]]:
    if not raw:
        return []
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedArtifact(f"The archive's index.json is not valid JSON ({exc}).") from exc
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    return [m for m in manifests if isinstance(m, dict)] if isinstance(manifests, list) else []


def _names(store: Store, tag: str | None, index: bytes | None, digest: str) -> list[Reference]:
    """The names to give the imported model: `tag` when given, else those the archive's index gives it."""
    if tag:
        return [parse_reference(tag, registry=store.registry)]
    names = []
    for descriptor in _index_descriptors(index):
        annotations = descriptor.get("annotations")
        full = annotations.get(ANNOTATION_IMAGE_NAME) if isinstance(annotations, dict) else None
        if descriptor.get("digest") == digest and isinstance(full, str):
            with contextlib.suppress(ModelRunnerError):
                names.append(parse_reference(full, registry=store.registry))
    if not names:
        raise UnsupportedArtifact("The archive does not name its model (DMR's archives do not): give it a name, "
                                  "`import FILE --tag NAME` (`POST models/load?tag=NAME`).")
    return names
