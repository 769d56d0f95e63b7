"""DICOM reading: every decoding rule against values computed here with numpy, and every refusal.

Files are written by `tests/dicom_factory.py` (pydicom) into tmp_path; the two real SIIM files in
../shared/data/dicom are read in place and their tests skip when that folder is absent.
"""

import io
import os
import struct

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from contracts.demographics import parse_age
from preprocess import dicom, images
from preprocess.images import ImageError
from tests.dicom_factory import can_encode, write_dicom

REAL_FILES = {"MONOCHROME2": "siim_chest_pa.dcm", "MONOCHROME1": "siim_chest_pa_monochrome1.dcm"}
ROWS, COLUMNS = 48, 64  # not square, so a row/column swap shows
MAX_PIXELS = 10_000_000


@pytest.fixture(scope="session")
def real_dicom(shared_dicom) -> dict[str, bytes]:
    """Photometric interpretation -> bytes of the real SIIM file (conftest's `shared_dicom`)."""
    contents = {}
    for kind, name in REAL_FILES.items():
        with open(os.path.join(shared_dicom, name), "rb") as f:
            contents[kind] = f.read()
    return contents


def _decode(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    image = dicom.decode(data, max_pixels)
    assert image.mode == "L"
    return np.asarray(image)


def _write(tmp_path, pixels: np.ndarray, name: str = "image.dcm", **kwargs) -> bytes:
    path = os.path.join(tmp_path, name)
    write_dicom(path, pixels, **kwargs)
    with open(path, "rb") as f:
        return f.read()


def _noise(low: int, high: int, dtype, seed: int = 0, shape=(ROWS, COLUMNS)) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=shape, endpoint=True).astype(dtype)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _expected_stretch(values: np.ndarray) -> np.ndarray:
    """The documented default: the 0.5th..99.5th percentile range of the values to 0..255."""
    low, high = np.percentile(values.astype(np.float64), [0.5, 99.5])
    return _to_uint8((values - low) / (high - low) * 255)


