"""export.py's settings, without TensorFlow; `serving.exporter.run_export` takes them whole."""

from __future__ import annotations

import dataclasses

from contracts.settings import REQUIRED, check, setting
from contracts.shared import ENSEMBLE, MODEL_DIR
from evaluation.settings import (
    REPORT_DIR,
    SINGLE_MODEL_THRESHOLD,
    THRESHOLD,
    TRIAGE_ALPHA_FLAG,
    TRIAGE_BETA_FLAG,
    TRIAGE_DELTA_FLAG,
    TTA,
)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """export.py: trained runs as one SavedModel that takes image bytes."""

    model_dir: tuple[str, ...] = MODEL_DIR.field(REQUIRED, note="Repeat it for an ensemble, with --ensemble.")
    export_dir: str = setting(REQUIRED, (
        "New (or empty) folder for the SavedModel, export.json and MODEL_CARD.md."))
    ensemble: str | None = ENSEMBLE.field(note="Required with several --model_dir.")
    threshold: float | None = THRESHOLD.field(note=(
        f"Here: the served label of a single model (default {SINGLE_MODEL_THRESHOLD}); an ensemble takes the "
        "file's."))
    report_dir: str | None = REPORT_DIR.field(note=(
        "Here: the one read into MODEL_CARD.md, made over exactly the exported models; by default the one "
        "the --ensemble file records (without one, the card gives the runs' validation figures)."))
    tta: int | None = TTA.field(note=(
        "Here: served views per image without --ensemble (default 1); an ensemble file gives each member "
        "the views of its predictions."))
    triage_alpha: float | None = TRIAGE_ALPHA_FLAG.field(note=(
        "Without --ensemble: the run's triage, fitted on its val_predictions.csv as predict.py does; an "
        "ensemble file holds its own."))
    triage_beta: float | None = TRIAGE_BETA_FLAG.field()
    triage_delta: float | None = TRIAGE_DELTA_FLAG.field()

    def __post_init__(self):
        check(self)
