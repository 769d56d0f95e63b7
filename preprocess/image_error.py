"""The one error of turning a file into a stored image (PNG, JPEG or DICOM), and the pixel limit."""


class ImageError(Exception):
    """The file cannot become a record; the message says why."""


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"{width}x{height} = {width * height:,} pixels exceeds --max_image_pixels="
                         f"{max_pixels:,}; refused as a possible decompression bomb")
