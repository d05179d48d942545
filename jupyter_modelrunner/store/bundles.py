"""Bundles: the runnable folder an engine opens, `bundles/sha256/<id>/model/`, laid out as Docker Model Runner
lays it out (`model.gguf`, `template.jinja`, a safetensors folder…).

A bundle's files are hard links to the verified blobs, never copies (a copy only where the filesystem refuses a
link), so an engine reads exactly the bytes that were hashed. Bundles are built in a private folder and renamed into
place, so a process that finds one finds it whole.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .. import mediatypes as mt
from ..distribution.artifact import Layer, Manifest, digest_hex, parse_manifest, safe_relative_path
from ..errors import StoreError, UnsafePath, UnsupportedArtifact
from .index import TagIndex
from .tar_layers import TAR_EXPANSION_LIMIT, extract_tar


class Bundles(TagIndex):
    """Building and mending the bundles of the models in the index."""

    #: A tar layer may unpack to this many times its size (at least TAR_UNPACK_FLOOR_BYTES); set it on a store
    #: (or the class) for artifacts of unusually compressible side files.
    max_tar_expansion: float = TAR_EXPANSION_LIMIT

    def relink_bundle_file(self, model_id: str, digest: str, relative: str) -> bool:
        """Make `relative` in the model's bundle a hard link to the blob `digest` again (`fsck --repair`), replacing
        whatever is there in one rename, so an engine starting meanwhile sees the old file or the new, never none.
        False when the model is no longer in the index (then nothing is touched)."""
        with self.index_lock():  # no `rm` of the model meanwhile
            if not self._indexed(model_id):
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
        with self.index_lock():
            if not self._indexed(model_id):
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
                    extract_tar(self.blob_path(layer.digest), into, model_dir, expansion=self.max_tar_expansion)
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
    """Which file each layer becomes inside `model/` (DMR's names: `model.gguf`, `template.jinja`, …).

    ModelPack's layers carry their file's path; its GGUF weights get DMR's names all the same (the engine opens
    `model.gguf`, or the first of `model-0000N-of-0000M.gguf` and llama.cpp finds the others beside it), and a GGUF
    named like a projector (`mmproj-*.gguf`: ModelPack has no media type of its own for it) becomes `model.mmproj`.
    Layers of a type nobody reads (a ModelPack doc without a path) are left out.
    """
    ggufs = [layer for layer in manifest.layers if layer.media_type == mt.GGUF]
    ggufs += sorted((layer for layer in manifest.layers if _cncf_kind(layer) == "gguf"),
                    key=lambda layer: layer.filepath or layer.title or "")
    weights = [layer for layer in manifest.layers if layer.media_type == mt.SAFETENSORS]
    plan: list[tuple[Layer, str]] = []
    for layer in manifest.layers:
        kind = layer.media_type
        if kind == mt.GGUF or _cncf_kind(layer) == "gguf":
            n = len(ggufs)
            plan.append((layer, "model.gguf" if n == 1 else f"model-{ggufs.index(layer) + 1:05d}-of-{n:05d}.gguf"))
        elif kind in (mt.MMPROJ, mt.MMPROJ_SPEC) or _cncf_kind(layer) == "mmproj":
            plan.append((layer, "model.mmproj"))
        elif kind == mt.CHAT_TEMPLATE:
            plan.append((layer, "template.jinja"))
        elif kind == mt.SAFETENSORS:
            n = len(weights)
            default = "model.safetensors" if n == 1 else f"model-{weights.index(layer) + 1:05d}-of-{n:05d}.safetensors"
            plan.append((layer, layer.filepath or layer.title or default))
        elif kind == mt.MODEL_FILE or (kind in mt.CNCF_RAW and mt.is_cncf_weight(kind)):
            name = layer.filepath or layer.title
            if not name:
                raise UnsupportedArtifact(f"Layer {layer.digest[:19]} is a model file without a file path annotation.")
            plan.append((layer, name))
        elif kind in mt.CNCF_RAW:
            if name := layer.filepath or layer.title:
                plan.append((layer, name))
        elif kind in mt.TAR_LAYERS:
            # A ModelPack tar's entries carry their whole relative path already (modctl); Docker's dir.tar unpacks
            # into the folder its annotation names.
            plan.append((layer, "" if kind in mt.CNCF_TARS else layer.filepath or ""))
    return plan


def _cncf_kind(layer: Layer) -> str | None:
    """"gguf" or "mmproj" for a ModelPack weights file that is one (by its media type or its name), else None."""
    if layer.media_type not in (mt.CNCF_WEIGHT_RAW, mt.CNCF_WEIGHT_GGUF):
        return None
    name = (layer.filepath or layer.title or "").rsplit("/", 1)[-1].lower()
    if not (name.endswith(".gguf") or layer.media_type == mt.CNCF_WEIGHT_GGUF):
        return None
    return "mmproj" if "mmproj" in name else "gguf"


def _inside(root: Path, relative: str) -> Path:
    """`root/relative`, proven not to escape `root` even through existing symlinks."""
    relative = safe_relative_path(relative)
    dest = root / relative
    resolved_root = root.resolve()
    if not dest.parent.resolve().is_relative_to(resolved_root) and dest.parent != root:
        raise UnsafePath(f"Refusing file path {relative!r}: it resolves outside the model folder.")
    return dest