def _expected_linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 with output 0..255, written as the standard writes it."""
    low_edge, high_edge = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return _to_uint8(np.where(x <= low_edge, 0.0, np.where(x > high_edge, 255.0, inside)))


def _pillow_gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def _pillow_decode_of_frame(data: bytes) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    return np.asarray(Image.open(io.BytesIO(frame)))


def test_real_monochrome2_is_the_jpeg_as_pillow_decodes_it(real_dicom):
    gray = _decode(real_dicom["MONOCHROME2"])
    assert gray.shape == (1024, 1024)
    np.testing.assert_array_equal(gray, _pillow_decode_of_frame(real_dicom["MONOCHROME2"]))
    # pydicom's default plugin (libjpeg) rounds its inverse DCT differently, by at most 1.
    libjpeg = pydicom.dcmread(io.BytesIO(real_dicom["MONOCHROME2"])).pixel_array
    assert np.abs(gray.astype(int) - libjpeg).max() <= 1


def test_real_monochrome1_is_inverted(real_dicom):
    gray = _decode(real_dicom["MONOCHROME1"])
    np.testing.assert_array_equal(gray, 255 - _pillow_decode_of_frame(real_dicom["MONOCHROME1"]))
    np.testing.assert_array_equal(gray, 255 - _decode(real_dicom["MONOCHROME2"]))


def test_real_tags(real_dicom):
    expected = dicom.DicomTags(
        patient_id="16d7f894-55d7-4d95-8957-d18987f0e981", view_position="PA", sex="M", age=62,
        sop_instance_uid="1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819", modality="CR",
        body_part="CHEST", study_instance_uid="1.2.276.0.7230010.3.1.2.8323329.6904.1517875201.850818",
    )
    assert dicom.read_tags(real_dicom["MONOCHROME2"]) == expected
    assert dicom.read_tags(real_dicom["MONOCHROME1"]) == expected


def test_real_file_cut_in_half_is_truncated(real_dicom):
    data = real_dicom["MONOCHROME2"]
    with pytest.raises(ImageError, match="truncated or corrupt pixel data"):
        dicom.decode(data[: len(data) // 2], MAX_PIXELS)


def test_8_bit_monochrome_keeps_its_stored_values(tmp_path):
    stored = _noise(0, 255, np.uint8)
    np.testing.assert_array_equal(_decode(_write(tmp_path, stored)), stored)
    identity = _write(tmp_path, stored, slope=1.0, intercept=0.0)
    np.testing.assert_array_equal(_decode(identity), stored)
    inverted = _write(tmp_path, stored, photometric="MONOCHROME1")
    np.testing.assert_array_equal(_decode(inverted), 255 - stored)


def test_8_bit_with_a_rescale_is_stretched(tmp_path):
    stored = _noise(20, 120, np.uint8)
    data = _write(tmp_path, stored, slope=-2.0, intercept=300.0)
    np.testing.assert_array_equal(_decode(data), _expected_stretch(stored * -2.0 + 300.0))


def test_16_bit_rescaled_without_window_maps_the_percentiles(tmp_path):
    stored = _noise(0, 65535, np.uint16)
    # A negative slope, so dropping it shows: the percentile range absorbs any positive scale.
    gray = _decode(_write(tmp_path, stored, slope=-0.5, intercept=-1024.0))
    assert gray.shape == (ROWS, COLUMNS)
    np.testing.assert_array_equal(gray, _expected_stretch(stored * -0.5 - 1024.0))
    assert gray.min() == 0 and gray.max() == 255


@pytest.mark.parametrize("bits, dtype", [(8, np.int8), (12, np.int16), (16, np.int16)])
def test_signed_monochrome_is_stretched(tmp_path, bits, dtype):
    stored = _noise(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1, dtype)
    gray = _decode(_write(tmp_path, stored, bits_stored=bits))
    np.testing.assert_array_equal(gray, _expected_stretch(stored))


def test_12_bit_linear_window_after_rescale(tmp_path):
    stored = _noise(400, 800, np.uint16)
    modality = stored * 2.0 - 1024.0
    data = _write(tmp_path, stored, bits_stored=12, slope=2.0, intercept=-1024.0, window=(100, 500))
    expected = _expected_linear_window(modality, 100, 500)
    assert 0 < (expected == 0).sum() and 0 < (expected == 255).sum()  # both clips are exercised
    np.testing.assert_array_equal(_decode(data), expected)
    m1 = _write(tmp_path, stored, photometric="MONOCHROME1", bits_stored=12, slope=2.0,
                intercept=-1024.0, window=(100, 500))
    np.testing.assert_array_equal(_decode(m1), 255 - expected)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_12_bit_window_functions(tmp_path, function):
    stored = _noise(0, 4095, np.uint16)
    center, width = 2000.0, 1200.0
    data = _write(tmp_path, stored, bits_stored=12, window=(center, width, function))
    x = stored.astype(np.float64)
    if function == "LINEAR_EXACT":
        expected = np.clip((x - center) / width + 0.5, 0, 1) * 255
    else:
        expected = 255 / (1 + np.exp(-4 * (x - center) / width))
    np.testing.assert_array_equal(_decode(data), _to_uint8(expected))


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a division by the zero width w - 1
def test_window_width_one_is_a_threshold(tmp_path):
    stored = _noise(0, 4095, np.uint16)
    stored[0, :3] = 1999, 2000, 2001  # 2000 == c - 0.5: 0 by the standard, 0 / 0 by the formula
    data = _write(tmp_path, stored, bits_stored=12, window=(2000.5, 1))
    np.testing.assert_array_equal(_decode(data), np.where(stored > 2000, 255, 0))


def test_window_narrower_than_one_is_ignored(tmp_path):
    stored = _noise(0, 4095, np.uint16)
    data = _write(tmp_path, stored, bits_stored=12, window=(2000, 0.5))
    np.testing.assert_array_equal(_decode(data), _expected_stretch(stored))


def test_voi_lut_sequence_wins_over_the_window(tmp_path):
    stored = _noise(0, 4095, np.uint16)
    first_mapped = 500
    lut = np.rint(np.sqrt(np.arange(1024) / 1023) * 4000).astype(np.uint16)  # largest entry 4000
    data = _write(tmp_path, stored, bits_stored=12, window=(2000, 400), voi_lut=(first_mapped, lut))
    index = np.clip(stored.astype(int) - first_mapped, 0, len(lut) - 1)
    np.testing.assert_array_equal(_decode(data), _to_uint8(lut[index] / lut.max() * 255))


def test_modality_lut_sequence_comes_before_the_default_range(tmp_path):
    stored = _noise(0, 4095, np.uint16)
    lut = (np.arange(4096) ** 2 // 300).astype(np.uint16)  # not linear, so skipping it shows
    data = _write(tmp_path, stored, bits_stored=12, modality_lut=(0, lut))
    np.testing.assert_array_equal(_decode(data), _expected_stretch(lut[stored]))


def test_constant_image_is_black_and_inverted_white(tmp_path):
    flat = np.full((ROWS, COLUMNS), 1000, np.uint16)
    assert (_decode(_write(tmp_path, flat)) == 0).all()
    assert (_decode(_write(tmp_path, flat, photometric="MONOCHROME1")) == 255).all()


def test_equal_percentiles_fall_back_to_min_and_max(tmp_path):
    stored = np.full((ROWS, COLUMNS), 1000, np.uint16)
    stored[0, 0], stored[-1, -1] = 0, 3000
    expected = np.full((ROWS, COLUMNS), 85, np.uint8)  # 1000 / 3000 * 255
    expected[0, 0], expected[-1, -1] = 0, 255
    np.testing.assert_array_equal(_decode(_write(tmp_path, stored)), expected)


ENCODINGS = [ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless]


@pytest.mark.parametrize("syntax", ENCODINGS, ids=lambda uid: uid.name)
def test_lossless_encodings_decode_like_explicit_little_endian(tmp_path, syntax):
    if syntax.is_compressed and not can_encode(syntax):
        pytest.skip(f"no installed encoder for {syntax.name} (pyjpegls would provide JPEG-LS)")
    stored = _noise(0, 4095, np.uint16)  # above 255, so a byte-order mistake shows
    data = _write(tmp_path, stored, bits_stored=12, intercept=-24.0, transfer_syntax=syntax)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
    reference = _write(tmp_path, stored, "le.dcm", bits_stored=12, intercept=-24.0)
    np.testing.assert_array_equal(_decode(data), _decode(reference))
    np.testing.assert_array_equal(_decode(data), _expected_stretch(stored - 24.0))


def test_monochrome_jpeg_is_decoded_by_pillow(tmp_path):
    stored = _noise(0, 255, np.uint8)
    jpeg = _jpeg(stored)
    data = _write(tmp_path, stored, transfer_syntax=JPEGBaseline8Bit, encoded=jpeg)
    np.testing.assert_array_equal(_decode(data), np.asarray(Image.open(io.BytesIO(jpeg))))


def test_rgb_becomes_pillow_luma(tmp_path):
    rgb = _noise(0, 255, np.uint8, shape=(ROWS, COLUMNS, 3))
    gray = _decode(_write(tmp_path, rgb, photometric="RGB"))
    np.testing.assert_array_equal(gray, _pillow_gray(rgb))


def test_12_bit_rgb_is_scaled_to_8_bits_first(tmp_path):
    rgb = _noise(0, 4095, np.uint16, shape=(ROWS, COLUMNS, 3))
    gray = _decode(_write(tmp_path, rgb, photometric="RGB", bits_stored=12))
    np.testing.assert_array_equal(gray, _pillow_gray(_to_uint8(rgb * (255 / 4095))))


def test_ybr_full_is_converted_to_rgb_first(tmp_path):
    rgb = _noise(0, 255, np.uint8, shape=(ROWS, COLUMNS, 3))
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    gray = _decode(_write(tmp_path, ybr, photometric="YBR_FULL")).astype(int)
    # YBR -> RGB in 8 bits loses a little; reading Y, Cb, Cr as R, G, B would be far off.
    assert np.abs(gray - _pillow_gray(rgb)).max() <= 2
    assert np.abs(gray - _pillow_gray(ybr)).mean() > 10


def test_ybr_full_422_jpeg_is_converted_once(tmp_path):
    rgb = _noise(0, 255, np.uint8, shape=(ROWS, COLUMNS, 3))
    jpeg = _jpeg(rgb, subsampling="4:2:2")
    data = _write(tmp_path, rgb, photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit,
                  encoded=jpeg)
    expected = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))
    np.testing.assert_array_equal(_decode(data), expected)


def test_palette_colour_goes_through_the_palette(tmp_path):
    indices = _noise(0, 255, np.uint8)
    ramp = np.arange(256)
    palette = (ramp * 200, (255 - ramp) * 150, np.full(256, 40000))  # 16-bit entries
    data = _write(tmp_path, indices, photometric="PALETTE COLOR", palette=palette)
    rgb = np.stack([lut[indices] for lut in palette], axis=-1)
    np.testing.assert_array_equal(_decode(data), _pillow_gray(_to_uint8(rgb * (255 / 65535))))


def test_multi_frame_is_refused(tmp_path):
    data = _write(tmp_path, _noise(0, 255, np.uint8), frames=3)
    with pytest.raises(ImageError, match=r"multi-frame \(3 frames\)"):
        dicom.decode(data, MAX_PIXELS)


def test_no_pixel_data_is_refused(tmp_path):
    data = _write(tmp_path, _noise(0, 255, np.uint8), pixel_data=False)
    with pytest.raises(ImageError, match="^no pixel data$"):
        dicom.decode(data, MAX_PIXELS)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless],
                         ids=lambda uid: uid.name)
def test_file_cut_in_half_is_truncated(tmp_path, syntax):
    data = _write(tmp_path, _noise(0, 4095, np.uint16), bits_stored=12, transfer_syntax=syntax)
    with pytest.raises(ImageError, match="truncated or corrupt pixel data"):
        dicom.decode(data[: len(data) // 2], MAX_PIXELS)


def _with_overlong_rle_runs(data: bytes) -> bytes:
    """The first RLE segment rewritten as runs of 128 zeros: far more bytes than the image holds."""
    frame = next(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=1))
    first, second = struct.unpack_from("<2L", frame, 4)  # the offsets of segments 1 and 2
    runs = bytes([0x81, 0]) * ((second - first) // 2)  # 0x81: repeat the next byte 128 times
    return data.replace(frame, frame[:first] + runs + frame[first + len(runs):])


def test_overlong_rle_runs_do_not_end_the_worker(tmp_path):
    # pylibjpeg-rle panics here with a BaseException; pydicom's decoder drops the excess bytes.
    data = _write(tmp_path, _noise(0, 4095, np.uint16), bits_stored=12, transfer_syntax=RLELossless)
    assert dicom.decode(_with_overlong_rle_runs(data), MAX_PIXELS).size == (COLUMNS, ROWS)


def test_too_many_pixels_is_refused(tmp_path):
    data = _write(tmp_path, _noise(0, 255, np.uint8))
    assert _decode(data, max_pixels=ROWS * COLUMNS).shape == (ROWS, COLUMNS)
    with pytest.raises(ImageError, match=r"64x48 = 3,072 pixels exceeds --max_image_pixels=3,071"):
        dicom.decode(data, ROWS * COLUMNS - 1)


@pytest.mark.parametrize("syntax, name", [
    ("1.2.840.10008.1.2.4.110", "JPEG XL Lossless"),
    (MPEG2MPML, "MPEG2 Main Profile / Main Level"),
])
def test_undecodable_transfer_syntax_is_named(tmp_path, syntax, name):
    data = _write(tmp_path, _noise(0, 255, np.uint8), transfer_syntax=syntax, encoded=b"\x00" * 16)
    with pytest.raises(ImageError, match=f"unsupported transfer syntax {name}"):
        dicom.decode(data, MAX_PIXELS)


@pytest.mark.parametrize("photometric, overrides, reason", [
    ("RGB", {"PhotometricInterpretation": "YBR_PARTIAL_420"},
     "unsupported photometric interpretation YBR_PARTIAL_420 with 3"),
    ("MONOCHROME2", {"SamplesPerPixel": 3},
     "unsupported photometric interpretation MONOCHROME2 with 3"),
    ("MONOCHROME2", {"BitsStored": 6}, "Bits Stored 6 is not supported"),
])
def test_unsupported_pixel_formats_are_refused(tmp_path, photometric, overrides, reason):
    shape = (ROWS, COLUMNS, 3) if photometric == "RGB" else (ROWS, COLUMNS)
    data = _write(tmp_path, np.zeros(shape, np.uint8), photometric=photometric, overrides=overrides)
    with pytest.raises(ImageError, match=reason):
        dicom.decode(data, MAX_PIXELS)


def test_content_not_the_name_makes_a_file_dicom(tmp_path):
    path = os.path.join(tmp_path, "00000001_000.png")
    write_dicom(path, _noise(0, 255, np.uint8))
    with open(path, "rb") as f:
        assert dicom.is_dicom(f.read())


@pytest.mark.parametrize("data", [
    b"",
    b"\x89PNG\r\n\x1a\n" + bytes(200),
    bytes(128) + b"DICX" + bytes(100),
    bytes(128) + b"DIC",
], ids=["empty", "png", "wrong-marker", "short"])
def test_other_bytes_are_not_dicom(data):
    assert not dicom.is_dicom(data)
    with pytest.raises(ImageError, match="not a DICOM Part 10 file"):
        dicom.decode(data, MAX_PIXELS)
    with pytest.raises(ImageError, match="not a DICOM Part 10 file"):
        dicom.read_tags(data)


@pytest.mark.parametrize("value, years", [
    ("062Y", 62), ("062M", 5), ("011M", 0), ("010W", 0), ("020D", 0), ("730D", 2), ("62", 62),
    ("62 ", 62), (" 062y", 62), (62, 62), (62.0, 62), ("150Y", 150), ("151Y", None),
    ("-5", None), (-5, None), ("", None), (None, None), ("abc", None), ("62X", None),
    ("Y", None), (62.5, None), (True, None),
])
def test_parse_age(value, years):
    assert parse_age(value) == years


def test_read_tags_from_a_written_file(tmp_path):
    data = _write(tmp_path, _noise(0, 255, np.uint8), patient_id="P42", age="045Y", sex="F",
                  view="AP", sop_uid="1.2.3.4.5")
    assert dicom.read_tags(data) == dicom.DicomTags("P42", "AP", "F", 45, "1.2.3.4.5", "DX")


class _CountingFile(io.BytesIO):
    """A file that counts the bytes read from it."""

    read_bytes = 0

    def read(self, size=-1):
        out = super().read(size)
        self.read_bytes += len(out)
        return out


def test_read_tags_from_an_open_file_stops_before_the_pixels(tmp_path):
    data = _write(tmp_path, _noise(0, 65535, np.uint16, shape=(256, 256)), patient_id="P43", age="071Y",
                  sex="M", view="PA", sop_uid="1.2.3.4.8")
    f = _CountingFile(data)
    assert dicom.read_tags(f) == dicom.read_tags(data) == dicom.DicomTags("P43", "PA", "M", 71, "1.2.3.4.8", "DX")
    assert f.read_bytes < 1024 < len(data) // 100  # the header, not the 128 KiB of pixels
    with pytest.raises(ImageError, match="not a DICOM Part 10 file"):
        dicom.read_tags(io.BytesIO(b"\x89PNG" + data[4:128] + b"NOPE" + data[132:]))


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom, writing the odd values
def test_read_tags_tolerates_missing_and_odd_values(tmp_path):
    data = _write(tmp_path, _noise(0, 255, np.uint8), patient_id=None, age=None, sex="O",
                  view=None, sop_uid="1.2.3.4.6")
    assert dicom.read_tags(data) == dicom.DicomTags(None, None, None, None, "1.2.3.4.6", "DX")
    lower = _write(tmp_path, _noise(0, 255, np.uint8), sex="f", view="pa", age="nonsense")
    tags = dicom.read_tags(lower)
    assert (tags.sex, tags.view_position, tags.age) == ("F", "PA", None)


def test_an_unreadable_value_reads_as_absent(tmp_path):
    data = _write(tmp_path, _noise(0, 255, np.uint8), sex="F", view="AP", sop_uid="1.2.3.4.7")
    sex_element = b"\x10\x00\x40\x00CS"  # (0010,0040) Patient's Sex, explicit VR little endian
    assert data.count(sex_element) == 1
    damaged = data.replace(sex_element, b"\x10\x00\x40\x00ZZ")  # pydicom raises on reading it
    tags = dicom.read_tags(damaged)
    assert (tags.sex, tags.view_position, tags.sop_instance_uid) == (None, "AP", "1.2.3.4.7")
    np.testing.assert_array_equal(_decode(damaged), _decode(data))


# The builder's decode: an uncropped baseline-JPEG frame at libjpeg's DCT scale, as a .jpg file.

STORED_SIZE = 64  # 1024 / 64 = 16 ≥ 8: the real files decode at 1/8 scale, 128 px


def _frame(data: bytes) -> bytes:
    return next(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=1))


def _stored(data: bytes, box=None) -> np.ndarray:
    """The record's pixels the builder writes for `data` (a DICOM or a .jpg file's bytes)."""
    out = images.process(data, box=box, image_size=STORED_SIZE, image_format="png")
    return np.asarray(Image.open(io.BytesIO(out.encoded)))


def _resize(gray: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(gray).resize(
        (STORED_SIZE, STORED_SIZE), Image.Resampling.BICUBIC, reducing_gap=images.REDUCING_GAP))


def _at_dct_scale(jpeg: bytes) -> np.ndarray:
    """Pillow's own reduced decode of a JPEG: the smallest 1/2^k scale still >= STORED_SIZE."""
    image = Image.open(io.BytesIO(jpeg))
    image.draft("L", (STORED_SIZE, STORED_SIZE))
    return np.asarray(image)


