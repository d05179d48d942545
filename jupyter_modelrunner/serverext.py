"""The Jupyter server extension: the model runner inside the notebook server.

`ModelRunner` owns the store and the scheduler for the server's lifetime, mounts the routes of `api/`
under `{base_url}modelrunner/` (or at the root for `jupyter modelrunner serve`), tells the kernels
the server starts where to find it (`MODEL_RUNNER_HOST`, `MODEL_RUNNER_TOKEN`), and stops every
engine when the server stops. Only assembling and lifetime live here; the logic is in the core.
"""

from __future__ import annotations

import ast
import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import url_path_join
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from ._version import __version__
from .api import metrics, routes
from .api.base import KEYS_SETTING, MAX_BODY_SETTING, SERVICE_SETTING
from .api.batches import MAX_BATCH_FILE_SETTING, body_problem
from .api.engines import KIND_SETTING
from .api.models import MAX_IMPORT_SETTING
from .api.openapi import ROUTES_SETTING
from .api.owner_proxy import PREFIX_SETTING
from .client import ENV_HOST, ENV_TOKEN
from .images import DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGES_PER_REQUEST
from .scheduling.config import Duration, standby_from_env
from .service import STORE_CHANGED, ModelRunnerService

URL_PREFIX = "modelrunner"
#: How often a server that defers to the store's owner checks whether it has to take over.
OWNER_CHECK_SECONDS = 1.0
#: How often work in progress is reported to Jupyter as activity.
ACTIVITY_SECONDS = 5.0
#: How often an embedded runner asked for its store (engines/_handover) looks whether its work is done.
HANDOVER_CHECK_SECONDS = 0.5


