"""Sizes as users read them: one way to print a number of bytes, everywhere a size is shown."""

from __future__ import annotations


def format_bytes(size: float) -> str:
    """Binary units the way `docker model ls` prints sizes: `256.35 MiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} TiB"
