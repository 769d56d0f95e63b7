"""The column and output names every output file and the served signatures share."""

ID = "image_id"
PROB = "p_abnormal"  # what the model or ensemble hands over: after its temperature when it has one
PROB_UNCALIBRATED = "p_uncalibrated"  # a model's softmax output, before any temperature
LABEL = "label"  # the record's own label (1 abnormal, 0 normal, -1 unknown), never a decision
DECISION = "decision"  # 0/1, p_abnormal >= threshold: the submission's and the served model's

# One column per NIH finding (contracts.labels.FINDINGS) beside the binary ones, by issue 18's rule:
# p_<finding> is handed over (after the finding's temperature), p_uncalibrated_<finding> is the raw sigmoid.
FINDINGS_OUTPUT = "p_findings"  # the served (N, 14) output, columns in FINDINGS order


def finding_prob(finding: str) -> str:
    return f"{PROB[:2]}{finding}"


def finding_uncalibrated(finding: str) -> str:
    return f"{PROB_UNCALIBRATED}_{finding}"


def finding_label(finding: str) -> str:  # 1 present, 0 absent, -1 unknown (binary-only label source)
    return f"{LABEL}_{finding}"

# Three-way triage (evaluation/triage.py): every prediction's group, a closed set in worklist order.
TRIAGE = "triage"
CLEARED = "cleared"  # p_abnormal below the rule-out threshold: can wait (its miss rate is guaranteed)
REVIEW = "review"  # between the thresholds, or too uncertain: a reader decides
PRIORITIZED = "prioritized"  # p_abnormal at or above the rule-in threshold: read first
TRIAGE_GROUPS = (PRIORITIZED, REVIEW, CLEARED)
IMPLAUSIBLE = "implausible"  # served: 1 where an image is too small or too flat to be a film (then review)
SPREAD = "p_spread"  # the spread of the calibrated probabilities p_abnormal averages (members, TTA views)
TTA = "tta"  # in a prediction sidecar: {"views": N, "transforms": [...]} (absent: the image alone)


def views(sidecar: dict | None) -> int:
    """The test-time views a prediction file's rows average (1: the image alone)."""
    return int(((sidecar or {}).get(TTA) or {}).get("views", 1))
