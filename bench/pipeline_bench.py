"""Input throughput: the reference's Keras Sequence against this tf.data pipeline and its ceiling.

    .venv/bin/python bench/pipeline_bench.py [--nih_dir=../shared/data/nih_sample] \
        [--num_images=2320] [--batch_size=32] [--seconds=15] [--repeats=1] [--json_out=FILE]

All rows read the same source images: the real 1024x1024 NIH PNGs of `--nih_dir`, each listed
several times under new names (symlinks) up to `--num_images`, or, without that folder (or with
`--nih_dir=`), synthetic `--source_size` radiographs with boxes. Every stage uses all the host's
cores. The shards are built from them by the real builder
(`python -m preprocess.build_tfrecords --split_by=all --crop=bbox`). Each row runs in its own process,
so its peak resident memory is its own:
  seed_style   the reference design: a `keras.utils.PyDataset` that, per batch, opens each
               full-size PNG with PIL, crops it to its box, resizes it to 224, makes it RGB and
               applies a random affine with the reference's parameters on the CPU; consumed by
               `Model.fit` (a one-layer model) exactly as the reference consumed its Sequence
  pipeline     `make_train_dataset` over the shards in its training configuration; augmentation
               is excluded, as it runs in the model
  decode_only  read and decode the same shards, nothing else (the ceiling of row 2)
  pipeline_uint8_gray  row 2 with `uint8_gray=True` (train.py --transfer=uint8): what it costs when
               the model, not the host, casts to float and copies the gray channel to three; then
               the same batches through the model's uint8 front (`models.front`) on this machine's
               default device: on a CPU-only machine, the whole uint8 path's host CPU per image
  bytes_per_batch  one batch of images as the pipeline hands it over (rows 2: float32 RGB, uint8 gray)
  augment      `make_augmentation` alone on one batch, on this machine's default device
  pipeline_data_service  row 2 through the tf.data service on loopback: a dispatcher and two
               workers, each its own `data_service.py` process on this host, read and decode; the
               timed process only receives the batches (`train.py --data_service`). On one host the
               workers share the cores with the trainer, so this shows the service's cost (gRPC,
               copies), not its gain; its CPU figure is the trainer's alone
Targets: pipeline / seed_style >= 20, pipeline / decode_only >= 0.8, pipeline peak RSS <= 2 GB.
With --repeats > 1 the rows take turns and each figure is the median.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from clock import Clock, peak_rss_mb, time_batches  # noqa: E402  (bench/clock.py)
from loopback_service import SERVICE_WORKERS, start_service  # noqa: E402  (bench/loopback_service.py)
from seed_style import SeedStyleSequence  # noqa: E402  (bench/seed_style.py)

from contracts import manifest as manifest_lib  # noqa: E402
from contracts import records  # noqa: E402
from contracts.atomic import write_json  # noqa: E402
from models import augment  # noqa: E402
from pipeline import input_pipeline  # noqa: E402
from preprocess import nih_metadata  # noqa: E402

_NIH_DIR = flags.DEFINE_string("nih_dir", os.path.join(REPO, "..", "shared", "data", "nih_sample"),
                               "Folder with the real NIH sample (images_00N/images/*.png and CSVs); "
                               "empty: synthetic radiographs, even where that folder exists.")
_SOURCE_SIZE = flags.DEFINE_integer("source_size", 1024, "Side of the synthetic source radiographs.",
                                    lower_bound=64)
_NUM_IMAGES = flags.DEFINE_integer("num_images", 2320,
                                   "Images in the benchmark set; the source images are listed "
                                   "repeatedly to reach it. At least the shuffle buffer (2048), so "
                                   "the pipeline's peak memory includes a full buffer.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per batch in every row.", lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Side of the stored and fed images.")
_SECONDS = flags.DEFINE_float("seconds", 15.0, "Timed seconds per row, after the warm-up batches.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed batches first (tracing, autotuning, thread start).")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Times each row runs; figures are medians.", lower_bound=1)
_WORKERS = flags.DEFINE_integer("seed_style_workers", os.cpu_count(),
                                "PyDataset workers of the seed-style row (the reference's `workers`).",
                                lower_bound=1)
_POOL = flags.DEFINE_enum("seed_style_pool", "auto", ["auto", "threads", "processes"],
                          "How the seed-style workers run (PyDataset's use_multiprocessing). auto: "
                          "threads on up to 2 cores, where they measured faster (70 against 57 "
                          "img/s: processes pickle every 19 MB batch), processes above, where the "
                          "GIL would hold threads to about one core.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the figures here as JSON.")
_ROW = flags.DEFINE_enum("row", None, ["seed_style", "pipeline", "decode_only", "pipeline_uint8_gray",
                                        "pipeline_data_service", "augment"],
                         "Internal: run one row in this process over --work_dir and print its JSON.")
_WORK_DIR = flags.DEFINE_string("work_dir", None, "Internal: the prepared sources and shards.")

ROWS = ("seed_style", "pipeline", "decode_only", "pipeline_uint8_gray", "pipeline_data_service")

SOURCES_JSON = "sources.json"  # [{"path", "box" (x, y, w, h in the 1024 frame) or null, "label"}]
SHARDS = "shards"
SPLIT = "all"

# The reference's ImageDataGenerator parameters, for the seed-style row.


def _base_set(nih_dir: str, work: str) -> tuple[str, str, list[str], str]:
    """Returns (data entry lines, bbox lines, image paths, description) of the images to repeat."""
    if nih_dir and os.path.isdir(os.path.join(nih_dir, "images_001")):
        image_dir, what = nih_dir, "real NIH radiographs"
        with gzip.open(os.path.join(nih_dir, "Data_Entry_2017_v2020.csv.gz"), "rt") as f:
            entries = f.read().splitlines()
        bbox_csv = os.path.join(nih_dir, "BBox_List_2017.csv")
    else:
        from preprocess import synthetic_data as synthetic

        size = _SOURCE_SIZE.value
        synthetic.generate(synthetic.SyntheticConfig(output_dir=work, num_patients=40, source_size=size))
        image_dir, what = work, f"synthetic {size}x{size} radiographs"
        with open(os.path.join(work, "Data_Entry_2017_v2020.csv")) as f:
            entries = f.read().splitlines()
        bbox_csv = os.path.join(work, "BBox_List_2017.csv")
    with open(bbox_csv) as f:
        boxes = f.read().splitlines()
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(image_dir)
                   for name in names if name.endswith(".png"))
    return entries, boxes, paths, what


def _union_or_none(boxes: list[list[float]]) -> list[float] | None:
    return list(nih_metadata.union_box([tuple(b) for b in boxes])) if boxes else None


def prepare_sources(nih_dir: str, num_images: int, work: str) -> tuple[str, str, str]:
    """Lists the base images under new names up to `num_images`, with their CSV rows and boxes.

    Writes `work/images/` (symlinks), `entries.csv`, `bbox.csv` (the NIH dialects, renamed rows)
    and `sources.json` for the seed-style row. Returns (entries csv, bbox csv, description).
    """
    entries, bbox_lines, paths, what = _base_set(nih_dir, os.path.join(work, "base"))
    rows = {line.split(",", 1)[0]: line.split(",") for line in entries[1:]}
    boxes: dict[str, list[list[str]]] = {}
    for line in bbox_lines[1:]:
        cells = line.split(",")[:6]
        boxes.setdefault(cells[0], []).append(cells)
    image_dir = os.path.join(work, "images")
    os.makedirs(image_dir)
    out_rows, out_boxes, sources = [], [], []
    for n in range(num_images):
        source = paths[n % len(paths)]
        base = os.path.basename(source)
        name = f"{n:08d}_000.png"
        os.symlink(os.path.abspath(source), os.path.join(image_dir, name))
        row = list(rows[base])
        row[0], row[3] = name, str(n)  # a patient per listing: every copy is its own image
        out_rows.append(",".join(row))
        own = [[name, *cells[1:]] for cells in boxes.get(base, [])]
        out_boxes += [",".join(cells) for cells in own]
        box = _union_or_none([[float(v) for v in cells[2:6]] for cells in own])
        label = int(row[1] != "No Finding")
        sources.append({"path": os.path.join(image_dir, name), "box": box, "label": label})
    entries_csv, bbox_csv = os.path.join(work, "entries.csv"), os.path.join(work, "bbox.csv")
    with open(entries_csv, "w") as f:
        f.write("\n".join([entries[0], *out_rows]) + "\n")
    with open(bbox_csv, "w") as f:
        f.write("\n".join([bbox_lines[0], *out_boxes]) + "\n")
    with open(os.path.join(work, SOURCES_JSON), "w") as f:
        json.dump(sources, f)
    return entries_csv, bbox_csv, f"{num_images} listings of {len(paths)} {what}"


def build_shards(entries_csv: str, bbox_csv: str, work: str, image_size: int) -> str:
    """Runs the real builder CLI into `work/shards`; returns that folder."""
    out = os.path.join(work, SHARDS)
    command = [
        sys.executable, "-m", "preprocess.build_tfrecords", f"--data_entry_csv={entries_csv}",
        f"--bbox_csv={bbox_csv}", f"--image_dir={os.path.join(work, 'images')}",
        f"--output_dir={out}", f"--split_by={SPLIT}", "--crop=bbox", f"--image_size={image_size}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the builder failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out


def run_seed_style(work: str) -> dict:
    """Times the PyDataset as `Model.fit` consumes it, with a one-layer model."""
    with open(os.path.join(work, SOURCES_JSON)) as f:
        sources = json.load(f)
    processes = _POOL.value == "processes" or (_POOL.value == "auto" and os.cpu_count() > 2)
    dataset = SeedStyleSequence(sources, _BATCH.value, _IMAGE_SIZE.value, workers=_WORKERS.value,
                                use_multiprocessing=processes)
    size = _IMAGE_SIZE.value
    model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    clock = Clock(_WARMUP.value, _SECONDS.value)
    model.fit(dataset, epochs=1000, verbose=0, callbacks=[clock])  # the clock ends it
    (t0, c0), (t1, c1) = clock.ends[_WARMUP.value], clock.ends[-1]
    images = (len(clock.ends) - 1 - _WARMUP.value) * _BATCH.value
    # With processes the work is done in the pool's children, whose CPU time this one cannot see.
    cpu_ms = None if processes else 1000 * (c1 - c0) / images
    return {"img_s": images / (t1 - t0), "cpu_ms_per_img": cpu_ms, "peak_rss_mb": peak_rss_mb()}


def _decode_only_dataset(paths: list[str], image_size: int, batch_size: int) -> tf.data.Dataset:
    def decode(serialized):
        return records.decode_image(records.parse_example(serialized)[records.IMAGE], image_size)

    data = tf.data.TFRecordDataset(paths, num_parallel_reads=tf.data.AUTOTUNE).repeat()
    data = data.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _time_front(iterator) -> dict:
    """Times the uint8 batches of `iterator` through the model's front, on the default device."""
    from models.front import GrayToRGB

    front = GrayToRGB()
    # One element of the float32 RGB batch back, not the batch: a model would read it on the device.
    expand = tf.function(lambda images: front(images)[0, 0, 0, 0])
    figures = time_batches(lambda: expand(next(iterator)["image"]).numpy(), _BATCH.value, _WARMUP.value,
                            _SECONDS.value)
    return {f"front_{k}": v for k, v in figures.items()}


