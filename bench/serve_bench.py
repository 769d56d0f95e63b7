"""CPU latency and throughput of an exported SavedModel, on real PNG bytes, against its two ceilings.

    .venv/bin/python bench/serve_bench.py --export_dir=EXPORT [--images=GLOB] [--batch1_requests=200] \
        [--batch64_batches=10] [--rounds=3] [--warmup=5] [--json_out=FILE]

What a caller of export.py's model waits for: encoded files go in and decode, resize and network
all run inside the signature. The `--images` files (default: the real NIH PNGs of
../shared/data/nih_sample) are read into memory once; each call is timed (time.perf_counter) from the
Python bytes to the result copied back to numpy, cycling through the files, after untimed warm-ups.
  decode     the graph's own decode (serving.decode.decode_batch, imported) as its own tf.function,
             64 files per call: images / wall time over all cores
  networks   the `pixels` signature on those files' decoded pixels, 64 per call
  end to end `serving_default`, 64 files per call
             (the three batch-64 rows are timed in turn, `--rounds` times `--batch64_batches` calls each,
             so a change of load falls on all three); ratio: end to end / the lower of the two ceilings
  batch 1    one file per call to `serving_default`, `--batch1_requests` calls: p50 and p95 in ms
The JSON also names the machine (CPU model, cores, AVX-512) and the load average before and after.
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

from contracts.export_folder import (
    EXPORT_INFO,
    INPUT_BYTES,
    INPUT_PIXELS,
    OUTPUT_PROB,
    PIXELS,
    SERVING_DEFAULT,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NIH_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "nih_sample"))
NIH_GLOB = os.path.join(NIH_DIR, "images_00*", "images", "*.png")
CPUINFO = "/proc/cpuinfo"
BATCH = 64
ROWS = ("decode", "networks", "end_to_end")  # the two ceilings, then what a caller gets
TARGET_RATIO = 0.7  # issue 27: end to end at batch 64 >= 0.7 x the lower of its two ceilings

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "A SavedModel folder written by export.py.")
_IMAGES = flags.DEFINE_string("images", NIH_GLOB, "Glob of the encoded PNG/JPEG files to send.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the figures here as JSON (atomically).")
_BATCH1_REQUESTS = flags.DEFINE_integer("batch1_requests", 200, "Timed calls of one image.", lower_bound=1)
_BATCH64_BATCHES = flags.DEFINE_integer("batch64_batches", 10, "Timed calls of 64 images per row and round.",
                                        lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Times the three batch-64 rows are timed in turn.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed batch-1 calls first.", lower_bound=0)


def check_inputs() -> tuple[dict, list[str]]:
    """Returns (export.json, image paths); exits with one line on bad input."""
    export_dir = _EXPORT_DIR.value
    if not export_dir:
        sys.exit("--export_dir is required: a SavedModel folder written by export.py")
    if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        sys.exit(f"--export_dir={export_dir} holds no saved_model.pb; pass a folder written by export.py")
    try:
        with open(os.path.join(export_dir, EXPORT_INFO)) as f:
            info = json.load(f)
        info["image_size"], info["max_image_pixels"] = int(info["image_size"]), int(info["max_image_pixels"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        sys.exit(f"--export_dir={export_dir}: no readable {EXPORT_INFO} with image_size and max_image_pixels "
                 f"({error})")
    paths = sorted({os.path.abspath(p) for p in glob.glob(_IMAGES.value) if os.path.isfile(p)})
    if not paths:
        sys.exit(f"no image files match {_IMAGES.value}; pass --images=GLOB")
    out = _JSON_OUT.value
    if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        sys.exit(f"--json_out={out}: its folder does not exist")
    return info, paths


def load_signatures(export_dir: str):
    """(serving_default, pixels) of the export; exits with one line when it does not load."""
    import tensorflow as tf
    try:
        signatures = tf.saved_model.load(export_dir).signatures
        return signatures[SERVING_DEFAULT], signatures[PIXELS]
    except (OSError, ValueError, KeyError, tf.errors.OpError) as error:
        sys.exit(f"--export_dir={export_dir} did not load as a SavedModel with {SERVING_DEFAULT} and {PIXELS}: "
                 f"{str(error).splitlines()[0] if str(error) else type(error).__name__}")


def machine(cpuinfo: str) -> dict:
    """The CPU model, the cores this process sees and whether the CPU has AVX-512, from /proc/cpuinfo's text."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first CPU's
    return {"cpu_model": fields.get("model name") or None, "cores": os.cpu_count(),
            "avx512": "avx512f" in fields.get("flags", "").split()}


def decoder(image_size: int, max_pixels: int):
    """The graph's own decode (the one serving_default runs) as a tf.function of a batch of bytes."""
    import tensorflow as tf

    from serving.decode import decode_batch
    return tf.function(lambda data: decode_batch(data, image_size, max_pixels)[0],
                       input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)


def pixels_of(gray) -> np.ndarray:
    # The `pixels` signature's input, as serving_default feeds its networks: the gray value on 3 channels.
    return np.repeat(np.asarray(gray, np.float32)[..., None], 3, axis=-1)


