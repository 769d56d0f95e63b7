"""`predict.py --images`: raw PNG, JPEG or DICOM files made into a temporary shard folder.

The files go through the builder's own code (`preprocess.builder`, split "unlabeled") into a
temporary shard folder (under $TMPDIR), at the models' image size and with the training
manifest's pixel limit, so a raw file is decoded, converted to gray and resized exactly as the
training images were. The folder is removed whatever happens. Unreadable files are listed with
their reason in each prediction file's sidecar (`skipped`) and counted on the console.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Any, Iterator, Sequence

from contracts import manifest as manifest_lib
from contracts.errors import UserInputError, check_output_file
from contracts.prediction_files import few
from contracts.run_folder import RunFolder
from preprocess.config import BuildConfig, NothingToBuild
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
    ignored: int = 0  # files that are not PNG, JPEG or DICOM by their name or content


def _max_pixels(config: dict[str, Any]) -> int:
    """The pixel limit of the shards a model trained on (the builder's default when unknown)."""
    try:
        built = manifest_lib.ShardFolder.open(config["data_dir"]).manifest["config"]
    except (OSError, ValueError, KeyError):
        return MAX_IMAGE_PIXELS
    return int(built.get("max_image_pixels") or MAX_IMAGE_PIXELS)


def check_one_source(data_dir: str | None, images: str | None) -> None:
    """The tools that read shards or raw files (predict.py, explain.py) take exactly one of them.

    Raises:
      UserInputError: both or neither.
    """
    if (data_dir is None) == (images is None):
        raise UserInputError("pass either --data_dir (a shard folder) or --images (raw files), not both or neither")


def check_output_outside_images(output_dir: str, flag: str, images: str) -> None:
    """Refuses an output folder at or under the --images folder (a glob's fixed leading folders):
    the files written there (explain.py's overlays are PNGs) would be read as images by the next run.

    Raises:
      UserInputError: naming both flags and the fix.
    """
    from preprocess import sources

    root = os.path.realpath(sources.pattern_root(images))
    if os.path.commonpath([os.path.realpath(output_dir or "."), root]) == root:
        raise UserInputError(f"--{flag}={output_dir} is inside --images={images}: what it writes there would "
                             "be read as images by the next run over it; choose a folder outside it")


def check_images_inputs(model_dirs: Sequence[str], images: str, output: str,
                        labels_csv: str | None = None, output_flag: str = "output") -> tuple[int, int]:
    """Checks `--images` runs before any work; returns (image size, pixel limit) of the models.
    `output` is a file the run writes; `output_flag` names the flag that placed it.

    Raises:
      UserInputError: no models, models trained at different sizes, nothing at `images`, or an
        unusable output location.
    """
    if not model_dirs:
        raise UserInputError("no --model_dir given; pass the folder train.py wrote")
    check_output_file(output, output_flag)
    configs = [RunFolder.open(d).config for d in model_dirs]
    sizes = sorted({int(c["image_size"]) for c in configs})
    if len(sizes) > 1:
        raise UserInputError(f"the --model_dir models were trained at {sizes} px; score raw images with "
                             "models of one image size per predict.py run")
    from preprocess import sources

    if not os.path.isdir(images) and not (sources.is_pattern(images) and sources.scan_images(images)):
        raise UserInputError(f"--images={images} is neither a folder nor a pattern matching any file; "
                             "pass a folder (searched recursively) or a quoted glob such as 'scans/*.dcm'")
    if labels_csv is not None:
        from contracts import labels_csv as labels_csv_lib

        if not os.path.isfile(labels_csv):
            raise UserInputError(f"--labels_csv={labels_csv} does not exist")
        try:
            labels_csv_lib.read_labels_csv(labels_csv)
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

    config = BuildConfig(image_dir=images, output_dir=shard_dir, split_by="unlabeled", image_size=image_size,
                         crop="none", max_image_pixels=max_pixels, workers=workers, max_skip_fraction=1.0,
                         labels_csv=labels_csv)
    try:
        manifest = builder.build(config).manifest
    except NothingToBuild as err:  # the builder says it with its --image_dir: say it with --images
        raise UserInputError(_nothing_readable(images, err.skipped)) from None
    skipped = manifest.get("skipped", [])
    if not manifest["splits"].get(IMAGES_SPLIT, {}).get("records"):
        raise UserInputError(_nothing_readable(images, skipped))
    return RawImages(os.path.abspath(images), image_size, max_pixels, skipped, manifest.get("unlisted", 0))


def _nothing_readable(images: str, skipped: list[dict[str, str]]) -> str:
    reasons = "; ".join(f"{s['image']}: {s['reason']}" for s in skipped[:3])
    return (f"--images={images}: no readable PNG, JPEG or DICOM image"
            f"{f' ({len(skipped)} skipped: {reasons})' if skipped else ''}")


@contextlib.contextmanager
def built_images(images: str, image_size: int, max_pixels: int, workers: int | None = None,
                 labels_csv: str | None = None) -> Iterator[tuple[str, RawImages]]:
    """Builds the raw files into a temporary shard folder (under $TMPDIR); yields (folder, what was
    skipped) and removes the folder afterwards, whatever happens."""
    shard_dir = tempfile.mkdtemp(prefix=TEMP_SHARDS_PREFIX)
    try:
        yield shard_dir, build_images(images, shard_dir, image_size, max_pixels, workers, labels_csv)
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)


def sidecar_fields(raw: RawImages) -> dict[str, Any]:
    """What a prediction file made from raw files records about them (instead of a shard folder)."""
    return {"data_dir": None, "split": None, "images": raw.images, "skipped": raw.skipped,
            "ignored_files": raw.ignored}


def skipped_summary(raw: RawImages, reasons_in: str = "the prediction sidecar's 'skipped'") -> str:
    """One line on the files `--images` could not read (their reasons are in `reasons_in`) and
    on the files it passed over, which are not images by their name or content."""
    ignored = (f"; {raw.ignored} other file(s) ignored: not PNG, JPEG or DICOM by name or content"
               if raw.ignored else "")
    if not raw.skipped:
        read = f"{raw.images} was read" if os.path.isfile(raw.images) else f"every image under {raw.images} was read"
        return read + ignored
    return (f"{len(raw.skipped)} file(s) skipped, e.g. {few([s['image'] for s in raw.skipped])}; "
            f"reasons in {reasons_in}{ignored}")
