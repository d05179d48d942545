"""The contract every inference engine fulfils, so the scheduler can run any of them the same way.

An engine knows how to start its server process for a model bundle on a Unix socket (or a loopback
port with a per-engine API key), which extra flags a user may pass it, and how to tell it is ready. It
does not know about other runners, memory budgets or HTTP routes: that is the scheduler's job.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from traitlets import Float
from traitlets.config import LoggingConfigurable

from ..errors import (
    EngineFlagRefused,
    EngineRefused,
    InstallError,
)
from .hardware import Hardware

if TYPE_CHECKING:
    from ..store import Model

#: The name every engine serves its one model under (`--alias`, `--served-model-name`): requests to an engine say
#: it, and the OpenAI route renames answers to the name the client used.
ENGINE_MODEL_NAME = "model"
MODE_COMPLETION = "completion"
MODE_EMBEDDING = "embedding"
#: A reranker (a cross-encoder with a classification head) scoring documents against a query.
MODE_RERANK = "rerank"
MODES = (MODE_COMPLETION, MODE_EMBEDDING, MODE_RERANK)
#: GGUF's `pooling_type` of a reranker (llama.cpp's LLAMA_POOLING_TYPE_RANK).
GGUF_POOLING_RANK = "4"


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether an engine can be used on this machine (installed, a device it can use), and why not."""

    ok: bool
    reason: str
    device: str = "cpu"
    version: str | None = None
    #: Where the engine lives (a binary or an interpreter), for `status`.
    location: str | None = None
    #: Which implementation runs it when an engine has several (llama.cpp: "llama-server" or "llama-cpp-python").
    implementation: str | None = None


@dataclass(frozen=True)
class Launch:
    """How to start one engine process and reach it once it is up."""

    argv: list[str]
    env: dict[str, str]
    socket: Path | None = None
    port: int | None = None
    api_key: str | None = None
    health_path: str = "/v1/models"
    plan: LoadPlan | None = None
    #: The program that serves (`llama-server`, `llama-cpp-python`, `vllm`), for `ps` and for the engine's own code
    #: that talks to it differently (None: the engine's name).
    implementation: str | None = None

    @property
    def base_url(self) -> str:
        """The URL prefix of the engine's OpenAI API (a placeholder host when on a Unix socket)."""
        return "http://engine" if self.socket else f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class RunConfig:
    """Per-model settings the user chose (`configure`), applied when the engine starts."""

    context_size: int | None = None
    runtime_flags: tuple[str, ...] = ()
    keep_alive: float | None = None  # seconds; -1 never unload; None: the scheduler's default
    #: Whether a reasoning model thinks before it answers when a request does not say (None: the template's default).
    think: bool | None = None
    #: Tokens a model may think for before it must answer (-1: no limit; None: the engine's default).
    reasoning_budget: int | None = None


#: Where a load plan's context size came from, strongest first (Docker Model Runner's most reported problem is
#: not knowing which one won, so `ps` says it).
CONTEXT_CONFIGURED = "configured"
CONTEXT_REQUEST = "request"
CONTEXT_ARTIFACT = "model artifact"
CONTEXT_TRAINING = "model's training context"
CONTEXT_TRAINING_CAPPED = "model's training context, capped to fit memory"
CONTEXT_DEFAULT = "default"
DEFAULT_CONTEXT = 4096


@dataclass(frozen=True)
class LoadPlan:
    """How an engine will be started, decided before it starts so memory is admitted on the same numbers.

    `context_size` is what one request may use; `slots` how many requests the engine serves at once, each
    with a KV cache of its own, all counted in `memory`.
    """

    context_size: int
    context_source: str
    slots: int
    memory: int
    flags: tuple[str, ...] = ()
    #: GPU memory it takes (weights, KV caches, the engine's device runtime); 0 on the CPU. A budget of its own.
    vram: int = 0
    #: Thinking by default (None: as the chat template decides), from `configure --think/--no-think` or a flag.
    think: bool | None = None
    #: The thinking budget in tokens (-1 or None: no limit), from `configure --reasoning-budget` or a flag.
    reasoning_budget: int | None = None


@dataclass(frozen=True)
class FlagSpec:
    """One allowlisted engine flag: whether it takes a value, and (for flags whose value may be left out, like
    llama-server's `-fa [on|off|auto]`) the values it may take."""

    takes_value: bool = True
    help: str = ""
    optional_values: tuple[str, ...] = ()


