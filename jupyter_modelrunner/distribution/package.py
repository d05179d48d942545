"""Turn local weights into a model artifact in Docker's format, stored locally and ready to push.

GGUF files become a v0.1 artifact (config JSON with the GGUF's key/values, like `docker model package`), with
a vision model's multimodal projector (a GGUF of its own) as a layer of Docker's `mmproj` type; a safetensors folder
becomes a v0.2 artifact with one layer per file and its relative path annotated; `repackage` makes a variant of a
stored model (new context size, template or license) that shares its weight blobs.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import mediatypes as mt
from ..errors import UnsafePath, UnsupportedArtifact
from ..reference import Reference
from .artifact import parse_manifest, safe_relative_path
from .gguf_header import read_gguf_header
from .sink import BlobStore

SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024
_WEIGHT_SUFFIXES = (".safetensors",)
#: The `general.architecture` of every multimodal projector GGUF (llama.cpp's clip/mtmd encoders).
MMPROJ_ARCHITECTURE = "clip"


def package_gguf(
    store: BlobStore,
    gguf_files: Path | Sequence[Path],
    reference: Reference,
    *,
    license_files: Sequence[Path] = (),
    chat_template: Path | None = None,
    context_size: int | None = None,
    mmproj: Path | None = None,
    source: dict[str, Any] | None = None,
) -> Any:
    """Store `gguf_files` (one file, or the shards of one model in order) as the model `reference`.

    `mmproj` is a vision model's multimodal projector (what llama.cpp's `convert_hf_to_gguf.py --mmproj` writes): it
    becomes a layer of Docker's media type, which a pull links as `model.mmproj` and llama-server loads with `--mmproj`.
    `source` (where the files came from: a Hugging Face repo and commit) is recorded in the config for `inspect`.
    """
    files = [Path(gguf_files)] if isinstance(gguf_files, str | Path) else [Path(p) for p in gguf_files]
    if not files:
        raise UnsupportedArtifact("Give at least one GGUF file to package.")
    for path in files:
        _require_gguf(path, "GGUF file")
    facts = gguf_facts(files)
    if facts["summary"]["architecture"] == MMPROJ_ARCHITECTURE:
        raise UnsupportedArtifact(f"{files[0]} is a multimodal projector, not a model: give it with --mmproj, beside "
                                  "the model's GGUF.")
    if mmproj is not None:
        _require_projector(Path(mmproj))
    config_inner: dict[str, Any] = {"format": mt.FORMAT_GGUF, **facts["summary"]}
    if context_size is not None:
        config_inner["context_size"] = _positive(context_size)
    config_inner["source"] = source
    config_inner["gguf"] = facts["gguf"]
    with store.adding():  # its blobs stay until the model is indexed (see Store.adding)
        layers = [_file_layer(store, path, mt.GGUF, annotate_title=len(files) > 1) for path in files]
        if mmproj is not None:
            layers.append(_file_layer(store, mmproj, mt.MMPROJ))
        layers += [_file_layer(store, path, mt.LICENSE) for path in license_files]
        if chat_template is not None:
            layers.append(_file_layer(store, chat_template, mt.CHAT_TEMPLATE))
        return _store_artifact(store, reference, mt.MODEL_CONFIG_V01, config_inner, layers)


def package_safetensors(
    store: BlobStore,
    folder: Path,
    reference: Reference,
    *,
    license_files: Sequence[Path] = (),
    chat_template: Path | None = None,
    context_size: int | None = None,
    source: dict[str, Any] | None = None,
) -> Any:
    """Store a Hugging Face-style folder (weights + config/tokenizer files) as the model `reference`; `source` as
    for `package_gguf`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UnsupportedArtifact(f"{folder} is not a folder of safetensors files.")
    weights, side_files = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # .git, .cache and friends are not part of a model
        if path.is_symlink():
            raise UnsafePath(f"Refusing to package {relative}: symbolic links are not packaged, copy the file in.")
        if not path.is_file():
            continue
        safe_relative_path(relative)
        (weights if path.suffix in _WEIGHT_SUFFIXES else side_files).append((path, relative))
    if not weights:
        raise UnsupportedArtifact(f"{folder} holds no .safetensors files.")
    config_path = folder / "config.json"
    hf_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    summary, dtypes, header_meta = _safetensors_facts([p for p, _ in weights])
    architectures = hf_config.get("architectures") or []
    config_inner: dict[str, Any] = {
        "format": mt.FORMAT_SAFETENSORS,
        "quantization": "/".join(sorted(dtypes)) or None,
        "parameters": summary["parameters"],
        "architecture": hf_config.get("model_type") or (architectures[0] if architectures else None),
        "size": summary["size"],
    }
    context = context_size or hf_config.get("max_position_embeddings")
    if context:
        config_inner["context_size"] = _positive(int(context))
    config_inner["source"] = source
    config_inner["safetensors"] = header_meta
    with store.adding():  # its blobs stay until the model is indexed (see Store.adding)
        layers = [_file_layer(store, path, mt.SAFETENSORS, filepath=rel) for path, rel in weights]
        layers += [_file_layer(store, path, mt.MODEL_FILE, filepath=rel) for path, rel in side_files]
        layers += [_file_layer(store, path, mt.LICENSE) for path in license_files]
        if chat_template is not None:
            layers.append(_file_layer(store, chat_template, mt.CHAT_TEMPLATE))
        return _store_artifact(store, reference, mt.MODEL_CONFIG_V02, config_inner, layers)


