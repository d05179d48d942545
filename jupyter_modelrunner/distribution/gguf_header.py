"""A GGUF file's header (its key/values and tensor shapes) read without reading the model.

`gguf.GGUFReader` maps every field into numpy arrays, one per item: a 49,152-token vocabulary took 20 s of a
23 s `pull` from a warm Hugging Face cache. Packaging needs only the small key/values and each tensor's element
count, so this reader walks the header with `struct`, skipping the items of long arrays (the vocabulary, merges,
scores) rather than materialising them. The format: llama.cpp's `gguf.md` (version 2 and 3, little-endian).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import UnsupportedArtifact

#: Arrays longer than this are skipped (their length is kept): no model fact is a long array.
MAX_ARRAY_ITEMS = 50
#: GGML tensors have at most 4 dimensions; a header claiming more is corrupt (or hostile).
MAX_DIMENSIONS = 8
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFHeader:
    """What a GGUF header says: its key/values (long arrays left out) and the element count of every tensor."""

    fields: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensor_elements: list[int] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return sum(self.tensor_elements)


def read_gguf_header(path: Path, *, tensors: bool = True) -> GGUFHeader:
    """Read `path`'s header; `UnsupportedArtifact` when it is not a GGUF file (or is cut short)."""
    with open(path, "rb") as stream:
        try:
            return _read(stream, tensors)
        except (struct.error, UnicodeDecodeError, OverflowError) as exc:
            raise UnsupportedArtifact(f"{path.name} is not a readable GGUF file ({exc}).") from exc


def _read(stream: BinaryIO, tensors: bool) -> GGUFHeader:
    if stream.read(4) != b"GGUF":
        raise UnsupportedArtifact(f"{Path(stream.name).name} is not a GGUF file (no GGUF magic).")
    (version,) = _unpack(stream, "I")
    if version not in (2, 3):
        raise UnsupportedArtifact(f"{Path(stream.name).name} is GGUF version {version}; versions 2 and 3 are read.")
    tensor_count, kv_count = _unpack(stream, "QQ")
    header = GGUFHeader()
    for _ in range(kv_count):
        key = _string(stream)
        (kind,) = _unpack(stream, "I")
        if kind == _ARRAY:
            item_kind, length = _unpack(stream, "IQ")
            header.array_lengths[key] = length
            if length > MAX_ARRAY_ITEMS:
                _skip_items(stream, item_kind, length)
            else:
                header.fields[key] = [_value(stream, item_kind) for _ in range(length)]
        else:
            header.fields[key] = _value(stream, kind)
    if tensors:
        for _ in range(tensor_count):
            _string(stream)  # the tensor's name
            (dims,) = _unpack(stream, "I")
            if dims > MAX_DIMENSIONS:
                raise struct.error(f"a tensor with {dims} dimensions")
            shape = _unpack(stream, "Q" * dims)
            _unpack(stream, "IQ")  # type, offset
            header.tensor_elements.append(math.prod(shape))
    return header


def _unpack(stream: BinaryIO, fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize("<" + fmt)
    data = stream.read(size)
    if len(data) != size:
        raise struct.error("the file ends inside its header")
    return struct.unpack("<" + fmt, data)


def _string(stream: BinaryIO) -> str:
    (length,) = _unpack(stream, "Q")
    data = stream.read(length)
    if len(data) != length:
        raise struct.error("the file ends inside its header")
    return data.decode("utf-8")


def _value(stream: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _string(stream)
    if kind == _ARRAY:
        item_kind, length = _unpack(stream, "IQ")
        if length > MAX_ARRAY_ITEMS:
            _skip_items(stream, item_kind, length)
            return None
        return [_value(stream, item_kind) for _ in range(length)]
    if kind not in _SCALARS:
        raise struct.error(f"unknown value type {kind}")
    return _unpack(stream, _SCALARS[kind])[0]


def _skip_items(stream: BinaryIO, kind: int, length: int) -> None:
    if kind in _SCALARS:
        stream.seek(struct.calcsize("<" + _SCALARS[kind]) * length, 1)
        return
    for _ in range(length):
        if kind == _STRING:
            (size,) = _unpack(stream, "Q")
            stream.seek(size, 1)
        else:
            _value(stream, kind)