class _Folders(List):
    """A list of folders that also takes one bare path from a command line (`--ModelRunner.package_roots=/data`),
    which traitlets' List would read as no value at all."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Unicode(), **kwargs)

    def from_string(self, s: str) -> list[str]:
        if not s.lstrip().startswith("["):
            return [s]
        value = ast.literal_eval(s)  # `[]`, `["/a", "/b"]`; anything else fails loudly when the trait is set
        if not isinstance(value, list):
            raise TraitError(f"Expected a list of folders, not {s!r}.")
        return [str(item) for item in value]


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
    # Deprecated: the settings of the objects that read them (`c.Scheduler.…`, `c.LlamaServer.…`, `c.Vllm.…`), kept
    # working with a warning (_DEPRECATED_SETTINGS).
    keep_alive = Duration(config=True, help="""Deprecated: use c.Scheduler.keep_alive.""")
    memory_budget = Integer(0, config=True, help="""Deprecated: use c.Scheduler.memory_budget.""")
    gpu_memory_budget = Integer(0, config=True, help="""Deprecated: use c.Scheduler.gpu_memory_budget.""")
    max_waiting_requests = Integer(0, config=True, help="""Deprecated: use c.Scheduler.max_waiting_requests.""")
    vllm_standby = Bool(True, config=True, help="""Deprecated: use c.Scheduler.vllm_standby.""")
    load_timeout = Float(0, config=True, help="""Deprecated: use c.LlamaServer.load_timeout and c.Vllm.load_timeout.""")
    llama_server = Unicode("", config=True, help="""Deprecated: use c.LlamaServer.llama_server.""")
    llamacpp_python = Unicode("", config=True, help="""Deprecated: use c.LlamaServer.python.""")
    vllm_python = Unicode("", config=True, help="""Deprecated: use c.Vllm.python.""")
    api_keys = List(
        Unicode(), config=True,
        help="""Inference keys: a client sending `Authorization: Bearer KEY` with one of these may use the routes
        that answer with a model (chat, completions, embeddings, model lists; OpenAI, Ollama and Anthropic
        shapes) and nothing else: no model management, no Jupyter route. Default: $MODEL_RUNNER_API_KEY
        (comma-separated). Keys made with `jupyter modelrunner key create` are accepted too, and can be revoked
        without a restart. The Jupyter token keeps full access.""",
    )
    max_body_bytes = Integer(
        64 * 1024**2, config=True,
        help="""The largest request body the model runner's routes accept, in bytes (a larger one is refused with 413
        before it is read). Chats with images are the large ones: raise it if you send big pictures inline.""",
    )
    max_import_bytes = Integer(
        256 * 1024**3, config=True,
        help="""The largest model archive `POST models/load` imports (DMR's `load`, our `import`), in bytes; streamed to
        the store, so `max_body_bytes` does not bound it. A larger one is refused and nothing of it is kept.""",
    )
    max_batch_file_bytes = Integer(
        200 * 1024**2, config=True,
        help="""The largest file `POST v1/files` accepts for the Batch API, in bytes (OpenAI's cap: 200 MiB).
        Streamed to the store, so `max_body_bytes` does not bound it; a larger one is refused with 413 and nothing of
        it is kept.""",
    )
    max_concurrent_pulls = Integer(
        3, config=True,
        help="""Pulls that download at the same time; more wait their turn (their progress says so).""",
    )
    max_image_bytes = Integer(
        DEFAULT_MAX_IMAGE_BYTES, config=True,
        help="""Largest image a chat request may carry (OpenAI `image_url` parts, Ollama `images`), in bytes once
        decoded. Images named by an http(s) URL are downloaded by the runner, never by the engine, and the download
        stops past this size. A larger image is refused with HTTP 400.""",
    )
    image_fetch_timeout = Float(
        DEFAULT_FETCH_TIMEOUT, config=True,
        help="""Seconds the runner gives the download of an image named by an http(s) URL in a chat request (the
        whole download, redirects included); a slower one is refused with HTTP 400.""",
    )
    allow_private_image_urls = Bool(
        False, config=True,
        help="""Fetch image URLs (in chat requests) whose host is or resolves to a loopback, private, link-local or
        otherwise non-public address. Off by default: anyone who may chat, an inference key's holder too, could
        otherwise make the runner reach services only it can reach (this server, the engines, a cloud metadata
        endpoint, the LAN). Local files go inline instead (`%%chat --image FILE` sends them as data URLs).""",
    )
    max_images_per_request = Integer(
        DEFAULT_MAX_IMAGES_PER_REQUEST, config=True,
        help="""Images one chat request may carry (inline or by URL); a request with more is refused with HTTP 400
        before anything is downloaded.""",
    )
    max_image_bytes_in_flight = Integer(
        0, config=True,
        help="""Image bytes the runner downloads at once, across every request (0: four times max_image_bytes). A
        download that finds no room within image_fetch_timeout is refused with HTTP 400, so a flood of image URLs
        cannot make the runner hold gigabytes.""",
    )
    package_roots = _Folders(
        config=True,
        help="""Folders `POST models/package` may read files from (weights, licenses, chat templates, projectors),
        symbolic links resolved first; anything else is refused with 403. Packaged files can be read back
        (`api/show`) and pushed anywhere, so under `jupyter modelrunner serve`, whose token reads no files, the
        default is the server's root dir (ServerApp.root_dir: serve makes it an empty folder, so serve packages
        nothing until this names folders: `serve --ModelRunner.package_roots=/data/models`). In a Jupyter server
        and the embedded runner the default is `/`, anywhere: their token holder can read files and run code
        already. An empty list (`[]`) turns packaging over HTTP off.""",
    )
    mount_at_root = Bool(
        False, config=True,
        help="""Serve the routes at the server's root instead of under modelrunner/ (the standalone
        `jupyter modelrunner serve`, so clients written for Docker Model Runner's port 12434 work unchanged).""",
    )
    idle_timeout = Integer(
        0, config=True,
        help="""Stop the server after this many seconds without model runner work (0: never). Work in progress — a
        pull, a streaming answer, a model loading — is never interrupted, whatever the timeout. The embedded runner
        that kernels and the CLI start for themselves uses this.""",
    )
    runner_kind = Unicode(
        "jupyter server", config=True,
        help="""What this runner is, as other processes on the store see it (`jupyter server`, `serve`, `embedded`).""",
    )
    set_kernel_env = Bool(
        True, config=True,
        help="""Export MODEL_RUNNER_HOST and MODEL_RUNNER_TOKEN to the server's environment so the kernels it
        starts find this runner (jupyter_modelrunner.base_url() and api_key() read them).""",
    )

    #: The pid of the embedded owner this server asked for the store (it asks each owner once).
    _asked_owner: int | None = None

    #: Keys given to `serve --api-key`, set by the CLI in-process so that they never appear on a command line.
    extra_api_keys: list[str] = []

    @default("api_keys")
    def _api_keys_default(self) -> list[str]:
        from .keys import keys_from_env

        return keys_from_env()

    @default("package_roots")
    def _package_roots_default(self) -> list[str]:
        if self.runner_kind == "serve":
            return [self.serverapp.root_dir] if self.serverapp is not None else []
        return ["/"]

    @default("default_registry")
    def _default_registry_default(self) -> str:
        return os.environ.get("MODEL_RUNNER_DEFAULT_REGISTRY", "")

    @validate("max_image_bytes", "image_fetch_timeout")
    def _check_positive(self, proposal: dict[str, Any]) -> Any:
        if proposal["value"] <= 0:
            raise TraitError(f"ModelRunner.{proposal['trait'].name} must be positive, not {proposal['value']!r}.")
        return proposal["value"]

    #: The app's old flat settings → (who reads them now: an engine's name, every engine, or the scheduler; the
    #: setting's name there).
    _DEPRECATED_SETTINGS = {
        "llama_server": ("llama.cpp", "llama_server"), "llamacpp_python": ("llama.cpp", "python"),
        "vllm_python": ("vllm", "python"), "load_timeout": ("engines", "load_timeout"),
        "keep_alive": ("scheduler", "keep_alive"), "memory_budget": ("scheduler", "memory_budget"),
        "gpu_memory_budget": ("scheduler", "gpu_memory_budget"), "vllm_standby": ("scheduler", "vllm_standby"),
        "max_waiting_requests": ("scheduler", "max_waiting_requests"),
    }

    def _apply_deprecated_settings(self, engines: list[Any], scheduler: Configurable) -> None:
        """`c.ModelRunner.keep_alive` and the other old flat names still work, with a warning naming the new
        spelling: the value goes to the object that reads it, unless that object's own setting is configured too
        (the new spelling wins)."""
        targets: dict[str, list[Configurable]] = {"engines": engines, "scheduler": [scheduler]}
        targets.update({engine.name: [engine] for engine in engines})
        for old, (where, new) in self._DEPRECATED_SETTINGS.items():
            objects = targets.get(where, [])
            if not objects or not _configured(self, old):
                continue
            spellings = ", ".join(f"c.{type(obj).__name__}.{new}" for obj in objects)
            kept = [obj for obj in objects if not _configured(obj, new)]
            self.log.warning("c.ModelRunner.%s is deprecated: use %s%s", old, spellings,
                             "" if kept else f" (set too, so c.ModelRunner.{old} is ignored)")
            for obj in kept:
                setattr(obj, new, getattr(self, old))

    @property
    def url_prefix(self) -> str:
        return "" if self.mount_at_root else URL_PREFIX

    def initialize_settings(self) -> None:
        from .engines.registry import default_engines
        from .events import attach as attach_events
        from .keys import KeyRing
        from .store import Store

        store = Store(self.store_path or None, registry=self.default_registry or None)
        engines = default_engines(parent=self)
        service = ModelRunnerService.create(
            store, registry=self.default_registry or None, engines=engines, parent=self,  # c.Scheduler.…
            max_concurrent_pulls=self.max_concurrent_pulls, max_image_bytes=self.max_image_bytes,
            image_fetch_timeout=self.image_fetch_timeout, allow_private_image_urls=self.allow_private_image_urls,
        )
        if not _configured(service.scheduler, "vllm_standby"):
            service.scheduler.vllm_standby = standby_from_env()  # a server keeps one, unlike a Scheduler in code
        self._apply_deprecated_settings(engines, service.scheduler)
        service.package_roots = self._package_roots()
        service.max_images_per_request = self.max_images_per_request
        service.max_image_bytes_in_flight = self.max_image_bytes_in_flight or None
        service.subscribe(self._log_engine_event)
        self._detach_events = attach_events(service, self.serverapp.event_logger)
        self.settings[SERVICE_SETTING] = service
        self.settings[KEYS_SETTING] = KeyRing(fixed=[*self.api_keys, *self.extra_api_keys])
        self.settings[MAX_BODY_SETTING] = self.max_body_bytes
        self.settings[MAX_IMPORT_SETTING] = self.max_import_bytes
        self.settings[MAX_BATCH_FILE_SETTING] = self.max_batch_file_bytes
        service.batches.body_problem = body_problem  # a batch's lines are held to what the routes accept
        self.settings[PREFIX_SETTING] = self.api_path
        self.settings[KIND_SETTING] = self.runner_kind
        self.settings[ROUTES_SETTING] = tuple(routes(""))  # what openapi.json describes
        self.service = service
        metrics.attach(service)  # our counters on Jupyter's own /metrics too
        if service.claim_store():
            self.log.info("Model runner: store %s, API at %s", store.root, self.api_path)
        else:
            owner = service.remote_owner
            self.log.info("Model runner: store %s is run by %s; this server relays its model runner requests there "
                          "and takes over if it stops", store.root, owner.describe() if owner else "another process")
        self._export_location()

    def _package_roots(self) -> list[Path]:
        return [Path(root).expanduser().resolve() for root in self.package_roots]

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes(self.url_prefix))

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        # The port is final only once the server has bound it (port 0, port retries).
        self._export_location()
        if self.service.owns_store:
            self._publish()
            self._prepare_standby()
            self._resume_batches()
        if self.mount_at_root:
            self._announce()
        self._watchers = [PeriodicCallback(self._watch_owner, OWNER_CHECK_SECONDS * 1000),
                          PeriodicCallback(self._record_activity, ACTIVITY_SECONDS * 1000)]
        if self.runner_kind == "embedded":
            self._watchers.append(PeriodicCallback(self._hand_over_when_idle, HANDOVER_CHECK_SECONDS * 1000))
        else:
            self._ask_for_the_store()
        if self.idle_timeout > 0:
            period = max(0.5, min(30.0, self.idle_timeout / 4))
            self._watchers.append(PeriodicCallback(self._stop_when_idle, period * 1000))
        for watcher in self._watchers:
            watcher.start()

    def current_activity(self) -> list[str] | None:
        """Pulls, answers and loads in progress: jupyter_server's idle shutdown waits for them."""
        service = getattr(self, "service", None)
        return list(service.active.values()) or None if service is not None else None

    def _publish(self) -> None:
        """Tell the other processes on this store where its owner listens (the lease record, user-only)."""
        server = self.serverapp
        assert server is not None
        url = "" if server.sock else self._server_origin() + self.api_path
        token = getattr(server.identity_provider, "token", "") if server.identity_provider else ""
        self.service.lease.publish(url, token, kind=self.runner_kind)

    def _watch_owner(self) -> None:
        """While another process owns the store, follow it (its address may change) and take over when it is gone."""
        service = self.service
        if service.owns_store:
            return
        if service.claim_store():
            self._publish()
            self._prepare_standby()
            self._resume_batches()
            self.log.warning("Model runner: the store's owner is gone; this server runs its engines now")
        elif service.remote_owner is None:
            self.log.debug("Model runner: the store's owner has not published its address yet")
        elif self.runner_kind != "embedded":
            self._ask_for_the_store()

    def _ask_for_the_store(self) -> None:
        """A server a user started (JupyterLab, `serve`) on a store an embedded runner owns asks it for the store
        (`engines/_handover`), once per owner: the embedded runner finishes its work and exits, and `_watch_owner`
        then claims the store, so the server the user started runs the engines instead of relaying every request
        to a background process. A runner a user started is never asked: it answers 409 and keeps its store."""
        owner = self.service.remote_owner
        if owner is None or owner.kind != "embedded" or not owner.url or owner.pid == self._asked_owner:
            return
        self._asked_owner = owner.pid
        task = asyncio.get_running_loop().create_task(self._request_handover(owner))
        self._handover_task = task  # keep a reference until it is done

    async def _request_handover(self, owner: Any) -> None:
        import httpx

        from .keys import SCOPE_MANAGE, read_relay_key

        key = read_relay_key(self.service.lease.folder, SCOPE_MANAGE)
        if key is None:
            self.log.warning("Model runner: %s owns the store and left no relay key (an older version?); this "
                             "server relays to it until it stops", owner.describe())
            return
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
                response = await http.post(owner.url + "engines/_handover", headers=headers)
        except httpx.HTTPError as exc:
            self.log.warning("Model runner: asking %s for the store failed (%s); this server relays to it until it "
                             "stops", owner.describe(), exc.__class__.__name__)
            return
        if response.status_code == 202:
            self.log.warning("Model runner: %s hands the store over once its work in progress is done; this server "
                             "relays to it until then, and runs the engines after", owner.describe())
        else:
            self.log.warning("Model runner: %s did not hand the store over (HTTP %d: %s); this server relays to it "
                             "until it stops", owner.describe(), response.status_code, response.text[:300])

    def _hand_over_when_idle(self) -> None:
        """An embedded runner asked for its store stops once no work is in progress: its engines stop and its lease
        is released as the server stops (stop_extension), and the server that asked takes the store."""
        service = self.service
        if not service.handing_over or service.active:
            return
        self.log.warning("Model runner: handing store %s over to the server that asked for it; stopping",
                         service.store.root)
        for watcher in getattr(self, "_watchers", []):
            watcher.stop()
        assert self.serverapp is not None
        self.serverapp.stop()

    def _prepare_standby(self) -> None:
        """Start the vLLM standby in the background (the server answers meanwhile)."""
        if self.service.scheduler.vllm_standby:
            task = asyncio.get_running_loop().create_task(self.service.scheduler.prepare_standby())
            self._standby_task = task  # keep a reference until it is done

    def _resume_batches(self) -> None:
        """Carry on the batches the store's previous owner left unfinished (in the background)."""
        task = asyncio.get_running_loop().create_task(self.service.resume_batches())
        task.add_done_callback(self._batches_resumed)
        self._resume_task = task  # keep a reference until it is done

    def _batches_resumed(self, task: asyncio.Task[list[str]]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            self.log.error("Model runner: resuming the store's batches failed: %s", task.exception())
        elif task.result():
            self.log.info("Model runner: resumed %d unfinished batch(es): %s", len(task.result()),
                          ", ".join(task.result()))

    def _record_activity(self) -> None:
        """While work is in progress, tell Jupyter (and so JupyterHub's culler, through /api/status) it is active."""
        if self.service.active:
            self.service.last_activity = time.time()
            self.settings["modelrunner_last_activity"] = datetime.now(UTC)

    def _stop_when_idle(self) -> None:
        service = self.service
        idle = time.time() - service.last_activity
        if service.active or idle < self.idle_timeout:
            return
        self.log.info("Model runner: no work for %d s; stopping (idle_timeout)", idle)
        for watcher in getattr(self, "_watchers", []):
            watcher.stop()
        assert self.serverapp is not None
        self.serverapp.stop()

    async def stop_extension(self) -> None:
        for watcher in getattr(self, "_watchers", []):
            watcher.stop()
        service = getattr(self, "service", None)
        if service is not None:
            metrics.detach(service)
            self.log.info("Model runner: stopping engines")
            await service.shutdown()
        detach_events = getattr(self, "_detach_events", None)
        if detach_events is not None:
            detach_events()

    def _announce(self) -> None:
        """`serve` prints where it listens and its token (the lease record under the store holds both too)."""
        server = self.serverapp
        assert server is not None
        url = self._server_origin() + server.base_url
        token = getattr(server.identity_provider, "token", "")
        self.log.info("Model runner API at %s", url)
        if self.runner_kind == "embedded":
            return  # nobody reads its output; clients find its token in the lease record (user-only)
        print(f"Model runner API at {url}\nToken: {token}", flush=True)

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
        if kind == STORE_CHANGED:
            self.log.info("Model runner: %s %s", data["change"], data["model_name"] or data["model_id"])
        elif kind == "crashed":
            self.log.warning("Model runner: %s for %s exited unexpectedly (code %s)", data.get("engine"),
                             data.get("model"), data.get("exit_code"))
        else:
            self.log.info("Model runner: %s %s", kind, {k: v for k, v in data.items() if k in (
                "model", "model_name", "engine", "backend_name", "reason", "why", "device")})


def _configured(obj: Configurable, name: str) -> bool:
    """Whether `name` is set in `obj`'s config (a config file, the command line), under its class, a base class or
    its parent's section, as opposed to being left at its default."""
    return name in obj._find_my_config(obj.config)


class ModelRunnerOnlyServer(ServerApp):
    """The Jupyter server of `jupyter modelrunner serve`: of Jupyter's own services only `api` (/api/status,
    /api/me); kernels, sessions, contents, files, terminals, nbconvert, the lab... are not there (404), so a client
    holding the token can use models and nothing else."""

    default_services = ("api",)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "jupyter_modelrunner.serverext", "app": ModelRunner}]
