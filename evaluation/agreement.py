"""Another reading of the same images (`--other_labels_csv`, e.g. a radiologists' panel): every entry
rescored against it on the images both share, and Cohen's kappa between the two readings."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score

from contracts.atomic import json_ready, write_json
from contracts.labels_csv import load_labels
from evaluation.statistics import Scores, compute_metrics

OTHER_LABELS_FILE = "other_labels.json"


@dataclasses.dataclass(frozen=True)
class OtherLabels:
    path: str
    labels: dict[str, int]  # image id -> 0/1


def load_other_labels(path: str) -> OtherLabels:
    found = load_labels(path, "other_labels_csv")
    return OtherLabels(path, {key: labelled.label for key, labelled in found.items()})


def agreement(own: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Cohen's kappa and raw agreement between two 0/1 label vectors of the same images."""
    if not len(own):
        return {"images": 0, "kappa": math.nan, "agreement": math.nan}
    same = own == other
    # Kappa is undefined (0/0) when both readings use one and the same class throughout.
    kappa = math.nan if len(set(own) | set(other)) < 2 else float(cohen_kappa_score(own, other))
    return {"images": int(len(own)), "kappa": kappa, "agreement": float(same.mean()),
            "own_abnormal_other_normal": int(((own == 1) & (other == 0)).sum()),
            "own_normal_other_abnormal": int(((own == 0) & (other == 1)).sum())}


def write_other_labels(report_dir: str, other: OtherLabels, ids: np.ndarray, scores: Sequence[Scores],
                       bootstrap: int) -> dict[str, Any]:
    """Writes (and returns) OTHER_LABELS_FILE: every entry's metrics against `other` on the shared
    images, and the agreement of the entries' own known labels with `other`."""
    ids = np.asarray(ids).astype(str)
    present = np.array([i in other.labels for i in ids])
    other_labels = np.array([other.labels.get(i, -1) for i in ids], dtype=np.int64)
    result: dict[str, Any] = {"labels_csv": os.path.abspath(other.path), "shared": int(present.sum()),
                              "only_in_predictions": int((~present).sum()),
                              "only_in_labels_csv": int(len(set(other.labels) - set(ids)))}
    own = np.asarray(scores[0].labels) if scores else None
    if own is not None and (own >= 0).any():
        both = present & (own >= 0)
        result["agreement_with_own_labels"] = agreement(own[both], other_labels[both])
    if present.any():
        rescored = np.where(present, other_labels, -1)
        result["metrics"] = {s.name: compute_metrics(rescored, s.probs, s.threshold, bootstrap=bootstrap,
                                                     patients=s.patients) for s in scores}
    result = json_ready(result)
    os.makedirs(report_dir, exist_ok=True)
    write_json(os.path.join(report_dir, OTHER_LABELS_FILE), result)
    return result


def format_other_labels(result: dict[str, Any]) -> str:
    """A few lines: counts, kappa, and each entry's AUROC against the other labels."""
    lines = [f"against {result['labels_csv']}: {result['shared']} images shared, "
             f"{result['only_in_predictions']} only in the predictions, "
             f"{result['only_in_labels_csv']} only in the labels CSV"]
    agree = result.get("agreement_with_own_labels")
    if agree:
        kappa = "n/a" if agree["kappa"] is None else f"{agree['kappa']:.3f}"
        shown = "n/a" if agree["agreement"] is None else f"{agree['agreement']:.1%}"
        lines.append(f"  agreement with the records' own labels on {agree['images']} images: {shown}, "
                     f"Cohen's kappa {kappa}")
    for name, metrics in (result.get("metrics") or {}).items():
        auroc = "n/a" if metrics["auroc"] is None else f"{metrics['auroc']:.3f}"
        lines.append(f"  {name}: AUROC {auroc} on {metrics['records']} images against these labels")
    return "\n".join(lines)
