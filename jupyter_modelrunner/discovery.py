"""Finding the model runner: where it is, which token it takes, and starting an embedded one when none answers.

The magics, the widgets, every CLI verb and any notebook code find their runner here (through `client`), so they
all see the same runner (one source of truth, and one owner of a store's engines). It is found, in order:

1. `MODEL_RUNNER_HOST` (and `MODEL_RUNNER_TOKEN`): set by the server extension for the kernels it starts,
   or by the user for a remote runner — Docker Model Runner's variable;
2. the Jupyter server that started this kernel (`JPY_PARENT_PID` → its `jpserver-<pid>.json`), when it
   has the extension;
3. the owner of the store: whichever runner holds the store's lease (JupyterLab's server, a `serve`, an embedded
   runner) and published its address under the store (lease.py);
4. otherwise an **embedded** runner: `jupyter modelrunner serve --embedded` started in the background for the
   store (plain IPython, VS Code, nbclient and the CLI have no Jupyter server), which then owns the store: later
   kernels and commands find it as 3. It stops after an hour without work.

Importing this module is cheap (no HTTP or OpenAI libraries until a request is made): `%load_ext` and
`import jupyter_modelrunner` stay fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import RunnerUnreachable
from .lease import LEASE_DIR, Owner, lease_is_held, read_owner
from .paths import default_store_path, jupyter_runtime_dir

ENV_HOST = "MODEL_RUNNER_HOST"
ENV_TOKEN = "MODEL_RUNNER_TOKEN"
ENV_REGISTRY = "MODEL_RUNNER_DEFAULT_REGISTRY"
DEFAULT_HOST = "http://localhost:12434/"
#: An embedded runner nobody has used for this long stops itself (its engines unload before, by keep_alive).
EMBEDDED_IDLE_SECONDS = 3600
EMBEDDED_START_TIMEOUT = 60.0
PROBE_TIMEOUT = 3.0
#: How long a client waits for an embedded runner of another version to finish its work and hand the store over.
HANDOVER_TIMEOUT = 60.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerLocation:
    """Where a runner's routes live (`url` ends in `/`), the token it takes, and how it was found."""

    url: str
    token: str = ""
    source: str = ""
    tried: tuple[str, ...] = field(default=(), compare=False)
    #: The store whose owner this is (found through its lease), so a client can follow the store to a new owner.
    store: Path | None = field(default=None, compare=False)

    @property
    def base_url(self) -> str:
        return self.url + "engines/v1"


# -- discovery ------------------------------------------------------------------------------------------


def _normalize(url: str) -> str:
    if "://" not in url:  # DMR accepts `localhost:12434`
        url = f"http://{url}"
    return url if url.endswith("/") else url + "/"


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(path.read_text())
        if isinstance(info, dict):
            return info
    return {}


def _answers(url: str, token: str) -> str | None:
    """None when the runner at `url` answers `engines/status` with this token (or, for an inference key, its model
    list), else why not (one phrase)."""
    import httpx

    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        response = httpx.get(url + "engines/status", headers=headers, timeout=PROBE_TIMEOUT, trust_env=False)
    except httpx.HTTPError as exc:
        return f"no answer ({exc.__class__.__name__})"
    if response.status_code == 200:
        return None
    if response.status_code == 403 and token:  # a key that may only ask (an inference key) may still use it
        try:
            asked = httpx.get(url + "engines/v1/models", headers=headers, timeout=PROBE_TIMEOUT, trust_env=False)
        except httpx.HTTPError as exc:
            return f"no answer ({exc.__class__.__name__})"
        if asked.status_code == 200:
            return None
    if response.status_code == 404:
        return "no model runner there (is the jupyter_modelrunner server extension enabled?)"
    if response.status_code in (401, 403):
        return "the token was refused"
    return f"HTTP {response.status_code}"


