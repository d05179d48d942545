"""llama.cpp's source, as the build takes it: the pinned llama-cpp-python sdist (downloaded once with this
environment's pip, kept in the cache) and its vendored llama.cpp tree, extracted as the untrusted download it is.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

from ...errors import InstallError
from ...paths import user_cache_dir
from ..installing import InstallProgress, Progress, _require_pip, _run_pip

#: The one place the llama.cpp source version is pinned: llama-server is built from this sdist's vendored tree.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP = "llama.cpp"
_SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"

_VENDOR_PREFIX = f"{_SDIST}/vendor/llama.cpp/"

#: The sdist keeps the submodule's git metadata: its HEAD is the llama.cpp commit the tree was taken from.
_VENDOR_HEAD = f"{_SDIST}/.git/modules/vendor/llama.cpp/HEAD"


def llama_cache() -> Path:
    """Where llama.cpp's source and finished builds are kept (the user cache: a reinstall takes seconds)."""
    return user_cache_dir() / LLAMA_CPP


def download_sdist(report: Progress) -> Path:
    """The pinned llama-cpp-python sdist, downloaded once with this environment's pip (so its index settings,
    proxies and certificates apply) and kept in the cache."""
    folder = llama_cache() / "sdist"
    target = folder / f"{_SDIST}.tar.gz"
    if target.is_file():
        return target
    _require_pip()
    folder.mkdir(parents=True, exist_ok=True)
    report(InstallProgress("download", f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source (77 MB)"))
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", scratch]
        code, tail = _run_pip(command, report, "download")
        found = sorted(Path(scratch).glob("*.tar.gz"))
        if code != 0 or not found:
            text = "\n".join(tail)
            raise InstallError(
                f"Downloading llama.cpp's source (the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist, 77 MB, from "
                f"your Python package index) failed:\n{text}\nCheck the network and pip's settings (`pip config "
                "list`; a proxy goes in HTTPS_PROXY), then run `jupyter modelrunner install-runner llama.cpp` again.")
        os.replace(found[0], target)
    return target


def extract_llama_cpp(sdist: Path, dest: Path, report: Progress) -> str | None:
    """llama.cpp's source tree (`vendor/llama.cpp/**` of the sdist) into `dest`; returns its commit if recorded.

    The archive is downloaded, so it is treated as untrusted: absolute paths, `..` and links leading out of
    `dest` are refused, devices and fifos skipped.
    """
    dest.mkdir(parents=True)
    root = dest.resolve()
    size = max(sdist.stat().st_size, 1)
    commit = None
    files = 0
    last = 0.0
    with sdist.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|gz") as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            now = time.monotonic()
            if now - last > 0.2:
                last = now
                report(InstallProgress("extract", f"llama.cpp source ({files} files)", raw.tell(), size))
            if name == _VENDOR_HEAD and member.isfile():
                head = archive.extractfile(member)
                text = head.read(200).decode("ascii", "replace").strip() if head else ""
                commit = text if re.fullmatch(r"[0-9a-f]{7,64}", text) else None
                continue
            if not name.startswith(_VENDOR_PREFIX) or name == _VENDOR_PREFIX:
                continue
            relative = name[len(_VENDOR_PREFIX):].rstrip("/")
            if relative == ".git":  # a submodule's `gitdir: ../../.git/…` pointer, leading out of the tree
                continue
            target = _inside(root, relative, member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                if source is None:
                    continue
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                target.chmod(0o755 if member.mode & 0o111 else 0o644)
                files += 1
            elif member.issym():
                if PurePosixPath(member.linkname).is_absolute():
                    raise InstallError(f"Refusing {sdist.name}: {member.name} links to an absolute path.")
                _inside(root, posixpath.normpath(str(PurePosixPath(relative).parent / member.linkname)), member.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(member.linkname)
            elif member.islnk():
                linked = member.linkname.removeprefix("./")
                if not linked.startswith(_VENDOR_PREFIX):
                    raise InstallError(f"Refusing {sdist.name}: {member.name} is a hard link out of llama.cpp's tree.")
                original = _inside(root, linked[len(_VENDOR_PREFIX):], member.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(original, target)
                files += 1
            # devices, fifos: nothing a source tree needs
    report(InstallProgress("extract", f"llama.cpp source ({files} files)", size, size))
    if not (dest / "CMakeLists.txt").is_file() or not (dest / "tools" / "server").is_dir():
        raise InstallError(f"{sdist} does not hold llama.cpp's source with its server (vendor/llama.cpp/tools/server); "
                           f"delete it and run install-runner again.")
    return commit


def _inside(root: Path, relative: str, shown: str) -> Path:
    """`root/relative`, proven to stay inside `root` (after resolving links already extracted)."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or any(":" in part or "\\" in part for part in path.parts):
        raise InstallError(f"Refusing the llama.cpp source archive: unsafe path {shown!r}.")
    target = root.joinpath(*path.parts)
    resolved = Path(os.path.realpath(target))
    if resolved != root and root not in resolved.parents:
        raise InstallError(f"Refusing the llama.cpp source archive: {shown!r} leads out of the source tree.")
    return target
