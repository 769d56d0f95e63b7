"""The frontal-chest gate's settings (preprocess/chest_gate.py applies them), one `Shared` each: the builder
takes them, and predict.py and explain.py for --images, so they live below both."""

from typing import Any, Sequence

from contracts.decode_rules import MIN_IMAGE_SIDE, MIN_IMAGE_STD
from contracts.errors import UserInputError
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


def normalized(values: Sequence[str]) -> tuple[str, ...]:
    """Setting values as compared: stripped, upper case, in order, without blanks."""
    return tuple(v.strip().upper() for v in values if v.strip())


def _recorded(shared: Shared, value: Any) -> Any:
    return list(normalized(value)) if shared in ACCEPTED else value


def settings_of(config) -> dict[str, Any]:
    """The gate's `SETTINGS` of a config that has them (BuildConfig, PredictConfig, ExplainConfig), the
    accepted values normalized, as JSON holds them (lists)."""
    return {s.name: _recorded(s, getattr(config, s.name)) for s in SETTINGS}


def changed(config) -> list[str]:
    """The names of the gate's settings that `config` sets to other than their defaults."""
    return [s.name for s in SETTINGS if _recorded(s, getattr(config, s.name)) != _recorded(s, s.default)]


def refuse_with_shards(config) -> None:
    """Refuses a predict.py or explain.py config whose gate settings differ from the defaults without
    --images: the shards of --data_dir were gated when they were built."""
    found = changed(config) if config.images is None else []
    if found:
        raise UserInputError(f"--{found[0]} applies to --images only: the shards of --data_dir="
                             f"{config.data_dir} were gated when they were built; rebuild them with "
                             f"build_tfrecords.py --{found[0]}=... to change it")
