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
from jupyter_server.auth import User
from jupyter_server.auth.utils import HTTP_METHOD_TO_AUTH_ACTION
from jupyter_server.base.handlers import APIHandler
from tornado import web

from ..errors import HandingOver, ModelRunnerError, Overloaded
from ..inference import Caller, Inference
from ..keys import SCOPE_INFERENCE, SCOPE_MANAGE, relay_scope
from ..service import ModelRunnerService
from ..sizes import format_bytes
from .owner_proxy import CALLER_HEADER, DOT_SEGMENT_MESSAGE, has_dot_segment, proxy_to_owner

#: The authorizer's resource for every route: `c.ServerApp.authorizer_class` may grant or deny it as a whole.
AUTH_RESOURCE = "modelrunner"
#: Key of the service in the tornado application's settings.
SERVICE_SETTING = "modelrunner_service"
#: Key of the inference keys (keys.KeyRing) in the settings.
KEYS_SETTING = "modelrunner_keys"
#: Key of the largest request body accepted (bytes) in the settings.
MAX_BODY_SETTING = "modelrunner_max_body_bytes"
DEFAULT_MAX_BODY_BYTES = 64 * 1024**2
#: How much of a body over the limit is read (and dropped) so the client sees the 413 (see _limit_body).
DRAIN_BYTES = 16 * 1024**2
#: The largest body of a request without credentials that is read (and dropped) before its refusal, so that a client
#: that forgot its key reads the answer rather than a reset; anything larger, or of unannounced length, is answered
#: at once and its connection closed.
UNAUTHENTICATED_DRAIN_BYTES = 64 * 1024
#: How deeply a request body may nest arrays and objects: far beyond any real request (OpenAI caps structured-output
#: schemas at 10 levels), and shallow enough that no recursive code after json_body can run out of stack.
MAX_JSON_DEPTH = 100

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 409: "conflict_error", 422: "invalid_request_error",
               413: "request_too_large", 499: "cancelled", 502: "engine_error", 503: "service_unavailable",
               507: "insufficient_storage"}


