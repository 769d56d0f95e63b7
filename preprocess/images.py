"""Turning one source radiograph into the stored image: decode → grayscale → crop → resize → encode.

Runs in the builder's worker processes, so it imports Pillow and numpy only (no TensorFlow: a
spawned worker starts in a fraction of a second). Every failure is an `ImageError` whose message
says what is wrong with the file; the builder skips that image and lists the reason.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from contracts.boxes import frame_region
from contracts.decode_rules import JPEG_FOUR_COMPONENTS, MAX_IMAGE_PIXELS, REDUCING_GAP
from contracts.labels import NIH_FRAME

# Stored PNGs are written here rather than by Pillow: Pillow tries every PNG row filter, while one
# "Up" filter in numpy plus zlib level 1 takes about half the time for the same size. zlib's run-
# length strategy then beats its default match search on these filtered rows, which repeat little
# beyond runs: a third faster and a tenth smaller, decoded as fast (bench/RESULTS.md). The
# builder's rate is bound by decoding the sources, so every millisecond here counts.
PNG_COMPRESS_LEVEL = 1
PNG_ZLIB_STRATEGY = zlib.Z_RLE
PNG_FILTER_UP = 2
SUPPORTED_FORMATS = ("PNG", "JPEG")


class ImageError(Exception):
    """The file cannot become a record; the message says why."""


@dataclasses.dataclass(frozen=True)
class Processed:
    """The stored image and how it was made."""

    encoded: bytes
    crop_applied: bool
    warning: str | None  # a problem that did not stop the record (e.g. a box outside the frame)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageError(f"refused as a possible decompression bomb: {err}") from None
    except UnidentifiedImageError:
        # Pillow's own message names the in-memory buffer's address, which would make the same
        # file's reason differ from run to run (and between the local and the Beam builder).
        raise ImageError(f"not a readable PNG, JPEG or DICOM image (no known format in its "
                         f"{len(data):,} bytes)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"not a readable PNG, JPEG or DICOM image ({err})") from None
    if image.format not in SUPPORTED_FORMATS:
        raise ImageError(f"{image.format} images are not supported; convert it to PNG")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"{width}x{height} = {width * height:,} pixels exceeds --max_image_pixels={max_pixels:,}; "
            "refused as a possible decompression bomb"
        )
    return image


def _load(image: Image.Image, size_in_bytes: int) -> None:
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError, zlib.error) as err:
        raise ImageError(f"corrupt or truncated {image.format} ({size_in_bytes:,} bytes): {err}") from None


def to_grayscale(image: Image.Image) -> Image.Image:
    """Returns an 8-bit single-channel ("L") copy of `image`.

    Palette indices go through the palette, alpha is dropped, 16-bit values are scaled over the
    full 16-bit range (0..65535 -> 0..255) so relative intensities are kept.

    Raises:
      ImageError: a mode with no faithful grayscale reading (e.g. floating point).
    """
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L")
    if mode in ("P", "PA"):
        return image.convert("RGB").convert("L")
    if mode in ("LA", "La"):
        return image.getchannel("L")
    if mode in ("RGB", "RGBA", "RGBa", "RGBX", "YCbCr", "1"):  # a CMYK JPEG is refused before
        return image.convert("L")  # RGB(A) -> luma; alpha is ignored by this conversion
    raise ImageError(f"unsupported pixel mode {mode!r}; save it as 8- or 16-bit grayscale or RGB PNG")


def crop_region(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """Maps a 1024-frame box (x, y, w, h) to a clipped (left, top, right, bottom) in the image.

    The frame is stretched over the image; `contracts.boxes.stored_box` maps boxes into the stored
    crop with the same region, so keep the two on `frame_region`.

    Raises:
      ImageError: the box lies outside the frame or is degenerate.
    """
    try:
        left, top, right, bottom = frame_region(box)
    except ValueError as err:
        raise ImageError(str(err)) from None
    sx, sy = width / NIH_FRAME, height / NIH_FRAME  # exact: a division by a power of two
    left, top, right, bottom = left * sx, top * sy, right * sx, bottom * sy
    if right - left < 1.0 or bottom - top < 1.0:
        x, y, w, h = box
        raise ImageError(
            f"box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside the {NIH_FRAME:g} frame "
            f"of this {width}x{height} image"
        )
    return left, top, right, bottom


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, 8, PNG_ZLIB_STRATEGY)
    return compressor.compress(data) + compressor.flush()


def encode_png_gray(pixels: np.ndarray) -> bytes:
    """Encodes a 2-D uint8 array as an 8-bit grayscale PNG, every row "Up"-filtered."""
    height, width = pixels.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = PNG_FILTER_UP
    rows[0, 0] = 0  # the first row has no row above: no filter
    rows[0, 1:] = pixels[0]
    rows[1:, 1:] = pixels[1:] - pixels[:-1]  # uint8 arithmetic wraps modulo 256, as PNG defines
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", _deflate(rows.tobytes()))
            + _png_chunk(b"IEND", b""))


def encode(image: Image.Image, image_format: str, jpeg_quality: int) -> bytes:
    if image_format == "png":
        return encode_png_gray(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def _crop(box: tuple[float, float, float, float] | None, size: tuple[int, int]):
    """(region, warning): where `box` lies in an image of `size`, or why it is not used."""
    if box is None:
        return None, None
    try:
        return crop_region(box, *size), None
    except ImageError as err:
        return None, f"{err}; written uncropped"


def _decode_gray(data: bytes, box, image_size: int, max_pixels: int):
    """(gray image, crop region or None, warning or None) for a PNG, JPEG or DICOM file.

    A JPEG that will not be cropped (a .jpg file or a DICOM frame) is decoded at the smallest DCT
    scale 1/2^k still >= `image_size` (libjpeg's downscaling, Pillow's `draft`), where the
    resize would throw those pixels away anyway; `serving.decode` follows the same rule.
    """
    from preprocess import dicom  # pydicom loads with the first image, not with this module

    if dicom.is_dicom(data):
        frame = dicom.open_frame(data, max_pixels)
        region, warning = _crop(box, frame.size)
        return dicom.to_gray(frame, None if region is not None else image_size), region, warning
    image = _open(data, max_pixels)
    if image.format == "JPEG" and len(image.getbands()) == 4:
        raise ImageError(JPEG_FOUR_COMPONENTS)
    region, warning = _crop(box, image.size)
    if region is None and image.format == "JPEG":
        image.draft("L", (image_size, image_size))
    _load(image, len(data))
    return to_grayscale(image), region, warning


def process(
    data: bytes,
    *,
    box: tuple[float, float, float, float] | None,
    image_size: int,
    image_format: str,
    jpeg_quality: int = 95,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Processed:
    """Decodes, optionally crops to `box` (1024 frame), resizes to a square and encodes.

    PNG, JPEG, or DICOM (recognised by its content, whatever the file is called; decoded to 8-bit
    gray by `preprocess.dicom`), then the same crop, resize and encoding for all three.
    A non-square crop is stretched to the square, as the reference's `resize((224, 224))` did.
    A box that cannot be used is a warning: the image is kept, uncropped.

    Raises:
      ImageError: the bytes are not a usable image.
    """
    gray, region, warning = _decode_gray(data, box, image_size, max_pixels)
    resized = gray.resize(
        (image_size, image_size), Image.Resampling.BICUBIC, box=region, reducing_gap=REDUCING_GAP
    )
    return Processed(encode(resized, image_format, jpeg_quality), region is not None, warning)
