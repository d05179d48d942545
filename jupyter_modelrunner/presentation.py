"""What the CLI and the magics print, in one place: `ls`/`ps` tables laid out like `docker model ls/ps`, `df`,
`status`, a model's summary and its engine, a model's settings.

Everything takes the runner's JSON (a model's, a runner's `ps` entry, `engines/status`), so a terminal and a
notebook show the same words for the same answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from .sizes import format_bytes

__all__ = ["ago", "answer_cache_text", "bench_text", "df_text", "engine_line", "format_bytes", "fsck_text",
           "hf_cache_table", "hf_search_table", "in_use_text", "map_progress_text", "model_summary", "models_table",
           "rich_output", "runners_table", "settings_line", "status_text"]

#: Environment override of the output style (the magics', `map`'s progress): `rich` (widgets, Markdown) or `text`.
ENV_OUTPUT = "MODEL_RUNNER_MAGICS_OUTPUT"


def rich_output(shell: object) -> bool:
    """Whether output goes to a notebook front end (JupyterLab, Notebook 7, VS Code, nbclient: a ZMQ kernel), where
    progress is a widget and answers Markdown, rather than to a terminal IPython or a script (`shell` None)."""
    style = os.environ.get(ENV_OUTPUT, "")
    return style == "rich" or (style != "text" and shell is not None and "ZMQ" in type(shell).__name__)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def models_table(models: Sequence[dict[str, Any]]) -> str:
    """`MODEL NAME  FORMAT  PARAMETERS  QUANTIZATION  ARCHITECTURE  MODEL ID  CREATED  SIZE`, a row per tag."""
    rows = [("MODEL NAME", "FORMAT", "PARAMETERS", "QUANTIZATION", "ARCHITECTURE", "MODEL ID", "CREATED", "SIZE")]
    for model in models:
        config = model.get("config") or {}
        short_id = str(model.get("id", "")).removeprefix("sha256:")[:12]
        for name in model.get("tags") or ["<none>"]:
            rows.append((name, config.get("format") or "", config.get("parameters") or "",
                         config.get("quantization") or "", config.get("architecture") or "", short_id,
                         ago(model.get("created") or 0), format_bytes(model.get("size") or 0)))
    return format_table(rows)


def bench_text(points: Sequence[dict[str, Any]], *, prompt: str, duration: float, max_tokens: int,
               interrupted: bool = False) -> str:
    """`bench`: what was asked, a row per model and concurrency level (`BenchPoint.to_json()`'s), then per model its
    fastest level against its lowest (DMR's "rel. speed"), the errors, and whether an interrupt cut the run short."""
    shown = prompt if len(prompt) <= 60 else prompt[:59] + "…"
    lines = [f"Prompt: {shown!r}; {duration:g} s per level, at most {max_tokens} tokens an answer", ""]
    rows = [("MODEL", "AT ONCE", "REQUESTS", "TTFT P50", "TTFT P95", "TOKENS/S EACH", "TOKENS/S TOTAL", "SPEEDUP",
             "ERRORS")]
    summary, problems = [], []
    for model in dict.fromkeys(p["model"] for p in points):
        mine = [p for p in points if p["model"] == model]
        base = mine[0].get("tokens_per_second") or 0
        for p in mine:
            total = p.get("tokens_per_second")
            rows.append((model, f"{p['concurrency']}{'' if p.get('complete', True) else '*'}", str(p["requests"]),
                         _ms(p.get("ttft_p50_ms")), _ms(p.get("ttft_p95_ms")),
                         _rate(p.get("request_tokens_per_second")), _rate(total),
                         f"{total / base:.2f}x" if total and base else "-", str(p["errors"])))
            if p["errors"]:
                problems.append(f"{model} at {p['concurrency']}: {p['errors']} failed ({p.get('error')})")
        best = max(mine, key=lambda p: p.get("tokens_per_second") or 0)
        if best.get("tokens_per_second"):
            where = " on ".join(x for x in (best.get("engine"), best.get("device")) if x)
            where += f", {best['slots']} slots" if best.get("slots") else ""
            gain = f", {best['tokens_per_second'] / base:.2f}x {mine[0]['concurrency']} at once" \
                if best is not mine[0] and base else ""
            summary.append(f"{model}{f' ({where})' if where else ''}: fastest at {best['concurrency']} at once, "
                           f"{best['tokens_per_second']:.1f} tokens/s{gain}")
    lines.append(format_table(rows) if len(rows) > 1 else "Nothing was measured.")
    lines += ["", *summary] if summary else []
    lines += problems
    if interrupted:
        lines.append("Interrupted: the table shows what was measured until then"
                     + (" (* a level cut short)." if any(not p.get("complete", True) for p in points) else "."))
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def hf_cache_table(models: Sequence[dict[str, Any]]) -> str:
    """`ls --hf-cache`: `MODEL NAME  FORMAT  QUANTIZATION  REVISION  ENGINE  SIZE`, the name as `pull` takes it."""
    rows = [("MODEL NAME", "FORMAT", "QUANTIZATION", "REVISION", "ENGINE", "SIZE")]
    rows += [(m["name"], m.get("format") or "", m.get("quantization") or "", str(m.get("revision") or "")[:12],
              m.get("engine") or "", format_bytes(m.get("size") or 0)) for m in models]
    return format_table(rows)


def hf_search_table(models: Sequence[dict[str, Any]]) -> str:
    """`search`: `MODEL NAME  FORMAT  PARAMETERS  DOWNLOADS  LIKES  SIZE`, most downloaded first (the Hub's order)."""
    rows = [("MODEL NAME", "FORMAT", "PARAMETERS", "DOWNLOADS", "LIKES", "SIZE")]
    rows += [(m["name"], m.get("format") or "", count_text(m.get("parameters")), count_text(m.get("downloads")),
              count_text(m.get("likes")), format_bytes(m["size"]) if m.get("size") else "") for m in models]
    return format_table(rows)


def count_text(count: int | None) -> str:
    """`494M`, `1.2K`, `7`: a count as the Hub shows it (empty when unknown)."""
    if count is None:
        return ""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            value = count / size
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(count)


def runners_table(runners: Sequence[dict[str, Any]]) -> str:
    """What `ps` shows: the model, its engine and device, whether it is busy, the context each request gets (and
    how many requests the engine serves at once), its memory and keep-alive; and, when a loaded model has thinking
    settings, them."""
    thinking = any(r.get("think") is not None or r.get("reasoning_budget") is not None for r in runners)
    rows = [("MODEL NAME", "ENGINE", "MODE", "DEVICE", "STATE", "IN USE", "CONTEXT", "MEMORY", "UNLOADS",
             "LAST USED") + (("THINKING",) if thinking else ())]
    for r in runners:
        rows.append((r["model_name"], r["backend_name"], r["mode"], r.get("device", ""), r.get("state", ""),
                     in_use_text(r), context_cell(r), format_bytes(r.get("memory", 0)),
                     expires_text(r), ago(r["last_used"]))
                    + ((thinking_text(r).removesuffix(", ").removeprefix("thinking "),) if thinking else ()))
    return format_table(rows)


def in_use_text(runner: dict[str, Any]) -> str:
    """`no`, `yes`, or how many requests and how many of them are work on data (`3 (2 on data)`, with those
    waiting for a slot a chat leaves free): what tells a user why their chat shares the engine."""
    if not runner["in_use"]:
        return "no"
    data = runner.get("background_requests", 0) + runner.get("background_waiting", 0)
    count = runner.get("requests") or 1
    return f"{count} ({data} on data)" if data else ("yes" if count == 1 else str(count))


def keep_alive_text(seconds: float | None) -> str:
    """`5m`, `30s`, `never`, `default`: what `configure --keep-alive` takes back."""
    if seconds is None:
        return "default"
    if seconds < 0:
        return "never"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def expires_text(runner: dict[str, Any]) -> str:
    """When an idle model unloads: `never`, `in 4m 10s`, `after this request`, or the keep-alive while in use."""
    keep = runner.get("keep_alive")
    if keep is not None and keep < 0:
        return "never"
    expires = runner.get("expires_at")
    if expires is None:
        return f"{keep_alive_text(keep)} after use"
    left = max(0, int(expires - time.time()))
    return f"in {left // 60}m {left % 60:02d}s" if left >= 60 else f"in {left}s"


def context_cell(runner: dict[str, Any]) -> str:
    """`8192 x8`: tokens per request, times the requests served at once (when more than one)."""
    context, slots = runner.get("context_size"), runner.get("slots")
    if not context:
        return ""
    return f"{context} x{slots}" if slots and slots > 1 else str(context)


def ago(timestamp: float) -> str:
    """`3 minutes ago`, as Docker says it."""
    if not timestamp:
        return ""
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("year", 31536000), ("month", 2592000), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


def status_text(status: dict[str, Any]) -> str:
    """`status`: the machine, then each engine — available or not, why, its version, device and where it lives."""
    lines = [f"Machine: {status.get('hardware', '')}"]
    if status.get("store"):
        lines.append(f"Store: {status['store']}")
    if status.get("memory_budget"):
        lines.append(f"Memory budget: {format_bytes(status['memory_budget'])}; idle models unload after "
                     f"{keep_alive_text(status.get('keep_alive'))} (unless configured per model)")
    for engine in status.get("engines") or []:
        mark = "available" if engine.get("available") else "not available"
        lines.append(f"{engine['engine']:<10} {mark:<14} {engine.get('reason', '')}")
        if engine.get("available") and engine.get("location"):
            what = engine.get("implementation") or engine["engine"]
            lines.append(f"{'':<25} {what} {engine.get('version') or ''} on {engine.get('device', 'cpu')}: "
                         f"{engine['location']}".replace("  ", " "))
    return "\n".join(lines)


def engine_line(model: dict[str, Any]) -> str:
    """`Runs on llama.cpp (cpu): <why>`, or why no engine can run it here."""
    engine = model.get("engine")
    if engine:
        return f"Runs on {engine['engine']} ({engine.get('device', '')}): {engine.get('reason', '')}"
    return f"No engine can run it here: {model.get('engine_error') or 'unknown format'}"


def model_summary(model: dict[str, Any]) -> str:
    """Two indented lines after a pull: what the model is, and which engine runs it here and why."""
    config = model.get("config") or {}
    details = ", ".join(x for x in (config.get("format"), config.get("parameters") and
                                    f"{config['parameters']} parameters", config.get("quantization"),
                                    format_bytes(model.get("size") or 0)) if x)
    return f"  {details}\n  {engine_line(model)}"


def preload_hint(model: dict[str, Any], name: str, command: str) -> str | None:
    """After a pull: for an engine whose start takes tens of seconds (vLLM), how to start it before the first
    question instead of during it (Docker's preload)."""
    if (model.get("engine") or {}).get("engine") != "vllm":
        return None
    return f"  vLLM takes a while to start a model: `{command} load {name}` starts it now, before the first question."


def keys_table(keys: list[dict[str, Any]]) -> str:
    """`key list`: name, when it was made, how it begins (never the key)."""
    if not keys:
        return "No inference keys. Make one with `jupyter modelrunner key create NAME`."
    rows = [("NAME", "CREATED", "BEGINS WITH")]
    rows += [(k["name"], ago(k.get("created") or 0), (k.get("hint") or "") + "…") for k in keys]
    return format_table(rows)


def df_text(usage: dict[str, Any]) -> str:
    lines = [f"Store: {usage.get('store', '')}"]
    for label, key in (("Models", "models"), ("Unused blobs", "orphans"), ("Partial downloads", "incomplete"),
                       ("Manifests", "manifests"), ("Total", "total")):
        lines.append(f"{label + ':':<19}{format_bytes(usage.get(key) or 0):>12}")
    lines.append(f"{'Model count:':<19}{usage.get('model_count', 0):>12}")
    return "\n".join(lines)


def fsck_text(report: dict[str, Any], command: str) -> str:
    """`fsck`: a line per problem (the model, what is wrong, what `--repair` does or did), the models removed from
    the index with how to get them back, and a one-line summary that says `clean` when nothing is wrong."""
    lines = []
    repaired = report.get("repair_ran")
    for problem in report.get("problems") or []:
        tail = problem.get("outcome") if repaired and problem.get("outcome") else f"--repair {problem['repair']}"
        lines.append(f"{problem['model']}: {problem['problem']}; {tail}")
    for name in report.get("pulling") or []:
        lines.append(f"{name}: a pull is downloading its missing layers now; left to it")
    for model in report.get("removed") or []:
        tags = model.get("tags") or [str(model.get("id", "")).removeprefix("sha256:")[:12]]
        again = "; ".join(f"{command} pull {tag}" for tag in tags)
        lines.append(f"Removed from the index: {', '.join(tags)}. To get {'it' if len(tags) == 1 else 'them'} "
                     f"back: {again}")
    checked = (f"{report.get('models', 0)} model{'s' if report.get('models') != 1 else ''}, "
               f"{report.get('blobs', 0)} blob{'s' if report.get('blobs') != 1 else ''} "
               f"({format_bytes(report.get('checked_bytes') or 0)}) checked")
    problems = report.get("problems") or []
    left = report.get("remaining", len(problems))
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    if not problems:
        verdict = "clean"
    elif not repaired:
        verdict = f"{count} (`{command} fsck --repair` fixes {'it' if len(problems) == 1 else 'them'})"
    elif not left:
        verdict = f"{count}, all repaired"
    else:
        verdict = f"{count}, {len(problems) - left} repaired, {left} left"
    lines.append(f"fsck: {checked}: {verdict}")
    return "\n".join(lines)


def settings_line(settings: dict[str, Any]) -> str:
    """A model's settings as `configure` shows them (or a runner's, from `ps`)."""
    context = settings.get("context_size")
    flags = " ".join(settings.get("runtime_flags") or []) or "none"
    return (f"context size {context or 'default'}, keep_alive {keep_alive_text(settings.get('keep_alive'))}, "
            f"{thinking_text(settings)}flags {flags}")


def thinking_text(settings: dict[str, Any]) -> str:
    """`thinking off, ` / `thinking on, reasoning budget 256 tokens, `: a model's thinking settings where any is set
    (most models do not think, so nothing is said about them by default)."""
    think, budget = settings.get("think"), settings.get("reasoning_budget")
    parts = [] if think is None else [f"thinking {'on' if think else 'off'}"]
    if budget is not None:
        parts.append("reasoning budget " + ("unlimited" if budget < 0 else f"{budget} tokens"))
    return "".join(f"{part}, " for part in parts)


def duration_text(seconds: float) -> str:
    """`0:42`, `12:05`, `1:02:09`: a duration as a progress bar's ETA shows it."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def map_progress_text(done: int, failed: int, total: int, *, cached: int = 0, tokens: int = 0,
                      seconds: float = 0.0, unit: str = "tokens/s") -> str:
    """`map`'s and `embed`'s progress in words: `12/32 done · 1 failed · 3 cached · 45.2 tokens/s · ETA 0:12`.

    The rate and the ETA count the rows the engine answered (the cached ones cost nothing), once there is one."""
    parts = [f"{done}/{total} done"]
    if failed:
        parts.append(f"{failed} failed")
    if cached:
        parts.append(f"{cached} cached")
    asked = done + failed - cached
    if seconds > 0 and asked > 0:
        if tokens:
            parts.append(f"{tokens / seconds:.1f} {unit}")
        left = total - done - failed
        if left:
            parts.append(f"ETA {duration_text(seconds / asked * left)}")
    elif seconds > 0:
        parts.append(f"{duration_text(seconds)} elapsed")
    return " · ".join(parts)


def answer_cache_text(path: str, usage: Sequence[Any], file_size: int) -> str:
    """`cache df`: where the cache is, a row per model (entries and bytes of answers), the file's size on disk."""
    lines = [f"Answer cache: {path}"]
    if usage:
        rows = [("MODEL", "MODEL ID", "ENTRIES", "SIZE")]
        rows += [(u.model, u.model_id.removeprefix("sha256:")[:12], str(u.entries), format_bytes(u.size))
                 for u in usage]
        lines.append(format_table(rows))
    else:
        lines.append("No answers cached yet (`map` and `embed` cache theirs here).")
    entries = sum(u.entries for u in usage)
    lines.append(f"{entries} entr{'y' if entries == 1 else 'ies'}, {format_bytes(file_size)} on disk")
    return "\n".join(lines)
