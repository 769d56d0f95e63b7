"""The folder the docs' Python examples run in: what a user has after the README's recipes, made
small (tiny test networks at 32 px), so every ```python block of README.md and docs/ can run.

    shards/                       train 32, val 16, test 16 records
    runs/<name>/                  three trained run folders (train.py's layout), one per NAMES entry
    preds/test.<name>.csv         predict.py on the test split, one file per run
    submission.csv (+ .probabilities.csv/.json, submission_report/)   ensemble.py --fit_on the runs
    served/ensemble/, served/effnet/   export.py of the ensemble and of runs/efficientnet_b3 alone
    new_studies/                  0001.png, 0002.png (8-bit gray), 0003.jpg, 0004.dcm to score
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from contracts.decode_rules import MIN_IMAGE_SIDE
from evaluation import ensembling, prediction
from evaluation.settings import EnsembleConfig, PredictConfig
from serving import exporter
from serving.config import ExportConfig
from tests.dicom_factory import write_dicom
from tests.shard_factory import synthetic_pixels, write_shards
from training.config import TrainConfig
from training.loop import run_training

SIZE = 32
NAMES = ("efficientnet_b3", "densenet121", "resnet50")  # folder names only: each is the tiny test network
STUDIES = ("0001.png", "0002.png", "0003.jpg", "0004.dcm")


def _studies(folder: str) -> None:
    os.makedirs(folder)
    rng = np.random.default_rng(7)
    for name in STUDIES:
        pixels = synthetic_pixels(rng, max(2 * SIZE, MIN_IMAGE_SIDE), abnormal=name in ("0002.png", "0004.dcm"))
        path = os.path.join(folder, name)
        if name.endswith(".dcm"):
            write_dicom(path, pixels, patient_id="P0004", age="061Y", sex="F", view="AP")
            continue
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG" if name.endswith(".png") else "JPEG")
        with open(path, "wb") as f:
            f.write(buffer.getvalue())


def build(root: str) -> dict[str, str]:
    """Makes the world in `root` (an empty folder); returns its main paths, absolute."""
    join = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    write_shards(join("shards"), {"train": 32, "val": 16, "test": 16}, image_size=SIZE)
    runs, preds = [], []
    for seed, name in enumerate(NAMES):
        runs.append(join("runs", name))
        run_training(TrainConfig(backbone="tiny_test", data_dir=join("shards"), weights="none",
                                 global_batch_size=8, epochs=2, precision="float32", strategy="default",
                                 seed=seed, model_dir=runs[-1]))
        preds.append(join("preds", f"test.{name}.csv"))
        prediction.run_prediction(PredictConfig(model_dir=[runs[-1]], data_dir=join("shards"), split="test",
                                                output=preds[-1], global_batch_size=8, strategy="default",
                                                precision="float32", bootstrap=50, progress=False))
    ensembling.run_ensemble(EnsembleConfig(
        tuple(preds), join("submission.csv"), fit_on=tuple(os.path.join(r, "val_predictions.csv") for r in runs),
        fit_step=0.1, bootstrap=50))
    ensemble = join("submission.probabilities.json")
    exporter.run_export(ExportConfig(tuple(runs), join("served", "ensemble"), ensemble=ensemble))
    exporter.run_export(ExportConfig((runs[0],), join("served", "effnet")))
    _studies(join("new_studies"))
    return {"root": root, "shards": join("shards"), "runs": runs, "preds": preds, "ensemble": ensemble,
            "export": join("served", "ensemble"), "single_export": join("served", "effnet"),
            "studies": join("new_studies")}
