"""`jupyter modelrunner …`: the terminal front end, with verbs named like `docker model`.

A thin layer: it parses arguments, asks the runner that owns the store (JupyterLab's server, a `serve`, or an
embedded runner started on demand that then stays up for the next commands) through `client.RunnerClient`, draws
progress on a terminal and turns errors into one line and a non-zero exit code — like `docker model` talking to
its one daemon. Only `serve` and `install-runner`/`uninstall-runner` act locally. The verbs themselves live in
commands.py and the parser in arguments.py, both shared with the `%model` magic; what it draws on the terminal
(progress lines, the streamed answer) is terminal.py's.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .arguments import build_parser, split_passthrough
from .errors import ModelRunnerError
from .terminal import AnswerWriter, InstallProgressLine, TerminalConsole

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    # `serve` takes Jupyter's own configuration options too (`--Scheduler.keep_alive=10m`).
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
_LOCAL_VERBS = ("serve", "install-runner", "uninstall-runner", "key", "cache")
#: Verbs that say nothing useful about a runner started only to answer them.
_NO_START_VERBS = ("ps", "unload")


def _dispatch(args: argparse.Namespace) -> int | None:
    if args.verb == "unload" and not (args.all or args.models):
        print("Error: name the models to unload, or use --all.", file=sys.stderr)
        return EXIT_USAGE
    if args.verb in _LOCAL_VERBS:
        return globals()[f"_cmd_{args.verb.replace('-', '_')}"](args)
    from .client import runner
    from .errors import RunnerUnreachable

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


def _cmd_run(client, args) -> int:
    """Pull if missing, load (showing the engine and why), then one answer or an interactive chat, all through the
    runner: the model stays loaded there for the next command (keep_alive), as with `docker model run`."""
    from .commands import pull
    from .errors import ModelNotFound

    try:
        client.inspect(args.model)
    except ModelNotFound:
        print(f"Model {args.model} is not here yet; pulling it.", file=sys.stderr)
        # What the pull says goes to stderr with the rest of run's own words: stdout is the answer alone.
        pull(client, argparse.Namespace(model=args.model, quiet=False), TerminalConsole(out=sys.stderr))
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
        # A reasoning model's thinking goes to stderr (dimmed on a terminal): stdout is the answer alone.
        answer = AnswerWriter(sys.stdout, thinking_out=sys.stderr)
        with client.chat(args.model, history, engine=args.engine, temperature=args.temperature,
                         max_tokens=args.max_tokens) as stream:
            for kind, piece in stream.parts():
                answer.write(kind, piece)
        answer.finish()
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


def _cmd_cache(args) -> int:
    """The answer cache lives in the store (`--store`, or the default one): no runner is asked, or started."""
    from .commands import run_verb

    run_verb("cache", None, args, TerminalConsole())
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


def _runner_engines(name: str) -> list[str]:
    from .engines.install import engine_name, engines

    return engines() if name.strip().lower() == "all" else [engine_name(name)]


def _cmd_install_runner(args) -> int:
    """Each engine with its own installer (engines/install.py dispatches): no engine is named here."""
    from .engines import install

    for engine in _runner_engines(args.engine):
        before = install.installed(engine)
        progress = InstallProgressLine(sys.stderr, engine)
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
