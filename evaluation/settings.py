"""Settings of prediction, blending, explaining and the report, without TensorFlow: the defaults, and
predict.py's, ensemble.py's and explain.py's configs, which the library entry points take whole."""

from __future__ import annotations

import dataclasses
import os

from contracts import explanation_folder as folder
from contracts import gate_settings as gate
from contracts import output_names as files
from contracts.labels import FINDINGS
from contracts.run_folder import MODEL_PRECISION
from contracts.settings import REQUIRED, Shared, check, setting
from contracts.shared import (
    DATA_DIR,
    ENSEMBLE,
    IMAGES,
    LABELS_CSV,
    MODEL_DIR,
    OUTPUT,
    OUTPUT_DIR,
    SPLIT,
    WORKERS,
)
from models import registry, tta
from pipeline.options import TRANSFER
from training.config import GLOBAL_BATCH_SIZE, PRECISION, STRATEGY

ENSEMBLE_THRESHOLD = 0.6  # the reference's blend called an image abnormal at P >= 0.6
SINGLE_MODEL_THRESHOLD = 0.5  # a softmax model's own decision: the larger of its two outputs
# explain.py --finding's tp/fp/fn: blended calibrated P(finding) >= it (no per-finding threshold is fitted).
FINDING_THRESHOLD = 0.5
FIT_STEP = 0.05  # spacing of the weight grid `blend.fit` searches
BOOTSTRAP = 1000  # resamples behind each 95% interval of the report
PREDICT_BATCH_SIZE = 64
EXPLAIN_PER_GROUP = 4  # images shown per group (true positives, false positives, false negatives)
EXPLAIN_BATCH_SIZE = 16  # images per Grad-CAM step: a backward pass holds every activation
# The centred-Gaussian baseline map's sigma, as a fraction of the side: the heart and medial lung fields.
LOCALIZATION_BASELINE_SIGMA = 0.25
# Triage (evaluation/triage.py): the rule-out threshold's target miss rate (abnormal images cleared ÷
# abnormal images), the rule-in threshold's target false-alarm rate (normal images prioritized ÷ normal
# images), and the share of calibration draws for which either may fail.
TRIAGE_ALPHA, TRIAGE_BETA, TRIAGE_DELTA = 0.05, 0.1, 0.1
# The share of calibration images with the largest spread whose spread sets the limit above which an
# image goes to review (0: no limit). Reviewing more only shrinks the cleared and prioritized groups.
UNCERTAIN_SHARE = 0.05
OVERLAY_SIZE = 256  # side of the overlay PNGs, at least (the stored image is upsampled for viewing)

THRESHOLD = Shared("threshold", None, "Decision threshold: P(abnormal) >= it is called abnormal.",
                   lower=0.0, upper=1.0)
BOOTSTRAP_RESAMPLES = Shared("bootstrap", BOOTSTRAP, (
    "Bootstrap resamples behind the report's 95% intervals, each drawing patients with replacement with "
    "all their images (0: no intervals)."), lower=0)
REPORT_DIR = Shared("report_dir", None, (
    "The report folder (metrics.json, roc.png, precision_recall.png, ...), which predict.py and ensemble.py "
    "write when labels are known, by default as <output stem>_report beside --output."))
OTHER_LABELS_CSV = Shared("other_labels_csv", None, (
    "Another reading of the same images (e.g. a radiologist panel's): the report rescores against it on "
    "the images both share, with Cohen's kappa against the images' own labels (other_labels.json). "
    "Columns: image_id (or Image Index or SOPInstanceUID) and label 0/1, YES/NO or NIH Finding Labels."))
_TRIAGE = "Triage (cleared / review / prioritized, docs/triage.md): "
TRIAGE_ALPHA_FLAG = Shared("triage_alpha", None, (
    f"{_TRIAGE}the rule-out threshold's target miss rate (abnormal images cleared ÷ abnormal images), held "
    f"with probability >= 1 - --triage_delta over the calibration images (default {TRIAGE_ALPHA})."),
    lower=0.0, upper=1.0)
TRIAGE_BETA_FLAG = Shared("triage_beta", None, (
    f"{_TRIAGE}the rule-in threshold's target false-alarm rate (normal images prioritized ÷ normal images) "
    f"(default {TRIAGE_BETA})."), lower=0.0, upper=1.0)
TRIAGE_DELTA_FLAG = Shared("triage_delta", None, (
    f"{_TRIAGE}the share of calibration draws for which a target may fail (default {TRIAGE_DELTA})."),
    lower=0.0, upper=1.0)
TRIAGE_UNCERTAIN_SHARE = Shared("triage_uncertain_share", None, (
    f"{_TRIAGE}images whose spread (p_spread) exceeds that of this share of the calibration images with the "
    f"largest go to review; 0: none (default {UNCERTAIN_SHARE})."), lower=0.0, upper=1.0)
