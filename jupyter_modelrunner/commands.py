"""The verbs of `jupyter modelrunner` and `%model`, once: each asks the runner through `client.RunnerClient` and
says what happened through a `Console`, so a terminal and a notebook show the same words.

Front ends differ only in their console (where text goes, how progress is drawn, how a command is spelled in a
hint) and in the few verbs that are theirs alone (`serve`, `install-runner`; `connect`, `picker`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from .errors import ModelRunnerError
from .presentation import (
    bench_text,
    df_text,
    engine_line,
    format_bytes,
    fsck_text,
    hf_cache_table,
    hf_search_table,
    model_summary,
    models_table,
    preload_hint,
    runners_table,
    settings_line,
    status_text,
)


class ProgressView(Protocol):
    def update(self, event: dict[str, Any]) -> None: ...
    def done(self, message: str) -> None: ...
    def fail(self, message: str) -> None: ...


class Console(Protocol):
    """Where a verb's output goes."""

    #: How the user types a verb here (`jupyter modelrunner`, `%model`), for hints in messages.
    command: str

    def print(self, text: str = "") -> None: ...
    def warn(self, text: str) -> None: ...
    def progress(self, title: str) -> ProgressView: ...


def run_verb(verb: str, client: Any, args: argparse.Namespace, console: Console) -> Any:
    """Do `verb` (`ls`, `pull`, …) with `args` as the shared parser made them."""
    action: Callable[[Any, argparse.Namespace, Console], Any] | None = VERBS.get({"list": "ls"}.get(verb, verb))
    if action is None:
        raise ModelRunnerError(f"Unknown command {verb!r}.")
    return action(client, args, console)


# -- models ---------------------------------------------------------------------------------------------------


def exit_status(verb: str, result: Any) -> int:
    """The exit status of a verb that ran to its end: 1 when its answer says something is still wrong (`fsck` with
    problems left), else 0. Failures raise instead."""
    if verb == "fsck" and isinstance(result, dict) and not result.get("clean", True):
        return 1
    if verb == "bench" and getattr(result, "interrupted", False):
        return 130  # as an interrupted command's (the CLI's EXIT_INTERRUPTED), after showing what was measured
    return 0


def transfer(events: Iterable[dict[str, Any]], view: ProgressView, console: Console, *, quiet: bool,
             interrupted: str = "Interrupted. Finished layers and partial downloads are kept; run it again to "
                                "resume.") -> dict[str, Any]:
    """Follow a pull or push's events (or fsck's) on `view`; the final `success` event (a failure raises, with its
    message)."""
    result: dict[str, Any] = {}
    try:
        for event in events:
            kind = event.get("type")
            if kind == "success":
                result = event
            elif kind == "warning":
                console.warn(f"Warning: {event.get('message')}")
            elif not quiet:
                view.update(event)
    except ModelRunnerError as exc:
        view.fail(str(exc))
        raise
    except KeyboardInterrupt:
        view.fail(interrupted)
        raise
    view.done(result.get("message", ""))
    return result


