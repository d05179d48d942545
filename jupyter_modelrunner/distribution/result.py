"""What a pull did, whichever source it came from (an OCI registry or the Hugging Face Hub)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..reference import Reference


@dataclass(frozen=True)
class PullResult:
    reference: Reference
    digest: str
    downloaded_bytes: int
    reused_bytes: int
    model: Any