def run_tf_row(work: str, row: str) -> dict:
    """Times the training pipeline (either output, or through the tf.data service) or the
    decode-only reader over the shards."""
    tf.constant(0.0).numpy()  # start the runtime, so its own memory is measured apart
    runtime_rss = peak_rss_mb()
    shards = os.path.join(work, SHARDS)
    servers = []
    if row == "pipeline_data_service":
        target, servers = start_service(REPO)
        dataset = input_pipeline.make_train_dataset(
            manifest_lib.ShardFolder.open(shards), SPLIT, _BATCH.value,
            input_pipeline.StreamOptions(data_service=target, job_name="pipeline-bench"))
    elif row in ("pipeline", "pipeline_uint8_gray"):
        dataset = input_pipeline.make_train_dataset(
            manifest_lib.ShardFolder.open(shards), SPLIT, _BATCH.value,
            input_pipeline.StreamOptions(uint8_gray=row == "pipeline_uint8_gray"))
    else:
        paths = list(manifest_lib.ShardFolder.open(shards).split(SPLIT).paths)
        dataset = _decode_only_dataset(paths, _IMAGE_SIZE.value, _BATCH.value)
    try:
        iterator = iter(dataset)
        first = next(iterator)
        images = first["image"] if isinstance(first, dict) else first  # decode-only yields bare images
        figures = time_batches(lambda: next(iterator), _BATCH.value, _WARMUP.value, _SECONDS.value)
        figures = {**figures, "peak_rss_mb": peak_rss_mb(), "runtime_rss_mb": runtime_rss,
                   "bytes_per_batch": int(tf.size(images)) * images.dtype.size}
        if row == "pipeline_uint8_gray":
            figures.update(_time_front(iterator))
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    return figures