def test_real_jpeg_dicom_is_stored_as_its_jpeg_file(real_dicom):
    jpeg = _frame(real_dicom["MONOCHROME2"])
    assert _at_dct_scale(jpeg).shape == (128, 128)
    stored = _stored(real_dicom["MONOCHROME2"])
    np.testing.assert_array_equal(stored, _stored(jpeg))
    np.testing.assert_array_equal(stored, _resize(_at_dct_scale(jpeg)))
    # The scale matters: a whole decode resized is another image, which this test tells apart.
    assert np.abs(_resize(_pillow_decode_of_frame(real_dicom["MONOCHROME2"])).astype(int)
                  - stored).max() > 0


def test_real_monochrome1_is_inverted_at_dct_scale(real_dicom):
    jpeg = _frame(real_dicom["MONOCHROME1"])
    np.testing.assert_array_equal(_stored(real_dicom["MONOCHROME1"]), _resize(255 - _at_dct_scale(jpeg)))


def test_a_cropped_jpeg_dicom_is_decoded_whole_as_a_cropped_jpeg_file(real_dicom):
    box = (300.0, 200.0, 400.0, 500.0)  # x, y, w, h in the 1024 frame
    jpeg = _frame(real_dicom["MONOCHROME2"])
    stored = _stored(real_dicom["MONOCHROME2"], box)
    np.testing.assert_array_equal(stored, _stored(jpeg, box))
    whole = Image.fromarray(_pillow_decode_of_frame(real_dicom["MONOCHROME2"]))
    np.testing.assert_array_equal(stored, np.asarray(whole.resize(
        (STORED_SIZE, STORED_SIZE), Image.Resampling.BICUBIC, box=(300, 200, 700, 700),
        reducing_gap=images.REDUCING_GAP)))


