"""What a model artifact is: the parsed, validated manifest and config, and where each file goes.

Everything from a registry is untrusted. This module is where manifests are size-checked, config media
types are matched against the three we know, and file paths from annotations are proven to stay inside
the bundle, before a byte of weights is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .. import mediatypes as mt
from ..errors import ArtifactTooLarge, UnsafePath, UnsupportedArtifact

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_LAYERS = 4096


def sha256_digest(data: bytes) -> str:
    """The OCI digest of `data` (`sha256:<hex>`)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of a sha256 digest, refusing anything that could be used as a path trick."""
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise UnsupportedArtifact(f"Unsupported or malformed digest {digest!r} (only sha256 is supported).")
    return hexpart


def safe_relative_path(path: str, *, what: str = "file path") -> str:
    """Return `path` normalized if it is a plain relative path inside the bundle, else raise `UnsafePath`.

    Absolute paths, `..` components, backslashes, NUL bytes and empty names are refused: a registry must
    never be able to make us write outside the store.
    """
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise UnsafePath(f"Refusing {what} {path!r} in the model artifact: it is not a plain relative path.")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafePath(f"Refusing {what} {path!r} in the model artifact: absolute paths are not allowed.")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise UnsafePath(f"Refusing {what} {path!r} in the model artifact: it points outside the model folder.")
    return posixpath.join(*parts)


@dataclass(frozen=True, slots=True)
class Layer:
    """One blob of the artifact: its media type, digest, size and (v0.2) relative file path."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def filepath(self) -> str | None:
        """The file's path inside the model folder, validated, from v0.2 or title annotations."""
        raw = self.annotations.get(mt.ANNOTATION_FILEPATH)
        if raw is None:
            return None
        return safe_relative_path(raw, what=f"path annotation of layer {self.digest[:19]}")

    @property
    def title(self) -> str | None:
        raw = self.annotations.get(mt.ANNOTATION_TITLE)
        if raw is None:
            return None
        return safe_relative_path(posixpath.basename(raw) or raw, what=f"title of layer {self.digest[:19]}")

    def descriptor(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Manifest:
    """A validated model manifest; `raw` are the exact bytes whose sha256 is the model's id."""

    raw: bytes
    media_type: str
    config: Layer
    layers: tuple[Layer, ...]
    artifact_type: str | None = None

    @cached_property
    def digest(self) -> str:
        return sha256_digest(self.raw)

    @property
    def blobs(self) -> tuple[Layer, ...]:
        """Config first, then layers: every blob a complete local copy needs."""
        return (self.config, *self.layers)

    @property
    def total_size(self) -> int:
        return sum(blob.size for blob in self.blobs)

    @property
    def format(self) -> str | None:
        """The weights format as the layers say it (the config's own field may be missing)."""
        types = {layer.media_type for layer in self.layers}
        if mt.GGUF in types:
            return mt.FORMAT_GGUF
        if mt.SAFETENSORS in types:
            return mt.FORMAT_SAFETENSORS
        for layer in self.layers:  # ModelPack: the weights' media type says nothing of their format, their name does
            if mt.is_cncf_weight(layer.media_type):
                name = (layer.filepath or layer.title or "").lower()
                if layer.media_type == mt.CNCF_WEIGHT_GGUF or name.endswith(".gguf"):
                    return mt.FORMAT_GGUF
                if layer.media_type == mt.CNCF_WEIGHT_SAFETENSORS or name.endswith(".safetensors"):
                    return mt.FORMAT_SAFETENSORS
        return None


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate manifest bytes from a registry or the store.

    Accepts OCI image manifests and Docker schema2 manifests whose config is one of Docker's model config
    types; an image index or a container image gets an error that says what it is instead.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ArtifactTooLarge(
            f"Refusing a manifest of {len(raw):,} bytes (limit {MAX_MANIFEST_BYTES:,}): not a model artifact."
        )
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedArtifact(f"The registry returned a manifest that is not valid JSON ({exc}).") from exc
    if not isinstance(doc, dict):
        raise UnsupportedArtifact("The manifest is not a JSON object.")
    media_type = doc.get("mediaType") or mt.OCI_MANIFEST
    if media_type in (mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST) or "manifests" in doc:
        raise UnsupportedArtifact(
            "This reference is a multi-platform image index, not a model. Model artifacts are single "
            "manifests; check the name (models live under `ai/` on Docker Hub)."
        )
    if media_type not in mt.ACCEPTED_MANIFESTS or doc.get("schemaVersion") != 2:
        version = doc.get("schemaVersion")
        raise UnsupportedArtifact(f"Unsupported manifest type {media_type!r} (schemaVersion {version}).")
    config = _layer(doc.get("config"), "config")
    if config.media_type not in mt.MODEL_CONFIGS:
        raise UnsupportedArtifact(
            f"This artifact is not a model: its config type is {config.media_type!r}, expected one of "
            f"{', '.join(mt.MODEL_CONFIGS)}. (Container images cannot be run as models.)"
        )
    if config.size > MAX_CONFIG_BYTES:
        raise ArtifactTooLarge(f"Refusing a model config of {config.size:,} bytes (limit {MAX_CONFIG_BYTES:,}).")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise UnsupportedArtifact("The model manifest lists no layers.")
    if len(raw_layers) > MAX_LAYERS:
        raise ArtifactTooLarge(f"Refusing a manifest with {len(raw_layers)} layers (limit {MAX_LAYERS}).")
    layers = tuple(_layer(item, f"layer {i}") for i, item in enumerate(raw_layers))
    for layer in layers:
        # Validate every path now, before anything is downloaded.
        _ = layer.filepath, layer.title
    zstd = next((layer for layer in layers if layer.media_type in mt.CNCF_ZSTD), None)
    if zstd is not None:
        raise UnsupportedArtifact(f"Layer {zstd.digest[:19]} is a zstd-compressed tar ({zstd.media_type}), which this "
                                  "runner cannot unpack; repackage the model with raw or tar+gzip layers.")
    # Weights in Docker's media types or ModelPack's, or model files of a format another engine runs (its config
    # says which).
    if not any(layer.media_type in (mt.GGUF, mt.SAFETENSORS, mt.MODEL_FILE) or mt.is_cncf_weight(layer.media_type)
               for layer in layers):
        raise UnsupportedArtifact("The model manifest has no weights layer (GGUF, safetensors, ModelPack weights or "
                                  "model files).")
    return Manifest(raw=raw, media_type=media_type, config=config, layers=layers, artifact_type=doc.get("artifactType"))


def _layer(item: Any, what: str) -> Layer:
    if not isinstance(item, dict):
        raise UnsupportedArtifact(f"The manifest's {what} is not a descriptor object.")
    media_type, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise UnsupportedArtifact(f"The manifest's {what} has no media type or digest.")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise UnsupportedArtifact(f"The manifest's {what} has an invalid size {size!r}.")
    digest_hex(digest)
    annotations = item.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise UnsupportedArtifact(f"The manifest's {what} has malformed annotations.")
    return Layer(media_type, digest, size, dict(annotations))


@dataclass(frozen=True)
class ModelConfig:
    """The model facts users see in `ls`/`inspect`, read from DMR's config and from the ModelPack spec."""

    format: str | None = None
    quantization: str | None = None
    parameters: str | None = None
    architecture: str | None = None
    size: str | None = None
    context_size: int | None = None
    created: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "quantization": self.quantization,
            "parameters": self.parameters,
            "architecture": self.architecture,
            "size": self.size,
            "context_size": self.context_size,
        }


def parse_config(raw: bytes) -> ModelConfig:
    """Read a model config JSON, accepting DMR's shape and the ModelPack spec's field names."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ArtifactTooLarge(f"Refusing a model config of {len(raw):,} bytes (limit {MAX_CONFIG_BYTES:,}).")
    try:
        doc = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedArtifact(f"The model config is not valid JSON ({exc}).") from exc
    if not isinstance(doc, dict):
        raise UnsupportedArtifact("The model config is not a JSON object.")
    inner = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    descriptor = doc.get("descriptor") if isinstance(doc.get("descriptor"), dict) else {}

    def text(*keys: str) -> str | None:
        for key in keys:
            value = inner.get(key)
            if value not in (None, ""):
                return str(value)
        return None

    context = inner.get("context_size", inner.get("contextSize"))
    return ModelConfig(
        format=(text("format") or "").lower() or None,
        quantization=text("quantization"),
        parameters=text("parameters", "paramSize"),
        architecture=text("architecture"),
        size=text("size"),
        context_size=context if isinstance(context, int) and not isinstance(context, bool) else None,
        created=descriptor.get("created") or descriptor.get("createdAt"),
        raw=doc,
    )