@dataclass
class ModelFacts:
    """What an engine and the memory estimate need to know about a model, read from its bundle."""

    format: str | None
    weights_bytes: int
    context_length: int | None = None
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    #: A cross-encoder with a classification head, which scores (query, document) pairs: rerank mode runs it.
    reranker: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Model) -> ModelFacts:
        gguf = (model.config.raw.get("config") or {}).get("gguf") or {}
        arch = gguf.get("general.architecture") or model.config.architecture or ""

        def number(key: str) -> int | None:
            value = gguf.get(f"{arch}.{key}")
            return int(value) if isinstance(value, str) and value.isdigit() else None

        facts = cls(format=model.format, weights_bytes=model.size)
        if gguf:
            heads, embed = number("attention.head_count"), number("embedding_length")
            facts.context_length = number("context_length")
            facts.layers = number("block_count")
            facts.kv_heads = number("attention.head_count_kv") or heads
            facts.head_dim = number("attention.key_length") or (embed // heads if heads and embed else None)
            if gguf.get(f"{arch}.pooling_type"):
                facts.extra["pooling_type"] = gguf[f"{arch}.pooling_type"]
            # A classification head (llama.cpp's converter writes its labels) or rank pooling: a reranker.
            facts.reranker = (gguf.get(f"{arch}.pooling_type") == GGUF_POOLING_RANK
                              or f"{arch}.classifier.output_labels" in gguf)
        else:
            config_path = model.bundle / "config.json"
            try:
                hf = json.loads(config_path.read_text())
            except (OSError, ValueError):
                hf = {}
            heads = hf.get("num_attention_heads")
            facts.context_length = hf.get("max_position_embeddings")
            facts.layers = hf.get("num_hidden_layers")
            facts.kv_heads = hf.get("num_key_value_heads") or heads
            hidden = hf.get("hidden_size")
            facts.head_dim = hf.get("head_dim") or (hidden // heads if heads and hidden else None)
            architectures = hf.get("architectures") or []
            facts.reranker = any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in architectures)
        return facts

    def kv_cache_bytes(self, context: int, bytes_per_value: int = 2) -> int:
        """Keys and values for `context` tokens in every layer (f16 unless told otherwise)."""
        if not (self.layers and self.kv_heads and self.head_dim):
            return 0
        return 2 * self.layers * context * self.kv_heads * self.head_dim * bytes_per_value


@dataclass(frozen=True)
class StandbySpec:
    """How to start an interpreter that has done an engine's imports ahead of a load, and what it costs."""

    argv: list[str]
    env: dict[str, str]
    memory: int


class Engine(LoggingConfigurable):
    """An inference engine: one subclass per engine, found through the `jupyter_modelrunner.engines` entry points
    (engines/registry.py), configured like any Jupyter object (`c.LlamaServer.…`, `c.Vllm.…`), and stateless
    beyond its configuration: one instance serves every model of its formats.

    A new engine subclasses this in a package of its own, says which model formats it runs (`formats`) and how much
    it wants them (`priority`, the highest available one runs a format), and implements `availability` and
    `launch`; everything else has a default that suits an OpenAI-compatible server.

    What the dialects read of an answer is OpenAI's shape plus a few engine-neutral fields, which each engine's
    `adapt_response` fills from its own (so no dialect module names an engine's field):

    - `reasoning_content` on a message or delta: the model's thinking, apart from its answer.
    - `matched_stop` on a choice: the stop sequence (a string of the request's `stop`) that ended it. In a stream it
      comes on the last chunks, no later than the chunk with the choice's `finish_reason`. Engines that say so only
      when asked get `adapt_request(..., wants_matched_stop=True)`.
    - `generation_stats` on the answer (or a stream's last chunk), when the engine measures them:
      `{"prompt_tokens", "prompt_seconds", "completion_tokens", "generation_seconds"}`.
    """

    name: ClassVar[str]
    #: Other spellings users type for it (`--engine`, `engines/{engine}/…`, `install-runner`).
    aliases: ClassVar[tuple[str, ...]] = ()
    formats: ClassVar[frozenset[str]]
    #: Among the engines that run a format, the available one with the highest priority runs it.
    priority: ClassVar[int] = 0
    allowed_flags: ClassVar[Mapping[str, FlagSpec]] = {}
    #: Whether `jupyter modelrunner install-runner NAME` can install it (its class has an `install`).
    installable: ClassVar[bool] = False
    #: Memory the engine's process needs beyond weights and KV cache (runtime, buffers).
    overhead_bytes: ClassVar[int] = 256 * 1024**2

    load_timeout = Float(
        120.0, config=True,
        help="""Seconds to wait for a new engine process to answer its health check before the load fails.""",
    )

    @classmethod
    def install(cls, *, gpu: str = "auto", force: bool = False, progress: Any = None, **options: Any) -> Any:
        """Install the engine on this machine (`install-runner`); returns its `installing.InstalledEngine`."""
        raise InstallError(f"{cls.name} has no installer; install it as its documentation says.")

    def availability(self, hardware: Hardware) -> Availability:
        """Is the engine installed and usable here (cheap; cached by callers)?"""
        raise NotImplementedError

    def launch(
        self, model: Model, *, workdir: Path, config: RunConfig, hardware: Hardware, mode: str,
        cache_dir: Path | None = None, plan: LoadPlan | None = None,
    ) -> Launch:
        """The command, environment and address for serving `model` from its bundle.

        `workdir` is private to this one process (its socket); `cache_dir` survives it, for engines that
        compile or profile on start and can reuse the result next time.
        """
        raise NotImplementedError

    #: Requests one engine process serves at once when the user sets nothing (each slot has its own KV cache).
    default_slots: ClassVar[int] = 1
    #: GPU memory the engine takes beyond weights and KV caches where it runs on a GPU (its device runtime).
    gpu_runtime_bytes: ClassVar[int] = 512 * 1024**2

    def plan(self, model: Model, config: RunConfig, *, budget: int, request_context: int | None = None,
             mode: str = MODE_COMPLETION, hardware: Hardware | None = None, vram_budget: int = 0) -> LoadPlan:
        """Decide the context size, slots and memory for a start, from the strongest source that says something.

        Context, in order: the model's `configure` setting (or a context flag among its runtime flags) → the
        request's (Ollama's `options.num_ctx`) → the artifact config's `context_size` → the model's training
        context, capped so that weights and the KV cache of every slot fit the budget → 4096. On a GPU (`hardware`
        with CUDA) the weights and KV caches are counted in `vram` against `vram_budget`, RAM holds the process.
        """
        flags = self.check_flags(config.runtime_flags)
        flag_context, flag_slots, flags = self.absorb_flags(flags)
        flag_think, flag_budget, flags = self.absorb_reasoning_flags(flags)
        think = config.think if config.think is not None else flag_think
        thinking_budget = config.reasoning_budget if config.reasoning_budget is not None else flag_budget
        facts = ModelFacts.of(model)
        on_gpu = bool(hardware and hardware.cuda and vram_budget)
        limit = vram_budget if on_gpu else budget
        fixed = self.fixed_slots(mode)
        slots = fixed or flag_slots or self.default_slots
        if config.context_size or flag_context:
            context, source = int(config.context_size or flag_context or 0), CONTEXT_CONFIGURED
        elif request_context:
            context, source = int(request_context), CONTEXT_REQUEST
        elif model.config.context_size and model.config.context_size > 0:
            context, source = model.config.context_size, CONTEXT_ARTIFACT
        else:
            context, source = self.auto_context(facts, budget=limit, slots=slots, on_gpu=on_gpu)
        if not (fixed or flag_slots):  # "memory permitting": fewer slots before a model that would not fit
            while slots > 1 and self.memory_for(facts, context, slots, on_gpu=on_gpu) > limit:
                slots //= 2
        if on_gpu:
            return LoadPlan(context, source, slots, self.overhead_bytes, flags,
                            vram=self.memory_for(facts, context, slots, on_gpu=True), think=think,
                            reasoning_budget=thinking_budget)
        return LoadPlan(context, source, slots, self.memory_for(facts, context, slots), flags, think=think,
                        reasoning_budget=thinking_budget)

    def auto_context(self, facts: ModelFacts, *, budget: int, slots: int, on_gpu: bool = False) -> tuple[int, str]:
        """The context when nothing names one: the training context if the KV cache of every slot fits."""
        if not facts.context_length:
            return DEFAULT_CONTEXT, CONTEXT_DEFAULT
        wanted = facts.context_length
        per_token = facts.kv_cache_bytes(1) * slots
        room = budget - (self.gpu_runtime_bytes if on_gpu else self.overhead_bytes) - facts.weights_bytes
        if per_token and wanted * per_token > room:
            fits = max(256, (room // per_token) // 256 * 256) if room > 0 else 256
            return min(wanted, max(fits, min(wanted, DEFAULT_CONTEXT))), CONTEXT_TRAINING_CAPPED
        return wanted, CONTEXT_TRAINING

    def memory_for(self, facts: ModelFacts, context: int, slots: int, *, on_gpu: bool = False) -> int:
        """Runtime + weights + a KV cache of `context` tokens for each slot (f16): in RAM, or on the GPU's memory
        (with its device runtime) when `on_gpu`."""
        runtime = self.gpu_runtime_bytes if on_gpu else self.overhead_bytes
        return runtime + facts.weights_bytes + slots * facts.kv_cache_bytes(context)

    def capacity(self, plan: LoadPlan) -> int:
        """Requests a started engine works on at once (more wait in it): its slots."""
        return plan.slots

    def fixed_slots(self, mode: str) -> int | None:
        """Slots an engine always uses in `mode` whatever the user says (None: the user or the default decide)."""
        return None

    def absorb_flags(self, flags: tuple[str, ...]) -> tuple[int | None, int | None, tuple[str, ...]]:
        """Pull the context-size and parallel-slot flags out of checked runtime flags: the plan decides them.

        Returns `(context, slots, remaining flags)`; engines whose flags name neither return them unchanged.
        """
        return None, None, flags

    def absorb_reasoning_flags(self, flags: tuple[str, ...]) -> tuple[bool | None, int | None, tuple[str, ...]]:
        """Pull the engine's own thinking switch and budget flags out of checked runtime flags, so that they and
        `configure --think/--reasoning-budget` are one setting (the plan's; `configure` wins over a flag).

        Returns `(think, budget, remaining flags)`; engines without such flags return them unchanged.
        """
        return None, None, flags

    def estimate_memory(self, model: Model, config: RunConfig, *, budget: int = 1 << 62) -> int:
        """The memory a start with `config` would need (the plan's figure)."""
        return self.plan(model, config, budget=budget).memory

    def adapt_request(self, endpoint: str, body: dict, plan: LoadPlan | None = None, *,
                      launch: Launch | None = None, wants_matched_stop: bool = False) -> dict:
        """Reshape an OpenAI request body for this engine's server where it understands the API differently.

        `plan` is how the answering engine was started (its per-model settings, for engines that take some of them
        per request), `launch` which program serves. `wants_matched_stop`: the caller must learn which stop sequence
        ended the answer (engines that say so only when asked turn it on). The default passes the body through
        unchanged; engines override it for the few fields they read otherwise.
        """
        return body

    def adapt_response(self, endpoint: str, data: bytes) -> bytes:
        """Reshape the engine's answer (a whole JSON body, or complete SSE events) where its fields differ from
        what clients expect of the runner, and fill the engine-neutral fields of the class docstring from the
        engine's own (`sse.rewrite_objects` helps). Bytes in, bytes out, on every event of every stream: check for
        the bytes of a field before parsing anything. The default changes nothing."""
        return data

    def image_refusal(self, model: Model, name: str) -> str | None:
        """Why this engine cannot take images for `model` (asked for as `name`), as the sentence of a 400; None when
        it can. Asked before a request with images loads anything. The default lets the engine judge: vLLM knows
        whether its model has a vision tower, and says so in its own error."""
        return None

    def chat_template(self, model: Model) -> str | None:
        """The model's chat template (None when the artifact has none): the template layer, else the one the GGUF
        carries in its metadata."""
        template = Path(model.bundle) / "template.jinja"
        try:
            return template.read_text(encoding="utf-8")
        except OSError:
            pass
        gguf = (model.config.raw.get("config") or {}).get("gguf") or {}
        found = gguf.get("tokenizer.chat_template") if isinstance(gguf, dict) else None
        return found if isinstance(found, str) else None

    def tool_refusal(self, model: Model, name: str) -> str | None:
        """Why this engine cannot guarantee a tool call for `model` when a request requires one, as the sentence of
        a 400 (None: it can). The default trusts the engine: vLLM constrains a required call with its grammar."""
        return None

    async def count_prompt_tokens(self, runner: Any, request: dict) -> int:
        """The prompt tokens of the OpenAI chat `request` (its `messages`, `tools` and `tool_choice` count), asked of
        the engine through `runner`. The default asks for a one-token answer, whose usage counts the prompt: exact
        for any OpenAI server, but it costs the prompt's evaluation; engines with a tokenizer route override it."""
        completion = await ask_engine(runner, "/v1/chat/completions", {
            **prompt_of(request), **tool_choice_of(request), "model": request.get("model"), "max_tokens": 1,
            "stream": False})
        if completion is None:
            raise EngineRefused(501, f"{self.name} cannot count the prompt's tokens.")
        return int((completion.get("usage") or {}).get("prompt_tokens") or 0)

    async def reported_context(self, client: object) -> int | None:
        """The context size per request the started engine reports (None when it cannot say)."""
        return None

    def can_sleep(self, hardware: Hardware) -> bool:
        """Whether an idle engine can give its device memory back and keep its process (faster than a new start)."""
        return False

    async def sleep(self, client: Any) -> None:
        """Offload the weights (the engine keeps its process and answers `wake`)."""
        raise NotImplementedError

    async def wake(self, client: Any) -> None:
        """Bring the weights back to the device; requests work again after it returns."""
        raise NotImplementedError

    def standby(self, hardware: Hardware, cache_dir: Path) -> StandbySpec | None:
        """An interpreter to start before any model needs it, for engines whose start is mostly imports (None)."""
        return None

    def handover(self, launch: Launch, spec: StandbySpec) -> dict:
        """The line that turns a standby started from `spec` into the server `launch` describes."""
        raise NotImplementedError

    def check_flags(self, flags: Sequence[str]) -> tuple[str, ...]:
        """Return `flags` if every one is allowlisted (with a value where one is needed), else refuse."""
        allowed = ", ".join(sorted(self.allowed_flags))
        out: list[str] = []
        items = list(flags)
        i = 0
        while i < len(items):
            token = items[i]
            name, eq, inline = token.partition("=")
            spec = self.allowed_flags.get(name)
            if spec is None:
                raise EngineFlagRefused(f"{self.name} does not allow the flag {name!r}. Allowed: {allowed}.")
            if spec.optional_values and not eq:
                nxt = items[i + 1] if i + 1 < len(items) else None
                if nxt in spec.optional_values:
                    out += [name, nxt]
                    i += 2
                else:
                    out.append(name)
                    i += 1
                continue
            if spec.optional_values and inline not in spec.optional_values:
                raise EngineFlagRefused(f"The {self.name} flag {name} takes one of {', '.join(spec.optional_values)}.")
            if spec.takes_value:
                if eq:
                    value = inline
                else:
                    i += 1
                    if i >= len(items):
                        raise EngineFlagRefused(f"The {self.name} flag {name} needs a value.")
                    value = items[i]
                if not value or (value.startswith("-") and not _is_number(value)) or "\n" in value:
                    raise EngineFlagRefused(f"Invalid value {value!r} for the {self.name} flag {name}.")
                out += [name, value]
            else:
                if eq:
                    raise EngineFlagRefused(f"The {self.name} flag {name} takes no value.")
                out.append(name)
            i += 1
        return tuple(out)


def prompt_of(request: dict) -> dict:
    """The parts of a chat request that make its prompt."""
    return {key: request[key] for key in ("messages", "tools") if request.get(key)}


def tool_choice_of(request: dict) -> dict:
    return {"tool_choice": request["tool_choice"]} if request.get("tools") and request.get("tool_choice") else {}


async def ask_engine(runner: Any, path: str, body: dict) -> dict | None:
    """The engine's JSON answer to one request; None when it has no such route (404), so the caller tries the next
    way; `EngineRefused` for another error."""
    response = await runner.request("POST", path, json=body)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise EngineRefused(response.status_code, engine_message(response.content), response.content)
    return response.json()


def engine_message(content: bytes) -> str:
    """The message of an engine's error body (OpenAI's `{"error": {"message"}}`, a bare `{"error": "..."}`, or
    text), for an error in the route's own shape."""
    with contextlib.suppress(ValueError, AttributeError):
        data = json.loads(content)
        error = data.get("error", data)
        return str(error.get("message", error) if isinstance(error, dict) else error)
    return content.decode("utf-8", "replace")[:500]


def new_api_key() -> str:
    """A random key for an engine that must listen on TCP: other local users cannot guess it."""
    return secrets.token_urlsafe(32)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
