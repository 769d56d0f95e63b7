"""The frontal-chest gate's settings (preprocess/chest_gate.py applies them), one `Shared` each: the builder
takes them, and predict.py and explain.py for --images, so they live below both."""

from contracts.decode_rules import MIN_IMAGE_SIDE, MIN_IMAGE_STD
from contracts.settings import Shared

MODALITIES = ("CR", "DX")  # projection radiography (CT, MR, US, MG, ... are not)
BODY_PARTS = ("CHEST",)
VIEWS = ("PA", "AP")  # frontal; LL, RL, LATERAL, oblique and decubitus views are not

_GATE = "Frontal-chest gate: "
ACCEPTED_MODALITIES = Shared("accepted_modalities", MODALITIES, (
    f"{_GATE}a DICOM file whose Modality is none of these is skipped (repeat the flag per value; a file "
    "without the tag is kept and listed in 'unchecked' of the manifest or the prediction sidecar)."))
ACCEPTED_BODY_PARTS = Shared("accepted_body_parts", BODY_PARTS, (
    f"{_GATE}a DICOM file whose BodyPartExamined is present and none of these is skipped."))
ACCEPTED_VIEWS = Shared("accepted_views", VIEWS, (
    f"{_GATE}a DICOM ViewPosition or Data_Entry 'View Position' that is none of these (a lateral LL or RL, "
    "say) is skipped."))
MIN_SIDE = Shared("min_image_side", MIN_IMAGE_SIDE, (
    "An image whose shorter side (before resizing) is below this many pixels is skipped: not a film."),
    lower=0)
MIN_STD = Shared("min_image_std", MIN_IMAGE_STD, (
    "An image whose decoded 8-bit gray pixels have a standard deviation below this many grey levels (nearly "
    "constant) is skipped: not a film."), lower=0.0)
ACCEPTED = (ACCEPTED_MODALITIES, ACCEPTED_BODY_PARTS, ACCEPTED_VIEWS)  # value lists, compared normalized
SETTINGS = (*ACCEPTED, MIN_SIDE, MIN_STD)
