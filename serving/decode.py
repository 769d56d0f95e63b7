"""Image bytes → the builder's stored pixels in TensorFlow ops, in Pillow's integer arithmetic: bit
for bit for square sources (Pillow >= 12 resamples some tall images vertical-first, one level apart)."""

from __future__ import annotations

import tensorflow as tf

from contracts import decode_rules as rules

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_SIZE_END = 24  # the signature, IHDR's length and type, then width and height (4 bytes each)
PNG_BIT_DEPTH = 24  # IHDR's bit depth: the byte after the height
JPEG_SIGNATURE = b"\xff\xd8\xff"
LUMA_WEIGHTS = (19595, 38470, 7471)  # Pillow's L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16
DECODE_PARALLEL = 10  # images in flight: each decode is one thread's work, and a 1024 px one holds ~10 MB
BICUBIC_A = -0.5  # Pillow's (and Keys') cubic convolution parameter, support 2
PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling: 32 - 8 - 2


def _png_size(data: tf.Tensor) -> tf.Tensor:
    # Shorter bytes are refused first: substr past the end fails with the raw bytes in its message,
    # which Python cannot decode (a UnicodeDecodeError instead of an InvalidArgumentError).
    whole = tf.debugging.Assert(tf.strings.length(data) >= PNG_SIZE_END,
                                ["truncated PNG: it ends before its width and height"])
    with tf.control_dependencies([whole]):
        ihdr = tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8)
    ihdr = tf.cast(tf.reshape(ihdr, [2, 4]), tf.int64)
    return tf.reduce_sum(ihdr * tf.constant([2**24, 2**16, 2**8, 1], tf.int64), axis=1)  # (w, h)


def _check_pixels(size: tf.Tensor, max_pixels: int) -> tf.Tensor:
    return tf.debugging.assert_less_equal(
        size[0] * size[1], tf.constant(max_pixels, tf.int64),
        message=f"image has more pixels than --max_image_pixels={max_pixels}; refused as a possible "
                "decompression bomb")


def _gray_of(samples: tf.Tensor, high: tf.Tensor, sixteen: bool) -> tf.Tensor:
    """(H, W, C) int32 samples and their top 8 bits → (H, W) gray as Pillow converts the image."""
    def gray():  # Pillow's I;16 rule: rint(v * 255 / 65535), which is v for 8-bit samples
        if not sixteen:
            return samples[..., 0]
        return tf.cast(tf.round(tf.cast(samples[..., 0], tf.float64) * (255.0 / 65535.0)), tf.int32)

    def colour():  # alpha ignored
        weighted = sum(high[..., c] * w for c, w in enumerate(LUMA_WEIGHTS))
        return tf.bitwise.right_shift(weighted + 0x8000, 16)

    index = tf.minimum(tf.shape(samples)[-1], 3) - 1  # gray, gray + alpha, RGB(A)
    return tf.switch_case(index, [gray, lambda: high[..., 0], colour])


def _png_gray(data: tf.Tensor, max_pixels: int) -> tf.Tensor:
    with tf.control_dependencies([_check_pixels(_png_size(data), max_pixels)]):
        eight_bit = tf.equal(tf.strings.substr(data, PNG_BIT_DEPTH, 1), b"\x08")  # "" when cut before it

    def wide():  # as uint16 an 8-bit sample v arrives as 257 v, so one rule serves every depth
        samples = tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.int32)
        return _gray_of(samples, tf.bitwise.right_shift(samples, 8), sixteen=True)

    def narrow():  # an 8-bit file's samples v as they are: the same gray, a third less work
        samples = tf.cast(tf.io.decode_png(data, channels=0), tf.int32)
        return _gray_of(samples, samples, sixteen=False)

    return tf.cond(eight_bit, narrow, wide)