def locate(*, start: bool = True, store: Path | str | None = None, registry: str | None = None) -> RunnerLocation:
    """Find the runner (see the module's docstring for the order); start an embedded one if `start`.

    `store` and `registry` are those a runner started here gets (default: `$MODEL_RUNNER_STORE` or Jupyter's data
    dir, and `$MODEL_RUNNER_DEFAULT_REGISTRY`). Raises `RunnerUnreachable` naming what was tried when nothing answers.
    """
    tried: list[str] = []
    if os.environ.get(ENV_HOST):
        # An explicit choice is never second-guessed: a runner that is down is an error, not a fallback.
        return RunnerLocation(_normalize(os.environ[ENV_HOST]), os.environ.get(ENV_TOKEN, ""), f"${ENV_HOST}")
    tried.append(f"${ENV_HOST} (not set)")

    parent = os.environ.get("JPY_PARENT_PID")
    if parent and store is None:
        info = _read_json(jupyter_runtime_dir() / f"jpserver-{parent}.json")
        if info.get("url"):
            url = _normalize(str(info["url"])) + "modelrunner/"
            token = str(info.get("token") or "")
            problem = _answers(url, token)
            if problem is None:
                return RunnerLocation(url, token, f"the Jupyter server that started this kernel (pid {parent})")
            tried.append(f"the Jupyter server that started this kernel, {url}: {problem}")
        else:
            tried.append(f"the Jupyter server that started this kernel (pid {parent}): no jpserver-{parent}.json")

    root = Path(store).expanduser() if store else default_store_path()
    owner = read_owner(root)
    if owner is not None and owner.version != __version__:
        owner = _meet_another_version(owner, root, restart=start)
        if owner is None:
            tried.append(f"the owner of the store {root}: an embedded runner of another version, stopped")
    if owner is not None:
        # The lease proves the owner is alive; its answer to the actual request says the rest (no extra probe).
        source = f"the owner of the store {root}: {owner.describe()}"
        if owner.version != __version__:
            source += f" (jupyter-modelrunner {owner.version or 'of an older version'}; this client is {__version__})"
        return RunnerLocation(_normalize(owner.url), owner.token, source, tuple(tried), root)
    tried.append(f"the owner of the store {root} (none is running)")
    if not start:
        raise RunnerUnreachable(_unreachable_message(tried))
    return _start_embedded(root, registry if registry is not None else os.environ.get(ENV_REGISTRY, ""), tried)


def _meet_another_version(owner: Owner, root: Path, *, restart: bool) -> Owner | None:
    """What to do with a store's owner whose jupyter-modelrunner version is not this client's: None once it is gone
    (the caller starts a runner of this version), else the owner to use as it is.

    An embedded runner is this package's own background process (a CLI command or a kernel started it, it lives an
    hour), so a user who upgraded expects the new version to answer, not an hour-old one: it is asked to hand the
    store over (it finishes its work in progress, unloads and exits; an older one without that route is sent
    SIGTERM, which does the same), and a new one is started. A runner a user started (JupyterLab, `serve`) may be
    serving notebooks and other clients, so a command never stops it: it is used, with a warning naming both
    versions (the CLI prints it, a kernel shows it on stderr) and the versions in the location's `source`. When
    `restart` is False (verbs that must start nothing) nothing is stopped either.
    """
    theirs = owner.version or "an older version (it does not say which)"
    if owner.kind != "embedded" or not restart:
        log.warning("The model runner that owns the store %s, %s, runs jupyter-modelrunner %s, and this client is "
                    "%s: it is used as it is. Restart it to run %s.", root, owner.describe(), theirs, __version__,
                    __version__)
        return owner
    log.warning("The embedded model runner of the store %s (pid %d) runs jupyter-modelrunner %s, and this client is "
                "%s: it is asked to finish its work and stop, and a runner of %s starts in its place.", root,
                owner.pid, theirs, __version__, __version__)
    if not _ask_to_hand_over(owner):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(owner.pid, signal.SIGTERM)  # the lease proves it alive; an embedded runner stops cleanly on it
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    while time.monotonic() < deadline:
        if not lease_is_held(root):
            return None
        time.sleep(0.1)
    log.warning("The embedded model runner of the store %s (pid %d) did not stop within %.0f s (still working?); "
                "it is used as it is.", root, owner.pid, HANDOVER_TIMEOUT)
    return owner


