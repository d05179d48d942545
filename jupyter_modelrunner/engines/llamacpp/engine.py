"""llama.cpp: its own `llama-server` on a Unix socket, or llama-cpp-python's server as the fallback.

`llama-server` is what Docker Model Runner runs, for what only it has: parallel slots with continuous batching,
Jinja chat templates with tool-call parsing, JSON-schema grammars, a reasoning split, multimodal projectors and
Prometheus metrics. It is built by `jupyter modelrunner install-runner llama.cpp` from the llama.cpp source that
the pinned llama-cpp-python release vendors, so the version is the one this package was tested with.

Where no llama-server is installed but llama-cpp-python is, its Python server runs the model instead (one
request at a time, no JSON schemas), and the selection reason says so and how to upgrade. Both listen on a
socket in a user-only directory: no port, no key, no other local user can reach them.

Runtime flags are written in llama-server's own names (the ones Docker Model Runner accepts, so a Compose
file's `runtime_flags` work unchanged); the fallback translates the few it understands and refuses the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Float, Unicode, default

from ... import mediatypes as mt
from ...errors import EngineFlagRefused, EngineUnavailable
from ...sse import rewrite_objects
from ..base import (
    ENGINE_MODEL_NAME,
    MODE_COMPLETION,
    MODE_EMBEDDING,
    MODE_RERANK,
    Availability,
    Engine,
    Launch,
    LoadPlan,
    ModelFacts,
    RunConfig,
    ask_engine,
    prompt_of,
    tool_choice_of,
)
from ..hardware import Hardware
from .answers import with_neutral_fields
from .flags import (
    BUDGET_FLAG,
    CONTEXT_FLAGS,
    INSTALL_COMMAND,
    LLAMA_SERVER_FLAGS,
    REASONING_FORMAT,
    SLOT_FLAGS,
    THINK_FLAGS,
    python_flags,
)

if TYPE_CHECKING:
    from ...store import Model

#: The llama-server binary to use, overriding the one `install-runner` installed; `none` forces the fallback.
ENV_LLAMA_SERVER = "MODEL_RUNNER_LLAMA_SERVER"
IMPL_SERVER = "llama-server"
IMPL_PYTHON = "llama-cpp-python"
#: Measured here with SmolLM2 (benchmarks/engines.py): aggregate tokens/s grows up to 8 slots, then falls.
DEFAULT_SLOTS = 8
CONTEXT_GRANULE = 256
#: Host memory llama-server may use to keep idle slots' prompts for reuse (its default, 8 GiB, is too much to hide).
PROMPT_CACHE_MIB = 256
_DISABLED = ("", "none", "off", "0", "false")

class LlamaServer(Engine):
    """GGUF models on llama.cpp: `llama-server` when installed, llama-cpp-python's server otherwise.

    Configured as `c.LlamaServer.llama_server` (the binary), `c.LlamaServer.python` (the fallback's interpreter),
    `c.LlamaServer.load_timeout`.
    """

    name = "llama.cpp"
    aliases = ("llamacpp", "llama-cpp", "llama_cpp", "llama-server")
    formats = frozenset({mt.FORMAT_GGUF})
    priority = 10
    installable = True
    overhead_bytes = 192 * 1024**2 + PROMPT_CACHE_MIB * 1024**2
    allowed_flags = LLAMA_SERVER_FLAGS
    default_slots = DEFAULT_SLOTS

    load_timeout = Float(180.0, config=True, help="""Seconds to wait for llama-server (or the fallback) to load a
        model and answer its health check.""")
    llama_server = Unicode(
        None, allow_none=True, config=True,
        help="""llama.cpp's llama-server binary for GGUF models (unset: $MODEL_RUNNER_LLAMA_SERVER, else the one
        `jupyter modelrunner install-runner llama.cpp` installed; `none`: always use llama-cpp-python's server).""",
    )
    python = Unicode(
        config=True,
        help="""Python interpreter with llama-cpp-python[server], the fallback where no llama-server is installed
        (default: the server's own interpreter).""",
    )

    @default("python")
    def _python_default(self) -> str:
        return sys.executable

    def __init__(self, python: str | None = None, server: str | None = None, **kwargs: Any) -> None:
        """`server`: a llama-server binary (else `$MODEL_RUNNER_LLAMA_SERVER`, else the one install-runner put in
        place; `none` means never use one); `python`: the interpreter with llama-cpp-python for the fallback. Both
        are also configurable (`c.LlamaServer.llama_server`, `c.LlamaServer.python`)."""
        super().__init__(**kwargs)
        if python:
            self.python = python
        if server is not None:
            self.llama_server = server

    @classmethod
    def install(cls, *, gpu: str = "auto", force: bool = False, progress: Any = None, jobs: int | None = None,
                **_options: Any) -> Any:
        from .install import install_llama_server

        return install_llama_server(gpu=gpu, force=force, jobs=jobs, progress=progress)

    # -- which implementation ---------------------------------------------------------------------------

    @property
    def server(self) -> Path | None:
        """The llama-server binary this engine would run, if any (looked up on each call: installs change)."""
        setting = self.llama_server if self.llama_server is not None else os.environ.get(ENV_LLAMA_SERVER)
        if setting is not None and setting.strip():
            return None if setting.strip().lower() in _DISABLED else Path(setting).expanduser()
        from ..installing import installed

        record = installed("llama.cpp")
        return record.executable if record else None

    def availability(self, hardware: Hardware) -> Availability:
        where = "with all layers on the GPU" if hardware.cuda else "on the CPU"
        device = "cuda" if hardware.cuda else "cpu"
        server = self.server
        if server is not None:
            version = _server_version(str(server))
            if version is None:
                problem = f"{server} cannot be run"
            else:
                return Availability(True, f"llama.cpp's llama-server ({version}) runs GGUF models {where}, "
                                    "several requests at a time", device=device, version=version,
                                    location=str(server), implementation=IMPL_SERVER)
        else:
            problem = "llama-server is not installed"
        fallback = self._python_availability()
        if fallback is None:
            return Availability(False, f"{problem}, and neither is llama-cpp-python; install it with "
                                f"`{INSTALL_COMMAND}`")
        version, _ = fallback
        return Availability(True, f"llama.cpp through llama-cpp-python {version or ''} runs GGUF models {where} "
                            f"(fallback: {problem}; it answers one request at a time and has no JSON-schema output "
                            f"— `{INSTALL_COMMAND}` installs llama-server)".replace("  ", " "),
                            device=device, version=version, location=self.python, implementation=IMPL_PYTHON)

    def _python_availability(self) -> tuple[str | None, Path | None] | None:
        """llama-cpp-python's version and the library folder it needs, or None when it cannot run here."""
        if self.python != sys.executable:
            return None, None  # another interpreter: trust the configuration
        if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
            return None
        try:
            version = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            version = None
        if _has_own_libraries():
            return version, None
        libraries = _borrowed_libraries(version)
        return (version, libraries) if libraries else None

    # -- planning -------------------------------------------------------------------------------------------

    def plan(self, model: Model, config: RunConfig, *, budget: int, request_context: int | None = None,
             mode: str = MODE_COMPLETION, hardware: Hardware | None = None, vram_budget: int = 0) -> LoadPlan:
        plan = super().plan(model, config, budget=budget, request_context=request_context, mode=mode,
                            hardware=hardware, vram_budget=vram_budget)
        context, slots = plan.context_size, plan.slots
        if self.server is not None and context % CONTEXT_GRANULE:
            # llama.cpp pads each slot's context to a whole number of 256-token blocks: plan what it will allocate.
            context = -(-context // CONTEXT_GRANULE) * CONTEXT_GRANULE
        if self.server is None:  # the fallback serves one request at a time, and knows fewer flags
            python_flags(plan.flags)
            slots = 1
        if (context, slots) == (plan.context_size, plan.slots):
            return plan
        facts = ModelFacts.of(model)
        if plan.vram:
            return dataclasses.replace(plan, context_size=context, slots=slots,
                                       vram=self.memory_for(facts, context, slots, on_gpu=True))
        return dataclasses.replace(plan, context_size=context, slots=slots,
                                   memory=self.memory_for(facts, context, slots))

    def absorb_flags(self, flags: tuple[str, ...]) -> tuple[int | None, int | None, tuple[str, ...]]:
        context = slots = None
        rest: list[str] = []
        items = list(flags)
        i = 0
        while i < len(items):
            name = items[i]
            if name in CONTEXT_FLAGS + SLOT_FLAGS and i + 1 < len(items):
                try:
                    value = int(items[i + 1])
                except ValueError as exc:
                    raise EngineFlagRefused(f"The llama.cpp flag {name} needs a whole number.") from exc
                if name in CONTEXT_FLAGS:
                    context = value if value > 0 else None
                else:
                    slots = value if value > 0 else None
                i += 2
                continue
            rest.append(name)
            i += 1
        return context, slots, tuple(rest)

    def absorb_reasoning_flags(self, flags: tuple[str, ...]) -> tuple[bool | None, int | None, tuple[str, ...]]:
        """`--reasoning on|off|auto` is `configure --think/--no-think` (auto: the template decides), and
        `--reasoning-budget N` is `configure --reasoning-budget N`: the plan carries them, the launch writes them."""
        think: bool | None = None
        budget: int | None = None
        rest: list[str] = []
        items = list(flags)
        i = 0
        while i < len(items):
            name = items[i]
            if name in THINK_FLAGS:
                value = items[i + 1] if i + 1 < len(items) and items[i + 1] in ("on", "off", "auto") else None
                think = {"on": True, "off": False, "auto": None, None: True}[value]
                i += 1 if value is None else 2
                continue
            if name == BUDGET_FLAG and i + 1 < len(items):
                budget = parse_reasoning_budget(items[i + 1])
                i += 2
                continue
            rest.append(name)
            i += 1
        return think, budget, tuple(rest)

    # -- starting -------------------------------------------------------------------------------------------

    def launch(
        self, model: Model, *, workdir: Path, config: RunConfig, hardware: Hardware, mode: str,
        cache_dir: Path | None = None, plan: LoadPlan | None = None,
    ) -> Launch:
        ggufs = model.gguf_files()
        if not ggufs:
            raise FileNotFoundError(f"The bundle of {model.short_id} has no GGUF file")
        plan = plan or self.plan(model, config, budget=1 << 62, mode=mode)
        socket = workdir / "engine.sock"
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()  # llama-server will not bind over a stale socket file
        server = self.server
        if server is not None:
            return self._server_launch(server, model, ggufs[0], socket, plan, hardware, mode)
        return self._python_launch(model, ggufs[0], socket, plan, hardware, mode)

    def _server_launch(self, server: Path, model: Model, gguf: Path, socket: Path, plan: LoadPlan,
                       hardware: Hardware, mode: str) -> Launch:
        argv = [
            str(server), "--model", str(gguf), "--host", str(socket), "--alias", ENGINE_MODEL_NAME,
            # -c is the KV cache of all slots together: each slot gets an equal share, the context of one request.
            "--ctx-size", str(plan.context_size * plan.slots), "--parallel", str(plan.slots),
            "--n-gpu-layers", "999" if hardware.cuda else "0",
            "--jinja", "--metrics", "--no-webui", "--cache-ram", str(PROMPT_CACHE_MIB), "--log-colors", "off",
        ]
        facts = ModelFacts.of(model)
        if mode in (MODE_EMBEDDING, MODE_RERANK):
            if mode == MODE_RERANK:
                argv += ["--rerank"]  # rank pooling through the model's classification head, and /v1/rerank
            else:
                argv += ["--embeddings"]
                if not facts.extra.get("pooling_type"):
                    argv += ["--pooling", "mean"]  # a generative model: one vector per input, as OpenAI clients expect
            # An embedding (or a query-document pair's score) is computed in one micro-batch, so it must fit in one.
            batch = str(min(plan.context_size, 4096))
            argv += ["--batch-size", batch, "--ubatch-size", batch]
        else:
            template = model.bundle / "template.jinja"
            if template.is_file():
                argv += ["--chat-template-file", str(template)]
            mmproj = model.bundle / "model.mmproj"
            if mmproj.is_file():
                argv += ["--mmproj", str(mmproj)]
            argv += _reasoning_args(plan)
        argv += list(plan.flags)
        env = _engine_env()
        # The libraries built with it sit next to the binary (its runpath says so), but LD_LIBRARY_PATH would win
        # over the runpath: another llama.cpp on it must not be loaded into this one.
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(server.parent), env.get("LD_LIBRARY_PATH")) if p)
        return Launch(argv=argv, env=env, socket=socket, health_path="/health", plan=plan, implementation=IMPL_SERVER)

    def _python_launch(self, model: Model, gguf: Path, socket: Path, plan: LoadPlan, hardware: Hardware,
                       mode: str) -> Launch:
        if mode == MODE_RERANK:
            raise EngineUnavailable(f"Reranking needs llama.cpp's llama-server (llama-cpp-python's server has no "
                                    f"rerank route): `{INSTALL_COMMAND}` installs it.")
        facts = ModelFacts.of(model)
        argv = [
            self.python, "-m", "jupyter_modelrunner.engines.llamacpp.python_server",
            "--uds", str(socket), "--model", str(gguf), "--model_alias", ENGINE_MODEL_NAME,
            "--n_ctx", str(plan.context_size), "--n_gpu_layers", "-1" if hardware.cuda else "0",
        ]
        template = model.bundle / "template.jinja"
        if template.is_file():
            argv += ["--chat_template_file", str(template)]
        if mode == MODE_EMBEDDING:
            argv += ["--embedding", "true"]
            if not facts.extra.get("pooling_type"):
                argv += ["--pooling_type", "mean"]
        argv += python_flags(plan.flags)
        env = _engine_env()
        libraries = (self._python_availability() or (None, None))[1]
        if libraries is not None:
            # llama-cpp-python installed without its own build of llama.cpp (CMAKE_ARGS=-DLLAMA_BUILD=OFF) uses the
            # libraries install-runner built from the same llama.cpp source.
            env.update({"LLAMA_CPP_LIB_PATH": str(libraries), "MTMD_CPP_LIB": str(libraries)})
        return Launch(argv=argv, env=env, socket=socket, health_path="/v1/models", plan=plan,
                      implementation=IMPL_PYTHON)

    # -- talking to it -------------------------------------------------------------------------------------

    def adapt_request(self, endpoint: str, body: dict, plan: LoadPlan | None = None, *,
                      launch: Launch | None = None, wants_matched_stop: bool = False) -> dict:
        """Fill the gaps between OpenAI's API and what each llama.cpp server reads.

        llama-server ignores a `tool_choice` that names a function (it reads only strings); the same meaning is
        "required" with that function as the only tool. llama-cpp-python's server refuses `json_schema` response
        formats (HTTP 500); it takes the schema as a `json_object` format's `schema` instead. llama-server reads
        `reasoning_effort: "none"` as "do not think", but a level (`low`…`high`) only as a hint to templates that
        know levels: on a model configured not to think, it must also switch thinking on, as vLLM does. vLLM's name
        for a request's thinking budget (`thinking_token_budget`) is read as llama-server's. llama-server says which
        stop sequence matched only in its verbose answer (`__verbose.stopping_word`): asked for when that is needed.
        """
        if endpoint != "chat/completions":
            return body
        if wants_matched_stop and body.get("stop") and _implementation(launch) == IMPL_SERVER:
            body = {**body, "verbose": True}
        body = with_thinking_for_effort(body)
        if body.get("thinking_token_budget") is not None and body.get("reasoning_budget_tokens") is None:
            body = {**body, "reasoning_budget_tokens": body["thinking_token_budget"]}
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and isinstance(body.get("tools"), list):
            wanted = (choice.get("function") or {}).get("name")
            chosen = [tool for tool in body["tools"]
                      if isinstance(tool, dict) and (tool.get("function") or {}).get("name") == wanted]
            if chosen:
                body = {**body, "tools": chosen, "tool_choice": "required"}
        response_format = body.get("response_format")
        if (self.server is None and isinstance(response_format, dict)
                and response_format.get("type") == "json_schema"):
            schema = (response_format.get("json_schema") or {}).get("schema")
            body = {**body, "response_format": {"type": "json_object", **({"schema": schema} if schema else {})}}
        return body

    def adapt_response(self, endpoint: str, data: bytes) -> bytes:
        """llama-server names the matched stop sequence only in the debugging block a `verbose` request gets
        (`__verbose.stopping_word`), and its own measurements in `timings` (milliseconds, llama.cpp's names): both
        are given the runner's engine-neutral names (`matched_stop`, `generation_stats`; see `Engine`). Both come
        on the last chunks only, so every other event passes untouched."""
        if b'"__verbose"' not in data and b'"timings"' not in data:
            return data
        return rewrite_objects(data, with_neutral_fields)

    def image_refusal(self, model: Model, name: str) -> str | None:
        """llama.cpp sees images through the artifact's multimodal projector, loaded by llama-server (`--mmproj`).
        The fallback could only with a chat handler per model family, which its server does not choose by itself."""
        if model.projector is None:
            return (f"The model {name} has no multimodal projector, so it cannot take images. A vision model's GGUF "
                    "comes with one: package both with `jupyter modelrunner package --gguf MODEL.gguf --mmproj "
                    "MMPROJ.gguf NAME`.")
        server = self.server
        if server is None or _server_version(str(server)) is None:  # what availability() falls back from, too
            return (f"The model {name} runs on llama-cpp-python's server here (llama-server is not installed or cannot "
                    f"run), which cannot take images; `{INSTALL_COMMAND}` installs llama-server, which can.")
        return None

    def tool_refusal(self, model: Model, name: str) -> str | None:
        """llama.cpp calls tools through the model's chat template (its parser is built from it): with a template that
        has no tool calling, a required call comes back as prose, which breaks OpenAI's contract. Refused up front,
        as Ollama refuses tools for such a model. A model without a template of its own is left to the engine."""
        template = self.chat_template(model)
        if template is None or _TEMPLATE_TOOLS.search(template):
            return None
        return (f"The model {name} cannot call tools: its chat template has no tool calling, so llama.cpp cannot make "
                f"it answer with a call (tool_choice asked for one). Use a model whose template takes tools, or "
                f"package this one with such a template (`jupyter modelrunner package --chat-template FILE`).")

    async def count_prompt_tokens(self, runner: Any, request: dict) -> int:
        """llama-server renders the messages (and tools) with the template it would use for the chat
        (`/apply-template`), then tokenizes that text (`/tokenize`, special tokens parsed and added as a chat
        request adds them): exact, and no slot's time is taken. The fallback's server has neither route."""
        if _implementation(getattr(runner, "launch", None)) == IMPL_SERVER:
            templated = await ask_engine(runner, "/apply-template", {**prompt_of(request), **tool_choice_of(request)})
            if templated is not None:
                tokens = await ask_engine(runner, "/tokenize", {"content": templated.get("prompt") or "",
                                                                "add_special": True, "parse_special": True})
                if tokens is not None:
                    return len(tokens.get("tokens") or [])
        return await super().count_prompt_tokens(runner, request)

    async def reported_context(self, client: Any) -> int | None:
        """llama-server's `/props` says the context each slot got; the fallback has no such route."""
        try:
            response = await client.get("/props", timeout=5.0)
            if response.status_code == 200:
                value = (response.json().get("default_generation_settings") or {}).get("n_ctx")
                return int(value) if value else None
        except Exception:  # an engine that cannot say is not an error
            return None
        return None


