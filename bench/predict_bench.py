"""Prediction throughput: predict.py's own batch prediction over a split's shards, per transfer.

    .venv/bin/python bench/predict_bench.py [--backbone=resnet50] [--image_size=224] [--records=2048] \
        [--global_batch_size=256] [--precision=auto] [--transfers=uint8,float32] [--repeats=3] [--json_out=FILE]

Times `evaluation.prediction.predict_split`, what `predict.py` runs for each model (shards read
and decoded by the eval pipeline, the model under the strategy and precision, every id gathered),
over synthetic shards in the real record format (tests/shard_factory.py) and a randomly
initialised classifier cloned under `--precision` the way predict.py clones a saved one. Every
pass traces its step anew, as every predict.py run does; on a fast device that start-up is a large
part of a short pass, so a second, smaller split (a quarter of the records) is timed too, and the
difference of the two passes is the steady rate. Each transfer makes one untimed pass first, then
`--repeats` timed pairs; the best counts (other work only ever slows a pass down).
  img_s             steady rate: (records - small records) / (pass seconds - small pass seconds);
                    null when the larger pass was not the slower (too few records to tell)
  pass_img_s        records / seconds of a whole pass, start-up included (what one predict.py
                    call over --records achieves)
  cpu_ms_per_image  process CPU per record of the whole pass
  bytes_per_batch   one global batch of images as handed to the device
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import models  # noqa: E402
from contracts.atomic import write_json  # noqa: E402
from contracts.manifest import ShardFolder  # noqa: E402
from contracts.run_folder import MODEL_PRECISION  # noqa: E402
from evaluation import prediction  # noqa: E402
from models import distribute  # noqa: E402
from pipeline import options  # noqa: E402

SPLIT, SMALL = "eval", "small"

_BACKBONE = flags.DEFINE_string("backbone", "resnet50", "Registry backbone to time (random weights).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Side of the synthetic shards.", lower_bound=8)
_RECORDS = flags.DEFINE_integer("records", 2048, "Records in the synthetic split.", lower_bound=1)
_BATCH = flags.DEFINE_integer("global_batch_size", 256, "As predict.py's --global_batch_size.",
                              lower_bound=1)
_PRECISION = flags.DEFINE_enum("precision", MODEL_PRECISION, list(distribute.PRECISIONS),
                               "As predict.py's --precision.")
_TRANSFERS = flags.DEFINE_list("transfers", [options.UINT8, options.FLOAT32],
                               f"predict.py's --transfer values to time: {', '.join(options.TRANSFERS)}.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes per transfer; the best counts.", lower_bound=1)
_STRATEGY = flags.DEFINE_enum("strategy", "auto", list(distribute.STRATEGIES), "As predict.py's --strategy.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the figures here as JSON (atomically).")


def _small_records() -> int:
    return max(1, _RECORDS.value // 4)


def _pass(model, strategy, data_dir: str, split: str, uint8: bool) -> tuple[float, float]:
    """Returns (wall seconds, CPU seconds) of predicting `split`."""
    start, cpu = time.perf_counter(), time.process_time()
    outputs = prediction.predict_split(model, strategy, ShardFolder.open(data_dir), split, _BATCH.value,
                                       progress=None, uint8_gray=uint8)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    expected = _RECORDS.value if split == SPLIT else _small_records()
    if len(outputs.ids) != expected:
        raise RuntimeError(f"predicted {len(outputs.ids)} records of {expected}")
    return elapsed, cpu


def _timing(model, strategy, data_dir: str, uint8: bool) -> dict[str, float]:
    (small, _), (whole, cpu) = (_pass(model, strategy, data_dir, split, uint8) for split in (SMALL, SPLIT))
    records = _RECORDS.value
    # None when the passes are too short to tell apart (the larger one was not slower).
    steady = (records - _small_records()) / (whole - small) if whole > small else None
    return {"img_s": steady, "pass_img_s": records / whole, "cpu_ms_per_image": 1000 * cpu / records}


def _rate(img_s: float | None) -> str:
    return "      n/a" if img_s is None else f"{img_s:9.1f}"


def measure(strategy, data_dir: str) -> dict:
    """Returns the figures of every transfer, keyed by its resolved name."""
    with strategy.scope():
        classifier = models.build_classifier(_BACKBONE.value, _IMAGE_SIZE.value, weights="none")
        model, policy = prediction.with_precision(classifier, _PRECISION.value)
    figures = {"backbone": _BACKBONE.value, "precision": policy, "image_size": _IMAGE_SIZE.value,
               "batch_size": _BATCH.value, "records": _RECORDS.value,
               "replicas": strategy.num_replicas_in_sync, "transfers": {}}
    for transfer in dict.fromkeys(distribute.resolve_transfer(t) for t in _TRANSFERS.value):
        uint8 = transfer == options.UINT8
        _pass(model, strategy, data_dir, SMALL, uint8)  # autotuning, memory
        best = max((_timing(model, strategy, data_dir, uint8) for _ in range(_REPEATS.value)),
                   key=lambda timing: (timing["img_s"] or 0.0, timing["pass_img_s"]))
        pixels = _BATCH.value * _IMAGE_SIZE.value ** 2
        figures["transfers"][transfer] = {**best, "bytes_per_batch": pixels * (1 if uint8 else 3 * 4)}
        print(f"predict {_BACKBONE.value} {policy} {_IMAGE_SIZE.value}px batch {_BATCH.value} "
              f"{transfer:7s} {_rate(best['img_s'])} img/s steady, {best['pass_img_s']:9.1f} img/s per pass, "
              f"{best['cpu_ms_per_image']:.3f} ms CPU/img")
    return figures


def main(argv: list[str]) -> None:
    del argv
    strategy = distribute.resolve_strategy(_STRATEGY.value)
    from tests.shard_factory import write_shards

    with tempfile.TemporaryDirectory() as scratch:
        write_shards(scratch, {SPLIT: _RECORDS.value, SMALL: _small_records()}, image_size=_IMAGE_SIZE.value,
                     shards_per_split=8)
        figures = measure(strategy, scratch)
    figures["devices"] = [d.name for d in tf.config.list_logical_devices()]
    if _JSON_OUT.value:
        write_json(_JSON_OUT.value, figures)


if __name__ == "__main__":
    app.run(main)
