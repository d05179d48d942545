"""The test infrastructure itself: the registry, the fault proxy, the models the suite builds, and SmolLM2.

If one of these breaks, every test built on it fails for a misleading reason; these checks say which
piece of the harness is at fault.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import gguf
import pytest
import requests
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from jupyter_modelrunner.distribution import pull
from jupyter_modelrunner.store import Store

from .conftest import TEST_CACHE
from .support.faultproxy import FaultProxy
from .support.models import SMOLLM2_BYTES, smollm2_gguf
from .support.publish import publish_gguf
from .support.registry import LocalRegistry, find_free_port


@pytest.fixture
def http() -> requests.Session:
    """A session that ignores HTTP(S)_PROXY from the environment: everything here is on loopback."""
    session = requests.Session()
    session.trust_env = False
    return session


def push_blob(http: requests.Session, base: str, repository: str, data: bytes) -> str:
    """A monolithic blob upload (POST then PUT), the smallest client of a registry; returns the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = http.post(f"{base}/v2/{repository}/blobs/uploads/", timeout=10)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    location = location if location.startswith("http") else base + location
    separator = "&" if "?" in location else "?"
    done = http.put(f"{location}{separator}digest={digest}", data=data,
                    headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert done.status_code == 201, done.text
    return digest


def test_find_free_port_is_bindable():
    """The port is a real one (not 0, which would bind anywhere), nothing listens on it, and a server can take
    exactly it."""
    port = find_free_port()
    assert isinstance(port, int) and 1024 <= port <= 65535
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.create_server(("127.0.0.1", port)) as server:
        assert server.getsockname()[1] == port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_registry_answers_and_auth_registry_wants_credentials(registry, auth_registry, http):
    assert registry.host == f"127.0.0.1:{registry.port}"
    assert registry.url == f"http://{registry.host}"
    assert http.get(f"{registry.url}/v2/", timeout=5).status_code == 200
    refused = http.get(f"{auth_registry.url}/v2/", timeout=5)
    assert refused.status_code == 401
    assert 'realm="test-registry"' in refused.headers["WWW-Authenticate"]
    assert http.get(f"{auth_registry.url}/v2/", auth=("alice", "s3cret-pa55"), timeout=5).status_code == 200
    assert http.get(f"{auth_registry.url}/v2/", auth=("alice", "wrong"), timeout=5).status_code == 401


def test_registry_stores_blobs_where_blob_data_path_says_and_serves_ranges(registry, http):
    data = b"registry blob " * 1000
    digest = push_blob(http, registry.url, "support/blob", data)
    assert registry.blob_data_path(digest).read_bytes() == data
    ranged = http.get(f"{registry.url}/v2/support/blob/blobs/{digest}", headers={"Range": "bytes=100-"}, timeout=10)
    assert ranged.status_code == 206
    assert ranged.content == data[100:]


def test_registry_stops_and_cleans_up(tmp_path):
    with LocalRegistry(tmp_path / "reg") as reg:
        assert reg.running
        proc = reg._proc
        assert reg.root.is_dir()
        assert (tmp_path / "reg" / "registry.log").exists()
    assert not reg.running
    assert proc is not None and proc.returncode is not None
    with pytest.raises(requests.ConnectionError):
        requests.Session().get(f"{reg.url}/v2/", timeout=2)
    reg.stop()  # idempotent


def test_fault_proxy_forwards_counts_and_cuts_after_n_bytes(registry, http):
    data = bytes(range(256)) * 4096  # 1 MiB
    digest = push_blob(http, registry.url, "support/cut", data)
    threads_before = threading.active_count()
    with FaultProxy(registry.host) as proxy:
        blob_url = f"http://{proxy.host}/v2/support/cut/blobs/{digest}"
        whole = http.get(blob_url, timeout=10)
        assert whole.content == data
        assert proxy.bytes_downstream > len(data)  # body plus the response headers

        proxy.reset_counters()
        proxy.cut_after = 200_000
        received = bytearray()
        # The keep-alive connection of the first GET is reused: arming applies to open connections too.
        response = http.get(blob_url, stream=True, timeout=10)
        assert response.status_code == 200
        with pytest.raises(requests.exceptions.ChunkedEncodingError):  # a short body: the drop mid-blob
            for chunk in response.iter_content(65536):
                received += chunk
        assert proxy.connections_accepted == 1
        assert proxy.bytes_downstream == 200_000
        assert 0 < len(received) < 200_000
        assert bytes(received) == data[: len(received)]

        # Disarmed again, a resume with Range fetches only the rest.
        proxy.cut_after = None
        proxy.reset_counters()
        rest = http.get(blob_url, headers={"Range": f"bytes={len(received)}-"}, timeout=10)
        assert rest.status_code == 206
        assert bytes(received) + rest.content == data
        assert len(data) - len(received) < proxy.bytes_downstream < len(data) - len(received) + 4096
    assert threading.active_count() <= threads_before


def test_fault_proxy_handles_many_connections_and_stops_promptly(registry):
    with FaultProxy(registry.host) as proxy:

        def fetch(_: int) -> int:
            with requests.Session() as session:
                session.trust_env = False
                return session.get(f"http://{proxy.host}/v2/", timeout=10).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(fetch, range(64))) == {200}
        assert proxy.connections_accepted >= 64
        idle = socket.create_connection(("127.0.0.1", proxy.port))  # left open: stop() must not wait on it
        started = time.monotonic()
    assert time.monotonic() - started < 3
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]
    assert idle.recv(1) == b""
    idle.close()


