"""Every command-line flag of every entry point, defined once.

Each entry point calls its `define_*_flags()` before `app.run(main)`, so importing a library
module never registers a flag. Values are read (`.value` / `FLAGS.x`) only inside `main()`.
Entry points get absl's `--flagfile`, `--helpfull` and `--helpshort` for free.
"""

from __future__ import annotations

from absl import flags

BACKBONES = ("efficientnet_b3", "resnet50", "densenet121")


def _define_once(define, name, *args, **kwargs):
    # Several entry points share a definer (e.g. the demo runs them all in one process).
    if name not in flags.FLAGS:
        define(name, *args, **kwargs)


def define_build_flags() -> None:
    """Flags of `preprocess/build_tfrecords.py`."""
    d = _define_once
    d(flags.DEFINE_string, "data_entry_csv", None,
      "NIH Data_Entry_2017*.csv (plain or .gz, v2017 or v2020 dialect). Not used with --split=unlabeled.")
    d(flags.DEFINE_string, "bbox_csv", None, "Optional NIH BBox_List_2017.csv (boxes in the 1024 frame).")
    d(flags.DEFINE_string, "image_dir", None,
      "Folder searched recursively for the images (the download's images_0NN/images/ layout works).")
    d(flags.DEFINE_string, "output_dir", None, "Where shards, manifest.json and absent.txt go.")
    d(flags.DEFINE_enum, "split", "grouped", ["grouped", "official", "all", "unlabeled"],
      "grouped: train/val(/test) by patient, stratified by label; official: the NIH lists; "
      "all: one split 'all'; unlabeled: every image under --image_dir as split 'eval', label -1.")
    d(flags.DEFINE_float, "val_fraction", 0.2, "Share of records in val (grouped; official: of train_val).")
    d(flags.DEFINE_float, "test_fraction", 0.0, "Share of records in test (grouped only).")
    d(flags.DEFINE_string, "train_val_list", None, "NIH train_val_list.txt (--split=official).")
    d(flags.DEFINE_string, "test_list", None, "NIH test_list.txt (--split=official).")
    d(flags.DEFINE_enum, "crop", "bbox", ["bbox", "none"],
      "bbox: crop images that have boxes to the union of their boxes (the reference; beware the "
      "shortcut: only abnormal images have boxes); none: never crop.")
    d(flags.DEFINE_integer, "image_size", 224, "Side of the stored square images.", lower_bound=8)
    d(flags.DEFINE_enum, "image_format", "png", ["png", "jpeg"],
      "Stored encoding of the one grayscale channel: png (lossless) or jpeg (smaller, faster to decode).")
    d(flags.DEFINE_integer, "jpeg_quality", 95, "JPEG quality with --image_format=jpeg.",
      lower_bound=1, upper_bound=100)
    d(flags.DEFINE_integer, "num_shards", None,
      "Shards of the largest split (others proportional, at least 1). Default: ~128 MB shards, "
      "at least 16 when the split has that many records.", lower_bound=1)
    d(flags.DEFINE_integer, "workers", None, "Worker processes (default: all cores). Never changes the output.",
      lower_bound=1)
    d(flags.DEFINE_integer, "seed", 0, "Seed of the split and of the record order.")
    d(flags.DEFINE_float, "max_skip_fraction", 0.01,
      "Exit 1 when skipped / (CSV rows whose file is present) exceeds this (good records are written anyway).")
    d(flags.DEFINE_integer, "max_image_pixels", 64_000_000,
      "Images with more pixels are refused as possible decompression bombs.", lower_bound=1)
    d(flags.DEFINE_bool, "overwrite", False,
      "Replace an existing build made with different record-shaping flags.")