def repackage(
    store: BlobStore,
    source: str,
    reference: Reference,
    *,
    license_files: Sequence[Path] = (),
    chat_template: Path | None = None,
    context_size: int | None = None,
) -> Any:
    """A variant of the stored model `source` as `reference` (DMR's `package --from`): the same weight blobs, not
    copied (the new manifest names the same digests), with a new config carrying `context_size`, the chat template
    replaced by `chat_template`, and `license_files` added."""
    raw, _ = store.manifest_bytes(source)
    manifest = parse_manifest(raw)
    config = json.loads(store.blob_path(manifest.config.digest).read_bytes() or b"{}")
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    if context_size is not None:
        inner["context_size"] = _positive(context_size)
    with store.adding():  # the source's blobs stay until the variant is indexed (see Store.adding)
        layers = [layer.descriptor() for layer in manifest.layers
                  if chat_template is None or layer.media_type != mt.CHAT_TEMPLATE]
        layers += [_file_layer(store, path, mt.LICENSE) for path in license_files]
        if chat_template is not None:
            layers.append(_file_layer(store, chat_template, mt.CHAT_TEMPLATE))
        config["config"] = inner
        if isinstance(config.get("rootfs"), dict):
            config["rootfs"]["diff_ids"] = [layer["digest"] for layer in layers]
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": manifest.media_type}
        if manifest.artifact_type:
            doc["artifactType"] = manifest.artifact_type
        doc["config"] = {"mediaType": manifest.config.media_type, "digest": store.add_blob_bytes(config_bytes),
                         "size": len(config_bytes)}
        doc["layers"] = layers
        return store.add_model(reference, json.dumps(doc, separators=(",", ":")).encode())


def gguf_facts(files: Sequence[Path]) -> dict[str, Any]:
    """Read architecture, quantization, parameter count and every small key/value from GGUF headers."""
    from gguf import LlamaFileType  # an enum of llama.cpp's file types; the header itself is read by gguf_header

    params = 0
    kv: dict[str, str] = {}
    for index, path in enumerate(files):
        header = read_gguf_header(path)
        params += header.parameters
        if not index:
            kv = {name: _gguf_string(value) for name, value in header.fields.items() if not name.startswith("GGUF.")}
    file_type = kv.get("general.file_type")
    quantization = None
    if file_type is not None and file_type.isdigit():
        try:
            quantization = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            quantization = None
    size = sum(p.stat().st_size for p in files)
    return {
        "summary": {
            "quantization": quantization,
            "parameters": human_parameters(params),
            "architecture": kv.get("general.architecture"),
            "size": human_size(size),
        },
        "gguf": kv,
    }


def _gguf_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_gguf_string(v) for v in value) + "]"
    return str(value)


