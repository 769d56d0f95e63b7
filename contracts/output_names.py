"""The column and output names every output file and the served signatures share."""

ID = "image_id"
PROB = "p_abnormal"  # what the model or ensemble hands over: after its temperature when it has one
PROB_UNCALIBRATED = "p_uncalibrated"  # a model's softmax output, before any temperature
LABEL = "label"  # the record's own label (1 abnormal, 0 normal, -1 unknown), never a decision
DECISION = "decision"  # 0/1, p_abnormal >= threshold: the submission's and the served model's
