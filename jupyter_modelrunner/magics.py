"""IPython magics: `%model` (Docker Model Runner's verbs) and `%%chat` (a streamed conversation in a cell).

`%load_ext jupyter_modelrunner` registers them. Loading is cheap: nothing here imports HTTP, OpenAI or
widget code until a magic runs. Everything goes through `client.py`, so a kernel sees the same runner as
the JupyterLab sidebar and the CLI. Errors are one line (the runner's own message); `--debug` on any
magic shows the traceback instead.

Output adapts to where the kernel runs: in a notebook front end (JupyterLab, Notebook 7, VS Code,
nbclient) progress is a widget and answers are Markdown updated in place; in a terminal IPython they
are plain text written as they arrive.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from .arguments import build_parser, split_passthrough
from .errors import ModelRunnerError
from .presentation import rich_output
from .terminal import AnswerWriter

#: At most this many display updates per second while an answer streams (the last one always shows all).
UPDATES_PER_SECOND = 16
MODEL_VERBS = ("pull", "push", "ls", "list", "rm", "inspect", "tag", "package", "load", "ps", "unload", "logs",
               "configure", "df", "gc", "fsck", "status", "search", "export", "import", "bench", "cache")
#: `%%chat` options that take a value (the rest of a line-form `%chat` is the prompt, kept verbatim).
CHAT_VALUE_OPTIONS = {"--system", "--temperature", "--max-tokens", "--engine", "--json", "--image"}


class _UsageExit(Exception):
    """argparse wanted to exit (after `--help`, or on a usage error it already explained)."""


class _MagicParser(argparse.ArgumentParser):
    """argparse that reports to the cell instead of exiting the kernel."""

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            print(message, file=sys.stderr, end="")
        raise _UsageExit

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ModelRunnerError(f"{message}\n{self.format_usage().strip()}  (`{self.prog} --help` for more)")


def _model_parser() -> argparse.ArgumentParser:
    parser = build_parser("%model", verbs_only=MODEL_VERBS, parser_class=_MagicParser)
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = verbs.add_parser("connect", help="use another runner (URL, token), or show the one in use")
    p.add_argument("url", nargs="?", help="the runner's URL, e.g. http://gpu-box:8888/modelrunner/")
    p.add_argument("--token", help="its token (default: $MODEL_RUNNER_TOKEN)")
    p.add_argument("--auto", action="store_true", help="forget the chosen runner and find one again")
    p = verbs.add_parser("use", help="the model %%%%chat uses when none is named")
    p.add_argument("model", nargs="?")
    verbs.add_parser("picker", help="a widget to choose, pull, load and unload models")
    verbs.add_parser("runners", help="a widget showing what is loaded")
    return parser


def _chat_parser() -> argparse.ArgumentParser:
    p = _MagicParser(prog="%%chat", description="Chat with a model; the conversation goes on in the next "
                     "%%chat cell for the same model until --new. The reply is in the variable `_chat`.")
    p.add_argument("model", nargs="?", help="the model (default: the one chosen with %%model use)")
    p.add_argument("--system", metavar="TEXT", help="system prompt (replaces the conversation's)")
    p.add_argument("--temperature", type=float, metavar="T")
    p.add_argument("--max-tokens", type=int, metavar="N")
    p.add_argument("--new", action="store_true", help="start a new conversation")
    p.add_argument("--engine", metavar="E", help="force an engine (llama.cpp or vllm)")
    p.add_argument("--image", metavar="PATH_OR_URL", action="append", default=[],
                   help="show the model an image: a file (sent with the message) or an http(s) URL (fetched by the "
                        "runner); repeat for several. The model needs a multimodal projector (package --mmproj)")
    p.add_argument("--raw", action="store_true", help="plain text, not Markdown")
    p.add_argument("--no-think", action="store_true",
                   help="a reasoning model answers without thinking first (reasoning_effort none)")
    p.add_argument("--json", metavar="NAME", dest="json_schema",
                   help="answer as JSON matching NAME, a Pydantic model or a JSON-schema dict in the notebook; "
                        "_chat is then the parsed object")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def split_chat_line(line: str) -> tuple[list[str], str]:
    """`[--opts] MODEL rest of the line` → (option and model tokens, the prompt exactly as typed).

    The prompt is not shell-split: apostrophes and quotes in `%chat ai/smollm2 What's "up"?` stay.
    """
    lexer = shlex.shlex(io.StringIO(line), posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    tokens: list[str] = []
    expect_value = False
    while True:
        token = lexer.get_token()
        if token is None or token == lexer.eof:
            return tokens, ""
        tokens.append(token)
        if expect_value:
            expect_value = False
        elif token.startswith("-"):
            expect_value = token in CHAT_VALUE_OPTIONS
        else:  # the model: everything after it is the prompt
            return tokens, line[lexer.instream.tell():].strip()


def _show_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
    """Our errors as one red line (the message says what to do); `--debug` asked for the traceback."""
    if getattr(value, "show_traceback", False):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return
    shell._showtraceback(etype, value, [f"\x1b[0;31mError:\x1b[0m {value}"])


@magics_class
class ModelRunnerMagics(Magics):
    """`%model VERB …` and `%%chat MODEL …`; one conversation per model, kept for the kernel's life."""

    def __init__(self, shell: Any = None, client: Any = None) -> None:
        super().__init__(shell)
        self._client = client
        self.conversations: dict[str, list[dict[str, Any]]] = {}
        self.default_model: str | None = None
        self.rich = rich_output(shell)

    @property
    def client(self) -> Any:
        """The runner's client: the one `%model connect` chose, else the process-wide one (found on first use)."""
        if self._client is None:
            from .client import runner

            return runner()
        return self._client

    # -- %model ---------------------------------------------------------------------------------------

    @line_magic
    def model(self, line: str) -> Any:
        """Manage models like `docker model`: pull, ls, ps, rm, inspect, tag, push, package, unload, logs,
        configure, df, gc, fsck, status, bench (a table and a chart); and connect, use, picker, runners.
        `%model VERB --help` for each."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise ModelRunnerError(f"Cannot read the arguments ({exc}).") from None
        argv, passthrough = split_passthrough(argv)
        debug = "--debug" in argv
        argv = [a for a in argv if a != "--debug"]
        parser = _model_parser()
        if not argv:
            parser.print_help()
            return None
        try:
            args = parser.parse_args(argv)
        except _UsageExit:
            return None
        args.runtime_flags = passthrough
        verb = {"list": "ls"}.get(args.verb, args.verb)
        own = getattr(self, f"_model_{verb}", None)  # the verbs only a notebook has (connect, use, picker, …)
        if own is not None:
            return self._run(own, args, debug=debug)
        from .commands import run_verb

        def shared(parsed: argparse.Namespace) -> None:
            # `cache` reads the store's answer cache here: it needs no runner, so none is looked for (or started).
            run_verb(verb, None if verb == "cache" else self.client, parsed, _NotebookConsole(self))
            if verb == "rm":
                for name in parsed.models:
                    self.conversations.pop(name, None)

        return self._run(shared, args, debug=debug)

    def _run(self, action: Callable[[argparse.Namespace], Any], args: argparse.Namespace, *, debug: bool) -> Any:
        try:
            return action(args)
        except ModelRunnerError as exc:
            exc.show_traceback = debug  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            if debug:
                raise
            raise ModelRunnerError(f"{exc.__class__.__name__}: {exc}") from exc

    def _model_connect(self, args: argparse.Namespace) -> None:
        from . import client as client_module

        if args.url or args.auto:
            self._client = None
            client_module.connect(args.url, args.token)
        client = self.client
        print(f"Model runner: {client.url}\n  found via: {client.location.source}\n"
              f"  OpenAI base URL: {client.location.base_url}")

    def _model_use(self, args: argparse.Namespace) -> None:
        if args.model:
            self.client.inspect(args.model)  # a typo is caught now, not at the first %%chat
            self.default_model = args.model
        print(f"%%chat uses {self.default_model}" if self.default_model else
              "No default model; choose one: %model use ai/smollm2")

    def _model_picker(self, args: argparse.Namespace) -> Any:
        from .widgets import ModelPicker

        picker = ModelPicker(client=self.client)
        if picker.value:
            self.default_model = picker.value

        def follow(change: dict[str, Any]) -> None:
            self.default_model = change["new"] or self.default_model

        picker.observe(follow, names="value")
        return picker

    def _model_runners(self, args: argparse.Namespace) -> Any:
        from .widgets import RunnerStatus

        return RunnerStatus(client=self.client)

    def _model_bench(self, args: argparse.Namespace) -> None:
        """The shared verb's table (or JSON), the measurements in `_bench` (a list of dicts: `pd.DataFrame(_bench)`),
        and in a notebook a chart of them below the table, as a PNG."""
        from .commands import run_verb

        report = run_verb("bench", self.client, args, _NotebookConsole(self))
        if self.shell is not None:
            self.shell.user_ns["_bench"] = report.to_json()
        if self.rich and not args.json and report.points:
            from IPython.display import Image, display

            from .benchmarking import chart_png

            try:
                display(Image(data=chart_png(report.to_json()), format="png"))
            except ModelRunnerError as exc:  # no matplotlib: the table says it all
                print(exc, file=sys.stderr)

    def _progress_view(self, title: str) -> Any:
        """A progress bar widget in a notebook, a self-rewriting line in a terminal."""
        if self.rich:
            from IPython.display import display

            from .widgets import PullProgress

            view = PullProgress(title=title)
            display(view)
            return view
        from .terminal import TerminalView

        return TerminalView(title, sys.stdout)

    # -- %%chat ---------------------------------------------------------------------------------------

    @line_cell_magic
    def chat(self, line: str, cell: str | None = None) -> None:
        """Stream a model's answer into the output: `%%chat MODEL [--system T] [--temperature T] [--max-tokens N]
        [--new] [--engine E] [--image PATH_OR_URL]... [--raw] [--no-think] [--json NAME]` with the prompt as the cell,
        or `%chat MODEL prompt` on one line. A reasoning model's thinking shows collapsed above its answer."""
        if cell is None:  # `%chat [options] MODEL prompt…`: the prompt follows the model, verbatim
            tokens, prompt = split_chat_line(line)
        else:  # `%%chat MODEL [options]`: options anywhere on the line, the prompt is the cell
            try:
                tokens, prompt = shlex.split(line), cell
            except ValueError as exc:
                raise ModelRunnerError(f"Cannot read the options ({exc}).") from None
        debug = "--debug" in tokens
        try:
            args = _chat_parser().parse_args(tokens)
        except _UsageExit:
            return
        except ModelRunnerError as exc:
            exc.show_traceback = debug  # type: ignore[attr-defined]
            raise
        self._run(lambda a: self._chat(a, prompt.strip()), args, debug=debug)

    def _chat(self, args: argparse.Namespace, prompt: str) -> None:
        model = args.model or self.default_model
        if not model:
            raise ModelRunnerError("Name the model: %%chat ai/smollm2 (or choose one with %model use NAME).")
        if not prompt:
            raise ModelRunnerError(f"Write the prompt in the cell below %%chat {model}.")
        if args.new or model not in self.conversations:
            self.conversations[model] = []
        history = self.conversations[model]
        if args.system is not None:
            history[:] = [m for m in history if m["role"] != "system"]
            history.insert(0, {"role": "system", "content": args.system})
        images = [image_part(reference) for reference in args.image]
        # With images, the message is OpenAI content parts (the text, then the images); they stay in the
        # conversation, so the next question about the same picture still shows it to the model.
        content: str | list[dict[str, Any]] = [{"type": "text", "text": prompt}, *images] if images else prompt
        messages = [*history, {"role": "user", "content": content}]
        structured = _StructuredAnswer.named(args.json_schema, self.shell) if args.json_schema else None
        view = _MarkdownAnswer(model, code="json" if structured else None) if self.rich and not args.raw \
            else AnswerWriter(sys.stdout)
        started = time.perf_counter()
        options: dict[str, Any] = {"response_format": structured.response_format} if structured else {}
        if args.no_think:
            options["reasoning_effort"] = "none"  # both engines read it as the template's no-thinking path
        stream = self.client.chat(model, messages, engine=args.engine, temperature=args.temperature,
                                  max_tokens=args.max_tokens, **options)
        interrupted = False
        try:
            for _kind, _piece in stream.parts():
                view.update(stream.thinking, stream.text)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stream.close()  # closing the request stops the generation on the engine
        elapsed = time.perf_counter() - started
        tokens = len(stream.pieces) + len(stream.thinking_pieces)
        footer = f"{model} · {stream.engine or 'engine'}{f' ({stream.device})' if stream.device else ''} · " \
                 f"{tokens} tokens in {elapsed:.1f} s" + (" · stopped" if interrupted else "")
        view.finish(stream.thinking, stream.text, footer)
        # What the user saw is what the model said: a stopped answer stays in the conversation as it is. The thinking
        # does not (chat templates of reasoning models drop earlier turns' thinking anyway), nor goes into `_chat`.
        history.append({"role": "user", "content": content})
        history.append({"role": "assistant", "content": stream.text})
        if self.shell is not None:
            self.shell.user_ns["_chat"] = stream.text
        if structured is not None and not interrupted:
            parsed = structured.parse(stream.text)  # a reply that does not fit the schema raises, naming it
            if self.shell is not None:
                self.shell.user_ns["_chat"] = parsed


def image_part(reference: str) -> dict[str, Any]:
    """`%%chat --image` as an OpenAI `image_url` part. A file is read here and sent inline (a data URL): the runner
    may be on another machine that cannot read the kernel's files. An http(s) or data: URL goes as it is; the runner
    fetches http(s) URLs itself, within its size limit."""
    if reference.startswith(("http://", "https://", "data:")):
        return {"type": "image_url", "image_url": {"url": reference}}
    import mimetypes
    from pathlib import Path

    from .images import data_url, sniff_media_type

    path = Path(reference).expanduser()
    if not path.is_file():
        raise ModelRunnerError(f"--image {reference}: no such file (give an image file or an http(s) URL).")
    data = path.read_bytes()
    media_type = sniff_media_type(data[:16]) or mimetypes.guess_type(path.name)[0]
    if not media_type or not media_type.startswith("image/"):
        raise ModelRunnerError(f"--image {reference}: not an image file (PNG, JPEG, GIF, WebP or BMP).")
    return {"type": "image_url", "image_url": {"url": data_url(data, media_type)}}


class _StructuredAnswer:
    """`%%chat --json NAME`: the schema sent as OpenAI's `response_format`, and the reply parsed back.

    NAME is a Pydantic model class (the reply becomes an instance, as `client.chat.completions.parse` gives) or a
    dict holding a JSON schema (the reply becomes the decoded JSON).
    """

    def __init__(self, name: str, schema: dict[str, Any], model_class: Any = None) -> None:
        self.name, self.schema, self.model_class = name, schema, model_class

    @classmethod
    def named(cls, name: str, shell: Any) -> _StructuredAnswer:
        namespace = getattr(shell, "user_ns", {}) or {}
        if name not in namespace:
            raise ModelRunnerError(f"--json {name}: no such name in the notebook. Define a Pydantic model "
                                   f"(class {name}(BaseModel): ...) or a JSON schema dict first.")
        target = namespace[name]
        if isinstance(target, type) and hasattr(target, "model_json_schema"):
            return cls(name, target.model_json_schema(), target)
        if isinstance(target, dict):
            return cls(name, target)
        raise ModelRunnerError(f"--json {name}: expected a Pydantic model class or a JSON schema dict, not "
                               f"{type(target).__name__}.")

    @property
    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": _schema_name(self.name), "schema": self.schema}}

    def parse(self, text: str) -> Any:
        try:
            if self.model_class is not None:
                return self.model_class.model_validate_json(text)
            return json.loads(text)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError too
            raise ModelRunnerError(f"The answer does not match {self.name} ({str(exc).splitlines()[0]}); the text "
                                   "is in the conversation. A larger --max-tokens may help.") from None


def _schema_name(name: str) -> str:
    """OpenAI's `json_schema.name` allows letters, digits, `_` and `-` only."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64] or "schema"


class _NotebookConsole:
    """Where the shared verbs (commands.py) write in a notebook: the cell's output, a progress widget (or the CLI's
    line in a terminal IPython)."""

    command = "%model"

    def __init__(self, magics: ModelRunnerMagics) -> None:
        self._magics = magics
        self._status: Callable[..., None] | None = None

    def print(self, text: str = "") -> None:
        print(text)

    def warn(self, text: str) -> None:
        print(text, file=sys.stderr)

    def progress(self, title: str) -> Any:
        return self._magics._progress_view(title)

    def status(self, text: str, *, transient: bool = False) -> None:
        """A long verb's progress (`bench`): one line of output replaced in place in a notebook, the CLI's line in a
        terminal IPython."""
        if self._status is None:
            if self._magics.rich:
                from IPython.display import display

                handle = display({"text/plain": text}, raw=True, display_id=True)
                self._status = lambda line, transient=False: handle.update({"text/plain": line}, raw=True)
                return
            from .terminal import StatusLine

            self._status = StatusLine(sys.stdout)
        self._status(text, transient=transient)


class _MarkdownAnswer:
    """One Markdown display, replaced in place at most UPDATES_PER_SECOND times a second.

    A reasoning model's thinking shows above the answer in an HTML `<details>` block: open while the model thinks
    (the thinking streams into it), closed once the answer starts, so the answer is what the cell shows.
    """

    def __init__(self, model: str, code: str | None = None) -> None:
        from IPython.display import Markdown, display

        self._markdown = Markdown
        self._code = code  # shown as a fenced code block (a JSON answer) rather than as Markdown
        self._handle = display(Markdown(f"*{model} is thinking…*"), display_id=True)
        self._next = time.monotonic() + 1 / UPDATES_PER_SECOND
        self._started = time.monotonic()
        self._thought_for: float | None = None

    def _render(self, thinking: str, text: str) -> str:
        answer = f"```{self._code}\n{text}\n```" if self._code is not None else text
        if not thinking:
            return answer
        if text and self._thought_for is None:
            self._thought_for = time.monotonic() - self._started
        return thinking_details(thinking, self._thought_for) + answer

    def update(self, thinking: str, text: str) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + 1 / UPDATES_PER_SECOND
            self._handle.update(self._markdown(self._render(thinking, text) + " ▍"))

    def finish(self, thinking: str, text: str, footer: str) -> None:
        if self._thought_for is None and thinking:
            self._thought_for = time.monotonic() - self._started
        self._handle.update(self._markdown(f"{self._render(thinking, text)}\n\n<sub>{footer}</sub>"))


def thinking_details(thinking: str, thought_for: float | None) -> str:
    """The thinking as a collapsible block in Markdown: open (and "Thinking…") while the model still thinks, closed
    with how long it thought once the answer has started. The thinking is quoted and HTML-escaped, so neither its
    Markdown nor stray tags in it change the page."""
    quoted = "\n".join("> " + html.escape(line) for line in thinking.strip("\n").splitlines()) or ">"
    if thought_for is None:
        return f"<details open><summary>Thinking…</summary>\n\n{quoted}\n\n</details>\n\n"
    return f"<details><summary>Thought for {thought_for:.1f} s</summary>\n\n{quoted}\n\n</details>\n\n"


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext jupyter_modelrunner`: register the magics and one-line errors for the runner's exceptions."""
    ipython.register_magics(ModelRunnerMagics(ipython))
    # Only when no one else has claimed custom exception handling (there is a single handler per shell).
    if not getattr(ipython, "custom_exceptions", ()):
        ipython.set_custom_exc((ModelRunnerError,), _show_error)
