"""Reading GGUF headers without reading the model (distribution/gguf_header.py): the same facts as the `gguf`
package's reader, and a clear refusal of files that are cut short or lie about their shapes."""

from __future__ import annotations

import struct

import pytest
from gguf import GGUFReader, GGUFValueType

from jupyter_modelrunner.distribution.gguf_header import MAX_ARRAY_ITEMS, read_gguf_header
from jupyter_modelrunner.errors import UnsupportedArtifact


def test_the_header_says_what_ggufs_own_reader_says(tiny_gguf):
    reader = GGUFReader(tiny_gguf, "r")
    header = read_gguf_header(tiny_gguf)
    small = {name: field.contents() for name, field in reader.fields.items()
             if not name.startswith("GGUF.") and field.types
             and not (field.types[0] == GGUFValueType.ARRAY and len(field.data) > MAX_ARRAY_ITEMS)}
    assert header.fields == small
    assert header.parameters == sum(int(t.n_elements) for t in reader.tensors)
    assert header.array_lengths["tokenizer.ggml.tokens"] == len(reader.fields["tokenizer.ggml.tokens"].data)


@pytest.mark.parametrize("cut", [3, 10, 40, 200])
def test_a_file_cut_short_is_refused_with_its_name(tiny_gguf, tmp_path, cut):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:cut])
    with pytest.raises(UnsupportedArtifact, match=r"broken\.gguf"):
        read_gguf_header(broken)


def test_a_tensor_claiming_absurd_dimensions_is_refused(tmp_path):
    """A hostile header must not make the reader build a format string of 2**32 items."""
    name = b"t"
    hostile = tmp_path / "hostile.gguf"
    hostile.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", len(name)) + name
                        + struct.pack("<I", 2**32 - 1))
    with pytest.raises(UnsupportedArtifact, match="dimensions"):
        read_gguf_header(hostile)
