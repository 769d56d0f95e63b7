"""Offline builder: NIH metadata + images → resized TFRecord shards and `manifest.json`.

    python preprocess/build_tfrecords.py --data_entry_csv=Data_Entry_2017_v2020.csv \
        --bbox_csv=BBox_List_2017.csv --image_dir=NIH/ --output_dir=shards/

The library is `preprocess/builder.py` (work units, process pool, manifest) over
`preprocess/plan.py` (metadata → splits → shards); this script parses the flags and calls it.
Rerunning a command in its --output_dir resumes the build; flags left out keep the values that
build recorded (--overwrite replaces it with what the command line says, defaults included).
Exit status: 0 built, 1 more than --max_skip_fraction skipped or bad input (one line, no traceback).
"""

from __future__ import annotations

import dataclasses
import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run as a script: this folder's modules (config, images, ...) would shadow others

from absl import flags  # noqa: E402

import flags as project_flags  # noqa: E402
from preprocess.config import BuildConfig  # noqa: E402


def config_from_flags(values: flags.FlagValues) -> BuildConfig:
    """Builds the frozen config from parsed absl flag values."""
    return BuildConfig(**{f.name: values[f.name].value for f in dataclasses.fields(BuildConfig)})


def given_flags(values: flags.FlagValues) -> frozenset[str]:
    """The config fields whose flag was on the command line (the others hold their defaults)."""
    return frozenset(f.name for f in dataclasses.fields(BuildConfig) if values[f.name].present)


def main(argv: list[str]) -> int:
    del argv  # stray arguments are refused by project_flags.run_tool
    from preprocess import builder

    # A rerun in a built folder keeps that build's settings for the flags it does not give.
    config = builder.keep_recorded(config_from_flags(flags.FLAGS), given_flags(flags.FLAGS))
    result = builder.build(config)  # bad input: project_flags.run_tool says it in one line
    print(result.summary)
    return 0 if result.ok else 1


def run() -> None:
    """Console entry point (setup.cfg) and `python preprocess/build_tfrecords.py`; runs `main`."""
    project_flags.run_tool(project_flags.define_build_flags, main, __doc__)


if __name__ == "__main__":
    run()
