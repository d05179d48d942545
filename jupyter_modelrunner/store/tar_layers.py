"""Tar layers: unpacking a model's `vllm.config.tar` / `dir.tar` layer into its bundle, safely and boundedly.

The layer comes from a registry, so from anyone: only regular files and folders with safe relative names are
unpacked, never over a file that is already there, and to a bounded size.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import Any

from ..distribution.artifact import safe_relative_path
from ..errors import ModelRunnerError, TarLayerTooLarge, UnsafePath, UnsupportedArtifact
from .blobs import COPY_CHUNK_BYTES

#: How many times its own size a tar layer may unpack to (`Store.max_tar_expansion`). A plain tar never unpacks to
#: more than its size (only a sparse entry does), and compressed text — the configs and tokenizers these layers
#: carry — to a few times its size; 32 leaves a wide margin for honest layers while a bomb (64 KiB of gzip that is
#: 64 MiB of zeros, or a sparse header claiming terabytes) is refused before it fills the disk.
TAR_EXPANSION_LIMIT = 32
#: However small the layer, it may unpack to this much: tiny layers of well-compressed text are never refused.
TAR_UNPACK_FLOOR_BYTES = 16 * 1024 * 1024


def tar_unpack_cap(layer_bytes: int, expansion: float = TAR_EXPANSION_LIMIT) -> int:
    """The most a tar layer of `layer_bytes` may unpack to (see TAR_EXPANSION_LIMIT for why)."""
    return max(TAR_UNPACK_FLOOR_BYTES, int(layer_bytes * expansion))


def extract_tar(blob: Path, into: Path, model_dir: Path, *, expansion: float = TAR_EXPANSION_LIMIT) -> None:
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


def unpacked_intact(blob: Path, into: Path) -> bool:
    """Every regular file of the tar layer is where the bundle unpacked it, with its size."""
    try:
        with tarfile.open(blob, "r:*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                try:
                    info = os.lstat(into / safe_relative_path(member.name, what="tar entry"))
                except (FileNotFoundError, ModelRunnerError):
                    return False
                if not stat.S_ISREG(info.st_mode) or info.st_size != member.size:
                    return False
    except (tarfile.TarError, OSError):
        return False
    return True


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