@pytest.mark.parametrize("photometric, subsampling", [("YBR_FULL_422", "4:2:2"), ("YBR_FULL", "4:4:4")])
def test_a_colour_jpeg_dicom_is_stored_as_its_jpeg_file(tmp_path, photometric, subsampling):
    rgb = _noise(0, 255, np.uint8, shape=(4 * STORED_SIZE, 4 * STORED_SIZE, 3))
    jpeg = _jpeg(rgb, subsampling=subsampling)
    data = _write(tmp_path, rgb, photometric=photometric, transfer_syntax=JPEGBaseline8Bit, encoded=jpeg)
    np.testing.assert_array_equal(_stored(data), _stored(jpeg))
    np.testing.assert_array_equal(_stored(data), _resize(_at_dct_scale(jpeg)))  # the JPEG's own luma


def test_a_window_applies_to_the_jpeg_decoded_at_dct_scale(tmp_path):
    stored = _noise(0, 255, np.uint8, shape=(4 * STORED_SIZE, 4 * STORED_SIZE))
    jpeg = _jpeg(stored)
    data = _write(tmp_path, stored, transfer_syntax=JPEGBaseline8Bit, encoded=jpeg, window=(120.0, 90.0))
    expected = _expected_linear_window(_at_dct_scale(jpeg).astype(np.float64), 120.0, 90.0)
    assert expected.shape == (STORED_SIZE, STORED_SIZE)
    np.testing.assert_array_equal(_stored(data), _resize(expected))


