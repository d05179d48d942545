"""Make a tiny random-weight reranker, as a Hugging Face folder (for vLLM) and as a GGUF (for llama.cpp), offline.

A reranker is a cross-encoder: a BERT-style encoder reads a (query, document) pair and a classification head with
one output scores it. The test suite needs one for `/v1/rerank` and `/v1/score` on both engines, without a
download: this script builds `BertForSequenceClassification` (hidden 128, 2 layers, num_labels 1) with a WordPiece
vocabulary trained on a few lines of text, saves it with transformers, and converts it with llama.cpp's own
`convert_hf_to_gguf.py` (the copy the pinned llama-cpp-python sdist vendors), which writes the classifier head and
its label, as it does for real rerankers such as bge-reranker or ms-marco-MiniLM.

    <vLLM env>/bin/python scripts/make_tiny_reranker.py LLAMA_CPP_DIR OUTDIR

LLAMA_CPP_DIR holds `convert_hf_to_gguf.py`, `conversion/` and `gguf-py/`. Run it with the vLLM environment's
interpreter: torch, transformers, tokenizers and numpy are there (the converter needs the same). The result is
OUTDIR/hf (safetensors, config, tokenizer) and OUTDIR/tiny-reranker.gguf. Weights are random but seeded: the scores
mean nothing, and are the same on every run.

OUTDIR is a cache: when it already holds a complete build (see MARKER), the script returns at once. A build
happens under a lock in a scratch folder renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: loaded by path from the tests too
from atomic_folder import publish_folder

MARKER = ".reranker.json"
#: Raise when the output changes, so cached builds are rebuilt.
VERSION = 2
GGUF_NAME = "tiny-reranker.gguf"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CORPUS = """The capital of France is Paris. Paris is a city in France on the river Seine.
Berlin is the capital of Germany. Rome is the capital of Italy. Madrid is the capital of Spain.
A model runner pulls models from a registry and runs them with an engine.
Jupyter notebooks hold code, text and output. The weather today is sunny and warm.
Cats and dogs are animals. Bananas and apples are fruit. What is the capital of France?
""" * 10


def is_complete(outdir: Path) -> bool:
    try:
        return json.loads((outdir / MARKER).read_text()) == {"version": VERSION}
    except (OSError, ValueError):
        return False


def build_hf(folder: Path) -> None:
    """The Hugging Face folder: a seeded random BertForSequenceClassification and its WordPiece tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=384, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(folder)
    # The converter reads a BERT vocabulary from vocab.txt (one token a line, in id order), as real BERTs ship it.
    vocab = tokenizer.get_vocab()
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in sorted(vocab.items(), key=lambda i: i[1])))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "BertTokenizer"
    config["do_lower_case"] = True
    for key in ("is_local", "local_files_only"):  # load-time keys transformers 5 leaks into the file
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    torch.manual_seed(1234)
    # Heads of 64 dimensions: vLLM's CPU attention has kernels for common head sizes only (not 16, say).
    model_config = BertConfig(vocab_size=len(vocab), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=256, max_position_embeddings=512, num_labels=1,
                              pad_token_id=vocab["[PAD]"])
    model = BertForSequenceClassification(model_config).eval()
    model.save_pretrained(folder, safe_serialization=True)


def convert(llama_cpp: Path, folder: Path, gguf: Path) -> None:
    """llama.cpp's converter on `folder`. It names a BPE pre-tokenizer by hashing the tokenizer's output on a fixed
    text and knows only published models' hashes; a BERT (WordPiece) vocabulary uses llama.cpp's default one."""
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    from conversion.base import TextModel

    TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"  # type: ignore[method-assign]
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(folder), "--outfile", str(gguf), "--outtype", "f32"]
    try:
        runpy.run_path(str(llama_cpp / "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        sys.argv = argv


def make(llama_cpp: Path, outdir: Path) -> bool:
    """Build unless a complete build is there; True when it was built now."""
    def build(scratch: Path) -> None:
        build_hf(scratch / "hf")
        convert(llama_cpp, scratch / "hf", scratch / GGUF_NAME)
        (scratch / MARKER).write_text(json.dumps({"version": VERSION}) + "\n")

    return publish_folder(outdir, build, is_complete)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("llama_cpp", type=Path, help="llama.cpp's source folder (convert_hf_to_gguf.py, gguf-py/)")
    parser.add_argument("outdir", type=Path, help="the folder to write (a cache: kept when already complete)")
    args = parser.parse_args(argv)
    if not (args.llama_cpp / "convert_hf_to_gguf.py").is_file():
        parser.error(f"{args.llama_cpp} has no convert_hf_to_gguf.py")
    # Nothing may reach for the network.
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    make(args.llama_cpp.resolve(), args.outdir.absolute())
    print(args.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
