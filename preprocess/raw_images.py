"""`predict.py --images`: raw PNG, JPEG or DICOM files built by the builder itself (split "unlabeled",
the models' image size and pixel limit) into a temporary shard folder, removed afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Any, Iterator, Sequence

from contracts import gate_settings
from contracts.errors import UserInputError, check_output_file
from contracts.labels_csv import load_labels
from contracts.prediction_files import few
from contracts.run_folder import RunFolder
from preprocess import sources
from preprocess.config import BuildConfig, NothingToBuild

IMAGES_SPLIT = "eval"  # the split an unlabeled build writes


@dataclasses.dataclass(frozen=True)
class RawImages:
    """What --images resolved to and what the build skipped."""
    images: str
    skipped: list[dict[str, str]]
    ignored: int  # files that are not PNG, JPEG or DICOM by their name or content
    # Files scored that the frontal-chest gate could not check: {"image", "missing": the tags they lack}
    unchecked: list[dict] = dataclasses.field(default_factory=list)
    gate: dict[str, Any] = dataclasses.field(default_factory=dict)  # the gate's settings the build applied


def check_one_source(data_dir: str | None, images: str | None) -> None:
    if (data_dir is None) == (images is None):
        raise UserInputError("pass either --data_dir (a shard folder) or --images (raw files), not both or "
                             "neither")


def check_output_outside_images(output_dir: str, flag: str, images: str) -> None:
    """Refuses an output folder inside --images (a glob's fixed leading folders)."""
    root = os.path.realpath(sources.pattern_root(images))
    if os.path.commonpath([os.path.realpath(output_dir or "."), root]) == root:
        raise UserInputError(f"--{flag}={output_dir} is inside --images={images}: what it writes there would "
                             "be read as images by the next run over it; choose a folder outside it")


def check_images_inputs(model_dirs: Sequence[str], images: str, output: str,
                        labels_csv: str | None = None, output_flag: str = "output") -> tuple[int, int]:
    """Checks an --images run before any work; returns the models' (image size, pixel limit).
    UserInputError: no models, several sizes, nothing at `images`, bad --labels_csv or `output`."""
    if not model_dirs:
        raise UserInputError("no --model_dir given; pass the folder train.py wrote")
    check_output_file(output, output_flag)
    runs = [RunFolder.open(d) for d in model_dirs]
    sizes = sorted({run.image_size for run in runs})
    if len(sizes) > 1:
        raise UserInputError(f"the --model_dir models were trained at {sizes} px; score raw images with "
                             "models of one image size per predict.py run")
    if not os.path.isdir(images) and not (sources.is_pattern(images) and sources.scan_images(images)):
        raise UserInputError(f"--images={images} is neither a folder nor a pattern matching any file; "
                             "pass a folder (searched recursively) or a quoted glob such as 'scans/*.dcm'")
    if labels_csv is not None:
        load_labels(labels_csv, "labels_csv")
    return sizes[0], min(run.max_image_pixels for run in runs)


def _nothing_readable(images: str, skipped: list[dict[str, str]]) -> str:
    reasons = "; ".join(f"{s['image']}: {s['reason']}" for s in skipped[:3])
    return (f"--images={images}: no readable PNG, JPEG or DICOM image"
            f"{f' ({len(skipped)} skipped: {reasons})' if skipped else ''}")


@contextlib.contextmanager
def built_images(images: str, image_size: int, max_pixels: int, workers: int | None = None,
                 labels_csv: str | None = None, gate: dict[str, Any] | None = None
                 ) -> Iterator[tuple[str, RawImages]]:
    """Yields (temporary shard folder, `RawImages`) of the raw files built there, then removes it;
    UserInputError when not one is readable. `gate`: the gate's settings (`gate_settings.settings_of`),
    else the builder's defaults."""
    from preprocess import builder

    shard_dir = tempfile.mkdtemp(prefix="cxr-images-")
    config = BuildConfig(image_dir=images, output_dir=shard_dir, split_by="unlabeled", image_size=image_size,
                         crop="none", max_image_pixels=max_pixels, workers=workers, max_skip_fraction=1.0,
                         labels_csv=labels_csv, **(gate or {}))
    try:
        try:
            manifest = builder.build(config).manifest
        except NothingToBuild as err:  # the builder says it with its --image_dir: say it with --images
            raise UserInputError(_nothing_readable(images, err.skipped)) from None
        skipped = manifest.get("skipped", [])
        if not manifest["splits"].get(IMAGES_SPLIT, {}).get("records"):
            raise UserInputError(_nothing_readable(images, skipped))
        yield shard_dir, RawImages(os.path.abspath(images), skipped, manifest.get("unlisted", 0),
                                   manifest.get("unchecked", []), gate_settings.settings_of(config))
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)


def sidecar_fields(raw: RawImages) -> dict[str, Any]:
    """What a prediction file made from raw files records instead of a shard folder."""
    return {"data_dir": None, "split": None, "images": raw.images, "skipped": raw.skipped,
            "ignored_files": raw.ignored, "unchecked": raw.unchecked, "gate": raw.gate}


def skipped_summary(raw: RawImages, reasons_in: str = "the prediction sidecar's 'skipped'") -> str:
    """One line on the files --images could not read (reasons in `reasons_in`) or passed over."""
    ignored = (f"; {raw.ignored} other file(s) ignored: not PNG, JPEG or DICOM by name or content"
               if raw.ignored else "")
    if raw.unchecked:
        ignored += (f"; {len(raw.unchecked)} scored file(s) not checked as frontal chest films (no Modality, "
                    "BodyPartExamined or ViewPosition to check), listed in 'unchecked'")
    if not raw.skipped:
        read = raw.images if os.path.isfile(raw.images) else f"every image under {raw.images}"
        return f"{read} was read{ignored}"
    return (f"{len(raw.skipped)} file(s) skipped, e.g. {few([s['image'] for s in raw.skipped])}; "
            f"reasons in {reasons_in}{ignored}")