def _ask_to_hand_over(owner: Owner) -> bool:
    """Whether the embedded runner `owner` agreed to hand its store over (`engines/_handover`); False when it
    cannot be asked (no URL, no such route in its version, no answer)."""
    import httpx

    if not owner.url:
        return False
    headers = {"Authorization": f"token {owner.token}"} if owner.token else {}
    try:
        response = httpx.post(_normalize(owner.url) + "engines/_handover", headers=headers, timeout=PROBE_TIMEOUT,
                              trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 202


def after_handover(location: RunnerLocation, retry_after: float) -> RunnerLocation:
    """Where to retry a request that the runner at `location` refused because it is handing its store over
    (`errors.HandingOver`, a 503): the store's new owner once the old one has gone, found through the store's lease
    as `locate` finds it. A location that did not come from a store (`$MODEL_RUNNER_HOST`, the parent Jupyter server,
    `connect`) is never second-guessed: the retry goes to it again after `retry_after` seconds (a server relaying to
    the old owner owns the store by then, or answers the 503 again)."""
    log.info("The model runner at %s is handing its store over to a newer one; the request is retried at the new "
             "owner once it runs the store", location.url)
    if location.store is None:
        time.sleep(max(0.0, min(retry_after, HANDOVER_TIMEOUT)))
        return location
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    while time.monotonic() < deadline:
        owner = read_owner(location.store)
        if owner is not None and owner.url and _normalize(owner.url) != location.url:
            return RunnerLocation(_normalize(owner.url), owner.token, f"the owner of the store {location.store}, "
                                  f"after a handover: {owner.describe()}", (), location.store)
        time.sleep(0.1)
    # Nobody took the store in time (the server that asked for it stopped?): find or start one as usual.
    return locate(store=location.store)


def _unreachable_message(tried: Sequence[str]) -> str:
    lines = "\n".join(f"  - {item}" for item in tried)
    return (f"No model runner could be reached. Tried:\n{lines}\nStart JupyterLab (the extension serves it) or "
            f"`jupyter modelrunner serve`, or set {ENV_HOST} (and {ENV_TOKEN}) to a running one.")


def _start_embedded(store: Path, registry: str, tried: list[str]) -> RunnerLocation:
    """Start `jupyter modelrunner serve --embedded` for `store` in the background and wait for it to own the store.

    It outlives this process (the next kernel or CLI command reuses it) and stops after EMBEDDED_IDLE_SECONDS
    without work. A lock under the store makes two processes starting at once share one runner.
    """
    from filelock import FileLock

    folder = store / LEASE_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with FileLock(str(folder / "start.lock"), timeout=EMBEDDED_START_TIMEOUT + 30):
        owner = read_owner(store)  # another process may have started one while we waited for the lock
        if owner is not None:
            return RunnerLocation(_normalize(owner.url), owner.token, f"the owner of the store {store}: "
                                  f"{owner.describe()}", tuple(tried), store)
        argv = [sys.executable, "-m", "jupyter_modelrunner", "--store", str(store)]
        if registry:
            argv += ["--registry", registry]
        argv += ["serve", "--port", "0", "--embedded", "--idle-timeout", str(EMBEDDED_IDLE_SECONDS)]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv.append("--allow-root")
        log_path = folder / "embedded.log"
        env = {k: v for k, v in os.environ.items() if k not in (ENV_HOST, ENV_TOKEN)}
        # Its log is stderr: its stdout has `serve`'s "Token:" line for a person at a terminal, which must not
        # sit in a file (the lease's user-only token file is where clients find the token).
        with log_path.open("ab") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                       env=env, start_new_session=True)  # outlives this process, for the next one
        deadline = time.monotonic() + EMBEDDED_START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                tried.append(f"starting an embedded runner: it exited with code {process.returncode}")
                raise RunnerUnreachable(f"{_unreachable_message(tried)}\nIts log ({log_path}):\n{tail}")
            owner = read_owner(store)
            if owner is not None and owner.pid == process.pid:
                return RunnerLocation(_normalize(owner.url), owner.token, f"an embedded runner started now (pid "
                                      f"{process.pid}, store {store}; log {log_path})", tuple(tried), store)
            time.sleep(0.05)
        process.terminate()
        tried.append(f"starting an embedded runner: not ready within {EMBEDDED_START_TIMEOUT:.0f} s (log {log_path})")
        raise RunnerUnreachable(_unreachable_message(tried))