def run_augment() -> dict:
    """Times the augmentation block on one batch (training=True) on the default device."""
    size, batch = _IMAGE_SIZE.value, _BATCH.value
    block = augment.make_augmentation(seed=0)
    images = tf.random.uniform((batch, size, size, 3), 0.0, 255.0)
    step = tf.function(lambda x: tf.reduce_sum(block(x, training=True)))
    for _ in range(3):
        step(images).numpy()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min(_SECONDS.value, 5.0):
        step(images).numpy()  # the scalar's copy to the host waits for the device
        calls += 1
    per_batch = (time.perf_counter() - start) / calls
    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    return {"ms_per_batch": 1000 * per_batch, "ms_per_image": 1000 * per_batch / batch, "device": device}


def _run_child(row: str, work: str) -> dict:
    """Runs one row in a fresh process and returns its JSON."""
    passed = [f"--{name}={flags.FLAGS[name].serialize().split('=', 1)[1]}"
              for name in ("batch_size", "image_size", "seconds", "warmup", "seed_style_workers",
                           "seed_style_pool")]
    command = [sys.executable, os.path.abspath(__file__), f"--row={row}", f"--work_dir={work}", *passed]
    # Generous: a row runs for --seconds after its warm-up; only a hung child reaches this.
    limit = 10 * _SECONDS.value + 600
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit)
    if done.returncode != 0:
        raise RuntimeError(f"row {row} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs]
    return None if None in values else statistics.median(values)


def summarise(runs: dict[str, list[dict]], augment_run: dict) -> dict:
    figures = {
        "seed_style_img_s": _median(runs["seed_style"], "img_s"),
        "pipeline_img_s": _median(runs["pipeline"], "img_s"),
        "decode_only_img_s": _median(runs["decode_only"], "img_s"),
        "pipeline_uint8_gray_img_s": _median(runs["pipeline_uint8_gray"], "img_s"),
        "pipeline_data_service_img_s": _median(runs["pipeline_data_service"], "img_s"),
        "pipeline_peak_rss_mb": max(run["peak_rss_mb"] for run in runs["pipeline"]),
        "pipeline_runtime_rss_mb": _median(runs["pipeline"], "runtime_rss_mb"),
        "seed_style_peak_rss_mb": max(run["peak_rss_mb"] for run in runs["seed_style"]),
    }
    for row in ROWS:
        figures[f"{row}_cpu_ms_per_img"] = _median(runs[row], "cpu_ms_per_img")
    figures["pipeline_over_seed_style"] = figures["pipeline_img_s"] / figures["seed_style_img_s"]
    figures["pipeline_over_decode_only"] = figures["pipeline_img_s"] / figures["decode_only_img_s"]
    figures["pipeline_uint8_gray_over_decode_only"] = (
        figures["pipeline_uint8_gray_img_s"] / figures["decode_only_img_s"]
    )
    figures["pipeline_data_service_over_pipeline"] = (
        figures["pipeline_data_service_img_s"] / figures["pipeline_img_s"]
    )
    figures["pipeline_uint8_front_img_s"] = _median(runs["pipeline_uint8_gray"], "front_img_s")
    figures["pipeline_uint8_front_cpu_ms_per_img"] = _median(runs["pipeline_uint8_gray"], "front_cpu_ms_per_img")
    for row in ("pipeline", "pipeline_uint8_gray"):
        figures[f"{row}_bytes_per_batch"] = runs[row][0]["bytes_per_batch"]
    figures["augment_ms_per_batch"] = augment_run["ms_per_batch"]
    figures["augment_ms_per_image"] = augment_run["ms_per_image"]
    figures["augment_device"] = augment_run["device"]
    return figures


def report(figures: dict, source: str) -> None:
    f = figures
    print(f"source: {source}; batch {_BATCH.value}; {_IMAGE_SIZE.value}px; cores: {os.cpu_count()}; "
          f"repeats: {_REPEATS.value}")
    for row, label in (("seed_style", "1 seed-style PyDataset"), ("pipeline", "2 this pipeline"),
                       ("decode_only", "3 decode-only ceiling"),
                       ("pipeline_uint8_gray", "2 with uint8_gray=True"),
                       ("pipeline_data_service", "2 via tf.data service")):
        cpu = f[row + "_cpu_ms_per_img"]
        cpu_text = "n/a (worker processes)" if cpu is None else f"{cpu:6.3f} ms CPU/img"
        print(f"{label:24s} {f[row + '_img_s']:9.1f} img/s   {cpu_text}")
    print(f"2/1 = {f['pipeline_over_seed_style']:.1f} (target >= 20); "
          f"2/3 = {f['pipeline_over_decode_only']:.2f} (target >= 0.8)")
    if f["seed_style_cpu_ms_per_img"] is not None:
        print(f"by CPU time per image (the ratios of the rates when every row is CPU-bound): "
              f"2/1 = {f['seed_style_cpu_ms_per_img'] / f['pipeline_cpu_ms_per_img']:.1f}, "
              f"2/3 = {f['decode_only_cpu_ms_per_img'] / f['pipeline_cpu_ms_per_img']:.2f}")
    print(f"with uint8_gray=True: {f['pipeline_uint8_gray_over_decode_only']:.2f} x decode-only")
    print(f"through the tf.data service on loopback ({SERVICE_WORKERS} worker processes on this host; CPU "
          f"figure: the trainer's): {f['pipeline_data_service_over_pipeline']:.2f} x row 2 (a figure, not a target)")
    print(f"with uint8_gray=True: {f['pipeline_uint8_gray_over_decode_only']:.2f} x decode-only; "
          f"through the model's uint8 front on this machine's default device "
          f"{f['pipeline_uint8_front_img_s']:.1f} img/s, {f['pipeline_uint8_front_cpu_ms_per_img']:.3f} ms CPU/img")
    print(f"bytes per batch handed to the device: float32 RGB {f['pipeline_bytes_per_batch']:,}, "
          f"uint8 gray {f['pipeline_uint8_gray_bytes_per_batch']:,}")
    print(f"row 2 peak RSS {f['pipeline_peak_rss_mb']:.0f} MB (target <= 2048), of which the TF runtime "
          f"alone {f['pipeline_runtime_rss_mb']:.0f} MB; row 1 peak RSS {f['seed_style_peak_rss_mb']:.0f} MB")
    print(f"augmentation block, batch of {_BATCH.value} on {f['augment_device']}: "
          f"{f['augment_ms_per_batch']:.1f} ms ({f['augment_ms_per_image']:.2f} ms/img)")


def main(argv: list[str]) -> None:
    del argv
    if _ROW.value == "augment":
        print(json.dumps(run_augment()))
        return
    if _ROW.value == "seed_style":
        print(json.dumps(run_seed_style(_WORK_DIR.value)), flush=True)
        # Stopped mid-epoch, Keras leaves the PyDataset's generator suspended inside a tf.data
        # iterator, and with one worker the interpreter then hung at exit. The figures are out.
        os._exit(0)
    if _ROW.value is not None:
        print(json.dumps(run_tf_row(_WORK_DIR.value, _ROW.value)))
        return
    work = tempfile.mkdtemp(prefix="pipeline_bench_")
    try:
        entries_csv, bbox_csv, source = prepare_sources(_NIH_DIR.value, _NUM_IMAGES.value, work)
        build_shards(entries_csv, bbox_csv, work, _IMAGE_SIZE.value)
        runs: dict[str, list[dict]] = {row: [] for row in ROWS}
        for _ in range(_REPEATS.value):
            for row in ROWS:
                runs[row].append(_run_child(row, work))
        augment_run = _run_child("augment", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = summarise(runs, augment_run)
    report(figures, source)
    if _JSON_OUT.value:
        write_json(_JSON_OUT.value, {**figures, "source": source, "cores": os.cpu_count(),
                                     "batch_size": _BATCH.value, "image_size": _IMAGE_SIZE.value})


if __name__ == "__main__":
    app.run(main)
