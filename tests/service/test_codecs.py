"""Images <-> level arrays: exact PNG round trips, the pixel->level mapping, and refusals that name the field."""

import base64
import functools
import io

import numpy as np
import pytest
from PIL import Image

from service.api import codecs
from service.engine.errors import InvalidInput

SPEC2 = {"kind": "image", "shape": [1, 8, 8], "levels": 2}
TEXT = {"kind": "text", "shape": [16], "levels": 4, "vocabulary": ["\n", "a", "b", "c"]}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("levels", [2, 4, 256])
@pytest.mark.parametrize("shape", [(1, 8, 8), (8, 8), (3, 5, 6)])
def test_png_round_trip_is_exact(levels, shape):
    x = np.random.default_rng(levels).integers(0, levels, size=shape)
    data = codecs.array_to_png(x, levels)
    assert Image.open(io.BytesIO(data)).format == "PNG"
    np.testing.assert_array_equal(codecs.png_to_array(data, shape, levels), x)
    spec = {"kind": "image", "shape": list(shape), "levels": levels}
    np.testing.assert_array_equal(codecs.decode_image(codecs.encode_sample(x, spec, "png"), spec, "inputs[0]"), x)


def test_binary_levels_scale_to_full_range_and_threshold_at_128():
    data = codecs.array_to_png(np.array([[0, 1]]), 2)
    assert np.asarray(Image.open(io.BytesIO(data))).tolist() == [[0, 255]]
    pixels = np.array([[0, 127, 128, 255]], np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    assert codecs.png_to_array(out.getvalue(), (1, 1, 4), 2).tolist() == [[[0, 0, 1, 1]]]
    assert codecs.to_levels(np.array([0, 42, 43, 127, 128, 212, 213, 255]), 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_colour_png_is_converted_to_gray():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, 4:] = 255
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    x = codecs.decode_image(b64(out.getvalue()), SPEC2, "inputs[0]")
    assert x.shape == (1, 8, 8) and x[0, :, :4].max() == 0 and x[0, :, 4:].min() == 1


def test_nested_arrays_with_or_without_channel():
    x = np.random.default_rng(0).integers(0, 2, size=(8, 8))
    a = codecs.decode_image(x.tolist(), SPEC2, "inputs[0]")
    b = codecs.decode_image([x.tolist()], SPEC2, "inputs[0]")
    assert a.dtype == np.int64 and a.shape == (1, 8, 8)
    np.testing.assert_array_equal(a, b)
    assert codecs.encode_sample(a, SPEC2, "array") == x.tolist()
    assert codecs.decode_inputs([x.tolist(), b64(codecs.array_to_png(x, 2))], SPEC2).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    "value, words",
    [
        ([[0] * 4] * 4, "wrong shape [4, 4]"),
        ([[0] * 8] * 7 + [[0] * 7], "rectangular"),
        ([[0.0] * 8] * 8, "integers"),
        ([[True] * 8] * 8, "integers"),
        ([[True] + [0] * 7] + [[0] * 8] * 7, "not true or false"),  # numpy would read a lone true among ints as 1
        ([["1"] * 8] * 8, "integers"),
        ([[None] * 8] * 8, "integers"),
        ([[2**70] * 8] * 8, "integers"),
        ([[2**63] * 8] * 8, "range"),
        ([[2] * 8] * 8, "out of range"),
        ([[-1] * 8] * 8, "out of range"),
        (functools.reduce(lambda inner, _: [inner], range(600), 0), "rectangular"),  # deeper than recursion goes
        ([[0] * 7 + [functools.reduce(lambda inner, _: [inner], range(600), True)]] + [[0] * 8] * 7,
         "not true or false"),
        ({"a": 1}, "base64 PNG string or a nested array"),
        (3, "base64 PNG string or a nested array"),
        ("@@@", "not valid base64"),
        (b64(b"GIF89a not a png"), "not a PNG"),
        (b64(b"\x89PNG\r\n\x1a\n"), "not a PNG"),
    ],
)
def test_bad_inputs_are_refused_naming_the_field(value, words):
    with pytest.raises(InvalidInput) as caught:
        codecs.decode_image(value, SPEC2, "body.inputs[2]")
    assert caught.value.field == "body.inputs[2]"
    assert caught.value.message.startswith("body.inputs[2]: ")
    assert words in caught.value.message


def test_png_size_is_checked_before_decoding():
    out = io.BytesIO()
    Image.new("L", (4000, 3000)).save(out, format="PNG")
    with pytest.raises(InvalidInput, match=r"4000x3000 \(WxH\), the model expects 8x8"):
        codecs.decode_image(b64(out.getvalue()), SPEC2, "inputs[0]")