def test_tiny_gguf_is_a_small_llama_with_a_chat_template(tiny_gguf):
    assert tiny_gguf.stat().st_size < 2 * 1024 * 1024
    reader = gguf.GGUFReader(tiny_gguf)
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("general.name").contents() == "tiny-llama"
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.ALL_F32
    assert reader.get_field("llama.context_length").contents() == 512
    assert reader.get_field("tokenizer.ggml.model").contents() == "llama"
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    assert len(tokens) == 512
    assert tokens[:5] == ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    assert "<|im_start|>" in reader.get_field("tokenizer.chat_template").contents()
    assert len(reader.tensors) == 2 + 2 * 9 + 1
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}  # ggml order: (in, out)
    assert shapes["token_embd.weight"] == (64, 512)
    assert shapes["blk.0.attn_k.weight"] == (64, 32)
    assert shapes["blk.1.ffn_down.weight"] == (128, 64)


def test_tiny_gguf_is_deterministic(tiny_gguf, tmp_path):
    from .support.models import make_tiny_gguf

    assert make_tiny_gguf(tmp_path / "again.gguf").read_bytes() == tiny_gguf.read_bytes()


def test_tiny_gguf_runs_in_llama_cpp_if_installed(tiny_gguf):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(str(tiny_gguf), n_ctx=512, verbose=False)
    assert model.n_vocab() == 512
    reply = model.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
    assert reply["choices"][0]["message"]["content"] is not None


def test_tiny_safetensors_folder_and_tokenizer_round_trip(tiny_safetensors):
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        assert (tiny_safetensors / name).is_file()
    config = json.loads((tiny_safetensors / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    weights = load_file(tiny_safetensors / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (config["vocab_size"], config["hidden_size"])
    assert weights["model.layers.1.mlp.down_proj.weight"].shape == (config["hidden_size"],
                                                                     config["intermediate_size"])
    assert "lm_head.weight" in weights
    tokenizer = Tokenizer.from_file(str(tiny_safetensors / "tokenizer.json"))
    assert tokenizer.get_vocab_size() <= 512
    assert tokenizer.token_to_id("<|im_end|>") == config["eos_token_id"]
    text = "The capital of France is Paris. Ünïcödé too!"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert "<|im_start|>" in json.loads((tiny_safetensors / "tokenizer_config.json").read_text())["chat_template"]


def test_smollm2_gguf_is_the_real_file(smollm2_file, monkeypatch):
    assert smollm2_file.stat().st_size == SMOLLM2_BYTES
    with smollm2_file.open("rb") as f:
        assert f.read(4) == b"GGUF"
    # Without an argument the cache comes from MODEL_RUNNER_TEST_CACHE; the cached file is reused.
    monkeypatch.setenv("MODEL_RUNNER_TEST_CACHE", str(TEST_CACHE))
    started = time.monotonic()
    assert smollm2_gguf() == smollm2_file
    assert time.monotonic() - started < 1


@pytest.mark.slow
def test_smollm2_is_published_as_ai_smollm2(smollm2_file, registry, tmp_path):
    digest = publish_gguf(registry.host, "ai/smollm2", smollm2_file)
    model = pull(f"{registry.host}/ai/smollm2", Store(tmp_path / "store")).model
    assert model.id == digest
    assert (model.config.architecture, model.config.quantization) == ("llama", "Q4_1")
    assert model.config.parameters == "134.52M"


def _atomic_folder():
    """scripts/atomic_folder.py, loaded by path as the builders load it (scripts/ is no package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "atomic_folder.py"
    spec = importlib.util.spec_from_file_location("atomic_folder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_folder_builds_once_for_concurrent_builders(tmp_path):
    publish_folder = _atomic_folder().publish_folder
    target, builds = tmp_path / "model", []

    def build(scratch):
        builds.append(scratch)
        time.sleep(0.2)  # long enough for the other builders to queue on the lock
        (scratch / "weights.bin").write_bytes(b"w" * 10)
        (scratch / ".complete").write_text("1")

    def complete(folder):
        return (folder / ".complete").is_file()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: publish_folder(target, build, complete), range(4)))
    assert sorted(results) == [False, False, False, True] and len(builds) == 1
    assert (target / "weights.bin").stat().st_mode & 0o777 == 0o644 and target.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "model"]  # no scratch left behind


def test_publish_folder_leaves_nothing_half_built_when_the_build_fails(tmp_path):
    publish_folder = _atomic_folder().publish_folder
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("an older, incomplete build")

    def broken(scratch):
        (scratch / "half.bin").write_text("half")
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="converter crashed"):
        publish_folder(target, broken, lambda folder: (folder / ".complete").is_file())
    assert [p.name for p in target.iterdir()] == ["old.bin"]  # the old folder untouched, no half build published
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "model"]
    assert publish_folder(target, lambda s: (s / ".complete").write_text("1"),
                          lambda folder: (folder / ".complete").is_file())
    assert [p.name for p in target.iterdir()] == [".complete"]  # the stale folder replaced whole
