"""How an image file becomes the stored gray pixels, for the builder and the served graph alike."""

# Larger images are refused as possible decompression bombs (the builder's --max_image_pixels).
MAX_IMAGE_PIXELS = 64_000_000
# Pillow first shrinks by an integer factor with a box filter, then resamples bicubically the
# last <= 2x: antialiased, and about twice as fast as a full bicubic from 1024 (bench/RESULTS.md).
REDUCING_GAP = 2.0
JPEG_DRAFT_SCALES = (8, 4, 2, 1)  # the DCT scales libjpeg (Pillow's `draft`) decodes a JPEG at
# Pillow makes gray of a CMYK/YCCK JPEG through RGB, which TensorFlow's decode_jpeg cannot repeat:
# both sides refuse it, with this one reason.
JPEG_FOUR_COMPONENTS = ("a 4-component (CMYK or YCCK) JPEG, which the served model cannot decode as the "
                        "builder would; convert it to grayscale or RGB (PNG or JPEG)")
DICOM_MAGIC = b"DICM"  # after a preamble of PREAMBLE_LENGTH bytes
PREAMBLE_LENGTH = 128
# Not a film, so never scored as one: an image whose shorter side before resizing is below MIN_IMAGE_SIDE
# px, or whose decoded 8-bit gray pixels have a (population) standard deviation below MIN_IMAGE_STD grey
# levels. Real films pass by far (docs/data.md, "The frontal-chest gate").
MIN_IMAGE_SIDE = 128
MIN_IMAGE_STD = 1.0
