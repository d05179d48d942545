"""Which files `POST models/package` may read.

Packaging copies files into the store, `api/show` hands a model's chat template back and `push` sends every layer to
any registry: a route that packages any path the server can read is a route that reads any file. A Jupyter server's
token holder may read files and run code anyway; a `serve` token (no contents API, no kernels) may not, so there
packaging reads only from configured folders (`c.ModelRunner.package_roots`). Core code: no web framework here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import PackagingRefused

#: The setting every refusal names, so the operator knows what to change.
SETTING = "c.ModelRunner.package_roots"

PathLike = str | os.PathLike[str]


def confine(path: PathLike, roots: Sequence[PathLike], what: str) -> Path:
    """`path` with its symbolic links and dot segments resolved, if that lies inside one of `roots`; the caller reads
    the returned path, so what was checked is what is read. A link inside a root that points out of it is outside.

    The refusal names the path as given, never where a link leads, and is the same whether or not the file exists
    (the route is no way to probe the disk)."""
    if not roots:
        raise PackagingRefused(f"Packaging files over HTTP is off on this server ({SETTING} is empty). Its operator "
                               f"can set {SETTING} to the folders it may package from.")
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte...
        resolved = None
    if resolved is not None:
        for root in roots:
            try:
                if resolved.is_relative_to(Path(root).resolve()):
                    return resolved
            except (OSError, RuntimeError):
                continue
    folders = ", ".join(str(root) for root in roots)
    raise PackagingRefused(f"The {what} {path} is not inside the folders this server packages from ({folders}; "
                           f"symbolic links are followed first). Copy the file into one of them, or ask the server's "
                           f"operator to add its folder to {SETTING}.")


def confine_files(roots: Sequence[PathLike], *, gguf: Sequence[PathLike] | None = None,
                  safetensors_dir: PathLike | None = None, license_files: Sequence[PathLike] | None = None,
                  chat_template: PathLike | None = None, mmproj: PathLike | None = None) -> dict[str, Any]:
    """Every path of one packaging request, confined (see `confine`), under the same names; absent ones stay absent.

    A safetensors folder is checked as a whole: packaging refuses links inside it and does not descend into linked
    folders (distribution/package.py), so every file it reads is under the checked folder."""
    if not roots:
        confine("", roots, "file")  # raises: off
    return {
        "gguf": [str(confine(p, roots, "GGUF file")) for p in gguf] if gguf else gguf,
        "safetensors_dir": str(confine(safetensors_dir, roots, "safetensors folder")) if safetensors_dir else None,
        "license_files": [str(confine(p, roots, "license file")) for p in license_files] if license_files else
        license_files,
        "chat_template": str(confine(chat_template, roots, "chat template")) if chat_template else None,
        "mmproj": str(confine(mmproj, roots, "multimodal projector")) if mmproj else None,
    }


__all__ = ["SETTING", "PackagingRefused", "confine", "confine_files"]
