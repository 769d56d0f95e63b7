"""An export folder's names, for the exporter and its readers (no TensorFlow)."""

from contracts.output_names import (
    DECISION,
    FINDINGS_OUTPUT,
    IMPLAUSIBLE,
    PROB,
    PROB_UNCALIBRATED,
    SPREAD,
    TRIAGE,
    TTA,
)

EXPORT_INFO = "export.json"  # beside saved_model.pb: members, image size, threshold, signatures
MODEL_CARD = "MODEL_CARD.md"  # beside EXPORT_INFO: training data, scores, intended use, limits
# 1: outputs "label" (now DECISION) and "member_p_abnormal" (the members' softmax, now their calibrated P);
# 2: before OUTPUT_TRIAGE, OUTPUT_SPREAD, OUTPUT_MEMBERS_PROB, OUTPUT_IMPLAUSIBLE and the TRIAGE and TTA keys;
# 3: before VALIDATION_INFO.
EXPORT_SCHEMA_VERSION = 4
READABLE_SCHEMAS = (2, 3, 4)  # serving.api reads them all: 2 only lacks outputs that 3 added
SERVING_DEFAULT = "serving_default"  # image_bytes: string [None] -> outputs
PIXELS = "pixels"  # pixels: float32 [None, S, S, 3] in 0..255 -> outputs
INPUT_BYTES = "image_bytes"
INPUT_PIXELS = "pixels"
OUTPUT_PROB = PROB  # float32 [None]: after the temperatures (an ensemble: the blend)
OUTPUT_UNCALIBRATED = PROB_UNCALIBRATED  # float32 [None], one model only: its softmax output
OUTPUT_LOGIT = "logit"  # float32 [None]: log(p / (1 - p)) of OUTPUT_PROB
OUTPUT_DECISION = DECISION  # int32 [None]: OUTPUT_PROB >= threshold
MEMBER_PREFIX = "member_"  # an ensemble's per-member output: float32 [None, members]
OUTPUT_MEMBERS = MEMBER_PREFIX + PROB_UNCALIBRATED  # each member's softmax output (mean over its views)
OUTPUT_MEMBERS_PROB = MEMBER_PREFIX + PROB  # each member's P(abnormal) after its temperature, in blend order
OUTPUT_FINDINGS = FINDINGS_OUTPUT  # float32 [None, 14], export.json's "findings" names its columns
OUTPUT_TRIAGE = TRIAGE  # string [None]: cleared / review / prioritized, by export.json's TRIAGE_INFO
OUTPUT_IMPLAUSIBLE = IMPLAUSIBLE  # int32 [None]: 1 where the image cannot be a film (decode.is_implausible)
OUTPUT_SPREAD = SPREAD  # float32 [None], with several members or views: the calibrated probabilities' spread
TRIAGE_INFO = TRIAGE  # export.json: evaluation.triage.to_record of the served triage, or {"why": ...}
VALIDATION_INFO = "validation"  # export.json: serving.validation.status, whether the graph is the validated
TTA_INFO = TTA  # export.json: per member {"views": N, "transforms": [...]}, in blend order