def pull(client: Any, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    result = transfer(client.pull(args.model), console.progress(f"Pulling {args.model}"), console,
                      quiet=getattr(args, "quiet", False))
    model = result.get("model") or client.inspect(args.model)
    console.print(f"{result.get('message') or 'Pulled ' + args.model}\n{model_summary(model)}")
    if hint := preload_hint(model, args.model, console.command):
        console.print(hint)
    return model


def push(client: Any, args: argparse.Namespace, console: Console) -> None:
    result = transfer(client.push(args.model, args.to), console.progress(f"Pushing {args.model}"), console,
                      quiet=getattr(args, "quiet", False))
    digest = f"\n  digest: {result['digest']}" if result.get("digest") else ""
    console.print(f"{result.get('message') or 'Pushed ' + args.model}{digest}")


def package(client: Any, args: argparse.Namespace, console: Console) -> None:
    model = client.package(args.tag, gguf=args.gguf or (), safetensors_dir=args.safetensors_dir,
                           license_files=args.license, chat_template=args.chat_template,
                           context_size=args.context_size, mmproj=args.mmproj, from_model=args.from_model)
    config = model.get("config") or {}
    sees = ", with a multimodal projector (it takes images)" if model.get("multimodal") else ""
    console.print(f"Packaged {args.tag} ({_short(model)}): {config.get('format')}, "
                  f"{config.get('parameters') or '?'} parameters{sees}\n  {engine_line(model)}")
    if args.push:
        push(client, argparse.Namespace(model=args.tag, to=None, quiet=False), console)


def export(client: Any, args: argparse.Namespace, console: Console) -> None:
    """A model as one tar archive (DMR's `GET models/{name}/export`), to carry to another store or runner."""
    size = client.export(args.model, args.file)
    console.print(f"Exported {args.model} to {args.file} ({size / 1024**2:,.1f} MiB)")


def import_(client: Any, args: argparse.Namespace, console: Console) -> None:
    """Store the model an archive holds (DMR's `POST models/load` with a tar body)."""
    model = client.import_archive(args.file, tag=args.tag)
    console.print(f"Imported {', '.join(model.get('tags') or [])} ({_short(model)}) from {args.file}")


def tag(client: Any, args: argparse.Namespace, console: Console) -> None:
    model = client.tag(args.source, args.target)
    console.print(f"Tagged {_short(model)} as {args.target}")


def ls(client: Any, args: argparse.Namespace, console: Console) -> None:
    if getattr(args, "hf_cache", False):
        return hf_cache(client, args, console)
    models = client.models()
    if args.json:
        console.print(json.dumps(models, indent=2))
    elif args.quiet:
        console.print("\n".join(dict.fromkeys(_short(m) for m in models)))
    elif not models:
        console.print(f"No models yet. Pull one: {console.command} pull ai/smollm2")
    else:
        console.print(models_table(models))


def hf_cache(client: Any, args: argparse.Namespace, console: Console) -> None:
    """`ls --hf-cache`: what the runner's Hugging Face cache holds that an engine runs, named as `pull` takes it."""
    listing = client.hf_cache()
    models = listing.get("models") or []
    if args.json:
        console.print(json.dumps(listing, indent=2))
    elif args.quiet:
        console.print("\n".join(m["name"] for m in models))
    elif not models:
        console.print(f"The Hugging Face cache ({listing.get('cache')}) holds no GGUF or safetensors model. Find "
                      f"one: {console.command} search QUERY")
    else:
        console.print(f"{hf_cache_table(models)}\n\nPull one by its name: {console.command} pull NAME")


def search(client: Any, args: argparse.Namespace, console: Console) -> None:
    """`search QUERY`: the Hub's models an engine here runs, most downloaded first (Docker Model Runner's verb)."""
    query = " ".join(args.query) if isinstance(args.query, list) else args.query
    models = client.hf_search(query, limit=args.limit, fmt=args.format)
    if args.json:
        console.print(json.dumps(models, indent=2))
    elif not models:
        console.print(f"No GGUF or safetensors model on the Hugging Face Hub matches {query!r}.")
    else:
        console.print(f"{hf_search_table(models)}\n\nPull one by its name: {console.command} pull NAME")


def inspect(client: Any, args: argparse.Namespace, console: Console) -> None:
    console.print(json.dumps(client.inspect(args.model), indent=2))


def rm(client: Any, args: argparse.Namespace, console: Console) -> None:
    failed: list[str] = []
    for name in args.models:
        try:
            result = client.remove(name, force=args.force)
        except ModelRunnerError as exc:
            if len(args.models) == 1:
                raise
            console.warn(f"Error: {exc}")  # the other names are still removed
            failed.append(name)
            continue
        for untagged in result.get("untagged") or []:
            console.print(f"Untagged: {untagged}")
        if result.get("deleted"):
            console.print(f"Deleted: {result['deleted']} (freed {format_bytes(result.get('freed_bytes') or 0)})")
    if failed:
        raise ModelRunnerError(f"Could not remove {', '.join(failed)}.")


def purge(client: Any, args: argparse.Namespace, console: Console) -> None:
    if not args.force:
        raise ModelRunnerError(f"This deletes every model in the store. Run `{console.command} purge --force` to do "
                               "it.")
    result = client.purge()
    freed = format_bytes(result.get("freed_bytes", 0))
    console.print(f"Deleted {len(result.get('deleted') or [])} models (freed {freed})")


def df(client: Any, args: argparse.Namespace, console: Console) -> None:
    usage = client.df()
    console.print(json.dumps(usage, indent=2) if args.json else df_text(usage))


def gc(client: Any, args: argparse.Namespace, console: Console) -> None:
    freed = client.gc(min_age=args.min_age)
    console.print(f"Freed {format_bytes(freed.get('total', 0))} ({format_bytes(freed.get('orphans', 0))} unused "
                  f"blobs, {format_bytes(freed.get('incomplete', 0))} partial downloads)")


def fsck(client: Any, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Check the store (hashing every blob, with a progress bar), print a line per problem and a summary; with
    `--repair`, what was done. Returns the report: its `clean` is the exit status (see `exit_status`)."""
    verb = "Repairing" if args.repair else "Checking"
    result = transfer(client.fsck(repair=args.repair), console.progress(f"{verb} the store"), console,
                      quiet=getattr(args, "quiet", False),
                      interrupted="Interrupted. Nothing was changed." if not args.repair else "Interrupted.")
    report = result.get("report") or {}
    console.print(fsck_text(report, console.command))
    return report


# -- engines --------------------------------------------------------------------------------------------------


def load(client: Any, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Start a model's engine now (Docker's preload), so the first question does not wait for it."""
    runner = client.load(args.model, engine=getattr(args, "engine", None))
    console.print(f"Loaded {runner.get('model_name', args.model)} on {runner.get('backend_name')} "
                  f"({runner.get('device')}) in {runner.get('load_seconds', 0):.1f} s; {settings_line(runner)}")
    return runner


def bench(client: Any, args: argparse.Namespace, console: Console) -> Any:
    """Measure models at several concurrency levels (benchmarking.py) and show a table, or JSON with `--json`; the
    report (a `BenchReport`), so a notebook can chart it. Progress goes to `console.status` where there is one."""
    from .benchmarking import run_bench

    report = run_bench(client, args.models, concurrency=args.concurrency, duration=args.duration, prompt=args.prompt,
                       max_tokens=args.max_tokens, timeout=args.timeout, status=getattr(console, "status", None))
    if args.json:
        console.print(json.dumps(report.to_json(), indent=2))
    else:
        console.print(bench_text(report.to_json(), prompt=report.prompt, duration=report.duration,
                                 max_tokens=report.max_tokens, interrupted=report.interrupted))
    return report


def ps(client: Any, args: argparse.Namespace, console: Console) -> None:
    runners = client.ps()
    if args.json:
        console.print(json.dumps(runners, indent=2))
    elif not runners:
        console.print("No model is loaded. The first request to a model loads it "
                      f"(or `{console.command} load MODEL`).")
    else:
        console.print(runners_table(runners))


def unload(client: Any, args: argparse.Namespace, console: Console) -> None:
    if not args.all and not args.models:
        raise ModelRunnerError("Name the models to unload, or use --all.")
    names = client.unload(args.models, all=args.all)
    console.print(f"Unloaded {len(names)} model{'s' if len(names) != 1 else ''}"
                  f"{': ' + ', '.join(names) if names else ''}")


def configure(client: Any, args: argparse.Namespace, console: Console) -> None:
    """Change a model's settings, or show them when nothing is given to change."""
    flags = list(getattr(args, "runtime_flags", None) or [])
    think, budget = getattr(args, "think", None), getattr(args, "reasoning_budget", None)
    if args.context_size is None and args.keep_alive is None and think is None and budget is None and not flags:
        settings = client.settings(args.model)
    else:
        settings = client.configure(args.model, context_size=args.context_size, keep_alive=args.keep_alive,
                                    runtime_flags=flags or None, engine=args.engine, think=think,
                                    reasoning_budget=budget)
    console.print(f"{args.model}: {settings_line(settings)}")


def logs(client: Any, args: argparse.Namespace, console: Console) -> None:
    if getattr(args, "follow", False):
        for line in client.follow_logs(args.model, args.lines):
            console.print(line)
        return
    text = client.logs(args.model, args.lines)
    console.print(text if text else f"No engine has run {args.model} yet.")


def status(client: Any, args: argparse.Namespace, console: Console) -> None:
    status = client.status()
    if args.json:
        console.print(json.dumps(status, indent=2))
        return
    console.print(f"Runner: {client.url} (found via {client.location.source})\n{status_text(status)}")


# -- the answer cache -----------------------------------------------------------------------------------------


def cache(client: Any, args: argparse.Namespace, console: Console) -> None:
    """`cache df|clear`: the answers `map` and `embed` cached, in the store of this client's runner (`--store` or the
    default store when no client is given). Local: no runner is needed, nor started."""
    from .answer_cache import AnswerCache
    from .paths import answer_cache_file
    from .presentation import answer_cache_text

    root = getattr(args, "store", None) or getattr(getattr(client, "location", None), "store", None)
    path = answer_cache_file(Path(root).expanduser() if root else None)
    if args.cache_action == "clear":
        deleted = 0
        if path.exists():
            with AnswerCache(path.parent.parent) as answers:
                deleted = answers.clear(args.model)
        whose = f" of {args.model}" if args.model else ""
        console.print(f"Deleted {deleted} cached answer{'s' if deleted != 1 else ''}{whose} ({path})")
        return
    usage, size = [], 0
    if path.exists():  # `df` on a fresh store makes no file
        with AnswerCache(path.parent.parent) as answers:
            usage, size = answers.usage(), answers.file_size()
    if args.json:
        console.print(json.dumps({"path": str(path), "file_size": size, "models": [
            {"model": u.model, "model_id": u.model_id, "entries": u.entries, "size": u.size} for u in usage]},
            indent=2))
    else:
        console.print(answer_cache_text(str(path), usage, size))


def _short(model: dict[str, Any]) -> str:
    return str(model.get("id", "")).removeprefix("sha256:")[:12]


VERBS: dict[str, Callable[[Any, argparse.Namespace, Console], Any]] = {
    "pull": pull, "push": push, "package": package, "tag": tag, "ls": ls, "inspect": inspect, "rm": rm,
    "purge": purge, "df": df, "gc": gc, "fsck": fsck, "load": load, "ps": ps, "unload": unload, "configure": configure,
    "logs": logs, "status": status, "search": search, "export": export, "import": import_, "bench": bench,
    "cache": cache,
}
