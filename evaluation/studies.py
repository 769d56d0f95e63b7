"""The studies file beside a prediction file, `<stem>.studies.csv`: one row per study (contracts.study_ids
says which), its images' answers combined by `RULES`, which the prediction sidecar records."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import pandas as pd

from contracts import storage
from contracts.atomic import atomic_path
from contracts.manifest import STUDY_ID_SINCE, ShardFolder
from contracts.output_names import CLEARED, ID, LABEL, PRIORITIZED, PROB, REVIEW, TRIAGE
from contracts.prediction_files import STUDY, UNKNOWN_LABEL
from contracts.study_ids import study_id

SUFFIX = ".studies.csv"
SIDECAR_KEY = "studies"  # in the prediction sidecar: {"file": ..., **RULES}, or {"why": ...} without one
USED, SKIPPED = "images_used", "images_skipped"  # counts
USED_IDS, SKIP_REASONS = "used", "skipped"  # "a.dcm | b.dcm"; "c.dcm: <reason> | ..."
JOIN = " | "  # not ";": the builder's reasons hold semicolons
COLUMNS = (STUDY, PROB, LABEL, TRIAGE, USED, SKIPPED, USED_IDS, SKIP_REASONS)  # LABEL when labels are known
RULES = {
    PROB: "the maximum p_abnormal over the study's used images; empty when every image was skipped",
    LABEL: "1 when any used image is labelled 1, 0 when every used image is labelled 0, else -1 (unknown)",
    TRIAGE: f"{PRIORITIZED} when any used image is {PRIORITIZED}; {CLEARED} only when every used image "
            f"is {CLEARED} (and at least one was used); else {REVIEW}",
}


def studies_path(csv_path: str) -> str:
    return os.path.splitext(csv_path)[0] + SUFFIX


def unrecorded(shards: ShardFolder, meta: dict[str, np.ndarray]) -> str | None:
    """Why the records of `shards` (their STUDY column in `meta`) give no studies file; None: they do."""
    if not shards.studies_recorded:
        return (f"no studies file: {shards.path} was built before records carried a study id (manifest "
                f"schema {shards.schema_version} < {STUDY_ID_SINCE}); rebuild it with build_tfrecords.py")
    if STUDY not in meta or (meta[STUDY] == "").any():
        return (f"no studies file: records of {shards.path} carry no study id; rebuild it with "
                "build_tfrecords.py")
    return None


def _combined(values: pd.Series, studies: pd.Series, any_of: Any, all_of: Any, otherwise: Any) -> pd.Series:
    """Per study: `any_of` when any value is it, else `all_of` when every value is it, else `otherwise`."""
    grouped_any = (values == any_of).groupby(studies, sort=False).any()
    grouped_all = (values == all_of).groupby(studies, sort=False).all()
    return pd.Series(np.where(grouped_any, any_of, np.where(grouped_all, all_of, otherwise)),
                     index=grouped_any.index)


def study_table(ids: Sequence[str], studies: Sequence[str], probs: np.ndarray, groups: Sequence[str],
                labels: np.ndarray | None = None, skipped: Sequence[dict[str, Any]] = ()) -> pd.DataFrame:
    """One row per study, sorted by study id: the used images' answers combined by `RULES`, and each
    skipped file ({"image", "reason"[, "study"]}: its study by contracts.study_ids when not given)."""
    study = pd.Series(np.asarray(studies, dtype=object))
    images = pd.DataFrame({ID: np.asarray(ids, dtype=object), PROB: np.asarray(probs, dtype=np.float64)})
    by_study = images.groupby(study, sort=False)
    triage = _combined(pd.Series(groups, dtype=object), study, PRIORITIZED, CLEARED, REVIEW)
    used = pd.DataFrame({PROB: by_study[PROB].max(), USED: by_study.size(),
                         USED_IDS: by_study[ID].agg(JOIN.join), TRIAGE: triage})
    if labels is not None:
        used[LABEL] = _combined(pd.Series(labels, dtype=np.int64), study, 1, 0, UNKNOWN_LABEL)
    skips = pd.DataFrame({STUDY: [s.get("study") or study_id(s["image"]) for s in skipped],
                          SKIP_REASONS: [f"{s['image']}: {s['reason']}" for s in skipped]}, dtype=object)
    by_skip = skips.groupby(STUDY, sort=False)[SKIP_REASONS]
    table = used.join(pd.DataFrame({SKIPPED: by_skip.size(), SKIP_REASONS: by_skip.agg(JOIN.join)}),
                      how="outer").sort_index()
    # A study whose every image was skipped: no probability, label unknown, review.
    table = table.fillna({TRIAGE: REVIEW, LABEL: UNKNOWN_LABEL, USED: 0, SKIPPED: 0, USED_IDS: "",
                          SKIP_REASONS: ""}).astype({USED: np.int64, SKIPPED: np.int64})
    if labels is not None:
        table[LABEL] = table[LABEL].astype(np.int64)
    return table.rename_axis(STUDY).reset_index()[[c for c in COLUMNS if c in table.columns or c == STUDY]]


def write_table(csv_path: str, table: pd.DataFrame | None) -> str:
    """Writes a `study_table` beside `csv_path` (atomically; a caller's Transaction guards the path), or
    with None removes the one an earlier run left there, which the new predictions would not match."""
    path = studies_path(csv_path)
    if table is None:
        if storage.exists(path):
            storage.remove(path)
        return path
    with atomic_path(path) as tmp:  # repr-exact floats, as in the prediction file
        table.to_csv(tmp, index=False, float_format="%.17g")
    return path


def sidecar_record(csv_path: str) -> dict[str, str]:
    """What the prediction sidecar says of its studies file: the file and `RULES`."""
    return {"file": os.path.basename(studies_path(csv_path)), **RULES}
