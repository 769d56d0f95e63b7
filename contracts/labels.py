"""NIH ChestX-ray14's vocabulary: findings, labels, the boxes' frame (no TensorFlow: builder workers)."""

import dataclasses

# The 14 NIH ChestX-ray14 findings, in the fixed order of the multi-hot `findings` vector.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"

LABEL_NORMAL = 0
LABEL_ABNORMAL = 1
NIH_FRAME = 1024  # NIH boxes are in the 1024 x 1024 frame of the released PNGs, whatever a copy's size
LABEL_UNKNOWN = -1  # unlabeled images (a Kaggle eval folder): no CSV row


@dataclasses.dataclass(frozen=True)
class Labelled:
    """An image's label, and its multi-hot findings when the source names them (NIH's Finding Labels);
    None when it does not (a 0/1 label, no label): unknown, which "No Finding" zeros cannot say."""
    label: int
    findings: tuple[int, ...] | None = None


UNLABELED = Labelled(LABEL_UNKNOWN)


def parse_finding_labels(raw: str) -> tuple[int, tuple[int, ...]]:
    """A "Finding Labels" cell as (binary label, multi-hot); ValueError if empty, unknown or mixed."""
    names = [part.strip() for part in raw.split("|")]
    if not raw.strip() or any(not n for n in names):
        raise ValueError(f"empty finding label in {raw!r}")
    if NO_FINDING in names:
        if len(names) > 1:
            raise ValueError(f"'No Finding' combined with findings in {raw!r}")
        return LABEL_NORMAL, (0,) * len(FINDINGS)
    unknown = sorted(set(names) - set(FINDINGS))
    if unknown:
        raise ValueError(f"unknown finding label(s) {unknown}; known: {', '.join(FINDINGS)}")
    return LABEL_ABNORMAL, tuple(int(name in names) for name in FINDINGS)
