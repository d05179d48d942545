"""The Jupyter server extension: the model runner inside the notebook server.

`ModelRunner` owns the store and the scheduler for the server's lifetime, mounts the routes of `api/`
under `{base_url}modelrunner/` (or at the root for `jupyter modelrunner serve`), tells the kernels
the server starts where to find it (`MODEL_RUNNER_HOST`, `MODEL_RUNNER_TOKEN`), and stops every
engine when the server stops. Only assembling and lifetime live here; the logic is in the core.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Float, Integer, TraitError, Unicode, default, validate

from ._version import __version__
from .api import routes
from .api.base import SERVICE_SETTING
from .client import ENV_HOST, ENV_TOKEN
from .errors import ModelRunnerError
from .paths import standalone_server_file
from .service import ModelRunnerService

URL_PREFIX = "modelrunner"


class ModelRunner(ExtensionApp):
    """Pull, run and serve AI models from the notebook server (Docker Model Runner's API, OpenAI's and Ollama's)."""

    name = "modelrunner"
    description = __doc__
    version = __version__
    load_other_extensions = True

    store_path = Unicode(
        "", config=True,
        help="""Folder of the model store. Empty: $MODEL_RUNNER_STORE, else <jupyter data dir>/modelrunner/store
        (the same place the `jupyter modelrunner` CLI uses, so both see the same models).""",
    )
    default_registry = Unicode(
        "", config=True,
        help="""Registry for short names such as `ai/smollm2` (empty: $MODEL_RUNNER_DEFAULT_REGISTRY, else
        Docker Hub).""",
    )
    keep_alive = Unicode(
        "5m", config=True,
        help="""How long an idle model stays loaded, unless configured per model: seconds or a duration (30s, 10m,
        1h); -1 keeps models loaded until the server stops, 0 unloads after each request.""",
    )
    memory_budget = Integer(
        0, config=True,
        help="""Bytes of memory the engines may use together (weights and KV caches). Idle models are unloaded
        to make room, least recently used first; a model that cannot fit is refused. 0: 80% of the machine's RAM.""",
    )
    load_timeout = Float(
        0, config=True,
        help="""Seconds to wait for an engine to become ready (0: the engine's default, minutes for vLLM).""",
    )
    llama_server = Unicode(
        "", config=True,
        help="""llama.cpp's llama-server binary for GGUF models (empty: $MODEL_RUNNER_LLAMA_SERVER, else the one
        `jupyter modelrunner install-runner llama.cpp` installed; `none`: always use llama-cpp-python's server).""",
    )
    llamacpp_python = Unicode(
        "", config=True,
        help="""Python interpreter with llama-cpp-python[server], the fallback engine for GGUF models where no
        llama-server is installed (empty: the server's own interpreter).""",
    )
    vllm_python = Unicode(
        "", config=True,
        help="""Python interpreter of the environment with vLLM (empty: $MODEL_RUNNER_VLLM_PYTHON, else the one
        `jupyter modelrunner install-runner vllm` made). vLLM lives in its own environment so its pins do not
        constrain yours.""",
    )
    mount_at_root = Bool(
        False, config=True,
        help="""Serve the routes at the server's root instead of under modelrunner/ (the standalone
        `jupyter modelrunner serve`, so clients written for Docker Model Runner's port 12434 work unchanged).""",
    )
    server_file = Unicode(
        "", config=True,
        help="""With mount_at_root: the user-only file where the URL, token and settings are written for clients
        on this machine (empty: modelrunner-serve.json in Jupyter's runtime directory).""",
    )
    set_kernel_env = Bool(
        True, config=True,
        help="""Export MODEL_RUNNER_HOST and MODEL_RUNNER_TOKEN to the server's environment so the kernels it
        starts find this runner (jupyter_modelrunner.base_url() and api_key() read them).""",
    )

    @default("default_registry")
    def _default_registry_default(self) -> str:
        return os.environ.get("MODEL_RUNNER_DEFAULT_REGISTRY", "")

    @validate("keep_alive")
    def _check_keep_alive(self, proposal: dict[str, Any]) -> str:
        from .runner_config import parse_keep_alive

        try:
            parse_keep_alive(proposal["value"])
        except ModelRunnerError as exc:
            raise TraitError(f"ModelRunner.keep_alive: {exc}") from exc
        return proposal["value"]

    @property
    def url_prefix(self) -> str:
        return "" if self.mount_at_root else URL_PREFIX

    def initialize_settings(self) -> None:
        from .engines.llamacpp import LlamaCppEngine
        from .engines.vllm import VllmEngine
        from .runner_config import parse_keep_alive
        from .store import Store

        store = Store(self.store_path or None, registry=self.default_registry or None)
        engines = [LlamaCppEngine(self.llamacpp_python or None, self.llama_server or None),
                   VllmEngine(self.vllm_python or None)]
        if self.load_timeout > 0:
            for engine in engines:
                engine.load_timeout = self.load_timeout
        service = ModelRunnerService.create(
            store, registry=self.default_registry or None, engines=engines,
            memory_budget=self.memory_budget or None, keep_alive=parse_keep_alive(self.keep_alive),
        )
        service.subscribe(self._log_engine_event)
        self.settings[SERVICE_SETTING] = service
        self.service = service
        self.log.info("Model runner: store %s, API at %s", store.root, self.api_path)
        self._export_location()

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes(self.url_prefix))

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        # The port is final only once the server has bound it (port 0, port retries).
        self._export_location()
        if self.mount_at_root:
            self._write_server_file()

    async def stop_extension(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            self.log.info("Model runner: stopping engines")
            await service.shutdown()
        if self.mount_at_root:
            self._remove_server_file()

    def _write_server_file(self) -> None:
        """Leave URL and token in a user-only file, so `jupyter modelrunner ps` and notebooks find this server."""
        server = self.serverapp
        assert server is not None
        url = self._server_origin() + server.base_url
        token = getattr(server.identity_provider, "token", "")
        path = self._server_file_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Written under a temporary name and renamed: a client polling for it never reads half a file.
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump({"url": url, "token": token, "pid": os.getpid(), "version": __version__,
                       "store": str(self.service.store.root.resolve()), "registry": self.default_registry}, out)
        partial.replace(path)
        self.log.info("Model runner API at %s (token in %s)", url, path)
        print(f"Model runner API at {url}\nToken: {token}\n(also in {path}, readable only by you)", flush=True)

    @property
    def _server_file_path(self) -> Path:
        return Path(self.server_file) if self.server_file else standalone_server_file()

    def _remove_server_file(self) -> None:
        path = self._server_file_path
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()

    @property
    def api_path(self) -> str:
        base = self.serverapp.base_url if self.serverapp else "/"
        return url_path_join(base, self.url_prefix, "/") if self.url_prefix else base

    def _export_location(self) -> None:
        """Set MODEL_RUNNER_HOST/TOKEN for kernels (turn off with set_kernel_env to point them at a remote runner)."""
        if not self.set_kernel_env or self.serverapp is None:
            return
        server = self.serverapp
        if server.sock:
            return  # a Unix-socket server cannot be reached by URL; kernels use the embedded runner
        os.environ[ENV_HOST] = self._server_origin() + self.api_path
        token = getattr(server.identity_provider, "token", "") if server.identity_provider else ""
        if token:
            os.environ[ENV_TOKEN] = token

    def _server_origin(self) -> str:
        """`scheme://host:port` a client on this machine reaches the server at (a wildcard address → 127.0.0.1)."""
        server = self.serverapp
        assert server is not None
        host = server.ip if server.ip not in ("", "0.0.0.0", "::", "*") else "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{'https' if server.certfile else 'http'}://{host}:{server.port}"

    def _log_engine_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "loading" and "elapsed" in data:
            return
        if kind == "crashed":
            self.log.warning("Model runner: %s for %s exited unexpectedly (code %s)", data.get("engine"),
                             data.get("model"), data.get("exit_code"))
        else:
            self.log.info("Model runner: %s %s", kind, {k: v for k, v in data.items() if k in (
                "model", "model_name", "engine", "backend_name", "reason", "why", "device")})


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "jupyter_modelrunner.serverext", "app": ModelRunner}]