def test_masks_shared_or_per_input():
    m = np.random.default_rng(1).integers(0, 2, size=(8, 8))
    shared = codecs.decode_mask(m.tolist(), SPEC2, batch=3)
    assert shared.shape == (3, 1, 8, 8) and (shared == m).all()
    np.testing.assert_array_equal(codecs.decode_mask([m.tolist()], SPEC2, batch=3), shared)
    np.testing.assert_array_equal(codecs.decode_mask(b64(codecs.array_to_png(m, 2)), SPEC2, batch=3), shared)
    per_input = codecs.decode_mask([m.tolist(), (1 - m).tolist()], SPEC2, batch=2)
    np.testing.assert_array_equal(per_input[:, 0], np.stack([m, 1 - m]))
    pngs = [b64(codecs.array_to_png(m, 2)), b64(codecs.array_to_png(1 - m, 2))]
    np.testing.assert_array_equal(codecs.decode_mask(pngs, SPEC2, batch=2), per_input)
    with pytest.raises(InvalidInput, match=r"body.mask: must be one mask .* or a list of 2 masks"):
        codecs.decode_mask([m.tolist()] * 3, SPEC2, batch=2)
    with pytest.raises(InvalidInput, match=r"body.mask\[1\]: mask values must be 0"):
        codecs.decode_mask([m.tolist(), (2 * m).tolist()], SPEC2, batch=2)


def test_png_format_needs_an_image_spec():
    assert codecs.output_format("png", SPEC2) == "png"
    assert codecs.output_format("array", {"kind": "audio", "shape": [16000], "levels": 256}) == "array"
    for spec in ({"kind": "audio", "shape": [16000], "levels": 256}, {"kind": "image", "shape": [1, 8, 8]}):
        with pytest.raises(InvalidInput, match="body.format"):
            codecs.output_format("png", spec)


def test_formats_default_by_kind_and_text_round_trips():
    assert codecs.output_format(None, SPEC2) == "array"
    assert codecs.output_format(None, TEXT) == "text"
    with pytest.raises(InvalidInput, match="body.format: text models answer in 'text' or 'array'"):
        codecs.output_format("png", TEXT)
    with pytest.raises(InvalidInput, match="body.format"):
        codecs.output_format("text", SPEC2)
    ids = codecs.decode_inputs(["ab\n", "c"], TEXT)
    assert [i.tolist() for i in ids] == [[1, 2, 0], [3]]
    assert codecs.encode_samples(np.array([[1, 2, 0, 3]]), TEXT, "text") == ["ab\nc"]
    assert codecs.decode_prompt("cab", TEXT).tolist() == [3, 1, 2]
    for bad, match in (([""], r"body.inputs\[0\]: must be a non-empty string"),
                       (["a", "aé"], r"body.inputs\[1\]: character 'é' at position 1 is not in the model's")):
        with pytest.raises(InvalidInput, match=match):
            codecs.decode_inputs(bad, TEXT)
    assert codecs.decode_prompt("a small two", SPEC2) == "a small two"  # a caption: the engine's to encode or refuse
    with pytest.raises(InvalidInput, match="body.mask: text models continue each input and take no mask"):
        codecs.decode_mask([1], TEXT, batch=1)
    with pytest.raises(InvalidInput, match="body.mask: required for image models"):
        codecs.decode_mask(None, SPEC2, batch=1)


def test_images_that_are_not_finite_are_refused_naming_their_field():
    images = np.full((2, 1, 8, 8), 0.5, np.float32)
    assert codecs.encode_images(images, SPEC2, "array") == images.tolist()
    for bad in (np.nan, np.inf):
        images[1, 0, 3, 3] = bad
        for fmt in ("array", "png"):
            with pytest.raises(InvalidInput, match=r"^body\.z: the model's output 'images' is not finite"):
                codecs.encode_images(images, SPEC2, fmt)
    with pytest.raises(InvalidInput, match=r"^body\.inputs: "):
        codecs.encode_images(images, SPEC2, "array", field="body.inputs")


@pytest.mark.parametrize("codes", [[True, False, True], [1, True], [0.0, 1]])
def test_audio_codes_are_json_integers_not_booleans_or_floats(codes):
    spec = {"kind": "audio", "shape": [16000], "levels": 256, "sample_rate": 16000}
    with pytest.raises(InvalidInput, match=r"^body.inputs\[0\]: must be a base64 WAV string or a non-empty list"):
        codecs.decode_inputs([codes], spec)
    np.testing.assert_array_equal(codecs.decode_inputs([[0, 255, 7]], spec)[0], [0, 255, 7])