TTA = Shared("tta", None, lambda: (
    "Test-time augmentation: each model's p_abnormal (and findings) is the mean over the first N views of "
    f"{', '.join(tta.TRANSFORMS)} (docs/triage.md; no flip: the heart's side matters), and p_spread the "
    "spread of their calibrated probabilities (1: the image alone)."), lower=1, upper=tta.MAX_VIEWS)
_RUN_TRIAGE = ("Without --ensemble: fitted on each run's val_predictions.csv (an approximate guarantee); "
               "with it, the file's (refit with ensemble.py).")
_IMAGES_ONLY = ("Here: with --images only (a --data_dir's shards were gated when build_tfrecords.py built "
                "them).")
_DEFAULT_SPLIT = "Default: test when the folder has it, else its only split besides train and calibration."


def default_report_dir(output: str) -> str:
    """Returns `<output without extension>_report`, the report folder beside an output file."""
    return os.path.splitext(output)[0] + "_report"


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """predict.py: saved models over a shard folder's split or raw images."""

    model_dir: tuple[str, ...] = MODEL_DIR.field(REQUIRED, note=(
        "Repeat it to predict with several models in one call: each then writes <output "
        "stem>.<backbone>.csv/.npy/.json instead of --output itself (<output stem>.<backbone>.<model_dir "
        "name>.csv when two share a backbone)."))
    output: str = OUTPUT.field(REQUIRED, note=(
        f"Here: the predictions ({files.ID},{files.PROB}[,{files.LABEL}],{files.PROB_UNCALIBRATED}, then the "
        f"patient columns: {files.PROB} after the run's temperature, {files.PROB_UNCALIBRATED} the softmax "
        f"output; with --ensemble, the blend as {files.PROB}; with the findings head, p_<finding>, "
        "p_uncalibrated_<finding>, label_<finding> per NIH finding); PATH.npy (the model output, same rows: "
        "(N, 2) softmax, or (N, 16): the 14 findings after it) and the sidecar PATH.json (backbone, shards, "
        "crop, temperatures) go beside it."))
    data_dir: str | None = DATA_DIR.field(note="Here: the folder whose split is predicted.")
    split: str | None = SPLIT.field(note=_DEFAULT_SPLIT)
    images: str | None = IMAGES.field(note="Unreadable files are listed in the sidecar's 'skipped'.")
    ensemble: str | None = ENSEMBLE.field(note=(
        "Here: blend the --model_dir predictions with its temperatures and weights into --output (members "
        "then go to <output stem>.<backbone>.csv); the sidecar holds its threshold."))
    workers: int | None = WORKERS.field(note="Here: with --images.")
    labels_csv: str | None = LABELS_CSV.field(note=(
        "With --images only: the predictions then carry them (to rescore a shard split against another "
        "reading, use --other_labels_csv)."))
    accepted_modalities: tuple[str, ...] = gate.ACCEPTED_MODALITIES.field(note=_IMAGES_ONLY)
    accepted_body_parts: tuple[str, ...] = gate.ACCEPTED_BODY_PARTS.field(note=_IMAGES_ONLY)
    accepted_views: tuple[str, ...] = gate.ACCEPTED_VIEWS.field(note=_IMAGES_ONLY)
    min_image_side: int = gate.MIN_SIDE.field(note=_IMAGES_ONLY)
    min_image_std: float = gate.MIN_STD.field(note=_IMAGES_ONLY)
    global_batch_size: int = GLOBAL_BATCH_SIZE.field(PREDICT_BATCH_SIZE)
    strategy: str = STRATEGY.field()
    precision: str = PRECISION.field(MODEL_PRECISION, note=(
        f"Here: default {MODEL_PRECISION}, the policy of model.keras and of every export, so the predictions "
        "(and the report and ensemble fitted on them) are the served model's; a mixed policy is faster on a "
        "GPU, but export.py does not call a model validated on such predictions."))
    transfer: str = TRANSFER.field()
    threshold: float | None = THRESHOLD.field(note=(
        f"Here: in the report (default {SINGLE_MODEL_THRESHOLD}; with --ensemble the blend takes the "
        "file's)."))
    report_dir: str | None = REPORT_DIR.field()
    bootstrap: int = BOOTSTRAP_RESAMPLES.field()
    other_labels_csv: str | None = OTHER_LABELS_CSV.field()
    tta: int = TTA.field(1)
    triage_alpha: float | None = TRIAGE_ALPHA_FLAG.field(note=_RUN_TRIAGE)
    triage_beta: float | None = TRIAGE_BETA_FLAG.field()
    triage_delta: float | None = TRIAGE_DELTA_FLAG.field()
    progress: bool = setting(True, "Show progress bars.", flag=False)

    def __post_init__(self):
        check(self)
        gate.refuse_with_shards(self)


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """ensemble.py: prediction files blended into a submission."""

    predictions: tuple[str, ...] = setting(REQUIRED, (
        "A prediction CSV to blend (predict.py's format), one per model. The files are joined on image_id; "
        "their sidecars give the backbones."))
    output: str = OUTPUT.field(REQUIRED, note=(
        "Here: the submission; <output stem>.probabilities.csv (+ .json: weights, threshold, inputs) go "
        "beside it."))
    blend_weight: tuple[str, ...] = setting((), lambda: (
        "The weight of one --predictions file in the blend, one per --predictions, in their order "
        "(normalised to sum 1). Default: fitted with --fit_on, else the reference weights of the sidecars' "
        f"backbones ({registry.describe('ensemble_weight')})."))
    fit_on: tuple[str, ...] = setting((), (
        "A validation prediction file with labels (e.g. a run's val_predictions.csv), one per --predictions, "
        "in their order: the weights and/or threshold not given are chosen on them by balanced accuracy."))
    fit_step: float = setting(FIT_STEP, "Spacing of the weight grid searched with --fit_on (must divide 1).")
    calibrate_on: tuple[str, ...] = setting((), (
        "A labelled prediction file of the calibration split (build_tfrecords.py --calibration_fraction; "
        "predict.py --split=calibration), one per --predictions, in their order: the triage thresholds are "
        "fitted on its blend alone, so their guarantee holds as stated. Default: the --fit_on files "
        "(approximate: they also chose the blend); neither: every image goes to review."))
    triage_alpha: float | None = TRIAGE_ALPHA_FLAG.field()
    triage_beta: float | None = TRIAGE_BETA_FLAG.field()
    triage_delta: float | None = TRIAGE_DELTA_FLAG.field()
    triage_uncertain_share: float | None = TRIAGE_UNCERTAIN_SHARE.field()
    submission_id_column: str = setting(files.ID, "Submission column holding the image id.")
    submission_label_column: str = setting(files.DECISION, (
        "Submission column holding the 0/1 decision (the blend's p_abnormal >= threshold)."))
    threshold: float | None = THRESHOLD.field(note=(
        f"Here: the submission's and the report's (default {ENSEMBLE_THRESHOLD}, or fitted with --fit_on)."))
    report_dir: str | None = REPORT_DIR.field()
    bootstrap: int = BOOTSTRAP_RESAMPLES.field()
    other_labels_csv: str | None = OTHER_LABELS_CSV.field()

    def __post_init__(self):
        check(self)


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
    """explain.py: Grad-CAM maps of a split's images and their localization score."""

    model_dir: tuple[str, ...] = MODEL_DIR.field(REQUIRED, note="Repeat it with --ensemble.")
    output_dir: str = OUTPUT_DIR.field(REQUIRED, note=(
        f"Here: the maps (.npy), overlays (.png), {folder.LOCALIZATION} and the index {folder.INDEX}."))
    ensemble: str | None = ENSEMBLE.field(note=(
        "Here: maps are the weighted mean of the members' maps, the gallery is chosen at its threshold."))
    data_dir: str | None = DATA_DIR.field(note="Here: the folder whose split is explained.")
    split: str | None = SPLIT.field(note=_DEFAULT_SPLIT)
    images: str | None = IMAGES.field(note="Here: every readable file is explained.")
    image_ids: tuple[str, ...] = setting((), (
        "Explain this image (group 'asked') instead of the most confident true positives, false positives "
        "and false negatives, one per image."))
    per_group: int = setting(EXPLAIN_PER_GROUP, (
        "Gallery images per group (tp, fp, fn), most confident first, at the ensemble file's threshold, "
        f"else {SINGLE_MODEL_THRESHOLD}; with --finding at {FINDING_THRESHOLD} on its probability."), lower=0)
    finding: str | None = setting(None, (
        "Map this NIH finding's logit instead of the abnormal-vs-normal margin, and choose the gallery by "
        "its blended calibrated probability and its labels (needs models trained with --findings_weight "
        "> 0, and an ensemble file with per-finding weights)."), choices=FINDINGS)
    global_batch_size: int = GLOBAL_BATCH_SIZE.field(EXPLAIN_BATCH_SIZE, note=(
        "Here: per prediction and Grad-CAM step, on one device."))
    workers: int | None = WORKERS.field(note="Here: with --images.")
    accepted_modalities: tuple[str, ...] = gate.ACCEPTED_MODALITIES.field(note=_IMAGES_ONLY)
    accepted_body_parts: tuple[str, ...] = gate.ACCEPTED_BODY_PARTS.field(note=_IMAGES_ONLY)
    accepted_views: tuple[str, ...] = gate.ACCEPTED_VIEWS.field(note=_IMAGES_ONLY)
    min_image_side: int = gate.MIN_SIDE.field(note=_IMAGES_ONLY)
    min_image_std: float = gate.MIN_STD.field(note=_IMAGES_ONLY)
    progress: bool = setting(True, "Show progress bars.", flag=False)

    def __post_init__(self):
        check(self)
        gate.refuse_with_shards(self)
