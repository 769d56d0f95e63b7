"""The builder's configuration: one frozen setting per flag of build_tfrecords.py, without TensorFlow."""

from __future__ import annotations

import dataclasses

from contracts import gate_settings as gate
from contracts.decode_rules import MIN_IMAGE_SIDE  # noqa: F401  (demo.py's bound on its sources)
from contracts.errors import UserInputError
from contracts.manifest import CALIBRATION_SPLIT
from contracts.settings import Shared, check, setting
from contracts.shared import IMAGE_SIZE, LABELS_CSV, OUTPUT_DIR, SEED, WORKERS
from preprocess.images import MAX_IMAGE_PIXELS

SPLITS = ("grouped", "official", "all", "unlabeled")
DEFAULT_TEST_FRACTION = {"grouped": 0.2}  # official: from the NIH lists; all and unlabeled have none
# bbox crops each image that has boxes to their union: the reference (seed) project's mode. Only
# abnormal NIH images have boxes, so it teaches "zoomed in means abnormal" (docs/data.md, "Pitfalls").
CROPS = ("bbox", "none")
BBOX_SHORTCUT = ("--crop=bbox: images with boxes are cropped to them, and only abnormal NIH images have "
                 "boxes, so a model can learn that zoomed in means abnormal (docs/data.md, \"Pitfalls\"); "
                 "--crop=none (the default) avoids it")
IMAGE_FORMATS = ("png", "jpeg")
RUNNERS = ("local", "beam")  # this machine's process pool (builder.py), or Apache Beam (beam_runner.py)
RENAMED_FIELDS = {"split": "split_by"}  # old -> new name in an older build's state file and manifest
# Absent from an older build's state file: the value it built (no frontal-chest gate: empty accepts all).
ADDED_FIELDS = {"calibration_fraction": 0.0, "accepted_modalities": [], "accepted_body_parts": [],
                "accepted_views": [], "min_image_side": 0, "min_image_std": 0.0}
GATE_FIELDS = tuple(s.name for s in gate.ACCEPTED)
# output_dir among them: a shard folder copied elsewhere resumes where it now is.
NOT_RECORD_SHAPING = ("output_dir", "workers", "max_skip_fraction", "overwrite", "runner",
                      "beam_pipeline_args")

CROP = Shared("crop", None, "bbox: crop images that have boxes to the union of their boxes (the reference; "
              "beware the shortcut: only abnormal images have boxes); none: never crop.", CROPS)