_validators: dict[int, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    """A JSON Schema validator for one of api/schemas.py's module-level schemas (built once each)."""
    validator = _validators.get(id(schema))
    if validator is None:
        from jsonschema import Draft202012Validator

        validator = _validators[id(schema)] = Draft202012Validator(schema)
    return validator


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


# What a credential may reach, SCOPE_INFERENCE (routes that answer with a model) or SCOPE_MANAGE (all of ours), is
# defined in keys.py and imported from here by the handlers (`api_scope`).


#: The header a client marks its work on data with (`background`): see scheduling/priority.py.
PRIORITY_HEADER = "X-Model-Runner-Priority"


class _KeyAwareIdentity:
    """The server's identity provider, and our keys after it: a `Bearer` credential that is not the Jupyter token
    (nor anything else Jupyter accepts) is checked as one of this server's relay keys (a server relaying to this
    one, in the scope its caller had), then looked up among the inference keys. A key's user is then treated as
    token-authenticated (no XSRF check: a browser never sends a header credential by itself). Only our handlers
    use this provider, so no key opens any of Jupyter's own routes."""

    def __init__(self, inner: Any, handler: ModelRunnerHandler) -> None:
        self._inner = inner
        self._handler = handler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_user(self, handler: Any) -> User | None:
        user = await ensure_async(self._inner.get_user(handler))
        if user is not None:
            return user
        credential = _bearer(handler.request.headers.get("Authorization", ""))
        if credential is None:
            return None
        scope = relay_scope(getattr(self._inner, "token", "") or "", credential)
        if scope is not None:
            self._handler.key_name, self._handler.key_scope = f"relay ({scope})", scope
            self._handler._relayed_request = True
            return User(username=f"relay:{scope}", name=f"relay-{scope}",
                        display_name=f"a server relaying to this one ({scope})")
        keys = handler.settings.get(KEYS_SETTING)
        name = keys.match(credential) if keys is not None else None
        if name is None:
            # A wrong `Bearer` credential is a refused API key (401, as OpenAI's API says it); a wrong `token` stays
            # Jupyter's wrong token (403), as Jupyter clients expect.
            self._handler._refused_key = keys is not None and handler.request.headers.get(
                "Authorization", "").lower().startswith("bearer")
            return None
        self._handler.key_name, self._handler.key_scope = name, SCOPE_INFERENCE
        return User(username=f"key:{name}", name=name, display_name=f"inference key {name}")

    def is_token_authenticated(self, handler: Any) -> bool:
        return self._handler.key_name is not None or self._inner.is_token_authenticated(handler)


class _Unauthenticated(web.HTTPError):
    """A request that no credential authenticates (403 as Jupyter answers it; 401 for a wrong inference key, as
    OpenAI's API does), answered before its body is read (see prepare)."""


def _nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and dicts more than `limit` deep: checked without recursion, so any depth is
    safe to ask about."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _bearer(header: str) -> str | None:
    """The credential of an `Authorization` header: `Bearer KEY` as OpenAI clients send it, or `token KEY` as
    Jupyter clients (ours included: a kernel given an inference key instead of a token) send it."""
    scheme, _, credential = header.partition(" ")
    return credential.strip() or None if scheme.lower() in ("bearer", "token") else None


@web.stream_request_body
class ModelRunnerHandler(APIHandler):
    """Base of all model runner routes."""

    auth_resource = AUTH_RESOURCE
    #: SCOPE_INFERENCE on routes a scoped inference key may use (chat, completions, embeddings, model lists...).
    api_scope = SCOPE_MANAGE
    #: Whether a server that does not own the store asks the owner (False: the answer is this server's own).
    relayed = True
    #: Whether the route still answers while this runner hands its store over (see `HandingOver`): only those that
    #: start no work (its status, the handover itself) do.
    answers_while_handing_over = False
    #: The key this request authenticated with (None: the Jupyter token, a cookie, ...) and what it may reach:
    #: SCOPE_INFERENCE for an inference key, a relay key's scope for a server relaying to this one (None: anything).
    key_name: str | None = None
    key_scope: str | None = None
    _refused_key = False
    #: The request came with a relay key: from a server on this store relaying its client's request (keys.py).
    _relayed_request = False

    @property
    def identity_provider(self) -> Any:  # type: ignore[override]
        return _KeyAwareIdentity(super().identity_provider, self)

    @property
    def service(self) -> ModelRunnerService:
        return self.settings[SERVICE_SETTING]

    async def prepare(self) -> None:  # type: ignore[override]
        """Authenticate at the headers, refuse a body over the limit before reading it, check the key's scope and
        the path, then relay to the store's owner when it is another process.

        The body streams in (`stream_request_body`) only after this returns, so nothing of a refused request's
        body is kept (data_received drops it). A request without credentials costs nothing more: it is not
        activity (that would keep an idle runner up), and unless its body is small and announced it is answered at
        once and its connection closed, never read. Other refusals are answered once the body is in, in place of the
        route's method: tornado closes a connection whose request body was not read, which a client still sending,
        or reusing the connection, would see as a reset (see _limit_body). The relay's checks happen here because
        it too answers in place of the route's method (which would otherwise authenticate through its decorators).
        """
        self.request.body = bytearray()  # type: ignore[assignment]  # data_received appends to it
        try:
            await self._authenticate()
            self._limit_body()
            await self._admit()
        except (web.HTTPError, HandingOver) as exc:
            self._dropping_body = True
            if isinstance(exc, _Unauthenticated) and not self._small_announced_body():
                self.send_error(exc.status_code, exc_info=(type(exc), exc, None))
                raise web.Finish() from None
            refusal = exc

            async def refuse(*_args: Any, **_kwargs: Any) -> None:
                raise refusal

            setattr(self, self.request.method.lower(), refuse)  # type: ignore[union-attr]

    async def _authenticate(self) -> None:
        """Jupyter's authentication (token, cookie, XSRF) and our keys; _Unauthenticated when no credential holds,
        whatever Jupyter objected to first (a POST without credentials fails its XSRF check). A CORS preflight
        (`OPTIONS`) carries none by design: Jupyter answers it."""
        try:
            await super().prepare()
        except web.HTTPError:
            if self.current_user is None:
                raise self._unauthenticated() from None
            raise
        if self.current_user is None and self.request.method != "OPTIONS":
            raise self._unauthenticated()

    def _unauthenticated(self) -> _Unauthenticated:
        if self._refused_key:  # an OpenAI/Anthropic client with a wrong or revoked key: say so the way their APIs do
            return _Unauthenticated(401, "Invalid or revoked API key. Create one with `jupyter modelrunner key create "
                                         "NAME`, or use the server's token.")
        if self.request.headers.get("Authorization"):  # a wrong token: Jupyter's own answer (clients know it)
            return _Unauthenticated(403, None)
        # 403 as Jupyter answers an API request without credentials (clients and tests rely on it), with the fix.
        return _Unauthenticated(403, "Authentication required: send the server's token (`Authorization: token "
                                     "TOKEN`) or an inference key (`Authorization: Bearer KEY`).")

    def _small_announced_body(self) -> bool:
        """Whether the body is announced and small (none at all, without Content-Length or Transfer-Encoding)."""
        length = self.request.headers.get("Content-Length", "0")
        return "Transfer-Encoding" not in self.request.headers and length.isdigit() and \
            int(length) <= UNAUTHENTICATED_DRAIN_BYTES

    async def _admit(self) -> None:
        if self.current_user is None:
            return  # a CORS preflight: Jupyter's `options` answers it; it is not work
        if self.key_scope == SCOPE_INFERENCE and self.api_scope != SCOPE_INFERENCE:
            raise web.HTTPError(403, f"The inference key {self.key_name!r} may only ask models (chat, completions, "
                                     "embeddings, model lists); this route needs the Jupyter token.")
        if has_dot_segment(self.request.path):
            raise web.HTTPError(400, DOT_SEGMENT_MESSAGE)
        owner = self.service.remote_owner if self.relayed else None
        if owner is None or self._finished:
            if not self._track_activity:  # a Prometheus scrape is not work that keeps a runner up
                return
            if self.service.handing_over and not self.answers_while_handing_over:
                raise HandingOver()
            # Work in progress until the answer is complete; a handler dropped without finishing (its client
            # vanished) ends it when collected, so no stale entry keeps an idle runner alive.
            key = self.service.begin_activity(f"{self.request.method} {self.request.path}")
            weakref.finalize(self, self.service.end_activity, key)
            self._activity = key
            return
        action = HTTP_METHOD_TO_AUTH_ACTION.get(self.request.method, "write")
        if not await ensure_async(self.authorizer.is_authorized(self, self.current_user, action, AUTH_RESOURCE)):
            raise web.HTTPError(403, f"User is not authorized to {action} on resource: {AUTH_RESOURCE}.")

        async def relay(*_args: Any, **_kwargs: Any) -> None:
            await proxy_to_owner(self, owner)

        # Answer with the owner's answer instead of this route's method, once the body has come in.
        setattr(self, self.request.method.lower(), relay)  # type: ignore[union-attr]

    def _limit_body(self) -> None:
        """413 for a body announced larger than `max_body_bytes`. Up to DRAIN_BYTES more are read and dropped
        first, so that the client, still sending, reads the answer instead of a reset connection; beyond that
        the answer comes at once and the connection is closed. A chunked body is cut off at the limit."""
        limit = self.settings.get(MAX_BODY_SETTING) or DEFAULT_MAX_BODY_BYTES
        length = self.request.headers.get("Content-Length", "")
        if not (length.isdigit() and int(length) > limit):
            self.request.connection.set_max_body_size(limit)  # type: ignore[union-attr]
            return
        refusal = web.HTTPError(413, f"The request body is {format_bytes(int(length))}, more than the "
                                     f"{format_bytes(limit)} this server accepts (c.ModelRunner.max_body_bytes).")
        if int(length) > limit + DRAIN_BYTES:
            self.send_error(413, exc_info=(type(refusal), refusal, None))
            raise web.Finish()
        self.request.connection.set_max_body_size(int(length))  # type: ignore[union-attr]
        raise refusal

    _dropping_body = False

    def data_received(self, chunk: bytes) -> None:
        if not self._dropping_body:
            self.request.body.extend(chunk)  # type: ignore[attr-defined]

    _activity: int | None = None

    def on_finish(self) -> None:
        if self._activity is not None:
            self.service.end_activity(self._activity)
            self._activity = None
        super().on_finish()

    def json_body(self, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        """The request's JSON object (an empty one when there is no body), checked against `schema` (api/schemas.py,
        what the OpenAPI description says); 400 saying what is wrong and where, on anything else."""
        raw = bytes(self.request.body).strip()
        too_deep = web.HTTPError(400, f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} deep; "
                                      "no request needs that many levels: flatten it.")
        try:
            body = json.loads(raw) if raw else {}
        except RecursionError:
            raise too_deep from None
        except UnicodeDecodeError as exc:
            raise web.HTTPError(400, "The request body is not UTF-8 text; send JSON.") from exc
        except ValueError as exc:
            raise web.HTTPError(400, f"The request body is not valid JSON ({exc}).") from exc
        if not isinstance(body, dict):
            raise web.HTTPError(400, "The request body must be a JSON object.")
        if _nesting_exceeds(body, MAX_JSON_DEPTH):
            raise too_deep
        if schema is not None:
            try:
                problem = next(iter(_validator(schema).iter_errors(body)), None)
            except RecursionError:
                raise too_deep from None
            if problem is not None:
                where = "/".join(str(p) for p in problem.absolute_path)
                raise web.HTTPError(400, f"The request body does not fit this route: {problem.message}"
                                         f"{f' (at {where})' if where else ''}.")
        return body

    def get_json_body(self) -> dict[str, Any] | None:
        """Jupyter's name for it, for code that calls that: the same checks."""
        return self.json_body() or None

    @property
    def caller(self) -> Caller:
        """Who asks, for the inference path's policy: an inference key asks only; the token's user manages."""
        if self.key_scope == SCOPE_INFERENCE:
            relayed_for = self.request.headers.get(CALLER_HEADER, "") if self._relayed_request else ""
            if relayed_for.startswith("key:") and 4 < len(relayed_for) <= 200 and relayed_for.isprintable():
                return Caller(relayed_for, SCOPE_INFERENCE)  # the key the relaying server's client used
            return Caller(f"key:{self.key_name}", SCOPE_INFERENCE)
        # A relay key of the manage scope speaks for the relaying server's token holders. Jupyter names a token-only
        # request's user anew each time: the token (or the server's own user) is one owner.
        return Caller("token", SCOPE_MANAGE)

    @property
    def background_work(self) -> bool:
        """The client says the request is work on data (`X-Model-Runner-Priority: background`, as `map` sends it):
        it takes only the slots interactive requests leave free. Any caller may lower its own priority; none can
        raise it above an interactive request's."""
        return self.request.headers.get(PRIORITY_HEADER, "").strip().lower() == "background"

    def name_the_engine(self, inference: Inference) -> None:
        """Say which engine answers (`X-Model-Runner-Engine`, `-Device`): the %%chat footer and the sidebar show it."""
        for name, value in inference.engine_headers.items():
            self.set_header(name, value)

    def start_event_stream(self, content_type: str) -> None:
        """The headers of a streamed answer: no caching, and no buffering by a proxy in front (nginx before
        JupyterHub), so each event reaches the client as the engine makes it."""
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """The JSON sent for an error; the Ollama routes override it with Ollama's shape."""
        return openai_error(status, message)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs["exc_info"][1] if kwargs.get("exc_info") else None
        status, message = error_status(exc, status_code)
        if isinstance(exc, Overloaded | HandingOver):
            self.set_header("Retry-After", str(exc.retry_after))
        if isinstance(exc, HandingOver):
            self.set_header(HandingOver.header, "true")
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="model runner"')
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
