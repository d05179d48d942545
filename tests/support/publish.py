"""Put models into a test registry: through our own package + push code (the normal way), or as raw
artifacts assembled blob by blob (the older packagings, foreign media types, and hostile inputs)."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from jupyter_modelrunner import mediatypes as mt
from jupyter_modelrunner.distribution import package_gguf, package_safetensors, push
from jupyter_modelrunner.distribution.artifact import sha256_digest
from jupyter_modelrunner.distribution.registry import RegistryClient
from jupyter_modelrunner.reference import parse_reference
from jupyter_modelrunner.store import Store


def publish_gguf(host: str, repository: str, gguf: Path, *, tag: str = "latest", **options: Any) -> str:
    """Package `gguf` with our packager and push it as `host/repository:tag`; returns the manifest digest."""
    ref = parse_reference(f"{host}/{repository}:{tag}")
    with tempfile.TemporaryDirectory(prefix="publish-") as scratch:
        store = Store(Path(scratch) / "store")
        model = package_gguf(store, gguf, ref, **options)
        push(store, ref.full)
        return model.id


def publish_safetensors(host: str, repository: str, folder: Path, *, tag: str = "latest",
                        packaging: str = "v0.2") -> str:
    """Push a safetensors folder in one of the three packagings found on Docker Hub.

    `v0.2`: one layer per file with `org.cncf.model.filepath` (our packager). `config-tar`: v0.1 config,
    weights layers plus all side files in one `vllm.config.tar` layer. `dir-tar`: side files in a
    `dir.tar` layer.
    """
    ref = parse_reference(f"{host}/{repository}:{tag}")
    if packaging == "v0.2":
        with tempfile.TemporaryDirectory(prefix="publish-") as scratch:
            store = Store(Path(scratch) / "store")
            model = package_safetensors(store, folder, ref)
            push(store, ref.full)
            return model.id
    weights = sorted(folder.glob("*.safetensors"))
    side = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix != ".safetensors"]
    tar_type = mt.VLLM_CONFIG_TAR if packaging == "config-tar" else mt.DIR_TAR
    layers: list[tuple[bytes | Path, str, dict[str, str]]] = [
        (path, mt.SAFETENSORS, {mt.ANNOTATION_TITLE: path.name}) for path in weights
    ]
    layers.append((tar_bytes({p.name: p.read_bytes() for p in side}), tar_type, {}))
    config = {"config": {"format": "safetensors", "architecture": "llama", "parameters": "1.5M",
                         "quantization": "F32", "size": "6MiB"}, "descriptor": {"created": "2025-01-01T00:00:00Z"}}
    return publish_raw(host, repository, tag, json.dumps(config).encode(), mt.MODEL_CONFIG_V01, layers)


def publish_raw(
    host: str, repository: str, tag: str, config: bytes, config_type: str,
    layers: list[tuple[bytes | Path, str, dict[str, str]]], *, artifact_type: str | None = None,
) -> str:
    """Upload blobs and a manifest exactly as given, bypassing every check our packager makes."""
    client = RegistryClient(parse_reference(f"{host}/{repository}:{tag}"))
    descriptors = []
    with tempfile.TemporaryDirectory(prefix="raw-") as scratch:
        for index, (content, media_type, annotations) in enumerate([(config, config_type, {}), *layers]):
            path = content if isinstance(content, Path) else Path(scratch) / f"blob-{index}"
            if not isinstance(content, Path):
                path.write_bytes(content)
            data_digest = _file_digest(path)
            size = path.stat().st_size
            if not client.blob_exists(data_digest):
                client.upload_blob(path, data_digest, size)
            descriptor: dict[str, Any] = {"mediaType": media_type, "digest": data_digest, "size": size}
            if annotations:
                descriptor["annotations"] = annotations
            descriptors.append(descriptor)
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"], manifest["layers"] = descriptors[0], descriptors[1:]
    raw = json.dumps(manifest).encode()
    client.put_manifest(raw, mt.OCI_MANIFEST, tag)
    return sha256_digest(raw)


def publish_modelpack(host: str, repository: str, files: dict[str, Path], *, tag: str = "latest",
                      packing: str = "raw", fmt: str | None = "gguf") -> str:
    """Push files as a CNCF ModelPack artifact (what modctl writes): ModelPack's config and manifest `artifactType`,
    each weights file a `weight.v1.raw` layer with its path in `org.cncf.model.filepath` (`packing="raw"`), or all of
    them in one `weight.v1.tar` layer (`packing="tar"`). `fmt` None leaves the config's format out (the files' names
    then say it)."""
    config: dict[str, Any] = {"descriptor": {"createdAt": "2025-01-01T00:00:00Z", "name": repository},
                              "config": {"architecture": "llama", "paramSize": "1M", "precision": "f32"},
                              "modelfs": {"type": "layers", "diffIds": []}}
    if fmt:
        config["config"]["format"] = fmt
    if packing == "raw":
        layers = [(path, mt.CNCF_WEIGHT_RAW, {mt.ANNOTATION_FILEPATH: name, mt.ANNOTATION_TITLE: name})
                  for name, path in files.items()]
    else:
        archive = tar_bytes({name: path.read_bytes() for name, path in files.items()})
        layers = [(archive, mt.CNCF_WEIGHT_TAR, {mt.ANNOTATION_FILEPATH: "weights"})]
    return publish_raw(host, repository, tag, json.dumps(config).encode(), mt.CNCF_MODEL_CONFIG_V1, layers,
                       artifact_type=mt.CNCF_MODEL_MANIFEST_ARTIFACT)


def tar_bytes(files: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    """A tar archive of `files` (name → bytes), plus symbolic links (name → target) if asked."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def gguf_config(**extra: Any) -> bytes:
    """A minimal DMR v0.1 config for a GGUF model (for raw artifacts)."""
    config = {"config": {"format": "gguf", "quantization": "F32", "parameters": "1M", "architecture": "llama",
                         "size": "1MiB", **extra}, "descriptor": {"created": "2025-01-01T00:00:00Z"}}
    return json.dumps(config).encode()


def _file_digest(path: Path) -> str:
    import hashlib

    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()