def _jpeg_gray(data: tf.Tensor, image_size: int, max_pixels: int) -> tf.Tensor:
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)  # (h, w, c)
    not_four = tf.debugging.Assert(tf.not_equal(shape[2], 4), [rules.JPEG_FOUR_COMPONENTS])
    with tf.control_dependencies([not_four, _check_pixels(tf.stack([shape[1], shape[0]]), max_pixels)]):
        # Pillow's draft keeps 1/1 for a JPEG smaller than the target (no scale is <= a ratio of 0).
        fits = tf.maximum(tf.minimum(shape[0] // image_size, shape[1] // image_size), 1)

    def at(scale):
        gray = tf.io.decode_jpeg(data, channels=1, ratio=scale, dct_method="INTEGER_ACCURATE")
        return tf.cast(gray[..., 0], tf.int32)

    # The largest scale not above the whole-number ratio to the target, as Pillow's draft picks.
    index = tf.argmax(tf.cast(tf.constant(rules.JPEG_DRAFT_SCALES, tf.int64) <= fits, tf.int32))
    return tf.switch_case(tf.cast(index, tf.int32), [lambda s=s: at(s) for s in rules.JPEG_DRAFT_SCALES])


def decode_gray(data: tf.Tensor, image_size: int, max_pixels: int = rules.MAX_IMAGE_PIXELS) -> tf.Tensor:
    """One PNG or JPEG → (H, W) int32 gray values 0..255, as the builder's Pillow decodes it."""
    is_png = tf.equal(tf.strings.substr(data, 0, 8), PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), JPEG_SIGNATURE)
    magic = rules.DICOM_MAGIC
    is_dicom = tf.cond(  # substr fails on a position past the end: shorter bytes are not DICOM
        tf.strings.length(data) >= rules.PREAMBLE_LENGTH + len(magic),
        lambda: tf.equal(tf.strings.substr(data, rules.PREAMBLE_LENGTH, len(magic)), magic),
        lambda: tf.constant(False))
    not_dicom = tf.debugging.Assert(tf.logical_not(is_dicom), [
        "a DICOM file: the served model takes PNG or JPEG bytes; score DICOM files with "
        "predict.py --images, or send the image as PNG"])
    with tf.control_dependencies([not_dicom]):
        check = tf.debugging.Assert(tf.logical_or(is_png, is_jpeg),
                                    ["not a PNG or JPEG image; send the encoded file's bytes"])
    with tf.control_dependencies([check]):
        return tf.cond(is_png, lambda: _png_gray(data, max_pixels),
                       lambda: _jpeg_gray(data, image_size, max_pixels))


def _box_reduce(gray: tf.Tensor, factor_y: tf.Tensor, factor_x: tf.Tensor) -> tf.Tensor:
    # Pillow's reduce(): each block (partial at the right and bottom) of n pixels becomes
    # ((sum + n / 2) * (2^24 // n)) >> 24, in integers.
    height, width = tf.shape(gray)[0], tf.shape(gray)[1]
    out_h, out_w = (height + factor_y - 1) // factor_y, (width + factor_x - 1) // factor_x
    padding = [[0, out_h * factor_y - height], [0, out_w * factor_x - width]]
    # int32 holds a block's sum: a block is at most max_pixels / (4 S^2) pixels of at most 255.
    blocks = tf.reshape(tf.pad(gray, padding), [out_h, factor_y, out_w, factor_x])
    total = tf.cast(tf.reduce_sum(blocks, axis=[1, 3]), tf.int64)
    rows = tf.minimum(factor_y, height - tf.range(out_h) * factor_y)  # the last block row may be partial
    columns = tf.minimum(factor_x, width - tf.range(out_w) * factor_x)
    count = tf.cast(rows[:, None] * columns[None, :], tf.int64)
    multiplier = tf.bitwise.left_shift(tf.constant(1, tf.int64), 24) // count
    return tf.bitwise.right_shift((total + count // 2) * multiplier, 24)


def _bicubic(x: tf.Tensor) -> tf.Tensor:
    a, x = BICUBIC_A, tf.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _resample_matrix(in_size: tf.Tensor, in_extent: tf.Tensor, out_size: int) -> tf.Tensor:
    # (out_size, in_size) fixed-point weights: Pillow's precompute_coeffs + normalize_coeffs_8bpc.
    scale = in_extent / out_size
    filter_scale = tf.maximum(scale, 1.0)
    support = 2.0 * filter_scale
    center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int64), 0)  # C's (int): toward zero
    last = tf.minimum(tf.cast(center + support + 0.5, tf.int64), tf.cast(in_size, tf.int64))
    source = tf.range(tf.cast(in_size, tf.int64))
    inside = (source[None, :] >= first[:, None]) & (source[None, :] < last[:, None])
    offsets = (tf.cast(source, tf.float64)[None, :] - center[:, None] + 0.5) / filter_scale
    weights = tf.where(inside, _bicubic(offsets), tf.zeros_like(offsets))
    weights = tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=1, keepdims=True))
    fixed = weights * float(1 << PRECISION_BITS)
    return tf.cast(tf.where(fixed < 0, fixed - 0.5, fixed + 0.5), tf.int64)  # (int) truncates