def _safetensors_facts(files: list[Path]) -> tuple[dict[str, str], set[str], dict[str, Any]]:
    """Parameter count and dtypes from safetensors headers only (8-byte length + JSON), never the weights."""
    params, dtypes, meta = 0, set(), {}
    for path in files:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                raise UnsupportedArtifact(f"{path} is not a safetensors file (too short).")
            (length,) = struct.unpack("<Q", head)
            if length > SAFETENSORS_HEADER_LIMIT:
                raise UnsupportedArtifact(f"{path} has an implausible safetensors header of {length:,} bytes.")
            try:
                header = json.loads(handle.read(length))
            except ValueError as exc:
                raise UnsupportedArtifact(f"{path} is not a safetensors file ({exc}).") from exc
        for name, info in header.items():
            if name == "__metadata__":
                meta.update({k: str(v) for k, v in (info or {}).items()})
                continue
            params += math.prod(info.get("shape") or [1])
            dtypes.add(str(info.get("dtype")))
    size = sum(p.stat().st_size for p in files)
    return {"parameters": human_parameters(params), "size": human_size(size)}, dtypes, meta


def human_parameters(count: int) -> str:
    """`361.82M`, `1.24B`: how DMR writes parameter counts."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def human_size(size: int) -> str:
    """`256.35MiB`: how DMR writes sizes in the config."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.2f}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1024
    return f"{value:.2f}TiB"


def _positive(value: int) -> int:
    if not isinstance(value, int) or value <= 0:
        raise UnsupportedArtifact(f"The context size must be a positive number of tokens, not {value!r}.")
    return value


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise UnsupportedArtifact(f"{what} {path} does not exist or is not a file.")


def _require_gguf(path: Path, what: str) -> None:
    _require_file(path, what)
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UnsupportedArtifact(f"{path} is not a GGUF file (it does not start with the GGUF magic).")


def _require_projector(path: Path) -> None:
    """A projector is a GGUF whose architecture is `clip` (llama.cpp's name for every vision/audio encoder): a model
    GGUF given by mistake would only fail later, when llama-server starts."""
    _require_gguf(path, "Multimodal projector")
    architecture = read_gguf_header(path, tensors=False).fields.get("general.architecture")
    if architecture != MMPROJ_ARCHITECTURE:
        raise UnsupportedArtifact(
            f"{path} is not a multimodal projector (its GGUF architecture is {architecture or 'not recorded'}, not "
            f"{MMPROJ_ARCHITECTURE!r}). llama.cpp's `convert_hf_to_gguf.py --mmproj` writes one from a vision model.")


def _file_layer(
    store: BlobStore, path: Path, media_type: str, *, filepath: str | None = None, annotate_title: bool = False
) -> dict[str, Any]:
    path = Path(path)
    _require_file(path, "File")
    digest, size = store.add_blob_from_file(path)
    annotations: dict[str, str] = {}
    if filepath is not None:
        stat = path.stat()
        annotations[mt.ANNOTATION_FILEPATH] = filepath
        annotations[mt.ANNOTATION_FILE_METADATA] = json.dumps(
            {"name": filepath, "mode": stat.st_mode & 0o777, "size": size,
             "mtime": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="seconds")},
            separators=(",", ":"),
        )
    if filepath is not None or annotate_title:
        annotations[mt.ANNOTATION_TITLE] = filepath or path.name
    layer: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        layer["annotations"] = annotations
    return layer


def _store_artifact(
    store: BlobStore, reference: Reference, config_type: str, config_inner: dict[str, Any],
    layers: list[dict[str, Any]],
) -> Any:
    config = {
        "config": {k: v for k, v in config_inner.items() if v is not None},
        "descriptor": {"created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")},
        "rootfs": {"type": "rootfs", "diff_ids": [layer["digest"] for layer in layers]},
    }
    config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=False).encode()
    config_digest = store.add_blob_bytes(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config_digest, "size": len(config_bytes)},
        "layers": layers,
    }
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    return store.add_model(reference, raw)


__all__ = ["gguf_facts", "human_parameters", "human_size", "package_gguf", "package_safetensors", "repackage"]
