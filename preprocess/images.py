"""One source radiograph into the stored image: decode → grayscale → crop → resize → encode.
Pillow and numpy only (spawned workers start fast); every failure is an `ImageError` saying why."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageStat, UnidentifiedImageError

from contracts.boxes import frame_region
from contracts.decode_rules import JPEG_FOUR_COMPONENTS, MAX_IMAGE_PIXELS, REDUCING_GAP
from contracts.labels import NIH_FRAME
from preprocess.image_error import ImageError, check_pixels

# PNGs are written here, not by Pillow (which tries every row filter): one "Up" filter plus zlib
# level 1 with the run-length strategy is faster and smaller on these rows (bench/RESULTS.md).
PNG_COMPRESS_LEVEL = 1
PNG_ZLIB_STRATEGY = zlib.Z_RLE
PNG_FILTER_UP = 2
SUPPORTED_FORMATS = ("PNG", "JPEG")


@dataclasses.dataclass(frozen=True)
class Processed:
    encoded: bytes
    crop_applied: bool
    warning: str | None  # a problem that did not stop the record (e.g. a box outside the frame)
    source_size: tuple[int, int] = (0, 0)  # (width, height) of the source, before any resizing
    std: float = 0.0  # standard deviation of its gray pixels as decoded (`chest_gate.implausible`)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageError(f"refused as a possible decompression bomb: {err}") from None
    except UnidentifiedImageError:
        # Not Pillow's message: it names the buffer's address, which differs from run to run.
        raise ImageError(f"not a readable PNG, JPEG or DICOM image (no known format in its "
                         f"{len(data):,} bytes)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"not a readable PNG, JPEG or DICOM image ({err})") from None
    if image.format not in SUPPORTED_FORMATS:
        raise ImageError(f"{image.format} images are not supported; convert it to PNG")
    check_pixels(*image.size, max_pixels)
    return image


def to_grayscale(image: Image.Image) -> Image.Image:
    """An 8-bit "L" copy (palette applied, alpha dropped, 16 bits scaled to 8), or ImageError."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.rint(np.asarray(image, dtype=np.float64) * (255.0 / 65535.0))
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    if mode in ("P", "PA"):
        return image.convert("RGB").convert("L")
    if mode in ("LA", "La"):
        return image.getchannel("L")
    if mode in ("RGB", "RGBA", "RGBa", "RGBX", "YCbCr", "1"):  # a CMYK JPEG is refused before
        return image.convert("L")  # luma; alpha ignored
    raise ImageError(f"unsupported pixel mode {mode!r}; save it as 8- or 16-bit grayscale or RGB PNG")


def crop_region(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...]:
    """A 1024-frame box (x, y, w, h) as a clipped (left, top, right, bottom) in the image, the frame
    stretched over it as `contracts.boxes.stored_box` does; ImageError when outside or degenerate."""
    try:
        left, top, right, bottom = frame_region(box)
    except ValueError as err:
        raise ImageError(str(err)) from None
    sx, sy = width / NIH_FRAME, height / NIH_FRAME  # exact: a division by a power of two
    left, top, right, bottom = left * sx, top * sy, right * sx, bottom * sy
    if right - left < 1.0 or bottom - top < 1.0:
        x, y, w, h = box
        raise ImageError(f"box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside the {NIH_FRAME:g} frame "
                         f"of this {width}x{height} image")
    return left, top, right, bottom


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png_gray(pixels: np.ndarray) -> bytes:
    """Encodes a 2-D uint8 array as an 8-bit grayscale PNG, every row "Up"-filtered."""
    height, width = pixels.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = PNG_FILTER_UP
    rows[0, 0] = 0  # the first row has no row above: no filter
    rows[0, 1:] = pixels[0]
    rows[1:, 1:] = pixels[1:] - pixels[:-1]  # uint8 arithmetic wraps modulo 256, as PNG defines
    compressor = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, 8, PNG_ZLIB_STRATEGY)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", compressor.compress(rows.tobytes()) + compressor.flush())
            + _png_chunk(b"IEND", b""))


def _crop(box: tuple[float, float, float, float] | None, size: tuple[int, int]):
    """(region, warning): where `box` lies in an image of `size`, or why it is not used."""
    if box is None:
        return None, None
    try:
        return crop_region(box, *size), None
    except ImageError as err:
        return None, f"{err}; written uncropped"


def _decode_gray(data: bytes, box, image_size: int, max_pixels: int):
    """(gray image, crop region or None, warning or None, source size) of a PNG, JPEG or DICOM file. A
    JPEG not cropped is decoded at the smallest DCT scale >= `image_size`, as `serving.decode` does."""
    from preprocess import dicom  # pydicom loads with the first image, not with this module

    if dicom.is_dicom(data):
        frame = dicom.open_frame(data, max_pixels)
        region, warning = _crop(box, frame.size)
        return dicom.to_gray(frame, None if region is not None else image_size), region, warning, frame.size
    image = _open(data, max_pixels)
    size = image.size  # `draft` below shrinks it
    if image.format == "JPEG" and len(image.getbands()) == 4:
        raise ImageError(JPEG_FOUR_COMPONENTS)
    region, warning = _crop(box, image.size)
    if region is None and image.format == "JPEG":
        image.draft("L", (image_size, image_size))
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError, zlib.error) as err:
        raise ImageError(f"corrupt or truncated {image.format} ({len(data):,} bytes): {err}") from None
    return to_grayscale(image), region, warning, size


def process(data: bytes, *, box: tuple[float, float, float, float] | None, image_size: int,
            image_format: str, jpeg_quality: int = 95, max_pixels: int = MAX_IMAGE_PIXELS) -> Processed:
    """Decodes a PNG, JPEG or DICOM, crops to `box` (1024 frame; a bad box is a warning), resizes to
    the square and encodes; ImageError when the bytes are not a usable image."""
    gray, region, warning, size = _decode_gray(data, box, image_size, max_pixels)
    resized = gray.resize((image_size, image_size), Image.Resampling.BICUBIC, box=region,
                          reducing_gap=REDUCING_GAP)
    if image_format == "png":
        encoded = encode_png_gray(np.asarray(resized))
    else:
        buffer = io.BytesIO()
        resized.save(buffer, format="JPEG", quality=jpeg_quality)
        encoded = buffer.getvalue()
    return Processed(encoded, region is not None, warning, size, ImageStat.Stat(gray).stddev[0])
