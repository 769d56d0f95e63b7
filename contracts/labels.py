"""The vocabulary of NIH ChestX-ray14 (findings, labels, the boxes' frame), kept free of TensorFlow so
the offline builder's worker processes can import it cheaply. `contracts.records` re-exports it."""

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


def findings_multi_hot(findings) -> list[int]:
    """Returns the 14-long 0/1 vector of `findings` in `FINDINGS` order.

    Raises:
      ValueError: a name is not one of `FINDINGS`.
    """
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise ValueError(f"unknown finding label(s) {unknown}; known: {', '.join(FINDINGS)}")
    present = set(findings)
    return [int(name in present) for name in FINDINGS]


def parse_finding_labels(raw: str) -> tuple[int, tuple[int, ...]]:
    """Maps a "Finding Labels" cell to (binary label, 14-long multi-hot).

    Raises:
      ValueError: empty cell, unknown finding, or "No Finding" mixed with findings.
    """
    names = [part.strip() for part in raw.split("|")]
    if not raw.strip() or any(not n for n in names):
        raise ValueError(f"empty finding label in {raw!r}")
    if NO_FINDING in names:
        if len(names) > 1:
            raise ValueError(f"'No Finding' combined with findings in {raw!r}")
        return LABEL_NORMAL, tuple([0] * len(FINDINGS))
    return LABEL_ABNORMAL, tuple(findings_multi_hot(names))