NUM_PATIENTS = Shared("num_patients", None, "Synthetic patients to generate.", lower=1)
SOURCE_SIZE = Shared("source_size", None, "Side of the synthetic source PNGs (boxes stay in the 1024 frame, "
                     "as in NIH).", lower=16)


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """build_tfrecords.py: NIH metadata and images into TFRecord shards."""

    image_dir: str | None = setting(None, (
        "Folder searched recursively for the images (the download's images_0NN/images/ layout works; "
        "linked folders are followed). PNG and JPEG by extension, DICOM by content. With "
        "--split_by=unlabeled also a quoted glob pattern of files, e.g. '/data/**/*.dcm'."))
    output_dir: str | None = OUTPUT_DIR.field(note="Here: the shards, manifest.json and absent.txt.")
    data_entry_csv: str | None = setting(None, (
        "NIH Data_Entry_2017*.csv (plain or .gz, v2017 or v2020 dialect). Not used with "
        "--split_by=unlabeled."))
    bbox_csv: str | None = setting(None, "Optional NIH BBox_List_2017.csv (boxes in the 1024 frame).")
    labels_csv: str | None = LABELS_CSV.field(note=(
        "With --split_by=unlabeled only (the other modes take labels from --data_entry_csv)."))
    split_by: str = setting("grouped", (
        "How records are split: grouped: train/val(/test) by patient, stratified by label; official: the NIH "
        "lists; all: one split 'all'; unlabeled: every image under --image_dir as split 'eval', label -1."),
        choices=SPLITS)
    val_fraction: float = setting(0.2, "Share of records in val (grouped; official: of train_val).")
    test_fraction: float | None = setting(None, (
        "Share of records in test (grouped only). Default: "
        + ", ".join(f"{v:g} for --split_by={s}" for s, v in DEFAULT_TEST_FRACTION.items()) + ", else 0."))
    calibration_fraction: float = setting(0.0, (
        f"Share of records in a '{CALIBRATION_SPLIT}' split, by patient, used only to fit the triage "
        "thresholds, so their guarantee holds (images that chose no epoch, temperature or weight). grouped: "
        "beside val and test; official: of train_val, beside val. 0: no such split."))
    train_val_list: str | None = setting(None, "NIH train_val_list.txt (--split_by=official).")
    test_list: str | None = setting(None, "NIH test_list.txt (--split_by=official).")
    crop: str = CROP.field("none", note=(
        "Here: none by default; bbox is the reference project's mode (docs/data.md, 'Pitfalls')."))
    image_size: int = IMAGE_SIZE.field(224, note="Here: the side of the stored images.")
    image_format: str = setting("png", (
        "Stored encoding of the one grayscale channel: png (lossless) or jpeg (smaller, faster to decode)."),
        choices=IMAGE_FORMATS)
    jpeg_quality: int = setting(95, "JPEG quality with --image_format=jpeg.", lower=1, upper=100)
    num_shards: int | None = setting(None, (
        "Shards of the largest split (others proportional, at least 1). Default: ~128 MB shards, at least 16 "
        "when the split has that many records."), lower=1)
    workers: int | None = WORKERS.field()
    seed: int = SEED.field(note="Here: the split and the record order.")
    max_skip_fraction: float = setting(0.01, (
        "Exit 1 when skipped / (CSV rows whose file is present) exceeds this (good records are written "
        "anyway)."), lower=0.0, upper=1.0)
    max_image_pixels: int = setting(MAX_IMAGE_PIXELS, "Images with more pixels are refused as possible "
                                    "decompression bombs.", lower=1)
    accepted_modalities: tuple[str, ...] = gate.ACCEPTED_MODALITIES.field()
    accepted_body_parts: tuple[str, ...] = gate.ACCEPTED_BODY_PARTS.field()
    accepted_views: tuple[str, ...] = gate.ACCEPTED_VIEWS.field()
    min_image_side: int = gate.MIN_SIDE.field()
    min_image_std: float = gate.MIN_STD.field()
    overwrite: bool = setting(False, (
        "Replace an existing build made with different record-shaping flags. Without it, a rerun in a built "
        "folder keeps that build's values for the flags it leaves out."))
    runner: str = setting("local", (
        "local: this machine's process pool (--workers); beam: Apache Beam (pip install -e '.[beam]') on "
        "the runner --beam_pipeline_args names (DirectRunner by default; Dataflow, Flink, Spark). Same "
        "shards and manifest either way. --image_dir, --output_dir and the CSVs may be gs:// URLs."),
        choices=RUNNERS)
    beam_pipeline_args: str = setting("", (
        "With --runner=beam: Beam's pipeline options as one quoted string, e.g. \"--runner=DataflowRunner "
        "--project=P --region=R --temp_location=gs://B/tmp\"."))

    def __post_init__(self):
        check(self)
        if self.test_fraction is None:
            object.__setattr__(self, "test_fraction", default_test_fraction(self.split_by))
        for name in GATE_FIELDS:  # also lists, as a recorded build's state file gives them
            object.__setattr__(self, name, gate.normalized(getattr(self, name)))

    def shaping(self) -> dict:
        """The settings that change the records written (a rerun must agree on all of them), as JSON
        holds them (lists, not tuples), so a state file read back compares equal."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if k not in NOT_RECORD_SHAPING}


def default_test_fraction(split_by: str) -> float:
    """The test share a build with split mode `split_by` gets when test_fraction is not given."""
    return DEFAULT_TEST_FRACTION.get(split_by, 0.0)


class NothingToBuild(UserInputError):
    """The inputs hold no usable image at all; `skipped` lists what was found, as the manifest does."""

    def __init__(self, message: str, skipped: list[dict[str, str]]):
        super().__init__(message)
        self.skipped = skipped
