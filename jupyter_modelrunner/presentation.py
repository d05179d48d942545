"""The tables `ls` and `ps` print, laid out like `docker model ls/ps`: one layout for the CLI and the magics.

Both take the runner's JSON (a model's `to_json()`, a runner's `status()`), so a table looks the same
whether it was read from the store in the CLI or over HTTP in a kernel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .distribution.progress import format_bytes


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


def runners_table(runners: Sequence[dict[str, Any]]) -> str:
    """What `ps` shows: the model, its engine and device, whether it is busy, the context each request gets (and
    how many requests the engine serves at once), its memory and keep-alive."""
    rows = [("MODEL NAME", "ENGINE", "MODE", "DEVICE", "STATE", "IN USE", "CONTEXT", "MEMORY", "KEEP ALIVE",
             "LAST USED")]
    for r in runners:
        rows.append((r["model_name"], r["backend_name"], r["mode"], r.get("device", ""), r.get("state", ""),
                     "yes" if r["in_use"] else "no", context_cell(r), format_bytes(r.get("memory", 0)),
                     str(r["keep_alive"]), ago(r["last_used"])))
    return format_table(rows)


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
    for engine in status.get("engines") or []:
        mark = "available" if engine.get("available") else "not available"
        lines.append(f"{engine['engine']:<10} {mark:<14} {engine.get('reason', '')}")
        if engine.get("available") and engine.get("location"):
            what = engine.get("implementation") or engine["engine"]
            lines.append(f"{'':<25} {what} {engine.get('version') or ''} on {engine.get('device', 'cpu')}: "
                         f"{engine['location']}".replace("  ", " "))
    return "\n".join(lines)
