"""The run folder train.py writes: its file names, and `RunFolder`, a run read once."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zipfile
from typing import Any

from contracts import storage
from contracts.decode_rules import MAX_IMAGE_PIXELS
from contracts.errors import UserInputError, repeat_hint
from contracts.labels import FINDINGS
from contracts.manifest import ShardFolder

CONFIG = "config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
MODEL = "model.keras"
VAL_PREDICTIONS = "val_predictions.csv"
VAL_SIDECAR = "val_predictions.json"  # the sidecar of VAL_PREDICTIONS (contracts.prediction_files)
TEMPERATURE = "temperature"  # in VAL_SIDECAR: the run's temperature (training.calibration), null if unfitted
CALIBRATION = "calibration"  # in VAL_SIDECAR: what the temperature changes on validation (NLL, ECE)
FINDING_TEMPERATURES = "finding_temperatures"  # in VAL_SIDECAR: finding -> its temperature or null
RUN_FILES = (CONFIG, METRICS, MODEL, VAL_PREDICTIONS, VAL_SIDECAR)  # what no other tool may write over
MODEL_RUN_ENTRY = "cxr_run.json"  # inside MODEL (a zip that Keras loads ignoring it): {"epoch": N}
MODEL_PRECISION = "float32"  # the dtype policy MODEL computes under, and so every export serves
PREDICTED_UNDER = "precision"  # in VAL_SIDECAR and predict.py's sidecars: the policy that computed them
# In VAL_SIDECAR of a run trained under a mixed policy: its validation split scored under that policy and
# by MODEL (float32), {"trained_under", "images", "max_abs", "median_abs", "auroc_trained", "auroc_served"}.
PRECISION_PARITY = "precision_parity"
PARITY_LIMIT = 0.01  # a larger |P(abnormal)| or |P(finding)| gap: an export is not called validated


def parity_within(parity: dict[str, Any]) -> bool:
    """Whether every gap a PRECISION_PARITY record holds is a number within PARITY_LIMIT (NaN or null:
    not within; no findings_max_abs: a model without the findings head)."""
    gaps = (parity.get("max_abs"), parity.get("findings_max_abs", 0.0))
    return all(isinstance(g, (int, float)) and not isinstance(g, bool) and g <= PARITY_LIMIT for g in gaps)


def exported_epochs(model_dir: str) -> tuple[int | None, int | None]:
    """The epochs `model.keras` and `val_predictions.csv` come from (None: absent or unrecorded)."""
    model_epoch = None
    try:
        with zipfile.ZipFile(os.path.join(model_dir, MODEL)) as archive:
            model_epoch = json.loads(archive.read(MODEL_RUN_ENTRY)).get("epoch")
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):
        pass
    sidecar = storage.read_json_or_none(os.path.join(model_dir, VAL_SIDECAR))
    return model_epoch, sidecar.get("epoch") if isinstance(sidecar, dict) else None


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """A train.py run folder: its config.json and its validation sidecar, read once."""

    path: str
    config: dict[str, Any]
    sidecar: dict[str, Any]  # val_predictions.json ({} without one)

    @classmethod
    def open(cls, model_dir: str) -> RunFolder:
        path = os.path.join(model_dir, CONFIG)
        if not os.path.exists(path):
            raise UserInputError(f"{path} not found: {model_dir} is not a folder written by "
                                 f"train.py{repeat_hint(model_dir, 'model_dir', 'model')}")
        try:
            with open(path) as f:
                config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserInputError(f"{path}: not valid JSON ({err}); restore the file train.py wrote") from err
        if not isinstance(config, dict) or "backbone" not in config:
            raise UserInputError(f"{path}: no \"backbone\" field; restore the file train.py wrote")
        sidecar = storage.read_json_or_none(os.path.join(model_dir, VAL_SIDECAR))
        return cls(model_dir, config, sidecar if isinstance(sidecar, dict) else {})

    backbone = property(lambda self: self.config["backbone"])
    image_size = property(lambda self: int(self.config["image_size"]))
    model_path = property(lambda self: os.path.join(self.path, MODEL))

    @property
    def temperature(self) -> float | None:
        """The temperature training fitted on validation; None without one (no validation, one class)."""
        value = self.sidecar.get(TEMPERATURE)
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    def finding_temperatures(self) -> tuple[float | None, ...]:
        """Each finding's temperature (FINDINGS order), fitted like `temperature`; None where unfitted."""
        fitted = self.sidecar.get(FINDING_TEMPERATURES) or {}
        return tuple(float(t) if isinstance(t, (int, float)) and t > 0 else None
                     for t in (fitted.get(f) for f in FINDINGS))

    def no_temperature_note(self) -> str:
        return (f"{self.path} has no fitted temperature (trained without validation, on validation of one "
                "class, or before temperatures were fitted): its probabilities are used uncalibrated")

    @property
    def trained_under(self) -> str | None:
        return self.config.get("precision")

    @property
    def validated_under(self) -> str | None:
        """The policy val_predictions.csv was computed under (None: no validation): MODEL's own since
        train.py re-validates a mixed-precision run's float32 MODEL; before, the training policy."""
        if not self.sidecar:
            return None
        return self.sidecar.get(PREDICTED_UNDER) or self.trained_under

    @property
    def precision_parity(self) -> dict[str, Any] | None:
        parity = self.sidecar.get(PRECISION_PARITY)
        return parity if isinstance(parity, dict) else None

    @functools.cached_property
    def train_build(self) -> dict[str, Any]:
        """The build settings of the shards the run trained on ({} when unreadable)."""
        try:
            return ShardFolder.open(self.config["data_dir"]).manifest["config"]
        except (KeyError, TypeError, OSError, ValueError):
            return {}

    @property
    def max_image_pixels(self) -> int:
        """The pixel limit of the shards the run trained on: what their builder refused, scoring refuses."""
        return int(self.train_build.get("max_image_pixels") or MAX_IMAGE_PIXELS)

    @property
    def crop(self) -> str | None:
        """The crop of the shards the run trained on: config.json's, the sidecar's, or their manifest's."""
        return self.config.get("crop") or self.sidecar.get("train_crop") or self.train_build.get("crop")
