"""The defaults of prediction, blending and the report, in a module that imports nothing heavy.

`blend`, `report`, `prediction` and the command-line flags all take them from here.
"""

ENSEMBLE_THRESHOLD = 0.6  # the reference's blend called an image abnormal at P >= 0.6
SINGLE_MODEL_THRESHOLD = 0.5  # a softmax model's own decision: the larger of its two outputs
FIT_STEP = 0.05  # spacing of the weight grid `blend.fit` searches
BOOTSTRAP = 1000  # resamples behind each 95% interval of the report
PREDICT_BATCH_SIZE = 64
