"""`predict.py --images`: raw PNG, JPEG or DICOM files scored in one command, and `--ensemble`
applied to the members' predictions.

The files go through the builder's own code (`preprocess.builder`, split "unlabeled") into a
temporary shard folder (under $TMPDIR), at the models' image size and with the training
manifest's pixel limit, so a raw file is decoded, converted to gray and resized exactly as the
training images were. The folder is removed whatever happens. Unreadable files are listed with
their reason in each prediction file's sidecar (`skipped`) and counted on the console.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Sequence

from contracts import ensemble_file
from contracts import manifest as manifest_lib
from contracts.errors import UserInputError, check_output_folder
from contracts.prediction_files import align, few, read_predictions, write_predictions
from contracts.run_folder import load_run_config
from preprocess.config import BuildConfig, BuildError
from preprocess.images import MAX_IMAGE_PIXELS

IMAGES_SPLIT = "eval"  # the split an unlabeled build writes
TEMP_SHARDS_PREFIX = "cxr-images-"


@dataclasses.dataclass(frozen=True)
class RawImages:
    """What `--images` resolved to: the build settings and what the build skipped."""

    images: str
    image_size: int
    max_pixels: int
    skipped: list[dict[str, str]]


def _max_pixels(config: dict[str, Any]) -> int:
    """The pixel limit of the shards a model trained on (the builder's default when unknown)."""
    try:
        built = manifest_lib.load_manifest(config["data_dir"]).get("config", {})
    except (OSError, ValueError, KeyError):
        return MAX_IMAGE_PIXELS
    return int(built.get("max_image_pixels") or MAX_IMAGE_PIXELS)


def check_images_inputs(model_dirs: Sequence[str], images: str, output: str,
                        labels_csv: str | None = None) -> tuple[int, int]:
    """Checks `--images` runs before any work; returns (image size, pixel limit) of the models.

    Raises:
      UserInputError: no models, models trained at different sizes, nothing at `images`, or an
        unusable output location.
    """
    if not model_dirs:
        raise UserInputError("no --model_dir given; pass the folder train.py wrote")
    check_output_folder(os.path.dirname(output), "output")
    configs = [load_run_config(d) for d in model_dirs]
    sizes = sorted({int(c["image_size"]) for c in configs})
    if len(sizes) > 1:
        raise UserInputError(f"the --model_dir models were trained at {sizes} px; score raw images with "
                             "models of one image size per predict.py run")
    from preprocess import sources

    if not os.path.isdir(images) and not (sources.is_pattern(images) and sources.scan_images(images)):
        raise UserInputError(f"--images={images} is neither a folder nor a pattern matching any file; "
                             "pass a folder (searched recursively) or a quoted glob such as 'scans/*.dcm'")
    if labels_csv is not None:
        from preprocess import nih_metadata

        if not os.path.isfile(labels_csv):
            raise UserInputError(f"--labels_csv={labels_csv} does not exist")
        try:
            nih_metadata.read_labels_csv(labels_csv)
        except ValueError as err:
            raise UserInputError(str(err)) from None
    return sizes[0], min(_max_pixels(c) for c in configs)


def build_images(images: str, shard_dir: str, image_size: int, max_pixels: int, workers: int | None,
                 labels_csv: str | None = None) -> RawImages:
    """Builds the raw files into `shard_dir` with the builder's rules; returns what was skipped.

    Raises:
      UserInputError: not one readable image.
    """
    from preprocess import builder

    config = BuildConfig(image_dir=images, output_dir=shard_dir, split="unlabeled", image_size=image_size,
                         crop="none", max_image_pixels=max_pixels, workers=workers, max_skip_fraction=1.0,
                         labels_csv=labels_csv)
    try:
        manifest = builder.build(config).manifest
    except BuildError as err:  # said in the builder's terms (--image_dir): say it in predict.py's
        raise UserInputError(f"--images={images}: no readable PNG, JPEG or DICOM image ({err})") from None
    skipped = manifest.get("skipped", [])
    if not manifest["splits"].get(IMAGES_SPLIT, {}).get("records"):
        reasons = "; ".join(f"{s['image']}: {s['reason']}" for s in skipped[:3])
        raise UserInputError(f"--images={images}: no readable PNG, JPEG or DICOM image"
                             f"{f' ({len(skipped)} skipped: {reasons})' if skipped else ''}")
    return RawImages(os.path.abspath(images), image_size, max_pixels, skipped)


def predict_images(model_dirs: Sequence[str], images: str, output: str, *, workers: int | None = None,
                   labels_csv: str | None = None, per_model: bool = False, **prediction_kwargs):
    """Scores the raw files at `images` with each model; returns (PredictionResult, RawImages).

    `prediction_kwargs` go to `evaluation.prediction.run_prediction` (batch size, strategy, ...).
    """
    from evaluation import prediction

    image_size, max_pixels = check_images_inputs(model_dirs, images, output, labels_csv)
    shard_dir = tempfile.mkdtemp(prefix=TEMP_SHARDS_PREFIX)  # in $TMPDIR; removed below
    try:
        raw = build_images(images, shard_dir, image_size, max_pixels, workers, labels_csv)
        result = prediction.run_prediction(
            model_dirs, shard_dir, IMAGES_SPLIT, output, per_model=per_model,
            extra_sidecar={"data_dir": None, "split": None, "images": raw.images, "skipped": raw.skipped},
            **prediction_kwargs)
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)
    return result, raw


def apply_ensemble(ensemble: str, model_dirs: Sequence[str], member_files: Sequence[str], output: str,
                   extra_sidecar: dict[str, Any] | None = None) -> tuple[int, int, float]:
    """Blends the members' prediction files with the ensemble file's weights into `output`.

    Args:
      ensemble: ensemble.py's `.probabilities.json`.
      model_dirs: the --model_dir folders, in the order of `member_files`.
      member_files: each model's prediction CSV.
      output: the blended prediction CSV (image_id, p_abnormal[, label]) with its sidecar.

    Returns:
      (records, records at or above the ensemble's threshold, the threshold).
    """
    from evaluation import blend as blend_lib

    loaded = ensemble_file.load_ensemble(ensemble)
    by_dir = dict(zip(model_dirs, member_files))
    pairs = ensemble_file.match_members(loaded, model_dirs)
    files = [read_predictions(by_dir[model_dir]) for _, model_dir in pairs]
    aligned = align(files)
    weights = blend_lib.normalise_weights([member.weight for member, _ in pairs], len(pairs))
    blended = blend_lib.blend(aligned.probs, weights)
    write_predictions(output, aligned.ids, blended, aligned.labels, sidecar={
        "backbone": "ensemble", "ensemble": os.path.abspath(ensemble), "threshold": loaded.threshold,
        "weights": {member.name: float(w) for (member, _), w in zip(pairs, weights)},
        "inputs": [os.path.abspath(by_dir[d]) for _, d in pairs], **(extra_sidecar or {})})
    decisions = blend_lib.decide(blended, loaded.threshold)
    return len(aligned.ids), int(decisions.sum()), loaded.threshold


def skipped_summary(raw: RawImages) -> str:
    """One line on the files `--images` could not read (their reasons are in the sidecar)."""
    if not raw.skipped:
        return f"every file under {raw.images} was read"
    return (f"{len(raw.skipped)} file(s) skipped, e.g. {few([s['image'] for s in raw.skipped])}; "
            "reasons in the prediction sidecar's 'skipped'")