#: A Jinja template that reads the request's tools (`{% if tools %}`, `tools | tojson`, …) can render a tool call.
_TEMPLATE_TOOLS = re.compile(r"\btools\b")


def _implementation(launch: Launch | None) -> str | None:
    return launch.implementation if launch is not None else None


def parse_reasoning_budget(value: str | int) -> int:
    """A thinking budget in tokens: a whole number, -1 for no limit, 0 for no thinking at all."""
    try:
        budget = int(value)
    except (TypeError, ValueError):
        budget = -2
    if isinstance(value, bool) or budget < -1:
        raise EngineFlagRefused(f"Invalid reasoning budget {value!r}: a number of tokens, 0 for no thinking, -1 for "
                                "no limit.")
    return budget


def _reasoning_args(plan: LoadPlan) -> list[str]:
    """llama-server's reasoning flags for a chat model: thinking apart from the answer, and the model's settings."""
    args = [] if "--reasoning-format" in plan.flags else ["--reasoning-format", REASONING_FORMAT]
    if plan.think is not None:
        args += ["--reasoning", "on" if plan.think else "off"]
    if plan.reasoning_budget is not None:
        args += [BUDGET_FLAG, str(plan.reasoning_budget)]
    return args


def with_thinking_for_effort(body: dict) -> dict:
    """A request that asks for a reasoning effort level (`low`, `high`, …) asks for thinking: say so to the chat
    template (`enable_thinking`), unless the request already does."""
    effort = body.get("reasoning_effort")
    kwargs = body.get("chat_template_kwargs")
    if not isinstance(effort, str) or effort in ("", "none"):
        return body
    if isinstance(kwargs, dict) and "enable_thinking" in kwargs:
        return body
    return {**body, "chat_template_kwargs": {**(kwargs if isinstance(kwargs, dict) else {}), "enable_thinking": True}}