def test_a_cut_jpeg_frame_is_refused_at_dct_scale(tmp_path):
    stored = _noise(0, 255, np.uint8, shape=(4 * STORED_SIZE, 4 * STORED_SIZE))
    jpeg = _jpeg(stored)
    data = _write(tmp_path, stored, transfer_syntax=JPEGBaseline8Bit, encoded=jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="^truncated or corrupt pixel data"):
        _stored(data)


def test_a_jpeg_frame_larger_than_its_header_is_refused_not_raised(tmp_path):
    jpeg = bytearray(_jpeg(_noise(0, 255, np.uint8)))
    start = jpeg.index(b"\xff\xc0")  # baseline SOF: length (2), precision (1), height, width
    jpeg[start + 5:start + 9] = struct.pack(">HH", 20_000, 20_000)  # 400M pixels in the frame
    data = _write(tmp_path, _noise(0, 255, np.uint8), transfer_syntax=JPEGBaseline8Bit, encoded=bytes(jpeg))
    with pytest.raises(ImageError, match="decompression bomb"):
        _stored(data)


@pytest.mark.parametrize("photometric", ["YBR_RCT", "YBR_ICT"])
def test_jpeg_2000_colour_reads_as_the_rgb_its_codec_returns(tmp_path, photometric):
    # A JPEG 2000 decoder undoes the RCT/ICT itself, so these frames reach us as RGB: here RGB values
    # under that header, whose gray must be their luma (Pillow's fixed point, written out here).
    rgb = _noise(0, 255, np.uint8, shape=(ROWS, COLUMNS, 3))
    data = _write(tmp_path, rgb, photometric="RGB", overrides={"PhotometricInterpretation": photometric})
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    np.testing.assert_array_equal(_decode(data), ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8))
