"""What every model runner handler shares: authentication, the service, and one error mapping.

Each route is a jupyter_server `APIHandler`, so the notebook server's token, cookies, XSRF and
authorizer protect it exactly like `/api/kernels`. Library exceptions carry the message a user should
read and an HTTP status (`errors.ModelRunnerError.http_status`); `write_error` turns them into a JSON
body that both OpenAI clients (`{"error": {...}}`) and Jupyter clients (`{"message": ...}`) understand.
"""

from __future__ import annotations

import json
import weakref
from http.client import responses
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.utils import HTTP_METHOD_TO_AUTH_ACTION
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..errors import ModelRunnerError
from ..service import ModelRunnerService
from .forward import forward

#: The authorizer's resource for every route: `c.ServerApp.authorizer_class` may grant or deny it as a whole.
AUTH_RESOURCE = "modelrunner"
#: Key of the service in the tornado application's settings.
SERVICE_SETTING = "modelrunner_service"

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 409: "conflict_error", 422: "invalid_request_error",
               499: "cancelled", 502: "engine_error", 503: "service_unavailable", 507: "insufficient_storage"}


def error_status(exc: BaseException | None, default: int) -> tuple[int, str]:
    """The status and message to answer with for `exc`: the single place exceptions become HTTP."""
    if isinstance(exc, ModelRunnerError):
        return exc.http_status, str(exc)
    if isinstance(exc, web.HTTPError):
        return exc.status_code, exc.log_message or exc.reason or responses.get(exc.status_code, "Error")
    if isinstance(exc, OSError):
        return 500, f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"
    return default, responses.get(default, "Error")


def openai_error(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error object; `message` at the top level too, where Jupyter clients look for it."""
    return {"message": message, "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                                          "code": status}}


#: What a scoped inference key (not the Jupyter token) may reach: routes that answer with a model, never manage.
SCOPE_INFERENCE = "inference"
SCOPE_MANAGE = "manage"


class ModelRunnerHandler(APIHandler):
    """Base of all model runner routes."""

    auth_resource = AUTH_RESOURCE
    #: SCOPE_INFERENCE on routes a scoped inference key may use (chat, completions, embeddings, model lists...).
    api_scope = SCOPE_MANAGE

    @property
    def service(self) -> ModelRunnerService:
        return self.settings[SERVICE_SETTING]

    async def prepare(self) -> None:  # type: ignore[override]
        """Authenticate as every route does, then relay to the store's owner when it is another process.

        The check happens here, before the relay, because the relay answers in place of the route's own method
        (which would otherwise authenticate and authorize through its decorators).
        """
        await super().prepare()
        owner = self.service.remote_owner
        if owner is None or self._finished:
            if not self._track_activity:  # a Prometheus scrape is not work that keeps a runner up
                return
            # Work in progress until the answer is complete; a handler dropped without finishing (its client
            # vanished) ends it when collected, so no stale entry keeps an idle runner alive.
            key = self.service.begin_activity(f"{self.request.method} {self.request.path}")
            weakref.finalize(self, self.service.end_activity, key)
            self._activity = key
            return
        if self.current_user is None:
            raise web.HTTPError(403)
        action = HTTP_METHOD_TO_AUTH_ACTION.get(self.request.method, "write")
        if not await ensure_async(self.authorizer.is_authorized(self, self.current_user, action, AUTH_RESOURCE)):
            raise web.HTTPError(403, f"User is not authorized to {action} on resource: {AUTH_RESOURCE}.")
        await forward(self, owner)

    _activity: int | None = None

    def on_finish(self) -> None:
        if self._activity is not None:
            self.service.end_activity(self._activity)
            self._activity = None
        super().on_finish()

    def json_body(self) -> dict[str, Any]:
        """The request's JSON object (an empty one when there is no body); 400 on anything else."""
        body = self.get_json_body() or {}
        if not isinstance(body, dict):
            raise web.HTTPError(400, "The request body must be a JSON object.")
        return body

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """The JSON sent for an error; the Ollama routes override it with Ollama's shape."""
        return openai_error(status, message)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs["exc_info"][1] if kwargs.get("exc_info") else None
        status, message = error_status(exc, status_code)
        if status != status_code:
            self.set_status(status, responses.get(status, "Model runner error"))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.error_body(status, message)))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Expected failures (a model not pulled, an engine that cannot start) are logged as one line."""
        if isinstance(value, ModelRunnerError):
            self.log.warning("%s %s: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)
