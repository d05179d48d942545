"""`jupyter modelrunner install-runner` / `uninstall-runner`, against the engines this machine really has.

The one real compile happens before the suite (scripts/test.sh runs `install-runner all`); these tests reuse
it and never compile: every CLI run here gets a PATH without cmake or a compiler, so a build started by
mistake fails instead of taking ten minutes. The user's own install is only read; installs go to temporary
data and cache folders.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from jupyter_modelrunner.engines.install import InstalledEngine, installed
from jupyter_modelrunner.engines.llamacpp import install as llama_install
from jupyter_modelrunner.engines.llamacpp import source as llama_source
from jupyter_modelrunner.errors import InstallError
from jupyter_modelrunner.paths import jupyter_data_dir, user_cache_dir

# Read at import, before `isolated_env` gives each test its own HOME.
REAL_DATA_DIR = jupyter_data_dir()
REAL_CACHE = user_cache_dir()
REAL_LLAMA = installed("llama.cpp")
REAL_VLLM = installed("vllm")

needs_llama = pytest.mark.skipif(REAL_LLAMA is None, reason="llama.cpp is not installed here: run `jupyter "
                                 "modelrunner install-runner llama.cpp` first (scripts/test.sh does)")
needs_vllm = pytest.mark.skipif(REAL_VLLM is None, reason="vLLM is not installed here: run `jupyter modelrunner "
                                "install-runner vllm` first (scripts/test.sh does)")


def gpu_option(record: InstalledEngine) -> str:
    """The `--gpu` that selects the build `record` describes (Metal is what `auto` means on a Mac)."""
    return {"cpu": "cpu", "cuda": "cuda"}.get(record.device, "auto")


def tools_path(folder: Path, *tools: str) -> str:
    """A PATH holding python and only the named tools (symlinks to the real ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in ("python3", *tools):
        found = shutil.which(tool)
        assert found, f"{tool} is not on this machine"
        (folder / tool).symlink_to(found)
    return str(folder)


def cli_env(data_dir: Path, cache_home: Path, path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "CMAKE_ARGS")}
    env.update({"JUPYTER_DATA_DIR": str(data_dir), "XDG_CACHE_HOME": str(cache_home), "PATH": path})
    return env


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jupyter_modelrunner", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cached_build(tmp_path_factory) -> tuple[Path, str]:
    """A cache folder (for XDG_CACHE_HOME) holding a copy of the build the user has installed, and its key."""
    assert REAL_LLAMA is not None
    key = REAL_LLAMA.location.name
    source = REAL_CACHE / "llama.cpp" / key
    if not (source / "build.json").is_file():
        pytest.skip(f"the build cache has no {key} (removed with --purge-cache?)")
    cache_home = tmp_path_factory.mktemp("cache-home")
    shutil.copytree(source, cache_home / "jupyter-modelrunner" / "llama.cpp" / key, symlinks=True)
    return cache_home, key


