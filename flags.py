"""preprocess/synthetic.py's flags, until its shim runs on `contracts.cli.run` with a config of its own."""

from __future__ import annotations

import dataclasses
import sys

from absl import flags

from contracts import cli
from contracts.settings import setting
from contracts.shared import OUTPUT_DIR, SEED
from preprocess.config import NUM_PATIENTS, SOURCE_SIZE


def _synthetic_settings() -> type:
    from preprocess.synthetic import PRESETS, SyntheticConfig

    default = {f.name: f.default for f in dataclasses.fields(SyntheticConfig)}

    @dataclasses.dataclass(frozen=True)
    class SyntheticSettings:
        output_dir: str | None = OUTPUT_DIR.field(note="Here: the CSVs and images_001/images/*.png.")
        preset: str = setting(default["preset"], (
            "radiograph: varied anatomy, exposure, distractors and five finding kinds (the demo's data); "
            "easy: one anatomy and one bright lesion (data a tiny model learns in seconds)."),
            choices=tuple(PRESETS))
        label_noise: float | None = setting(default["label_noise"], (
            "Share of images whose written label is flipped, listed in label_noise.csv (default: the "
            f"preset's, {PRESETS})."), lower=0.0, upper=1.0)
        num_patients: int = NUM_PATIENTS.field(default["num_patients"])
        max_images_per_patient: int = setting(default["max_images_per_patient"], "Each patient gets 1..this "
                                              "many images.", lower=1)
        source_size: int = SOURCE_SIZE.field(default["source_size"])
        abnormal_fraction: float = setting(default["abnormal_fraction"], "Share of images with a finding.")
        bbox_fraction: float = setting(default["bbox_fraction"], "Share of findings given a bbox row.")
        seed: int = SEED.field(default["seed"], "Here: the patients, images and labels.")

    return SyntheticSettings


def define_synthetic_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Flags of `preprocess/synthetic.py`: `SyntheticConfig`'s fields."""
    cli.define_flags(_synthetic_settings(), fv)


def run_tool(define, main, doc: str | None) -> None:
    """`contracts.cli.run` for a `main(argv)` that reads absl's flags itself."""
    from absl import app

    define()
    cli.exit_on_help(sys.argv, doc)
    app.run(lambda argv: cli.guarded_main(lambda: main(argv), argv))


