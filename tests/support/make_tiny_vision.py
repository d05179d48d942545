"""Make the test suite's tiny vision model: a random-weight Gemma 3 (text + SigLIP vision tower) as a GGUF and its
multimodal projector GGUF, converted by llama.cpp's own `convert_hf_to_gguf.py` (`--mmproj` for the projector).

    <vLLM env>/bin/python tests/support/make_tiny_vision.py LLAMA_CPP_DIR OUTDIR

LLAMA_CPP_DIR holds `convert_hf_to_gguf.py`, `conversion/` and `gguf-py/` from the llama.cpp tree that the pinned
llama-cpp-python sdist vendors (the converter of the llama-server the tests run). Run with the vLLM environment's
interpreter: torch, transformers, sentencepiece and safetensors live there, not in the notebook's environment.

Why Gemma 3: the converter supports it with `--mmproj`, llama.cpp's clip code reads a projector scale factor so a
32x32 image with 8x8 patches becomes 4 image tokens (llama.cpp tests with such a "tinygemma3"), and one image is one
slice (no tiling). Everything is tiny: text hidden 64 x 2 layers, vision hidden 32 x 2 layers; ~0.5 MB in all.

The tokenizer is a SentencePiece model trained here on a few sentences (byte fallback, Gemma's ids: pad 0, eos 1,
bos 2, unk 3) with Gemma's turn and image markers as control symbols, so the converter takes its SentencePiece path
and never needs a known pre-tokenizer hash. Builds happen in a scratch folder renamed into place when complete; the
caller (tests/support/vision.py) holds a lock around this script and checks MARKER first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))  # the shared folder publish
from atomic_folder import publish_folder

#: Raise when the output changes, so cached models are rebuilt.
VERSION = 1
MARKER = "tiny-vision.json"
TEXT_FILE = "tiny-vision.gguf"
MMPROJ_FILE = "tiny-vision-mmproj.gguf"
#: Gemma's markers. llama.cpp's mtmd wraps a Gemma 3 image in <start_of_image>…<end_of_image>.
SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
#: Gemma's turn format; content is a string here because llama-server flattens text parts before templating.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
IMAGE_SIZE, PATCH_SIZE, IMAGE_TOKENS = 32, 8, 4
_CORPUS = ("The capital of France is Paris. Hello world, this is a tiny vision model for tests. "
           "What is in the image? A red square on a white background. Describe the picture in one word.\n") * 50


def marker() -> dict[str, object]:
    return {"version": VERSION, "files": [TEXT_FILE, MMPROJ_FILE]}


def is_complete(outdir: Path) -> bool:
    try:
        return json.loads((outdir / MARKER).read_text()) == marker() and all(
            (outdir / name).is_file() for name in (TEXT_FILE, MMPROJ_FILE))
    except (OSError, ValueError):
        return False


def build_hf_folder(folder: Path) -> None:
    """A Hugging Face folder for a random-weight `Gemma3ForConditionalGeneration` with its tokenizer."""
    import sentencepiece as spm
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    corpus = folder / "corpus.txt"
    corpus.write_text(_CORPUS)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        control_symbols=SPECIALS, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    ids = {name: sp.piece_to_id(name) for name in SPECIALS}

    torch.manual_seed(1234)
    text = Gemma3TextConfig(
        vocab_size=sp.get_piece_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=4096, sliding_window=64,
        query_pre_attn_scalar=32, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=IMAGE_TOKENS,
                          image_token_index=ids["<image_soft_token>"], boi_token_index=ids["<start_of_image>"],
                          eoi_token_index=ids["<end_of_image>"])
    model = Gemma3ForConditionalGeneration(config).eval()
    model.save_pretrained(folder, safe_serialization=True)

    tensors = load_file(folder / "model.safetensors")
    fixed = {}
    for name, tensor in tensors.items():
        # transformers 5 writes the vision tower without the `vision_model.` level that Gemma 3 checkpoints (and so
        # the converter's tensor map) have.
        if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
            name = "vision_tower.vision_model." + name.removeprefix("vision_tower.")
        if name.endswith("embed_tokens.weight"):
            # The embeddings are also the output layer (tied): byte tokens get zero logits, so greedy decoding never
            # emits a lone byte of a UTF-8 sequence (answers stay valid text, streamed or whole).
            tensor = tensor.clone()
            for piece_id in range(sp.get_piece_size()):
                if sp.is_byte(piece_id):
                    tensor[piece_id] = 0.0
        fixed[name] = tensor.contiguous()
    save_file(fixed, str(folder / "model.safetensors"), metadata={"format": "pt"})

    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "chat_template": CHAT_TEMPLATE,
    }, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": IMAGE_TOKENS,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    }, indent=2))


def convert(llama_cpp: Path, folder: Path, out: Path, *, mmproj: bool) -> None:
    command = [sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(folder), "--outfile", str(out),
               "--outtype", "f32", *(["--mmproj"] if mmproj else [])]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


def main() -> None:
    llama_cpp, outdir = Path(sys.argv[1]), Path(sys.argv[2])
    if is_complete(outdir):
        return
    # Nothing may reach for the network: the model is made here.
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})

    def build(scratch: Path) -> None:
        folder = scratch / "hf"
        folder.mkdir()
        build_hf_folder(folder)
        convert(llama_cpp, folder, scratch / TEXT_FILE, mmproj=False)
        convert(llama_cpp, folder, scratch / MMPROJ_FILE, mmproj=True)
        shutil.rmtree(folder)
        (scratch / MARKER).write_text(json.dumps(marker()))

    publish_folder(outdir, build, is_complete)


if __name__ == "__main__":
    main()