def _resample_rows(image: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    # One pass along the last axis, rounded and clipped to 8 bits as Pillow stores it between
    # passes; float64 holds every product and sum here exactly (< 2^40).
    acc = tf.matmul(tf.cast(image, tf.float64), tf.cast(matrix, tf.float64), transpose_b=True)
    acc = tf.cast(acc, tf.int64) + (1 << (PRECISION_BITS - 1))
    return tf.clip_by_value(tf.bitwise.right_shift(tf.maximum(acc, 0), PRECISION_BITS), 0, 255)


def resize_gray(gray: tf.Tensor, image_size: int) -> tf.Tensor:
    """(H, W) gray → (S, S) uint8 as Pillow's `resize((S, S), BICUBIC, reducing_gap=2)`."""
    height, width = tf.cast(tf.shape(gray)[0], tf.float64), tf.cast(tf.shape(gray)[1], tf.float64)
    factor_y = tf.maximum(tf.cast(height / image_size / rules.REDUCING_GAP, tf.int32), 1)
    factor_x = tf.maximum(tf.cast(width / image_size / rules.REDUCING_GAP, tf.int32), 1)
    reduced = _box_reduce(gray, factor_y, factor_x)
    # After reduce, Pillow resamples the box (0, 0, W / fx, H / fy) of the reduced image.
    extent_x = width / tf.cast(factor_x, tf.float64)
    extent_y = height / tf.cast(factor_y, tf.float64)
    horizontal = _resample_rows(reduced, _resample_matrix(tf.shape(reduced)[1], extent_x, image_size))
    vertical = _resample_rows(tf.transpose(horizontal),
                              _resample_matrix(tf.shape(reduced)[0], extent_y, image_size))
    return tf.cast(tf.transpose(vertical), tf.uint8)


def bytes_to_pixels(data: tf.Tensor, image_size: int, max_pixels: int = rules.MAX_IMAGE_PIXELS) -> tf.Tensor:
    """One encoded image → (S, S) uint8: what the builder stores for it with --crop=none."""
    return resize_gray(decode_gray(data, image_size, max_pixels), image_size)


def _source_side(data: tf.Tensor) -> tf.Tensor:
    """The shorter side of an encoded PNG or JPEG (decode_gray has checked which), before any resizing."""
    return tf.cond(tf.equal(tf.strings.substr(data, 0, 8), PNG_SIGNATURE),
                   lambda: tf.reduce_min(_png_size(data)),
                   lambda: tf.reduce_min(tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)))


def is_implausible(side: tf.Tensor, gray: tf.Tensor) -> tf.Tensor:
    """The builder's rule (preprocess.chest_gate.implausible): a shorter side below MIN_IMAGE_SIDE or a
    population standard deviation of the decoded gray values below MIN_IMAGE_STD: not a film."""
    std = tf.math.reduce_std(tf.cast(gray, tf.float64))
    return tf.logical_or(side < rules.MIN_IMAGE_SIDE, std < rules.MIN_IMAGE_STD)


def decode_batch(image_bytes: tf.Tensor, image_size: int,
                 max_pixels: int = rules.MAX_IMAGE_PIXELS) -> tuple[tf.Tensor, tf.Tensor]:
    """(B,) encoded images → ((B, S, S) uint8 by `bytes_to_pixels`, (B,) bool `is_implausible`),
    DECODE_PARALLEL images at a time."""
    def one(data):
        gray = decode_gray(data, image_size, max_pixels)
        return resize_gray(gray, image_size), is_implausible(_source_side(data), gray)

    return tf.map_fn(one, image_bytes, parallel_iterations=DECODE_PARALLEL, fn_output_signature=(
        tf.TensorSpec([image_size, image_size], tf.uint8), tf.TensorSpec([], tf.bool)))
