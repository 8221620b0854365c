"""Property-based fuzzing (hypothesis) of the two parsers that face untrusted bytes on the device: the
artefact reader and the image decoder. Any mutated input is refused with the documented error
(ArtefactError / DataError), or, where the format can tell (an artefact: its integrity record; a PNG: its
CRCs and zlib checksum), gives the same result as the original. Formats without checksums over their
pixels (JPEG, BMP, TIFF, GIF, WebP, PPM) may decode a mutated file to other pixels: then the result must
still be a well-formed frame within the pixel budget, and nothing else may escape the decoder."""

from __future__ import annotations

import io

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis (pip install 'adtk[test]')")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from adtk.runtime.artefact import verify_bytes, verify_file  # noqa: E402
from adtk.runtime.errors import ArtefactError, DataError  # noqa: E402
from adtk.runtime.images import decode_image  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
BUDGET = 250_000


@st.composite
def mutations(draw, size: int):
    """A list of edits: flip, overwrite, insert, delete, truncate, duplicate a span."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]))
        position = draw(st.integers(0, max(size - 1, 0)))
        edits.append((kind, position, draw(st.integers(0, 255)), draw(st.integers(1, 64))))
    return edits


def mutate(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for kind, position, value, length in edits:
        position = min(position, max(len(data) - 1, 0))
        if not data:
            break
        if kind == "flip":
            data[position] ^= (value or 1)
        elif kind == "set":
            data[position:position + length] = bytes([value]) * len(data[position:position + length])
        elif kind == "insert":
            data[position:position] = bytes([value]) * length
        elif kind == "delete":
            del data[position:position + length]
        elif kind == "truncate":
            del data[position:]
        elif kind == "duplicate":
            data[position:position] = data[position:position + length]
    return bytes(data)


@pytest.fixture(scope="module")
def artefact(tiny_build):
    data = tiny_build.artefact.read_bytes()
    return data, verify_bytes(data)


@FUZZ
@given(data=st.data())
def test_mutated_artefacts_are_refused_or_unchanged(artefact, tmp_path_factory, data):
    original, verified = artefact
    mutated = mutate(original, data.draw(mutations(len(original))))
    path = tmp_path_factory.mktemp("fuzz") / "model.onnx"
    path.write_bytes(mutated)
    try:
        result = verify_bytes(mutated)
    except ArtefactError as error:
        if "graph" not in str(error):  # the graph checks are verify_bytes' alone (flash streams, never parses it)
            with pytest.raises(ArtefactError):  # the streaming reader (adtk flash) agrees
                verify_file(path)
        return
    assert result.sha256 == verified.sha256 and result.manifest == verified.manifest
    assert mutated == original  # a change anywhere in the file is caught (no edit was a no-op here)


def encodings() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = {}
    for fmt, options in (("PNG", {}), ("JPEG", {"quality": 90}), ("BMP", {}), ("TIFF", {}),
                         ("TIFF", {"compression": "tiff_lzw"}), ("GIF", {}), ("WEBP", {"quality": 80}), ("PPM", {})):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=fmt, **options)
        out[f"{fmt}-{options.get('compression', '')}"] = buffer.getvalue()
    return out


ENCODED = encodings()


@FUZZ
@given(name=st.sampled_from(sorted(ENCODED)), data=st.data())
def test_mutated_images_are_refused_or_decode_to_a_well_formed_frame(name, data):
    original = ENCODED[name]
    reference = decode_image(original, max_pixels=BUDGET)
    mutated = mutate(original, data.draw(mutations(len(original))))
    try:
        frame = decode_image(mutated, "fuzzed", max_pixels=BUDGET)
    except DataError as error:
        assert str(error).startswith("fuzzed: cannot decode image")
        return
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[0] * frame.shape[1] <= BUDGET and frame.flags.c_contiguous
    if name.startswith("PNG"):  # CRC + zlib: a PNG that still decodes decodes to the same pixels
        assert np.array_equal(frame, reference)
