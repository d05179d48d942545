"""Pull throughput against a loopback registry, with `curl` fetching the same blobs as the baseline.

Usage: .venv/bin/python benchmarks/pull.py [--big-mib 1024] [--runs 3]

Starts Debian's docker-registry, pushes the real SmolLM2 GGUF (98 MB) and a generated blob, then for each
one times (a) `jupyter_modelrunner.distribution.pull` into an empty store (manifest, download, sha256
verification, atomic rename, bundle) and (b) `curl` downloading the same blob bytes to a file on the same
disk. Prints MB/s for both and the ratio (goal: ≥ 0.9). Best of N runs for each, interleaved.

Hugging Face rows: olah (tests/support/hub.py) serves the same SmolLM2 GGUF as a Hub repo on loopback; one run of
`huggingface_hub.hf_hub_download` into a cache of its own vs `pull hf.co/…` into an empty store and an empty HF cache
(ratio goal ≥ 0.9), then `pull` again into a new store with the HF cache warm (seconds, bytes downloaded: 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_modelrunner import mediatypes as mt  # noqa: E402
from jupyter_modelrunner.distribution import pull  # noqa: E402
from jupyter_modelrunner.distribution.registry import RegistryClient  # noqa: E402
from jupyter_modelrunner.reference import parse_reference  # noqa: E402
from jupyter_modelrunner.store import Store  # noqa: E402
from tests.support.hub import OlahHub  # noqa: E402
from tests.support.models import smollm2_gguf  # noqa: E402
from tests.support.publish import gguf_config, publish_gguf, publish_raw  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        handle.write(b"GGUF")
        remaining = size - 4
        while remaining:
            chunk = os.urandom(min(remaining, 16 << 20))
            handle.write(chunk)
            remaining -= len(chunk)


def layer_digest(reference: str) -> tuple[str, int]:
    """Digest and size of the model's first (weights) layer, read from the registry."""
    raw, _ = RegistryClient(parse_reference(reference)).fetch_manifest()
    layer = json.loads(raw)["layers"][0]
    return layer["digest"], layer["size"]


def time_pull(reference: str, scratch: Path) -> float:
    root = scratch / "store"
    shutil.rmtree(root, ignore_errors=True)
    store = Store(root)
    started = time.perf_counter()
    pull(reference, store)
    return time.perf_counter() - started


def time_curl(url: str, scratch: Path) -> float:
    target = scratch / "curl.out"
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run(["curl", "-sSf", "-o", str(target), url], check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


HF_REPO = "Bench/SmolLM2-135M-Instruct-GGUF"
HF_FILE = "SmolLM2-135M-Instruct-Q4_K_M.gguf"


def hugging_face_rows(scratch: Path) -> list[str]:
    """The Hub client alone vs our pull through it, then a pull that finds the HF cache warm."""
    from huggingface_hub import hf_hub_download

    smol = smollm2_gguf()
    mb = smol.stat().st_size / 1e6
    cache = Path(os.environ.get("MODEL_RUNNER_TEST_CACHE") or Path.home() / ".cache" / "jupyter-modelrunner-tests")
    hub = OlahHub(scratch / "olah", cache)
    hub.add_repo(HF_REPO, {HF_FILE: smol})
    with hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint
        started = time.perf_counter()
        hf_hub_download(HF_REPO, HF_FILE, revision="main", cache_dir=scratch / "hf-alone", endpoint=hub.endpoint)
        alone = time.perf_counter() - started
        os.environ["HF_HOME"] = str(scratch / "hf-home")
        started = time.perf_counter()
        pull(f"hf.co/{HF_REPO}", Store(scratch / "hf-store-1"))
        ours = time.perf_counter() - started
        started = time.perf_counter()
        warm = pull(f"hf.co/{HF_REPO}", Store(scratch / "hf-store-2"))
        warm_seconds = time.perf_counter() - started
    return [f"{'hf.co SmolLM2 GGUF':<22}{mb:>10.1f}{mb / ours:>12.1f}{mb / alone:>12.1f}{alone / ours:>8.2f}"
            "   (baseline: hf_hub_download)",
            f"warm HF cache pull: {warm_seconds:.2f} s, {warm.downloaded_bytes} bytes downloaded (blobs linked)"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the generated blob in MiB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pull-", dir=os.environ.get("BENCH_DIR")) as tmp:
        scratch = Path(tmp)
        with LocalRegistry(scratch / "registry") as registry:
            cases = []
            smol = smollm2_gguf()
            publish_gguf(registry.host, "ai/smollm2", smol)

            ref = f"{registry.host}/ai/smollm2:latest"
            cases.append(("SmolLM2 GGUF", ref, *layer_digest(ref)))
            big = scratch / "big.bin"
            write_random(big, args.big_mib << 20)
            publish_raw(registry.host, "ai/big", "latest", gguf_config(), mt.MODEL_CONFIG_V01, [(big, mt.GGUF, {})])
            big.unlink()
            ref = f"{registry.host}/ai/big:latest"
            cases.append((f"generated {args.big_mib} MiB", ref, *layer_digest(ref)))

            rows = []
            for label, reference, blob_digest, size in cases:
                url = f"{registry.url}/v2/{reference.split('/', 1)[1].rsplit(':', 1)[0]}/blobs/{blob_digest}"
                ours, theirs = [], []
                for _ in range(args.runs):
                    theirs.append(time_curl(url, scratch))
                    ours.append(time_pull(reference, scratch))
                mb = size / 1e6
                rows.append((label, mb, mb / min(ours), mb / min(theirs)))
        hf_rows = hugging_face_rows(scratch)

    print(f"{'blob':<22}{'size MB':>10}{'pull MB/s':>12}{'curl MB/s':>12}{'ratio':>8}")
    for label, mb, ours_rate, curl_rate in rows:
        print(f"{label:<22}{mb:>10.1f}{ours_rate:>12.1f}{curl_rate:>12.1f}{ours_rate / curl_rate:>8.2f}")
    print("\n".join(hf_rows))
    print("goal: ratio >= 0.90 (pull includes sha256 verification, atomic rename and the bundle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