def batch64_rows(serve, pixels_signature, decode, images: list[bytes], batches: int, rounds: int) -> dict:
    """{row: {"images", "seconds"}} of ROWS, each timed `batches` calls of 64 in each of `rounds` turns."""
    import tensorflow as tf
    files = itertools.cycle(images)
    groups = [[next(files) for _ in range(BATCH)] for _ in range(batches)]
    pixels = [tf.constant(pixels_of(decode(tf.constant(group)))) for group in groups]  # untimed
    calls = {"decode": lambda i: decode(tf.constant(groups[i])).numpy(),
             "networks": lambda i: pixels_signature(**{INPUT_PIXELS: pixels[i]})[OUTPUT_PROB].numpy(),
             "end_to_end": lambda i: serve(**{INPUT_BYTES: tf.constant(groups[i])})[OUTPUT_PROB].numpy()}
    for row in ROWS:
        calls[row](0)  # warm-up: the batch-64 shapes
    timed = {row: {"images": 0, "seconds": 0.0} for row in ROWS}
    for _ in range(rounds):
        for row in ROWS:
            start = time.perf_counter()
            for i in range(batches):
                calls[row](i)
            timed[row]["seconds"] += time.perf_counter() - start
            timed[row]["images"] += batches * BATCH
    return timed


def batch1_latencies_ms(serve, images: list[bytes], requests: int, warmup: int) -> np.ndarray:
    import tensorflow as tf
    files = itertools.cycle(images)
    for _ in range(warmup):
        serve(**{INPUT_BYTES: tf.constant([next(files)])})[OUTPUT_PROB].numpy()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        serve(**{INPUT_BYTES: tf.constant([next(files)])})[OUTPUT_PROB].numpy()  # waits for the result
        times.append(time.perf_counter() - start)
    return 1000.0 * np.array(times)


def throughput(timed: dict) -> dict:
    """img/s of each row, the lower ceiling and the ratio of end to end to it, against TARGET_RATIO."""
    rates = {f"{row}_img_s": timed[row]["images"] / timed[row]["seconds"] for row in ROWS}
    lower = min(("decode", "networks"), key=lambda row: rates[f"{row}_img_s"])
    ratio = rates["end_to_end_img_s"] / rates[f"{lower}_img_s"]
    return {**rates, "lower_ceiling": lower, "ratio": ratio, "target_ratio": TARGET_RATIO,
            "meets_target": ratio >= TARGET_RATIO, "timed": timed}


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
    m = f["machine"]
    print(f"export: {f['export_dir']} ({f['image_size']}px); {f['images']} images; TensorFlow {f['tensorflow']}")
    print(f"machine: {m['cpu_model']}, {m['cores']} cores, AVX-512 {'yes' if m['avx512'] else 'no'}; "
          f"load average {f['load_average']['before'][0]:.2f} before, {f['load_average']['after'][0]:.2f} after")
    for row, what in zip(ROWS, ("decode alone", "networks alone", "end to end")):
        print(f"batch 64  {what:15s} {f[row + '_img_s']:9.1f} img/s   ({f['timed'][row]['images']} images)")
    print(f"ratio     end to end / {f['lower_ceiling']} {f['ratio']:.2f} (target {f['target_ratio']})")
    print(f"batch 1   p50 {f['batch1_p50_ms']:9.1f} ms   p95 {f['batch1_p95_ms']:9.1f} ms   "
          f"({f['batch1_requests']} requests)")


def main(argv: list[str]) -> None:
    del argv
    info, paths = check_inputs()
    images = [pathlib.Path(path).read_bytes() for path in paths]
    import tensorflow as tf

    with open(CPUINFO) as f:
        cpu = machine(f.read())
    serve, pixels_signature = load_signatures(_EXPORT_DIR.value)
    before = os.getloadavg()
    try:
        decode = decoder(info["image_size"], info["max_image_pixels"])
        timed = batch64_rows(serve, pixels_signature, decode, images, _BATCH64_BATCHES.value, _ROUNDS.value)
        latencies = batch1_latencies_ms(serve, images, _BATCH1_REQUESTS.value, _WARMUP.value)
    except tf.errors.InvalidArgumentError as error:
        # The graph's own words ("assertion failed: [...]") sit among lines of stack and node names.
        reason = next((line for line in error.message.splitlines() if "failed" in line), error.message)
        sys.exit(f"the export refused a file of --images={_IMAGES.value}: {reason.strip()}")
    p50, p95 = np.percentile(latencies, [50, 95])
    figures = {
        **throughput(timed), "batch1_p50_ms": float(p50), "batch1_p95_ms": float(p95),
        "export_dir": os.path.abspath(_EXPORT_DIR.value), "image_size": info["image_size"], "images": len(paths),
        "batch1_requests": _BATCH1_REQUESTS.value, "batch64_batches": _BATCH64_BATCHES.value,
        "rounds": _ROUNDS.value, "machine": cpu, "tensorflow": tf.__version__,
        "load_average": {"before": list(before), "after": list(os.getloadavg())},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
    }
    report(figures)
    if _JSON_OUT.value:
        write_json(figures, _JSON_OUT.value)


if __name__ == "__main__":
    app.run(main)
