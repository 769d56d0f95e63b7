"""Offline builder: NIH metadata + images → resized TFRecord shards and `manifest.json`.

    python preprocess/build_tfrecords.py --data_entry_csv=Data_Entry_2017_v2020.csv \\
        --bbox_csv=BBox_List_2017.csv --image_dir=NIH/ --output_dir=shards/

Rerunning a command in its --output_dir resumes the build; flags left out keep the values that
build recorded (--overwrite replaces it with what the command line says, defaults included).
Exit status: 0 built, 1 more than --max_skip_fraction skipped or bad input (one line, no traceback).
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run as a script: this folder's modules (config, images, ...) would shadow others

from contracts import cli  # noqa: E402
from preprocess.config import BuildConfig  # noqa: E402

RENAMED = {"split": "--split_by (how records are split; --split now only names a split to read)"}


def main(config: BuildConfig) -> int:
    from preprocess import builder

    # A rerun in a built folder keeps that build's settings for the flags it does not give.
    result = builder.build(builder.keep_recorded(config, cli.given(BuildConfig)))
    print(result.summary)
    return 0 if result.ok else 1


def run() -> None:
    """Console entry point (setup.cfg) and `python preprocess/build_tfrecords.py`."""
    cli.run(BuildConfig, main, __doc__, renamed=RENAMED)


if __name__ == "__main__":
    run()
