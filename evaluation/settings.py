"""The defaults of prediction, blending and the report, in a module that imports nothing heavy.

`blend`, `report`, `prediction` and the command-line flags all take them from here.
"""

import os

ENSEMBLE_THRESHOLD = 0.6  # the reference's blend called an image abnormal at P >= 0.6
SINGLE_MODEL_THRESHOLD = 0.5  # a softmax model's own decision: the larger of its two outputs
FIT_STEP = 0.05  # spacing of the weight grid `blend.fit` searches
BOOTSTRAP = 1000  # resamples behind each 95% interval of the report
PREDICT_BATCH_SIZE = 64
# explain.py (Grad-CAM and its localization score)
EXPLAIN_PER_GROUP = 4  # images shown per group (true positives, false positives, false negatives)
EXPLAIN_BATCH_SIZE = 16  # images per Grad-CAM step: a backward pass holds every activation
# Sigma of the centred-Gaussian baseline map, as a fraction of the image side: a blob over the
# middle quarter or so of a radiograph, where the heart and the medial lung fields are.
LOCALIZATION_BASELINE_SIGMA = 0.25
OVERLAY_SIZE = 256  # side of the overlay PNGs, at least (the stored image is upsampled for viewing)


def default_report_dir(output: str) -> str:
    """Returns `<output without extension>_report`, the report folder beside an output file."""
    return os.path.splitext(output)[0] + "_report"