@needs_llama
def test_installed_llama_server_runs_with_its_own_libraries() -> None:
    assert REAL_LLAMA is not None and REAL_LLAMA.lib_dir is not None
    result = subprocess.run([str(REAL_LLAMA.executable), "--version"], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"})
    assert result.returncode == 0, result.stderr
    assert f"version: {REAL_LLAMA.version}" in result.stderr + result.stdout
    libraries = {path.name.split(".")[0] for path in REAL_LLAMA.lib_dir.iterdir()}
    assert {"libllama", "libggml", "libggml-base", "libggml-cpu", "libmtmd"} <= libraries
    assert REAL_LLAMA.source == f"llama-cpp-python {llama_install.LLAMA_CPP_PYTHON_VERSION} sdist"


@needs_llama
def test_install_runner_again_does_no_work(tmp_path, monkeypatch) -> None:
    assert REAL_LLAMA is not None
    before = REAL_LLAMA.executable.stat()
    # No cmake on PATH: were it not a no-op, it would fail rather than rebuild the user's engine.
    env = cli_env(REAL_DATA_DIR, REAL_CACHE.parent, tools_path(tmp_path / "bin"))
    started = time.monotonic()
    result = cli("install-runner", "llama.cpp", "--gpu", gpu_option(REAL_LLAMA), env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "llama.cpp is already installed" in result.stdout
    assert str(REAL_LLAMA.executable) in result.stdout
    assert elapsed < 10  # one interpreter start, nothing copied or compiled
    after = REAL_LLAMA.executable.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # The library call itself is a JSON read and a stat.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(REAL_DATA_DIR))
    monkeypatch.setenv("XDG_CACHE_HOME", str(REAL_CACHE.parent))
    monkeypatch.setenv("PATH", env["PATH"])
    started = time.monotonic()
    assert llama_install.install_llama_server(gpu=gpu_option(REAL_LLAMA)) == REAL_LLAMA
    assert time.monotonic() - started < 1


@needs_llama
def test_uninstall_then_install_again_reuses_the_cached_build(tmp_path, cached_build) -> None:
    cache_home, key = cached_build
    assert REAL_LLAMA is not None
    data = tmp_path / "data"
    engines = data / "modelrunner" / "engines" / "llama.cpp"
    env = cli_env(data, cache_home, tools_path(tmp_path / "bin"))  # no cmake: a compile would fail
    gpu = gpu_option(REAL_LLAMA)

    first = cli("install-runner", "llama.cpp", "--gpu", gpu, env=env)
    assert first.returncode == 0, first.stderr
    assert "from the build cache" in first.stdout
    assert (engines / key / "llama-server").is_file()

    removed = cli("uninstall-runner", "llama.cpp", env=env)
    assert removed.returncode == 0, removed.stderr
    assert str(engines) in removed.stdout
    assert not engines.exists()

    started = time.monotonic()
    again = cli("install-runner", "llama.cpp", "--gpu", gpu, env=env)
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 30
    assert f"Installed llama.cpp {REAL_LLAMA.version}" in again.stdout
    assert not list((cache_home / "jupyter-modelrunner" / "llama.cpp").glob("build-*"))  # no build tree, ever
    # The copy runs where it now lives: its libraries are found through the $ORIGIN rpath.
    copy = subprocess.run([str(engines / key / "llama-server"), "--version"], capture_output=True, timeout=60)
    assert copy.returncode == 0
    assert REAL_LLAMA.executable.is_file()  # the user's own install is untouched


@needs_llama
def test_installed_is_none_once_the_executable_is_gone(tmp_path, monkeypatch, cached_build) -> None:
    cache_home, _ = cached_build
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.setenv("PATH", tools_path(tmp_path / "bin"))
    assert REAL_LLAMA is not None
    record = llama_install.install_llama_server(gpu=gpu_option(REAL_LLAMA))
    assert installed("llama.cpp") == record
    record.executable.unlink()
    assert installed("llama.cpp") is None


@pytest.mark.parametrize(("tools", "complaint", "fixes"), [
    ((), "cmake (3.21 or newer) and a C++ compiler, and cmake was not found",
     ("pip install cmake ninja", "apt-get install cmake ninja-build", "brew install cmake")),
    (("cmake",), "needs a C++ compiler, and none was found", ("apt-get install build-essential", "xcode-select")),
])
def test_missing_build_tools_name_the_fix_and_leave_nothing(tmp_path, tools, complaint, fixes) -> None:
    data, cache_home = tmp_path / "data", tmp_path / "cache"
    env = cli_env(data, cache_home, tools_path(tmp_path / "bin", *tools))
    result = cli("install-runner", "llama.cpp", "--gpu", "cpu", env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ")
    assert complaint in result.stderr
    assert all(fix in result.stderr for fix in fixes), result.stderr
    engines = data / "modelrunner" / "engines"
    assert not engines.exists() or not any(engines.rglob("*"))
    assert not (cache_home / "jupyter-modelrunner" / "llama.cpp").exists()  # nothing downloaded either


def test_failed_build_shows_the_end_of_its_log_and_keeps_it(tmp_path) -> None:
    sdist = REAL_CACHE / "llama.cpp" / "sdist" / f"llama_cpp_python-{llama_install.LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.is_file():
        pytest.skip(f"no downloaded llama.cpp source in {sdist.parent} (install-runner llama.cpp puts it there)")
    cache_home, data = tmp_path / "cache", tmp_path / "data"
    llama_cache = cache_home / "jupyter-modelrunner" / "llama.cpp"
    (llama_cache / "sdist").mkdir(parents=True)
    shutil.copy(sdist, llama_cache / "sdist")
    env = cli_env(data, cache_home, os.environ["PATH"])
    env["CXX"] = shutil.which("false") or "/bin/false"  # a C++ compiler that fails every compile: nothing builds
    result = cli("install-runner", "llama.cpp", "--gpu", "cpu", env=env)
    assert result.returncode == 1
    assert "Configuring the llama.cpp build (cmake) failed. The last lines of the build log:" in result.stderr
    assert "is not able to compile a simple test program" in result.stderr
    assert "No working C++ compiler: install one with" in result.stderr
    (log,) = (llama_cache / "logs").glob("*.log")
    assert f"The full log is in {log}" in result.stderr
    assert "testCXXCompiler" in log.read_text()  # cmake's own error log, kept in ours
    assert sorted(p.name for p in llama_cache.iterdir()) == ["logs", "sdist"]  # the build tree is gone
    engines = data / "modelrunner" / "engines"
    assert not engines.exists() or not any(engines.rglob("*"))


def test_cuda_without_nvcc_names_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", tools_path(tmp_path / "bin"))
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(llama_install, "_CUDA_DEFAULT_HOME", str(tmp_path / "no-cuda"))
    with pytest.raises(InstallError, match=r"nvcc.*`--gpu cpu`"):
        llama_install.install_llama_server(gpu="cuda")


@pytest.mark.skipif(llama_install._find_nvcc() is None or llama_install._nvidia_gpu_present(),
                    reason="needs the CUDA toolkit without an NVIDIA GPU, as on the CI machine")
def test_cuda_toolkit_without_a_gpu_builds_for_the_cpu() -> None:
    assert llama_install.llama_build_plan("auto").device == "cpu"
    cuda = llama_install.llama_build_plan("cuda")  # asked for, it is honoured (to run the build on a GPU machine later)
    assert cuda.device == "cuda" and "-DGGML_CUDA=ON" in cuda.flags
    assert cuda.key != llama_install.llama_build_plan("auto").key


@needs_vllm
def test_install_runner_vllm_again_does_no_work(tmp_path) -> None:
    assert REAL_VLLM is not None
    env = cli_env(REAL_DATA_DIR, REAL_CACHE.parent, tools_path(tmp_path / "bin"))
    started = time.monotonic()
    result = cli("install-runner", "vllm", "--gpu", gpu_option(REAL_VLLM), env=env)
    assert result.returncode == 0, result.stderr
    assert "vllm is already installed" in result.stdout and REAL_VLLM.version in result.stdout
    assert time.monotonic() - started < 10


def test_source_archive_that_escapes_is_refused(tmp_path) -> None:
    prefix = f"llama_cpp_python-{llama_install.LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    for name, link in ((prefix + "../../../../escaped.txt", None), (prefix + "common/evil", "../../../../etc")):
        archive = tmp_path / "sdist.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            member = tarfile.TarInfo(name)
            if link is None:
                member.size = 3
                tar.addfile(member, io.BytesIO(b"bad"))
            else:
                member.type, member.linkname = tarfile.SYMTYPE, link
                tar.addfile(member)
        dest = tmp_path / "src"
        shutil.rmtree(dest, ignore_errors=True)
        with pytest.raises(InstallError, match="Refusing"):
            llama_source.extract_llama_cpp(archive, dest, lambda _: None)
        assert not (tmp_path / "escaped.txt").exists()
        assert not (dest / "common" / "evil").exists()
