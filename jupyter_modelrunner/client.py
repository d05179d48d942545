"""Finding the model runner from notebook code, scripts and the CLI.

Inside a kernel started by a Jupyter server with this extension, `MODEL_RUNNER_HOST` (the runner's URL,
base path included) and `MODEL_RUNNER_TOKEN` are in the environment. Elsewhere the standalone server
(`jupyter modelrunner serve`) is found through the file it writes in Jupyter's runtime directory, and
last Docker Model Runner's own default, `http://localhost:12434/`.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from typing import Any

from .paths import standalone_server_file

ENV_HOST = "MODEL_RUNNER_HOST"
ENV_TOKEN = "MODEL_RUNNER_TOKEN"
DEFAULT_HOST = "http://localhost:12434/"


def _standalone() -> dict[str, str]:
    with suppress(OSError, ValueError):
        info = json.loads(standalone_server_file().read_text())
        if isinstance(info, dict):
            return {k: str(v) for k, v in info.items()}
    return {}


def host() -> str:
    """The runner's URL, ending in `/` (e.g. `http://127.0.0.1:8888/modelrunner/`)."""
    url = os.environ.get(ENV_HOST) or _standalone().get("url") or DEFAULT_HOST
    if "://" not in url:  # DMR accepts `localhost:12434`
        url = f"http://{url}"
    return url if url.endswith("/") else url + "/"


def base_url() -> str:
    """The OpenAI-compatible base URL: `OpenAI(base_url=base_url(), api_key=api_key())` just works."""
    return host() + "engines/v1"


def api_key() -> str:
    """The token the runner accepts (the Jupyter server's token); OpenAI clients send it as a bearer key."""
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    if not os.environ.get(ENV_HOST):
        return _standalone().get("token", "") or "none"
    return "none"  # a server without a token (auth done by a proxy): the SDK still wants a non-empty key


class RunnerClient:
    """A small synchronous client of the runner's HTTP API, for the CLI verbs that need the live server.

    Every failure becomes a `ModelRunnerError` with the server's own message, or with what to start when
    nothing answers.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        import httpx

        self.url = url or host()
        self.token = token if token is not None else api_key()
        headers = {"Authorization": f"token {self.token}"} if self.token and self.token != "none" else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)

    def get(self, path: str) -> Any:
        return self._send("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._send("POST", path, body)

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        from .errors import ModelRunnerError

        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise ModelRunnerError(
                f"No model runner answers at {self.url} ({exc.__class__.__name__}). Start JupyterLab (the extension "
                f"serves it) or `jupyter modelrunner serve`, or point {ENV_HOST} at a running one."
            ) from exc
        if response.status_code in (401, 403):
            raise ModelRunnerError(f"The model runner at {self.url} refused the token; set {ENV_TOKEN} to the "
                                   "server's token.")
        if response.status_code >= 400:
            message = response.text
            with suppress(ValueError, AttributeError):
                message = response.json().get("message") or message
            error = ModelRunnerError(message)
            error.http_status = response.status_code
            raise error
        return response.json() if response.content else None
