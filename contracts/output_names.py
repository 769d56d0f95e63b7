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
