"""llama.cpp's own `llama-server`, compiled from the llama.cpp tree that the pinned llama-cpp-python sdist vendors,
so the server and llama-cpp-python's bindings (the fallback engine) share one source, one ABI and one version pin.

The build is portable (`GGML_NATIVE=OFF`: native builds crash in the AMX kernels of recent Xeons) and made of shared
libraries found through an `$ORIGIN` rpath, so the folder works wherever it is copied and llama-cpp-python can load
the same libraries (`LLAMA_CPP_LIB_PATH`). A finished build is kept in the user cache under a key (version, device,
hash of the build flags): reinstalling copies it in seconds.

On disk (`paths.user_cache_dir()` and `paths.engines_dir()`)::

    <cache>/llama.cpp/sdist/llama_cpp_python-<version>.tar.gz   the downloaded source
    <cache>/llama.cpp/<key>/                                    a finished build: llama-server, lib*.so*, build.json
    <cache>/llama.cpp/logs/<key>.log                            the full log of the last build of <key>
    <engines>/llama.cpp/<key>/                                  the installed copy of the build
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import InstallError
from ...paths import engines_dir
from ..installing import (
    _LOG_TAIL,
    BUILD_RECORD_NAME,
    GPU_CHOICES,
    RECORD_FORMAT,
    InstalledEngine,
    InstallProgress,
    Progress,
    _engine_lock,
    _ignore,
    _nvidia_gpu_present,
    _read_json,
    _run_logged,
    _write_json,
    _write_record,
    installed,
    log,
)
from .source import LLAMA_CPP, LLAMA_CPP_PYTHON_VERSION, download_sdist, extract_llama_cpp, llama_cache

MIN_CMAKE = (3, 21)


_SERVER = "llama-server.exe" if os.name == "nt" else "llama-server"


_LIBRARY_PATTERNS = ("*.so", "*.so.*", "*.dylib", "*.dll")


#: Where the CUDA toolkit installs itself when nvcc is not on PATH (NVIDIA's packages do not add it).
_CUDA_DEFAULT_HOME = "/usr/local/cuda"


_NINJA_LINE = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)")


_MAKE_LINE = re.compile(r"^\[\s*(\d+)%\]\s*(.*)")


COMPILER_FIX = ("install one with `sudo apt-get install build-essential` (Debian/Ubuntu), `sudo dnf install gcc-c++` "
                "(Fedora) or `xcode-select --install` (macOS), or point $CXX at yours")


TOOLS_FIX = ("install them with `pip install cmake ninja` (into this environment), `sudo apt-get install cmake "
             "ninja-build build-essential` (Debian/Ubuntu), `sudo dnf install cmake ninja-build gcc-c++` (Fedora) or "
             "`brew install cmake ninja` (macOS, after `xcode-select --install`)")


@dataclass(frozen=True)
class LlamaBuildPlan:
    """What a llama.cpp build for this machine is: its device, the CMake flags that define it, and its cache key."""

    device: str
    flags: tuple[str, ...]
    key: str
    nvcc: str | None = None


def llama_build_plan(gpu: str = "auto") -> LlamaBuildPlan:
    """The build `install_llama_server(gpu=...)` would make here (cheap: no compiler is run)."""
    device, nvcc = _llama_device(gpu)
    rpath = "@loader_path" if sys.platform == "darwin" else "$ORIGIN"
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        # Portable: a -march=native build segfaults in ggml's AMX kernels on recent Xeons, and runs nowhere else.
        "-DGGML_NATIVE=OFF",
        # Shared libraries, found next to the binary wherever the folder is copied; llama-cpp-python loads them too.
        "-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", f"-DCMAKE_INSTALL_RPATH={rpath}",
        "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF",
        # Otherwise the configure step downloads a prebuilt web UI (and fails offline).
        "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF",
    ]
    if device == "cuda":
        flags.append("-DGGML_CUDA=ON")
    elif device == "cpu":
        flags.append("-DGGML_CUDA=OFF")
        if sys.platform == "darwin":
            flags.append("-DGGML_METAL=OFF")
    # The machine is part of the key: a home folder (and its cache) may be shared by different computers.
    digest = hashlib.sha256("\n".join([sys.platform, platform.machine(), *flags]).encode()).hexdigest()[:12]
    return LlamaBuildPlan(device, tuple(flags), f"{LLAMA_CPP_PYTHON_VERSION}-{device}-{digest}", nvcc)


def install_llama_server(*, gpu: str = "auto", force: bool = False, jobs: int | None = None,
                         progress: Progress | None = None) -> InstalledEngine:
    """Build (or take from the cache) llama.cpp's `llama-server` for this machine and install it.

    Already installed with the same build: returns the record at once, doing nothing. Built before (the cache
    holds it): copies it, no compiler runs. Otherwise downloads the pinned llama-cpp-python sdist, compiles its
    vendored llama.cpp (~10 minutes on 2 cores), caches the result and installs it. `force` rebuilds.
    """
    report = progress or _ignore
    plan = llama_build_plan(gpu)
    current = installed(LLAMA_CPP)
    if current is not None and current.location.name == plan.key and not force:
        log.info("llama.cpp %s is already installed in %s", current.version, current.location)
        return current
    with _engine_lock(LLAMA_CPP, report):
        current = installed(LLAMA_CPP)  # another install-runner may have finished while we waited
        if current is not None and current.location.name == plan.key and not force:
            return current
        build = llama_cache() / plan.key
        if force or not _is_complete_build(build):
            _build_llama_server(plan, build, jobs, report)
        else:
            report(InstallProgress("cached", f"a finished build in {build}"))
        return _install_llama_build(plan, build, report)


def _is_complete_build(folder: Path) -> bool:
    return (folder / BUILD_RECORD_NAME).is_file() and (folder / _SERVER).is_file()


def _llama_device(gpu: str) -> tuple[str, str | None]:
    """(device, nvcc): CUDA only with the toolkit *and* a GPU on `auto`, since a CUDA build cannot run without one."""
    if gpu not in GPU_CHOICES:
        raise InstallError(f"Unknown --gpu {gpu!r}: choose one of {', '.join(GPU_CHOICES)}.")
    if sys.platform == "darwin":
        if gpu == "cuda":
            raise InstallError("There is no CUDA on macOS: llama.cpp uses Metal there (`--gpu auto`), or the CPU "
                               "(`--gpu cpu`).")
        return ("cpu" if gpu == "cpu" else "metal"), None
    if gpu == "cpu":
        return "cpu", None
    nvcc = _find_nvcc()
    if gpu == "cuda":
        if nvcc is None:
            raise InstallError(
                "A CUDA build of llama.cpp needs the CUDA toolkit's compiler, nvcc, and it is not on PATH (nor in "
                "$CUDA_HOME/bin or /usr/local/cuda/bin). Install the CUDA toolkit (https://developer.nvidia.com/"
                "cuda-downloads, or `sudo apt-get install nvidia-cuda-toolkit`) and put nvcc on PATH, or build for "
                "the CPU with `--gpu cpu`.")
        return "cuda", nvcc
    return ("cuda", nvcc) if nvcc and _nvidia_gpu_present() else ("cpu", None)


def _find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), _CUDA_DEFAULT_HOME]
    for home in filter(None, homes):
        candidate = Path(home) / "bin" / "nvcc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _find_tool(name: str) -> str | None:
    """On PATH, or next to this interpreter: `pip install cmake ninja` puts them there, and a venv's bin folder
    is not on PATH when the venv is used without being activated."""
    found = shutil.which(name)
    if found:
        return found
    return shutil.which(name, path=str(Path(sys.executable).parent))


def _build_tools(plan: LlamaBuildPlan) -> tuple[str, list[str]]:
    """cmake and the generator arguments, after checking a compiler is there; else the message that names the fix."""
    cmake = _find_tool("cmake")
    if cmake is None:
        raise InstallError(f"llama.cpp is compiled from source here, which needs cmake ({_version_text(MIN_CMAKE)} or "
                           f"newer) and a C++ compiler, and cmake was not found: {TOOLS_FIX}. Then run "
                           "`jupyter modelrunner install-runner llama.cpp` again.")
    version = _cmake_version(cmake)
    if version is not None and version < MIN_CMAKE:
        raise InstallError(f"llama.cpp needs cmake {_version_text(MIN_CMAKE)} or newer, and {cmake} is "
                           f"{_version_text(version)}: `pip install -U cmake` installs a current one into this "
                           "environment (or see your system's packages).")
    if not _find_compiler():
        raise InstallError("llama.cpp is compiled from source here, which needs a C++ compiler, and none was found "
                           f"(c++, g++, clang++, or $CXX): {COMPILER_FIX}. Then run `jupyter modelrunner "
                           "install-runner llama.cpp` again.")
    ninja = _find_tool("ninja")
    if ninja is not None:
        return cmake, ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    if os.name == "nt":
        return cmake, []
    make = _find_tool("make")
    if make is None:
        raise InstallError(f"Building llama.cpp needs ninja or make, and neither was found: {TOOLS_FIX}.")
    return cmake, ["-G", "Unix Makefiles", f"-DCMAKE_MAKE_PROGRAM={make}"]


def _cmake_version(cmake: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"version (\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else None


def _version_text(version: Sequence[int]) -> str:
    return ".".join(map(str, version))


def _find_compiler() -> str | None:
    configured = os.environ.get("CXX")
    if configured:
        return shutil.which(shlex.split(configured)[0]) if configured.strip() else None
    names = ("cl", "clang-cl", "g++", "clang++") if os.name == "nt" else ("c++", "g++", "clang++")
    return next((found for name in names if (found := shutil.which(name))), None)


def _build_llama_server(plan: LlamaBuildPlan, target: Path, jobs: int | None, report: Progress) -> None:
    """Download, extract, configure and compile into a scratch folder; only the finished build reaches `target`."""
    cmake, generator = _build_tools(plan)
    sdist = download_sdist(report)
    cache = llama_cache()
    logs = cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{plan.key}.log"
    scratch = Path(tempfile.mkdtemp(prefix=f"build-{plan.key}-", dir=cache))
    try:
        source = scratch / "llama.cpp"
        commit = extract_llama_cpp(sdist, source, report)
        build = scratch / "build"
        extra = [f"-DLLAMA_BUILD_COMMIT={commit[:9]}" if commit else "-DLLAMA_BUILD_COMMIT=unknown",
                 "-DLLAMA_BUILD_NUMBER=0"]
        if plan.nvcc:
            extra.append(f"-DCMAKE_CUDA_COMPILER={plan.nvcc}")
        # llama.cpp asks git for its commit: never let it find a repository the cache happens to sit in.
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(scratch)}
        with log_path.open("w", encoding="utf-8", errors="replace") as log_file:
            log_file.write(f"# llama.cpp from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, build {plan.key}\n")
            report(InstallProgress("configure", "cmake: looking for compilers and libraries"))
            configure = [cmake, "-S", str(source), "-B", str(build), *generator, *plan.flags, *extra]
            code, tail = _run_logged(configure, log_file, env=env)
            if code != 0:
                # cmake points at logs inside the build tree, which is deleted: keep them in ours.
                for name in ("CMakeError.log", "CMakeConfigureLog.yaml"):
                    with contextlib.suppress(OSError):
                        log_file.write(f"# {name}\n{(build / 'CMakeFiles' / name).read_text(errors='replace')}")
                raise _build_failure("Configuring the llama.cpp build (cmake)", plan, tail, log_path)
            jobs = jobs or int(os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or 0) or os.cpu_count() or 2
            report(InstallProgress("compile", f"llama-server with {jobs} jobs", 0, 0))
            compile_ = [cmake, "--build", str(build), "--target", "llama-server", "-j", str(jobs)]
            if "Ninja" not in generator and os.name == "nt":
                compile_ += ["--config", "Release"]
            code, tail = _run_logged(compile_, log_file, env=env, on_line=lambda line: _compile_progress(line, report))
            if code != 0:
                raise _build_failure("Compiling llama.cpp", plan, tail, log_path)
        _collect_build(plan, build, source, scratch / "out", commit)
        if target.exists():
            shutil.rmtree(target)
        (scratch / "out").rename(target)
    finally:
        # The build tree is hundreds of MB; the log stays in <cache>/llama.cpp/logs/.
        shutil.rmtree(scratch, ignore_errors=True)


def _build_failure(what: str, plan: LlamaBuildPlan, tail: Sequence[str], log_path: Path) -> InstallError:
    # cmake's "See also <build>/CMakeFiles/…" name files of the deleted build tree; our log has their text.
    text = "\n".join(line for line in tail if not line.startswith('See also "'))
    hint = ""
    if re.search(r"No CMAKE_CXX_COMPILER could be found|CXX compiler identification is unknown|"
                 r"C\+\+ compiler\s[\s\S]{0,400}?is not able to compile", text):
        hint = f"\nNo working C++ compiler: {COMPILER_FIX}."
    elif plan.device == "cuda" and re.search(r"CUDA|nvcc", text):
        hint = "\nThe CUDA toolkit looks incomplete or too old for this llama.cpp; `--gpu cpu` builds for the CPU."
    return InstallError(f"{what} failed. The last lines of the build log:\n{text}{hint}\n"
                        f"The full log is in {log_path}; `jupyter modelrunner install-runner llama.cpp` tries again.")


def _compile_progress(line: str, report: Progress) -> None:
    match = _NINJA_LINE.match(line)
    if match:
        report(InstallProgress("compile", _short_step(match[3]), int(match[1]), int(match[2])))
        return
    match = _MAKE_LINE.match(line)
    if match:
        report(InstallProgress("compile", _short_step(match[2]), int(match[1]), 100))


def _short_step(text: str) -> str:
    """`Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o` → `Building CXX object llama.cpp.o`."""
    words = text.strip().split(" ")
    if len(words) > 1 and "/" in words[-1]:
        words[-1] = words[-1].rsplit("/", 1)[-1]
    return " ".join(words)


def _collect_build(plan: LlamaBuildPlan, build: Path, source: Path, out: Path, commit: str | None) -> None:
    """The server and its shared libraries (links kept as links), its license, and build.json describing them."""
    bin_dir = build / "bin"
    if not (bin_dir / _SERVER).is_file():
        candidates = list(build.rglob(_SERVER))
        if not candidates:
            raise InstallError(f"The llama.cpp build finished without {_SERVER} in {bin_dir}.")
        bin_dir = candidates[0].parent
    out.mkdir()
    names = {_SERVER} | {p.name for pattern in _LIBRARY_PATTERNS for p in bin_dir.glob(pattern)}
    for name in sorted(names):
        src = bin_dir / name
        if src.is_symlink():
            (out / name).symlink_to(src.readlink())
        else:
            shutil.copy2(src, out / name)
    if not any(out.glob("*mtmd*")) and os.name != "nt":
        raise InstallError(f"The llama.cpp build made no libmtmd (llama-server links it) in {bin_dir}.")
    if (source / "LICENSE").is_file():
        shutil.copy2(source / "LICENSE", out / "LICENSE")
    version = _server_version(out / _SERVER)
    _write_json(out / BUILD_RECORD_NAME, {
        "format": RECORD_FORMAT, "version": version, "device": plan.device, "key": plan.key,
        "source": f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist", "commit": commit,
        "build_flags": list(plan.flags), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


def _server_version(server: Path) -> str:
    """What `llama-server --version` prints after `version:` (on stderr): `0.5.0-dev (build 0, commit 0c1e57098)`.
    Running it also proves the binary finds its shared libraries."""
    try:
        result = subprocess.run([str(server), "--version"], capture_output=True, text=True, timeout=60,
                                errors="replace")
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"{server} cannot be run: {exc}") from exc
    output = result.stderr + result.stdout
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-_LOG_TAIL:])
        raise InstallError(f"{server} --version failed (exit {result.returncode}):\n{tail}")
    for line in output.splitlines():
        if line.startswith("version:"):
            return line.removeprefix("version:").strip()
    return "unknown version"


def _install_llama_build(plan: LlamaBuildPlan, build: Path, report: Progress) -> InstalledEngine:
    """Copy a cached build into the engines folder, check it runs there, then switch the record to it."""
    report(InstallProgress("install", f"copying the build to {engines_dir() / LLAMA_CPP}"))
    info = _read_json(build / BUILD_RECORD_NAME) or {}
    root = engines_dir() / LLAMA_CPP
    root.mkdir(parents=True, exist_ok=True)
    target = root / plan.key
    staging = Path(tempfile.mkdtemp(prefix=f".{plan.key}-", dir=root))
    try:
        shutil.copytree(build, staging, symlinks=True, dirs_exist_ok=True)
        (staging / BUILD_RECORD_NAME).unlink(missing_ok=True)
        try:
            version = _server_version(staging / _SERVER)  # loads its libraries from where it will live
        except InstallError as exc:
            raise InstallError(f"{exc}\nThe cached build ({build}) does not run here: `jupyter modelrunner "
                               "install-runner llama.cpp --force` builds it again.") from exc
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = InstalledEngine(
        engine=LLAMA_CPP, executable=target / _SERVER, version=version, device=plan.device, location=target,
        source=str(info.get("source") or f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist"), lib_dir=target,
        build_flags=plan.flags,
    )
    _write_record(record, key=plan.key, commit=info.get("commit"))
    # Other builds (another version or device, a crashed copy) go once the record no longer names them.
    for other in root.iterdir():
        if other.is_dir() and other != target:
            shutil.rmtree(other, ignore_errors=True)
    report(InstallProgress("install", "done", 1, 1))
    return record
