"""How the CLI and a terminal IPython draw on a terminal, in one place: the self-rewriting progress line (a transfer's
or install-runner's), a streamed answer with a reasoning model's thinking dimmed, and the console the shared verbs
(commands.py) write to.

The words come from presentation.py; this module owns the terminal's side of it: `\\r` on a terminal and a line
every few seconds in a log file, ANSI dimming only where a terminal shows it. Only the standard library is imported,
so `%load_ext` and the CLI's `--help` stay cheap.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

#: A log (a file, a pipe) gets a progress line at most this often, and the last one.
LOG_INTERVAL_SECONDS = 5.0


def dim(text: str, stream: TextIO) -> str:
    """`text` dimmed (ANSI faint) when `stream` is a terminal; as it is in a file or a notebook."""
    return f"\x1b[2m{text}\x1b[0m" if stream.isatty() else text


def bar(fraction: float, width: int) -> str:
    """`[#######             ]`: `fraction` (0..1) of `width` cells filled."""
    return f"[{'#' * int(min(max(fraction, 0.0), 1.0) * width):<{width}}]"


class RewritingLine:
    """One line that rewrites itself on a terminal (`\\r`, cut to the terminal's width so it never wraps), or plain
    lines in a log, where `\\r` would make one unreadable line of the whole run."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._width = 0

    def show(self, line: str) -> None:
        if self.tty:
            line = line[: max(shutil.get_terminal_size().columns - 1, 20)]
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line, so what is printed next starts on its own."""
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.flush()


class TerminalView:
    """A pull, push or fsck on a terminal: `Pulling [####    ]  42.0%  1.2 MiB / 3 MiB`, closed when it ends. The CLI
    writes it to stderr (stdout is the answer's); `%model pull` outside a notebook to stdout, where a kernel shows
    it. Takes the events as the HTTP API streams them."""

    def __init__(self, title: str, stream: TextIO | None = None) -> None:
        self._line = RewritingLine(stream or sys.stderr)
        self._verb = title.split()[0]
        self._last = 0.0

    def update(self, event: dict[str, Any]) -> None:
        from .presentation import format_bytes

        done, total = event.get("pulled") or 0, event.get("total") or 0
        if event.get("type") != "progress" or not total:
            return
        now = time.monotonic()
        if not self._line.tty and now - self._last < LOG_INTERVAL_SECONDS and done < total:
            return
        self._last = now
        fraction = done / total
        self._line.show(f"{self._verb} {bar(fraction, 30)} {fraction:6.1%}  {format_bytes(done)} / "
                        f"{format_bytes(total)}")

    def done(self, message: str) -> None:
        self._line.close()

    def fail(self, message: str) -> None:
        self._line.close()


class MapProgressLine:
    """`map`'s and `embed`'s progress on a terminal (stderr: stdout is the cell's or the script's), tqdm-style:
    `Mapping ai/smollm2 [######              ]  12/32 done · 45.2 tokens/s · ETA 0:12`; in a log, a line every few
    seconds. Same calls as the notebook's `MapProgress` widget."""

    def __init__(self, title: str, total: int, stream: TextIO | None = None) -> None:
        self._line = RewritingLine(stream or sys.stderr)
        self._title = title
        self._last = 0.0
        self._shown = ""

    def update(self, done: int, failed: int, total: int, **rates: Any) -> None:
        from .presentation import map_progress_text

        now = time.monotonic()
        if not self._line.tty and now - self._last < LOG_INTERVAL_SECONDS and done + failed < total:
            return
        self._last = now
        self._shown = f"{self._title} {bar((done + failed) / total if total else 1.0, 20)} " \
                      f"{map_progress_text(done, failed, total, **rates)}"
        self._line.show(self._shown)

    def done(self, message: str = "") -> None:
        self._close(message)

    def fail(self, message: str) -> None:
        self._close(message)

    def _close(self, message: str) -> None:
        self._line.close()
        if message:
            self._line.stream.write(message + "\n")
            self._line.stream.flush()


class TerminalConsole:
    """Where the shared verbs (commands.py) write for the CLI: stdout (or `out`), warnings and progress lines on
    stderr (so stdout can be piped)."""

    command = "jupyter modelrunner"

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out  # None: sys.stdout as it is when printing
        self._status_line: StatusLine | None = None

    def print(self, text: str = "") -> None:
        print(text, file=self._out or sys.stdout, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def progress(self, title: str) -> TerminalView:
        return TerminalView(title)

    def status(self, text: str, *, transient: bool = False) -> None:
        """A long verb's progress (`bench`), on stderr."""
        if self._status_line is None:
            self._status_line = StatusLine(sys.stderr)
        self._status_line(text, transient=transient)


class StatusLine:
    """Where a long verb (`bench`) says what it is doing: one self-rewriting line on a terminal; in a log only the
    lines that are not `transient` (a new phase). `""` ends it, rubbed out on a terminal so what follows starts
    clean."""

    def __init__(self, stream: TextIO) -> None:
        self._line = RewritingLine(stream)

    def __call__(self, text: str, *, transient: bool = False) -> None:
        if not text:
            if self._line.tty:
                self._line.show("")
                self._line.stream.write("\r")
            self._line.close()
        elif self._line.tty or not transient:
            self._line.show(text)


class InstallProgressLine:
    """install-runner's steps: one self-rewriting line on a terminal; in a log, a line per step and every few
    seconds. Remembers the steps it saw, so the summary can say whether anything was compiled."""

    def __init__(self, stream: TextIO, engine: str) -> None:
        self._line = RewritingLine(stream)
        self.engine = engine
        self.steps: set[str] = set()
        self._step = ""
        self._last = 0.0

    def __call__(self, event: Any) -> None:  # an engines.install.InstallProgress
        now = time.monotonic()
        finished = bool(event.total) and event.current >= event.total
        if self._line.tty:  # redraw on a new step or the end of one, else at most 10 times a second
            if event.step == self._step and not finished and now - self._last < 0.1:
                return
        elif event.step in self.steps and now - self._last < LOG_INTERVAL_SECONDS:  # each kind of step once
            return
        self.steps.add(event.step)
        self._step, self._last = event.step, now
        if event.total:
            fraction = min(event.current / event.total, 1.0)
            counts = f"[{event.current}/{event.total}] " if event.step == "compile" and event.total != 100 else ""
            self._line.show(f"{self.engine} {event.step}: {bar(fraction, 20)} {fraction:6.1%} {counts}"
                            f"{event.message}")
        else:
            self._line.show(f"{self.engine} {event.step}: {event.message}")

    def close(self) -> None:
        self._line.close()


class AnswerWriter:
    """A streamed answer as plain text, written as it arrives, with a reasoning model's thinking dimmed (on a
    terminal) before it.

    With the thinking on a stream of its own (the CLI: stderr, so stdout is the answer alone) both go out as they
    come. On the answer's stream (a terminal IPython, `%%chat --raw`) the thinking is labelled and each of its lines
    prefixed with `│ `, the answer starts below it, and thinking that comes after the answer has begun is left out:
    it could no longer be told from the answer.
    """

    def __init__(self, out: TextIO | None = None, thinking_out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.thinking_out = thinking_out or self.out
        self._inline = self.thinking_out is self.out
        self._written = 0  # characters of the answer written
        self._thought = 0  # characters of the thinking written

    def write(self, kind: str, piece: str) -> None:
        """One streamed piece: `kind` is `thinking` or `content`, as `ChatStream.parts()` gives them."""
        if kind == "thinking":
            self._think(piece)
        elif piece:
            if self._inline and self._thought and not self._written:
                self.out.write("\n\n")  # the answer starts below the thinking
            self.out.write(piece)
            self._written += len(piece)
        (self.thinking_out if kind == "thinking" else self.out).flush()

    def update(self, thinking: str, text: str) -> None:
        """The answer so far (the thinking and the text in full): writes what is new since the last call."""
        self._catch_up(thinking, text)

    def finish(self, thinking: str = "", text: str = "", footer: str | None = None) -> None:
        """Write what is left, end the line, and the footer (`[model · engine · N tokens in T s]`) if any."""
        self._catch_up(thinking, text)
        self.out.write("\n" + (f"[{footer}]\n" if footer else ""))
        self.out.flush()

    def _catch_up(self, thinking: str, text: str) -> None:
        if thinking[self._thought :]:
            self.write("thinking", thinking[self._thought :])
        if text[self._written :]:
            self.write("content", text[self._written :])

    def _think(self, piece: str) -> None:
        if not piece or (self._inline and self._written):
            return
        shown = piece
        if self._inline:
            body = piece if self._thought else piece.lstrip("\n")
            shown = ("" if self._thought else "Thinking:\n│ ") + body.replace("\n", "\n│ ")
        self.thinking_out.write(dim(shown, self.thinking_out))
        self._thought += len(piece)
