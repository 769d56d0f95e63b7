"""The builder's configuration: one frozen field per flag of build_tfrecords.py, with its default.

Imports nothing heavy, so the flag definitions can take their defaults from here without loading
TensorFlow.
"""

from __future__ import annotations

import dataclasses

from contracts.errors import UserInputError
from preprocess.images import MAX_IMAGE_PIXELS

SPLITS = ("grouped", "official", "all", "unlabeled")
# A grouped build holds out a test split unless asked not to; the other modes take their test
# split from the NIH lists (official) or have none (all, unlabeled), so --test_fraction shapes nothing there.
DEFAULT_TEST_FRACTION = {"grouped": 0.2}
# bbox crops each image that has boxes to their union: the reference (seed) project's mode. Only
# abnormal NIH images have boxes, so it teaches "zoomed in means abnormal" (README, "Pitfalls").
CROPS = ("bbox", "none")
BBOX_SHORTCUT = ("--crop=bbox: images with boxes are cropped to them, and only abnormal NIH images have boxes, "
                 "so a model can learn that zoomed in means abnormal (README, \"Pitfalls\"); --crop=none "
                 "(the default) avoids it")
IMAGE_FORMATS = ("png", "jpeg")
# local: this machine's process pool (preprocess/builder.py); beam: Apache Beam, on any of its
# runners (preprocess/beam_runner.py). Both write the same shards and manifest.
RUNNERS = ("local", "beam")
# output_dir among them: a shard folder copied or moved elsewhere resumes (or remakes a damaged
# shard) where it now is.
# Fields renamed since a build recorded them (in the state file and manifest.json): old -> new.
# An older folder's record is read under the new names, so its rerun compares like with like.
RENAMED_FIELDS = {"split": "split_by"}
NOT_RECORD_SHAPING = ("output_dir", "workers", "max_skip_fraction", "overwrite", "runner", "beam_pipeline_args")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Every flag of the builder (see flags.define_build_flags for their meaning)."""

    image_dir: str
    output_dir: str
    data_entry_csv: str | None = None
    bbox_csv: str | None = None
    labels_csv: str | None = None  # --split_by=unlabeled only: labels for some of the folder's images
    split_by: str = "grouped"  # one of SPLITS
    val_fraction: float = 0.2
    test_fraction: float | None = None  # None: the split mode's DEFAULT_TEST_FRACTION (else 0), set on construction
    train_val_list: str | None = None
    test_list: str | None = None
    crop: str = "none"  # one of CROPS
    image_size: int = 224
    image_format: str = "png"
    jpeg_quality: int = 95
    num_shards: int | None = None
    workers: int | None = None
    seed: int = 0
    max_skip_fraction: float = 0.01
    max_image_pixels: int = MAX_IMAGE_PIXELS
    overwrite: bool = False
    runner: str = "local"  # one of RUNNERS
    beam_pipeline_args: str = ""  # --runner=beam: Beam's own options, e.g. "--runner=DataflowRunner ..."

    def __post_init__(self):
        if self.test_fraction is None:
            object.__setattr__(self, "test_fraction", default_test_fraction(self.split_by))

    def shaping(self) -> dict:
        """The flags that change the records written (a rerun must agree on all of them)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_RECORD_SHAPING}


def default_test_fraction(split_by: str) -> float:
    """The test share a build with split mode `split_by` gets when --test_fraction is not given."""
    return DEFAULT_TEST_FRACTION.get(split_by, 0.0)



class NothingToBuild(UserInputError):
    """The inputs hold no usable image at all; the message says what was found instead.

    Attributes:
      skipped: the images found and skipped, as the manifest lists them ({"image", "reason"}).
    """

    def __init__(self, message: str, skipped: list[dict[str, str]]):
        super().__init__(message)
        self.skipped = skipped