def _engine_env() -> dict[str, str]:
    """The engine's environment: ours minus the server's credentials (Jupyter's and the Hub's tokens: code a model's
    template or a tool runs in the engine must not act as the user), minus the runner's settings, and minus
    llama.cpp's own LLAMA_ARG_* variables, which llama-server reads as flags (a stray LLAMA_ARG_API_KEY would lock
    the runner out)."""
    from ...keys import without_credentials

    return {k: v for k, v in without_credentials(os.environ).items()
            if not k.startswith(("MODEL_RUNNER_", "JPY_", "LLAMA_ARG_")) and k != "LLAMA_API_KEY"}


@functools.cache
def _server_version(path: str) -> str | None:
    """`llama-server --version`'s first line without `version: ` (e.g. `0.5.0-dev (build 1, commit 0c1e570)`),
    or None when the binary cannot run (missing, not executable, libraries gone)."""
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20,
                                env=_engine_env())
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("version:"):
            return line.removeprefix("version:").strip()
    return "unknown version"


def _has_own_libraries() -> bool:
    """Whether the installed llama_cpp package carries its own compiled llama.cpp."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return any(lib.glob("libllama.*")) or any(lib.glob("llama.dll"))


def _borrowed_libraries(version: str | None) -> Path | None:
    """install-runner's llama.cpp libraries, when they come from the same llama-cpp-python source (same ABI)."""
    if os.environ.get("LLAMA_CPP_LIB_PATH"):
        return Path(os.environ["LLAMA_CPP_LIB_PATH"])
    from ..installing import installed
    from .source import LLAMA_CPP_PYTHON_VERSION

    record = installed("llama.cpp")
    if record is None or record.lib_dir is None:
        return None
    if version is not None and version != LLAMA_CPP_PYTHON_VERSION:
        return None
    return record.lib_dir
