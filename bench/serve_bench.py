"""CPU latency and throughput of an exported SavedModel's `serving_default`, on real PNG bytes.

    .venv/bin/python bench/serve_bench.py --export_dir=EXPORT [--images=GLOB] \
        [--batch1_requests=200] [--batch64_batches=10] [--warmup=5] [--json_out=FILE]

What a caller of export.py's model waits for: encoded files go in and decode, resize and network
all run inside the signature, so the figures include the PNG decode (most of the work on 1024x1024
radiographs). The `--images` files (default: the real NIH PNGs of ../shared/data/nih_sample) are
read into memory once; each call is timed (time.perf_counter) from the Python bytes to `p_abnormal`
copied back to numpy, cycling through the files, after untimed warm-up calls.
  batch 1    one file per call, `--batch1_requests` calls: p50 and p95 latency in ms
  batch 64   64 files per call, `--batch64_batches` calls after one warm-up batch: images / total
             wall time
TensorFlow is imported only once the inputs are checked, so bad input fails fast, in one line.
"""

from __future__ import annotations

import datetime
import glob
import itertools
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from contracts.export_folder import EXPORT_INFO, OUTPUT_PROB
from contracts.export_folder import INPUT_BYTES as INPUT
from contracts.export_folder import SERVING_DEFAULT as SIGNATURE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIH_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "nih_sample"))
NIH_GLOB = os.path.join(NIH_DIR, "images_00*", "images", "*.png")
BATCH = 64

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "A SavedModel folder written by export.py.")
_IMAGES = flags.DEFINE_string("images", NIH_GLOB, "Glob of the encoded PNG/JPEG files to send.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the figures here as JSON (atomically).")
_BATCH1_REQUESTS = flags.DEFINE_integer("batch1_requests", 200, "Timed calls of one image.", lower_bound=1)
_BATCH64_BATCHES = flags.DEFINE_integer("batch64_batches", 10, "Timed calls of 64 images.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed batch-1 calls first.", lower_bound=0)


def check_inputs() -> tuple[int, list[str]]:
    """Returns (image_size from export.json, image paths); exits with one line on bad input."""
    export_dir = _EXPORT_DIR.value
    if not export_dir:
        sys.exit("--export_dir is required: a SavedModel folder written by export.py")
    if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        sys.exit(f"--export_dir={export_dir} holds no saved_model.pb; pass a folder written by export.py")
    try:
        with open(os.path.join(export_dir, EXPORT_INFO)) as f:
            image_size = int(json.load(f)["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        sys.exit(f"--export_dir={export_dir}: no readable {EXPORT_INFO} with image_size ({error})")
    paths = sorted({os.path.abspath(p) for p in glob.glob(_IMAGES.value) if os.path.isfile(p)})
    if not paths:
        sys.exit(f"no image files match {_IMAGES.value}; pass --images=GLOB")
    out = _JSON_OUT.value
    if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        sys.exit(f"--json_out={out}: its folder does not exist")
    return image_size, paths


def load_signature(export_dir: str):
    import tensorflow as tf
    try:
        return tf.saved_model.load(export_dir).signatures[SIGNATURE]
    except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
        sys.exit(f"--export_dir={export_dir} did not load as a SavedModel with {SIGNATURE}: "
                 f"{str(error).splitlines()[0] if str(error) else type(error).__name__}")


def call(signature, batch: list[bytes]) -> None:
    import tensorflow as tf
    signature(**{INPUT: tf.constant(batch, tf.string)})[OUTPUT_PROB].numpy()  # waits for the result


def batch1_latencies_ms(signature, images: list[bytes], requests: int, warmup: int) -> np.ndarray:
    files = itertools.cycle(images)
    for _ in range(warmup):
        call(signature, [next(files)])
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        call(signature, [next(files)])
        times.append(time.perf_counter() - start)
    return 1000.0 * np.array(times)


def batch64_img_s(signature, images: list[bytes], batches: int) -> float:
    files = itertools.cycle(images)
    call(signature, [next(files) for _ in range(BATCH)])  # warm-up: the batch-64 shapes
    start = time.perf_counter()
    for _ in range(batches):
        call(signature, [next(files) for _ in range(BATCH)])
    return batches * BATCH / (time.perf_counter() - start)


def write_json(figures: dict, path: str) -> None:
    """Writes beside `path` and renames into place, so a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temp = tempfile.mkstemp(prefix=".serve_bench.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def report(f: dict) -> None:
    print(f"export: {f['export_dir']} ({f['image_size']}px); {f['images']} images; "
          f"cores: {f['cpu_count']}; TensorFlow {f['tensorflow']}")
    print(f"batch 1   p50 {f['batch1_p50_ms']:9.1f} ms   p95 {f['batch1_p95_ms']:9.1f} ms   "
          f"({f['batch1_requests']} requests)")
    print(f"batch 64  {f['batch64_img_s']:9.1f} img/s   ({f['batch64_batches']} batches)")


def main(argv: list[str]) -> None:
    del argv
    image_size, paths = check_inputs()
    images = [pathlib.Path(path).read_bytes() for path in paths]
    import tensorflow as tf

    signature = load_signature(_EXPORT_DIR.value)
    try:
        latencies = batch1_latencies_ms(signature, images, _BATCH1_REQUESTS.value, _WARMUP.value)
        rate = batch64_img_s(signature, images, _BATCH64_BATCHES.value)
    except tf.errors.InvalidArgumentError as error:
        # The graph's own words ("assertion failed: [...]") sit among lines of stack and node names.
        reason = next((line for line in error.message.splitlines() if "failed" in line), error.message)
        sys.exit(f"the export refused a file of --images={_IMAGES.value}: {reason.strip()}")
    p50, p95 = np.percentile(latencies, [50, 95])
    figures = {
        "batch1_p50_ms": float(p50), "batch1_p95_ms": float(p95), "batch64_img_s": rate,
        "export_dir": os.path.abspath(_EXPORT_DIR.value), "image_size": image_size, "images": len(paths),
        "batch1_requests": _BATCH1_REQUESTS.value, "batch64_batches": _BATCH64_BATCHES.value,
        "cpu_count": os.cpu_count(), "tensorflow": tf.__version__,
        "date": datetime.date.today().isoformat(),
    }
    report(figures)
    if _JSON_OUT.value:
        write_json(figures, _JSON_OUT.value)


if __name__ == "__main__":
    app.run(main)
