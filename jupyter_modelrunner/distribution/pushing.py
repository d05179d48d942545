"""Push a stored model to any OCI registry: blobs the registry already has are skipped, the rest are
uploaded in chunks streamed from disk, and the manifest is sent as the exact bytes we store, so the
digest is the same on both sides."""

from __future__ import annotations

from dataclasses import dataclass

from ..reference import Reference, parse_reference
from .artifact import parse_manifest
from .progress import ProgressCallback, ProgressEvent, ProgressTracker
from .registry import RegistryClient
from .sink import BlobStore


@dataclass(frozen=True)
class PushResult:
    reference: Reference
    digest: str
    uploaded_bytes: int
    skipped_bytes: int


def push(
    store: BlobStore,
    name: str,
    *,
    target: Reference | str | None = None,
    on_progress: ProgressCallback | None = None,
    registry: str | None = None,
) -> PushResult:
    """Push the stored model `name` to `target` (default: the reference `name` itself)."""
    raw, own_ref = store.manifest_bytes(name)
    if target is None:
        if own_ref is None:
            raise ValueError(f"Say where to push {name!r}: give a target reference with a tag.")
        ref = own_ref
    else:
        ref = target if isinstance(target, Reference) else parse_reference(target, registry=registry)
    manifest = parse_manifest(raw)
    client = RegistryClient(ref)
    tracker = ProgressTracker(on_progress, manifest.total_size, mode="push")
    uploaded = skipped = 0
    seen: set[str] = set()
    # Layers first, config last, the manifest after all of them: a registry may refuse a manifest
    # whose blobs it does not hold yet.
    for blob in (*manifest.layers, manifest.config):
        if blob.digest in seen:
            continue
        seen.add(blob.digest)
        tracker.start_layer(blob.digest, blob.size)
        if client.blob_exists(blob.digest):
            skipped += blob.size
            tracker.set_layer(blob.digest, blob.size)
            continue
        client.upload_blob(
            store.blob_path(blob.digest), blob.digest, blob.size,
            on_bytes=lambda n, d=blob.digest: tracker.advance(d, n),
        )
        uploaded += blob.size
    client.put_manifest(raw, manifest.media_type, ref.digest or ref.tag or "latest")
    tracker.emit(ProgressEvent("success", f"Pushed {ref.familiar} ({manifest.digest[:19]})", mode="push",
                               total=tracker.total, pulled=tracker.total))
    return PushResult(ref, manifest.digest, uploaded, skipped)
