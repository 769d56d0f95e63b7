"""The one error of turning a file into a stored image (PNG, JPEG or DICOM)."""


class ImageError(Exception):
    """The file cannot become a record; the message says why."""
