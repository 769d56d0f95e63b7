"""What an export folder holds, by name: imported by the exporter and by its readers, without TensorFlow."""

EXPORT_INFO = "export.json"  # beside saved_model.pb: members, image size, threshold, signatures
EXPORT_SCHEMA_VERSION = 1
SERVING_DEFAULT = "serving_default"  # image_bytes: string [None] -> outputs
PIXELS = "pixels"  # pixels: float32 [None, S, S, 3] in 0..255 -> outputs
INPUT_BYTES = "image_bytes"
INPUT_PIXELS = "pixels"
